"""Processes: who this one is, and whether another recorded one is still alive.

A claim on a campaign and a database's sending mark (see :mod:`batchsend.store`) record
the process that made them as ``(host, pid, start)``. ``start`` is the process's start
time as the kernel counts it (``/proc/<pid>/stat`` on Linux; None elsewhere), so a pid
recycled by an unrelated program after a crash is not mistaken for the batchsend that
made the record.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessId", "alive", "this_process"]


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process as a record names it: its host, pid and start time (None if unknown)."""

    host: str
    pid: int
    start: str | None


def _start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
        # Field 22; the command name (field 2) may hold spaces, so count from its ")".
        return stat[stat.rindex(")") + 2 :].split()[19]
    return None


def this_process() -> ProcessId:
    """This process."""
    return ProcessId(socket.gethostname(), os.getpid(), _start(os.getpid()))


def alive(host: str | None, pid: int | None, start: str | None) -> bool:
    """Whether the recorded process still runs (on this host; another host's counts as gone).

    A process recorded on another machine cannot be checked from here; like
    ``batchsend runs``, batchsend treats it as gone (a database is not shared between
    machines while in use: SQLite's locking does not work over network filesystems).
    """
    if pid is None or (host and host != socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    except OSError:
        return False
    if start is not None:
        now = _start(pid)
        if now is not None and now != start:
            return False  # the pid was recycled
    return True
