"""Helpers shared by the test suite and the long-form benchmarks in bench/.

``campaigns``: generated campaign folders and what a sandbox delivered for them;
``clock``: fake clocks; ``processes``: batchsend in a child process, its database seen
from outside; ``sandboxes``: a sandbox process and a scripted ToSend; ``gauntlet``: the
crash, fault and hostile-input scenarios. Modules here import each other relatively, so
they work both as ``support`` (tests) and as ``tests.support`` (``python -m bench...``).
"""
