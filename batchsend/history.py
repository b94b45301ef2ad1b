"""Run history: the runs a database holds, their real state, and finding one by id.

:func:`list_runs` is what ``batchsend runs`` shows: every run with its counts by
recipient state, its state as it really is (a ``running`` run whose process is gone is
shown ``interrupted``) and the command that resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batchsend.dblocation import Located, hint_db
from batchsend.errors import InputError, StoreError
from batchsend.next_steps import NextStep, next_steps, resume_command, state_label
from batchsend.states import RecipientState, RunState
from batchsend.store import RunInfo, Store

__all__ = [
    "RunListing",
    "dumps_listings",
    "effective_state",
    "find_run",
    "list_runs",
    "listing_of",
    "open_db",
]


@dataclass(frozen=True, slots=True)
class RunListing:
    """One run as ``batchsend runs`` shows it.

    ``run`` is the stored run with live ``counts``; ``state`` is its real state (a
    ``running`` run whose process is gone reads ``interrupted``); ``resume`` is the
    command that finishes it, or ``None`` when there is nothing to resume;
    ``failed_retryable`` how many of its failed rows ``--retry-failed`` would send;
    ``db_path`` the database it is in, ``db_hint`` the ``--db`` its commands carry (None:
    ``batchsend resume RUN_ID`` finds it without).
    """

    run: RunInfo
    state: RunState
    resume: str | None
    failed_retryable: int = 0
    db_path: str = ""
    db_hint: str | None = None

    @property
    def label(self) -> str:
        """The state as shown: ``finished with 3 failed / 2 unknown`` rather than finished."""
        return state_label(self.state, self.run.counts)

    @property
    def next_steps(self) -> tuple[NextStep, ...]:
        """What to do about the run's failed and unknown rows, with the exact commands."""
        if self.run.dry_run:
            return ()
        return next_steps(
            self.run.id, self.db_hint, self.run.counts, failed_retryable=self.failed_retryable
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``batchsend runs --json``)."""
        r = self.run
        return {
            "id": r.id,
            "campaign": r.campaign_name,
            "campaign_path": r.campaign_path,
            "provider": r.provider,
            "state": self.state.value,
            "state_label": self.label,
            "stored_state": r.state.value,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "updated_at": r.updated_at,
            "total_rows": r.total_rows,
            "counts": dict(r.counts),
            "failed_retryable": self.failed_retryable,
            "failed_permanent": r.counts.get(RecipientState.FAILED.value, 0)
            - self.failed_retryable,
            "is_test": r.is_test,
            "test_to": r.test_to,
            "dry_run": r.dry_run,
            "fatal_error": r.fatal_error,
            "report_path": r.report_path,
            "db_path": self.db_path,
            "resume": self.resume,
            "next_steps": [step.to_dict() for step in self.next_steps],
        }


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    # A recycled pid now used by an unrelated program is not our run.
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
        if cmdline and b"batchsend" not in cmdline and b"python" not in cmdline:
            return False
    return True


def effective_state(run: RunInfo) -> RunState:
    """The run's state as it really is.

    A run stored ``running`` whose process is not alive on this machine (killed, crashed,
    or recorded by another host) is ``interrupted``: nothing will move it on but a resume.
    """
    if run.state is not RunState.RUNNING:
        return run.state
    host = run.settings.get("host") if isinstance(run.settings, dict) else None
    if host and host != socket.gethostname():
        return RunState.INTERRUPTED
    if run.pid is None or not _process_alive(run.pid):
        return RunState.INTERRUPTED
    return RunState.RUNNING


def open_db(db_path: str | Path) -> Store:
    path = Path(db_path)
    if not path.is_file():  # checked first: opening it would create an empty database
        raise InputError(
            "no batchsend database here (no such file)",
            file=str(path),
            fix="pass --db with the database file a run wrote (batchsend runs, without"
            " --db, lists the runs of every database batchsend knows)",
        )
    return Store(path)


def listing_of(
    store: Store, run: RunInfo, db_path: str | Path, *, chosen: bool = True
) -> RunListing:
    """The run as ``runs`` shows it; ``chosen``: the user named the database (``--db``),
    so the commands shown name it too."""
    run = replace(run, counts=store.counts(run.id))
    state = effective_state(run)
    hint = hint_db(run.id, Located(Path(db_path), chosen))
    resume = None
    if state in (RunState.INTERRUPTED, RunState.FATAL) and not run.dry_run:
        resume = resume_command(run.id, hint)
    return RunListing(
        run=run,
        state=state,
        resume=resume,
        failed_retryable=store.failed_retryable(run.id),
        db_path=str(db_path),
        db_hint=hint,
    )


def find_run(store: Store, run_id: str) -> RunInfo:
    """The run, or an :class:`InputError` (exit 2) naming the runs there are."""
    try:
        return store.get_run(run_id)
    except StoreError:
        known = [r.id for r in store.list_runs()]
        if run_id in known:
            raise
        latest = f"; the latest is {known[0]}" if known else "; it has no runs"
        raise InputError(
            f"no run {run_id!r} in {store.path}{latest}",
            fix=f"list the runs with: batchsend runs --db {store.path}",
        ) from None


def list_runs(db_path: str | Path, *, chosen: bool = True) -> list[RunListing]:
    """Every run in the database, newest first, with live counts and real states.

    Raises :class:`StoreError` when there is no database at ``db_path``.

    Example::

        for listing in list_runs("batchsend.db"):
            print(listing.run.id, listing.state, listing.run.counts, listing.resume)
    """
    with open_db(db_path) as store:
        return [listing_of(store, run, db_path, chosen=chosen) for run in store.list_runs()]


def dumps_listings(listings: Sequence[RunListing]) -> str:
    """The runs as a JSON array (``batchsend runs --json``)."""
    return json.dumps([item.to_dict() for item in listings], indent=2, ensure_ascii=False)
