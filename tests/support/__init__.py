"""Helpers shared by the test suite and the long-form benchmarks in bench/.

``campaigns``: generated campaign folders and what a sandbox delivered for them;
``clock``: fake clocks; ``processes``: batchsend in a child process (a command, a
sandbox), its database seen from outside; ``runs``: runs recorded through the store for
the report tests; ``sandboxes``: the fixtures' account and a scripted ToSend;
``gauntlet``: the crash, fault and hostile-input scenarios.

Modules here import each other relatively, so they work both as ``support`` (tests) and
as ``tests.support`` (``python -m bench.gauntlet``).
"""
