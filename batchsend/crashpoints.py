"""Test-only crash points: make this process SIGKILL itself at an exact moment.

The gauntlet (``tests/support/gauntlet.py``, ``tests/test_crash_kill_points.py``) must kill
batchsend right after a unit's ``sending`` commit and right after a response arrives,
moments far too short to hit reliably from outside. With the environment variable
``BATCHSEND_TEST_ONLY_SIGKILL_AT=<point>:<n>`` the process sends itself SIGKILL (no
cleanup, no flush: exactly ``kill -9``) the ``n``-th time it reaches ``<point>``:

* ``sending``: the engine has just committed a unit's rows as ``sending``; the request
  has not left;
* ``response``: an HTTP response has just arrived; it is not parsed or recorded yet;
* ``checkpoint``: the row pass has just kept a checked chunk beside the database
  (:mod:`batchsend.store.checkpoint`); the run's rows are not recorded yet.

The variable is read once at import. Unset -- always, outside the gauntlet -- each
:func:`crashpoint` call is one comparison against None.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "BATCHSEND_TEST_ONLY_SIGKILL_AT"
POINTS = ("sending", "response", "checkpoint")


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV_VAR}={spec!r}: expected <point>:<n>, point one of {POINTS}")
    return point, int(count)


_target = _parse(os.environ.get(ENV_VAR))
_seen = 0


def crashpoint(point: str) -> None:
    """SIGKILL this process if it is the armed point's n-th arrival (test-only)."""
    global _seen
    if _target is None or point != _target[0]:
        return
    _seen += 1
    if _seen >= _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
