"""Helpers shared by the test suite (and the long-form benchmarks in bench/)."""
