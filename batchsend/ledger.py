"""The sending ledger: two lines per run in a small file beside the database, outside it.

A database can be lost whole (deleted, or replaced by an older copy) while the people
it recorded as sent remain sent. Before a real run's first request, batchsend appends
``{"event": "sending", "run_id", "db", "campaign", ...}`` to ``.batchsend-ledger`` in the
database's folder (fsynced: once per run or resume); when the run stops, an ``"ended"``
line with its counts. ``run`` and ``resume`` read it first: a run of this database and
campaign that the ledger saw sending but the database does not hold, or that the
ledger saw end with more ``sent`` rows than the database now shows, is refused before
anything is sent (``batchsend.sending``). An ``"accepted"`` line (``--accept-lost-record``)
silences that run's entry. Lines that do not parse are ignored: the ledger is a guard,
never a reason to fail.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "LEDGER_NAME",
    "entries",
    "index_path",
    "index_run",
    "indexed_db",
    "indexed_dbs",
    "ledger_path",
    "record",
    "register_path",
    "register_send",
    "registered_sends",
]

LEDGER_NAME = ".batchsend-ledger"


def ledger_path(db_path: str | Path) -> Path:
    """The ledger that sits beside the database at ``db_path``."""
    return Path(db_path).resolve().parent / LEDGER_NAME


def record(db_path: str | Path, event: str, *, run_id: str, campaign: str, **fields: Any) -> bool:
    """Append one event for the database at ``db_path`` (written through to the disk).

    False when the file cannot be written (the caller says so; the send goes on).
    """
    line = {
        "event": event,
        "run_id": run_id,
        "db": str(Path(db_path).resolve()),
        "campaign": campaign,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pid": os.getpid(),
        **fields,
    }
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(ledger_path(db_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def entries(db_path: str | Path, campaign: str) -> dict[str, list[dict[str, Any]]]:
    """The ledger's events for this database and campaign, by run id, in file order."""
    db = str(Path(db_path).resolve())
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        text = ledger_path(db_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            e = json.loads(line)
            if e.get("db") == db and e.get("campaign") == campaign and e.get("run_id"):
                found.setdefault(str(e["run_id"]), []).append(e)
    return found


# --- the user's register of sends, across databases --------------------------------------
#
# The ledger above guards one database. A campaign sent from another database (the
# command run from another folder, the campaign folder moved or copied) has a database of
# its own that knows nothing of the first: without this register a second ``run`` would
# email everyone again. Each real run that starts sending appends one line here, keyed by
# the campaign's fingerprints (recipients, and campaign file + templates: contents only,
# so a moved or copied folder keeps them); ``run`` reads it first.

REGISTER_NAME = "sends.jsonl"


def state_dir() -> Path:
    """``$XDG_STATE_HOME/batchsend`` (default ``~/.local/state/batchsend``): the user's
    register of sends and index of runs."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "batchsend"


def register_path() -> Path:
    """``$XDG_STATE_HOME/batchsend/sends.jsonl`` (default ``~/.local/state/batchsend/``)."""
    return state_dir() / REGISTER_NAME


def _append(path: Path, line: dict[str, Any]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
    except OSError:
        return False
    return True


def _lines(path: Path) -> list[dict[str, Any]]:
    """The file's JSON objects, in order; lines that do not parse are left out."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict):
                found.append(e)
    return found


def register_send(
    db_path: str | Path,
    *,
    run_id: str,
    campaign: str,
    fingerprints: tuple[str, str],
    counts: dict[str, int] | None = None,
) -> bool:
    """Note in the user's register that run ``run_id`` began sending (or, with its
    ``counts``, stopped); False if it cannot."""
    line: dict[str, Any] = {
        "run_id": run_id,
        "db": str(Path(db_path).resolve()),
        "campaign": campaign,
        "input_fingerprint": fingerprints[0],
        "templates_fingerprint": fingerprints[1],
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if counts is not None:
        line["counts"] = {k: counts.get(k, 0) for k in ("sent", "unknown", "sending")}
    return _append(register_path(), line)


def registered_sends(fingerprints: tuple[str, str]) -> list[dict[str, Any]]:
    """The register's runs of a campaign with these fingerprints that may have emailed
    someone, each as its first line (when and where it began), oldest first.

    A run whose latest line says it stopped with nothing sent, unknown or in flight (a
    bad key at the first request, say) reached nobody and does not count.
    """
    first: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    try:
        text = register_path().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            e = json.loads(line)
            if (e.get("input_fingerprint"), e.get("templates_fingerprint")) == fingerprints:
                run_id = str(e.get("run_id"))
                first.setdefault(run_id, e)
                latest[run_id] = e
    return [
        e
        for run_id, e in first.items()
        if not (
            isinstance(latest[run_id].get("counts"), dict)
            and not any(latest[run_id]["counts"].values())
        )
    ]


# --- the user's index of runs: which database each run is in -----------------------------
#
# So that ``batchsend resume RUN_ID`` (and ``report``, ``runs``) find a run from any
# folder without ``--db``: every run, test and dry runs included, appends one line when it
# is created. A database moved since is not found through it (``--db`` then says where).

INDEX_NAME = "runs.jsonl"


def index_path() -> Path:
    """``$XDG_STATE_HOME/batchsend/runs.jsonl`` (default ``~/.local/state/batchsend/``)."""
    return state_dir() / INDEX_NAME


def index_run(run_id: str, db_path: str | Path, *, campaign: str) -> bool:
    """Note in the user's index that run ``run_id`` is in the database at ``db_path``;
    False if it cannot (the run goes on: hints then name the database)."""
    line = {
        "run_id": run_id,
        "db": str(Path(db_path).resolve()),
        "campaign": campaign,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return _append(index_path(), line)


def index_db(db_path: str | Path, *, role: str) -> bool:
    """Note in the user's index a database that holds no run of its own yet but a list
    every campaign consults (``role``: ``events``, ``suppressions``); False if it cannot."""
    line = {
        "db": str(Path(db_path).resolve()),
        "role": role,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return _append(index_path(), line)


def indexed_db(run_id: str) -> Path | None:
    """The database the index last recorded run ``run_id`` in, if any."""
    found = None
    for e in _lines(index_path()):
        if e.get("run_id") == run_id and isinstance(e.get("db"), str):
            found = Path(e["db"])
    return found


def indexed_dbs() -> list[Path]:
    """Every database the index names, the one with the latest run first."""
    order: dict[str, None] = {}
    for e in reversed(_lines(index_path())):
        if isinstance(e.get("db"), str):
            order.setdefault(e["db"], None)
    return [Path(db) for db in order]
