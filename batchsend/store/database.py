"""Store: the batchsend database file -- runs, claims, sending marks, recipients, units."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from batchsend.apikeys import redact
from batchsend.errors import (
    BatchsendError,
    ConcurrentCommandError,
    DatabaseFileError,
    DatabaseGoneError,
    LostRecordError,
    RunNotFoundError,
    StoreError,
)
from batchsend.process import alive, this_process
from batchsend.rowset import RowSet
from batchsend.states import RecipientState, RunState
from batchsend.store.records import (
    IN_FLIGHT_REASON,
    INSERT_CHUNK,
    NewRecipient,
    RunInfo,
    Settlement,
    UnitRecord,
    UnsettledMessage,
    iso_time,
    new_run_id,
    safe_settings,
    utc_now,
)
from batchsend.store.schema import (
    APPLICATION_ID,
    DB_FIX,
    SCHEMA_VERSION,
    create_schema,
    recognise,
)
from batchsend.store.statements import VALUES_CHUNK, insert_recipients_sql

# Seconds a statement waits for another process's write lock before it gives up.
#: Where ``run``, ``resume``, ``runs`` and ``report`` look when ``--db`` is not given.
DEFAULT_DB = "batchsend.db"
BUSY_TIMEOUT = 30.0
WAL_AUTOCHECKPOINT_PAGES = 8192  # 32 MB of 4 KB pages
# While a run sends, its connection checkpoints itself: it looks at the log's size every
# _WAL_CHECK_COMMITS commits and checkpoints past _WAL_CHECKPOINT_BYTES (as SQLite would).
_WAL_CHECK_COMMITS = 256
# While a run sends, every this many commits the file is checked to be still ours
# (Store.check_file), so a database deleted mid-run stops it within a few requests.
_FILE_CHECK_COMMITS = 8
_WAL_CHECKPOINT_BYTES = 32 << 20


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# A run to the embedded sandbox (``--sandbox``) reached no one: it is no earlier send.
_NOT_SANDBOXED = "COALESCE(json_extract(settings, '$.sandbox'), 0) = 0"


def holds(path: str | Path, *, run_id: str | None = None, campaign: str | None = None) -> bool:
    """Does the file at ``path`` hold the run ``run_id`` (or a run of the campaign file
    ``campaign``)? Read only, never creating nor changing anything: False for a missing
    file or one that is not a batchsend database.
    """
    path = Path(path)
    if not path.is_file():
        return False
    column, value = ("id", run_id) if run_id is not None else ("campaign_path", campaign)
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        found = conn.execute(f"SELECT 1 FROM runs WHERE {column} = ? LIMIT 1", (value,))
        return found.fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


class Store:
    """The batchsend database file. One instance per process, used from one thread.

    Example::

        store = Store("batchsend.db")
        run = store.get_run(run_id)
        print(store.counts(run_id))
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        now: Callable[[], datetime] = utc_now,
        accept_lost_record: bool = False,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self._now = now
        self._claims: list[str] = []  # claim tokens this instance holds (released at close)
        self._marks: set[str] = set()  # runs this instance marked as sending
        self._commits = 0  # commits since the log's size was last looked at
        # Runs whose lost record the caller accepted (accept_lost_record): for its notes.
        self.accepted_lost: tuple[str, ...] = ()
        # Looked at before connecting: the last connection to close checkpoints the log
        # into the file and deletes it, so only now does its absence mean something.
        wal = Path(f"{self.path}-wal")
        wal_present = wal.exists() and wal.stat().st_size > 0
        try:
            # isolation_level=None: we open and close every transaction ourselves, so the
            # commit that makes a unit ``sending`` is exactly where the code says it is.
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise DatabaseFileError(
                f"{self.path}: cannot open the database: {exc}\n  fix: {DB_FIX}"
            ) from None
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT
            while True:
                try:
                    self._initialise(wal_present, synchronous, accept_lost_record)
                    break
                except sqlite3.OperationalError as exc:
                    # Two processes setting up one new file: SQLite answers "locked" at
                    # once (no busy wait) to one of them while the other switches it to
                    # WAL. Every step is idempotent: go again.
                    if not _is_busy(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_busy(exc):
                raise self._busy_error() from None
            raise DatabaseFileError(
                f"{self.path}: not a usable batchsend database: {exc}\n  fix: {DB_FIX}"
            ) from None
        except BaseException:
            conn.close()
            raise
        self._identity = _file_identity(self.path)

    def check_file(self) -> None:
        """Refuse to go on when the database file at :attr:`path` is no longer ours.

        Deleted (or replaced) while a run is going, SQLite keeps writing into the unlinked
        file, and everything recorded vanishes at close: the run would end "finished"
        with its state gone, and a later run would send again. :class:`StoreError`.
        """
        if _file_identity(self.path) != self._identity:
            raise DatabaseGoneError(
                f"{self.path}: the database file was deleted or replaced while this command "
                "was using it, so what it recorded from then on is lost. batchsend stopped "
                "before sending more.\n  fix: do not delete or move the database during a run; "
                "the people sent so far are in the provider's log, and a new run of this "
                "campaign would send to them again"
            )

    def _initialise(self, wal_present: bool, synchronous: str, accept_lost_record: bool) -> None:
        conn = self.conn
        # Recognised before anything is written: another application's file is
        # refused unchanged (no WAL switch, no tables of ours).
        kind = recognise(self.db, self.path)
        if kind == "current":
            self._check_sending_marks(wal_present, accept=accept_lost_record)
        self.db.enable_wal()
        # Checkpoint every 32 MB of WAL instead of 4: a checkpoint copies pages back
        # and syncs the file; fewer, larger ones coalesce the many rewrites of the
        # same pages that a run's small commits make.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        create_schema(self.db)
        if kind != "current":  # a new file, or one written before files were marked
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _check_sending_marks(self, wal_present: bool, *, accept: bool) -> None:
        """Refuse a file that lost the latest record of a run's sends (docs/engine.md).

        A sending run's mark holds two numbers. ``generation`` is raised, and then
        checkpointed into the main file, before the first request and at every
        checkpoint while the run sends; ``witness`` is raised to match right after, in
        the log only. Whoever reads the whole record (the main file plus its log, or a
        main file that a clean close checkpointed) sees them equal. A main file read
        without its log (the ``-wal`` deleted after a crash, or the ``.db`` copied
        alone) shows ``witness < generation``: the sends since the last checkpoint are
        missing, and rows it shows ``pending`` may have been sent. Nothing is written
        here unless ``accept`` (the marks of the lost runs are then dropped).
        """
        lost = [
            (run_id, pid, since)
            for run_id, host, pid, start, since, generation, witness in self.conn.execute(
                "SELECT run_id, host, pid, pid_start, since, generation, witness FROM sending_marks"
            )
            # alive: that process is sending now. wal_present: killed between the two
            # numbers' commits; the log it left holds the rest of the record.
            if witness < generation and not wal_present and not alive(host, pid, start)
        ]
        if not lost:
            return
        if accept:
            self._clear_marks([run_id for run_id, _, _ in lost], timeout=BUSY_TIMEOUT)
            self.accepted_lost = tuple(run_id for run_id, _, _ in lost)
            return
        wal = f"{self.path.name}-wal"
        lines = []
        for run_id, pid, since in lost:
            counts = self.counts(run_id)
            row = self.conn.execute(
                "SELECT campaign_path FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            maybe = counts["pending"] + counts["sending"]
            lines.append(
                f"  run {run_id} (campaign {row[0] if row else '?'}): sending since {since} "
                f"by process {pid}, which is gone; this file records {counts['sent']:,} sent "
                f"and {maybe:,} pending or in flight, and any of those {maybe:,} may have "
                "been sent"
            )
        raise LostRecordError(
            f"{self.path}: this database lost the latest record of a run's sends: its "
            f"write-ahead log {wal}, which held it, is missing (deleted after a crash, or "
            "the database was copied without it). Sending now could email people a second "
            "time; batchsend changed nothing.\n"
            + "\n".join(lines)
            + f"\n  fix: put {wal} back next to {self.path.name} (from wherever the database "
            "was copied or backed up) and run the command again; or settle who was sent "
            "from the provider's delivery log; or, accepting that those people may get a "
            "second email, pass --accept-lost-record to batchsend run or resume"
        )

    def _clear_marks(self, run_ids: Sequence[str], *, timeout: float) -> None:
        self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            self._begin()
            try:
                self.conn.executemany(
                    "DELETE FROM sending_marks WHERE run_id = ?", [(r,) for r in run_ids]
                )
                self._commit()
            except BaseException:
                self._rollback()
                raise
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent), releasing this instance's claims and sending marks.

        A mark still held here (an exception ended the send) goes first: this process
        stopped, and everything it recorded is committed.
        """
        with contextlib.suppress(sqlite3.Error, BatchsendError):
            if self._marks:
                self._clear_marks(sorted(self._marks), timeout=5.0)
                self._marks.clear()
            if self._claims:
                self.release_claims()
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> str:
        """The current time as the store writes it (ISO 8601 UTC, milliseconds)."""
        return iso_time(self._now())

    # -- transactions --------------------------------------------------------------

    def _begin(self) -> None:
        # IMMEDIATE: take the write lock now, so a second process fails here, not mid-way.
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):  # another process kept the lock past the busy timeout
                raise self._busy_error() from None
            raise

    def _commit(self) -> None:
        self.conn.execute("COMMIT")
        if self._marks:  # a run is sending: checkpoints are ours (see mark_sending_started)
            self._commits += 1
            if self._commits % _FILE_CHECK_COMMITS == 0:
                self.check_file()  # a stat: about a microsecond, once in a while
            if self._commits >= _WAL_CHECK_COMMITS:
                self._commits = 0
                self._checkpoint_if_large()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the file: committed when the block ends, rolled back if
        it raises. Yields the connection, for statements run inside it.

        ``BEGIN IMMEDIATE``: the write lock is taken on entry, so a second process is
        refused here (:class:`ConcurrentCommandError` once the busy timeout passes), not
        half-way through. The commit is where the block ends -- the point the write-ahead
        rule counts on (see :class:`RunRecorder`).
        """
        self._begin()
        try:
            yield self.conn
            self._commit()
        except BaseException:
            self._rollback()
            raise

    # -- runs ----------------------------------------------------------------------

    def create_run(self, **fields: Any) -> str:
        """Record a new run in state ``running`` and return its id (committed at once).

        Keyword arguments are those of :meth:`creating_run`.
        """
        with self.creating_run(**fields) as run_id:
            return run_id

    @contextlib.contextmanager
    def creating_run(
        self,
        *,
        campaign_path: str,
        provider: str,
        campaign_name: str | None = None,
        base_url: str | None = None,
        input_path: str | None = None,
        input_fingerprint: str | None = None,
        templates_fingerprint: str | None = None,
        settings: Mapping[str, Any] | None = None,
        is_test: bool = False,
        dry_run: bool = False,
        metadata_columns: Sequence[str] = (),
        run_id: str | None = None,
        before_insert: Callable[[], None] | None = None,
    ) -> Iterator[str]:
        """Create a run and its rows atomically: committed when the block ends normally.

        Inside the block, :meth:`add_recipients` writes into the same transaction; an
        exception (a preflight refusal, a kill) rolls everything back, so a run is never
        recorded with only part of its rows. ``before_insert`` runs inside that
        transaction, write lock held, before the run is inserted: a refusal it raises
        (the campaign's last run is unfinished, or finished) is decided on exactly the
        state the new run is recorded on.

        Example::

            with store.creating_run(campaign_path=path, provider="tosend") as run_id:
                store.add_recipients(run_id, rows)
        """
        run_id = run_id or new_run_id(self._now())
        now = self.now()
        self._begin()
        try:
            if before_insert is not None:
                before_insert()
            self.conn.execute(
                "INSERT INTO runs (id, campaign_path, campaign_name, provider, base_url,"
                " input_path, input_fingerprint, templates_fingerprint, settings, state,"
                " is_test, dry_run, started_at, updated_at, metadata_columns, pid, total_rows)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                (
                    run_id,
                    campaign_path,
                    campaign_name,
                    provider,
                    base_url,
                    input_path,
                    input_fingerprint,
                    templates_fingerprint,
                    json.dumps(safe_settings(settings or {}), sort_keys=True, default=str),
                    RunState.RUNNING.value,
                    int(is_test),
                    int(dry_run),
                    now,
                    now,
                    json.dumps(list(metadata_columns)),
                    os.getpid(),
                ),
            )
        except sqlite3.IntegrityError:
            self._rollback()
            raise StoreError(f"run {run_id} already exists in {self.path}") from None
        except BaseException:
            self._rollback()
            raise
        try:
            yield run_id
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _run_from_row(self, row: Mapping[str, Any]) -> RunInfo:
        return RunInfo(
            id=row["id"],
            campaign_path=row["campaign_path"],
            campaign_name=row["campaign_name"],
            provider=row["provider"],
            base_url=row["base_url"],
            input_path=row["input_path"],
            input_fingerprint=row["input_fingerprint"],
            templates_fingerprint=row["templates_fingerprint"],
            settings=json.loads(row["settings"] or "{}"),
            state=RunState(row["state"]),
            is_test=bool(row["is_test"]),
            dry_run=bool(row["dry_run"]),
            fatal_error=row["fatal_error"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            updated_at=row["updated_at"],
            total_rows=row["total_rows"],
            report_path=row["report_path"],
            metadata_columns=json.loads(row["metadata_columns"] or "[]"),
            pid=row["pid"],
            counts=json.loads(row["counts"] or "{}"),
        )

    def _select_runs(self, where: str = "", params: Sequence[Any] = ()) -> list[RunInfo]:
        cursor = self.conn.execute(f"SELECT * FROM runs {where}", tuple(params))
        names = [d[0] for d in cursor.description]
        return [self._run_from_row(dict(zip(names, r, strict=True))) for r in cursor]

    def get_run(self, run_id: str) -> RunInfo:
        """The run ``run_id``; :class:`StoreError` if there is none."""
        found = self._select_runs("WHERE id = ?", (run_id,))
        if not found:
            raise RunNotFoundError(
                f"no run {run_id!r} in {self.path}\n"
                f"  fix: list the runs with: batchsend runs --db {self.path}"
            )
        return found[0]

    def list_runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        return self._select_runs("ORDER BY started_at DESC, id DESC")

    def latest_run(self, campaign_path: str, *, real_only: bool = False) -> RunInfo | None:
        """The newest run of the campaign file at ``campaign_path`` (as recorded), if any.

        ``real_only`` leaves out test runs (``--test-to``), dry runs and runs to the
        embedded sandbox (``--sandbox``): none of them emailed anyone on the list.
        """
        extra = f" AND is_test = 0 AND dry_run = 0 AND {_NOT_SANDBOXED}" if real_only else ""
        found = self._select_runs(
            f"WHERE campaign_path = ?{extra} ORDER BY started_at DESC, id DESC LIMIT 1",
            (campaign_path,),
        )
        return found[0] if found else None

    def set_run_state(
        self,
        run_id: str,
        state: RunState,
        *,
        fatal_error: str | None = None,
        ended: bool = False,
    ) -> None:
        """Move the run to ``state``; ``ended`` stamps ``ended_at`` and the final counts."""
        self.check_file()
        now = self.now()
        counts = json.dumps(self.counts(run_id)) if ended else None
        self._begin()
        try:
            self.conn.execute(
                "UPDATE runs SET state = ?, updated_at = ?,"
                " fatal_error = COALESCE(?, fatal_error),"
                " ended_at = CASE WHEN ? THEN ? ELSE ended_at END,"
                " counts = COALESCE(?, counts)"
                " WHERE id = ?",
                (
                    state.value,
                    now,
                    redact(fatal_error) if fatal_error else None,
                    int(ended),
                    now,
                    counts,
                    run_id,
                ),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def claim_run(self, run_id: str, *, force: bool = False) -> None:
        """Mark the run ``running`` in this process (a resume starting), atomically.

        Refused (:class:`ConcurrentCommandError`, nothing changed) when the run is
        ``running`` in another live process; the check and the update are one
        transaction, so of two resumes started together exactly one gets the run.
        ``force`` takes the run over anyway (its recorded process is not batchsend).
        """
        me = this_process()
        self._begin()
        try:
            found = self.conn.execute(
                "SELECT state, pid, settings FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if found is None:
                raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
            state, pid, settings = found
            host = json.loads(settings or "{}").get("host")
            if (
                state == RunState.RUNNING.value
                and pid != me.pid
                and not force
                and alive(host, pid, None)
            ):
                raise ConcurrentCommandError(
                    f"run {run_id} is being sent right now by process {pid}; wait for it, "
                    "or stop it (Ctrl-C) first. If that process is not batchsend, use --force"
                )
            self.conn.execute(
                "UPDATE runs SET state = ?, pid = ?, ended_at = NULL, fatal_error = NULL,"
                " updated_at = ? WHERE id = ? AND pid IS ?",
                (RunState.RUNNING.value, me.pid, self.now(), run_id, pid),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    # -- guards: claims and sending marks --------------------------------------------

    def claim(
        self,
        campaign_path: str,
        *,
        command: str,
        run_id: str | None = None,
        exclusive: bool = True,
    ) -> str:
        """Record that this process works on ``campaign_path`` (and ``run_id``); a token.

        ``exclusive`` (a real run or resume): refused with :class:`ConcurrentCommandError`
        when another live process holds an exclusive claim on the same campaign or run.
        The check and the insert are one ``BEGIN IMMEDIATE`` transaction, so of two
        commands started together exactly one proceeds. A claim whose process is gone
        (killed, crashed) is taken over. A non-exclusive claim (a dry run, a proof copy)
        only names this command to others waiting for the write lock.
        Released by :meth:`release_claims` or :meth:`close`.
        """
        if exclusive:  # read first: refused at once, even while the lock is held long
            self._refuse_claimed(campaign_path, run_id)
        me = this_process()
        token = secrets.token_hex(8)
        self._begin()
        try:
            if exclusive:
                self._refuse_claimed(campaign_path, run_id)
            gone = [
                (t,)
                for t, host, pid, start in self.conn.execute(
                    "SELECT token, host, pid, pid_start FROM claims"
                )
                if not alive(host, pid, start)
            ]
            self.conn.executemany("DELETE FROM claims WHERE token = ?", gone)
            self.conn.execute(
                "INSERT INTO claims (token, campaign_path, run_id, command, exclusive, host,"
                " pid, pid_start, since) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    token,
                    campaign_path,
                    run_id,
                    command,
                    int(exclusive),
                    me.host,
                    me.pid,
                    me.start,
                    self.now(),
                ),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._claims.append(token)
        return token

    def _live_claims(self) -> list[tuple[str, str | None, str, int, int, str]]:
        """(campaign, run, command, exclusive, pid, since) of other live processes' claims."""
        me = this_process()
        return [
            (campaign, run_id, command, exclusive, pid, since)
            for campaign, run_id, command, exclusive, host, pid, start, since in self.conn.execute(
                "SELECT campaign_path, run_id, command, exclusive, host, pid, pid_start, since"
                " FROM claims ORDER BY since"
            )
            if pid != me.pid and alive(host, pid, start)
        ]

    def _refuse_claimed(self, campaign_path: str, run_id: str | None) -> None:
        for campaign, claimed_run, command, exclusive, pid, since in self._live_claims():
            if exclusive and (campaign == campaign_path or (run_id and claimed_run == run_id)):
                run = f", run {claimed_run}" if claimed_run else ""
                raise ConcurrentCommandError(
                    f"another batchsend command is sending this campaign right now: "
                    f"`{command}` (process {pid}, since {since}{run}); two at once could "
                    "email the same people twice, so this one did nothing.\n"
                    "  fix: wait for it to finish, or stop it (Ctrl-C), then run this "
                    "command again"
                )

    def claimed_run(self, token: str, run_id: str) -> None:
        """The run a claim's command is working on, once it is known (same transaction)."""
        self.conn.execute("UPDATE claims SET run_id = ? WHERE token = ?", (run_id, token))

    def release_claims(self) -> None:
        """Delete this instance's claims (best effort: a dead process's claim expires)."""
        tokens, self._claims = self._claims, []
        with contextlib.suppress(sqlite3.Error, BatchsendError):
            self._begin()
            try:
                self.conn.executemany("DELETE FROM claims WHERE token = ?", [(t,) for t in tokens])
                self._commit()
            except BaseException:
                self._rollback()
                raise

    def _busy_error(self) -> ConcurrentCommandError:
        """The error for a write lock held past the busy timeout, naming who holds it."""
        try:
            holders = self._live_claims()
        except sqlite3.Error:
            holders = []
        if holders:
            named = "; ".join(
                f"`{command}` (process {pid}, since {since}"
                + (f", run {run_id})" if run_id else ")")
                for _, run_id, command, _, pid, since in holders
            )
            who = f"another batchsend command holds it: {named}"
        else:
            who = "another program holds it (not a batchsend command that names itself)"
        return ConcurrentCommandError(
            f"{self.path}: the database stayed locked for {BUSY_TIMEOUT:g} s: {who}. "
            "This command stopped without sending anything more.\n"
            "  fix: wait for that command to finish, or stop it (Ctrl-C), then run this "
            "command again"
        )

    def mark_sending_started(self, run_id: str) -> None:
        """Before the run's first request: mark it sending, in the main file itself.

        The mark is committed with ``generation`` 1, checkpointed (``PRAGMA
        wal_checkpoint(PASSIVE)``: the run, its rows and the mark reach the main file),
        then its ``witness`` is raised to 1 in the log. While it sends, this connection
        checkpoints only through :meth:`_checkpoint_if_large` (SQLite's automatic
        checkpoint is off), which raises both numbers the same way; so a main file read
        without its log shows ``witness < generation`` (see :meth:`_check_sending_marks`).
        Cost: one checkpoint per run or resume, and per 32 MB of log, as before; per
        commit, a counter. Deleted by :meth:`clear_sending_mark` when the run stops.
        """
        me = this_process()
        self._begin()
        try:
            self.conn.execute(
                "INSERT OR REPLACE INTO sending_marks (run_id, host, pid, pid_start, since,"
                " generation, witness) VALUES (?,?,?,?,?,1,0)",
                (run_id, me.host, me.pid, me.start, self.now()),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self._marks.add(run_id)
        self._checkpoint()
        self._raise_marks("witness = generation")

    def _checkpoint(self) -> None:
        for _ in range(3):  # a reader of an older snapshot can hold a PASSIVE one back
            busy, log, done = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and done == log:
                return
            time.sleep(0.01)

    def _raise_marks(self, assignment: str) -> None:
        self._begin()
        try:
            self.conn.executemany(
                f"UPDATE sending_marks SET {assignment} WHERE run_id = ?",
                [(r,) for r in sorted(self._marks)],
            )
            self.conn.execute("COMMIT")  # not _commit: this is the checkpoint's own step
        except BaseException:
            self._rollback()
            raise

    def _checkpoint_if_large(self) -> None:
        """While a run sends: checkpoint once the log passes 32 MB, raising the marks."""
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size < _WAL_CHECKPOINT_BYTES:
            return
        # Best effort: a step refused here (another process holding the lock) leaves the
        # numbers unequal, which only matters if the log is then lost -- when it should.
        with contextlib.suppress(sqlite3.Error, StoreError):
            self._raise_marks("generation = generation + 1")
            self._checkpoint()
            self._raise_marks("witness = generation")

    def clear_sending_mark(self, run_id: str) -> None:
        """The run stopped in this process and its record is committed: drop its mark."""
        self._clear_marks([run_id], timeout=BUSY_TIMEOUT)
        self._marks.discard(run_id)
        if not self._marks:
            self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")

    def earlier_sends(self, campaign_path: str) -> Iterator[tuple[str, str, str]]:
        """``(email, state, run_id)`` of every row that a real run of the campaign sent,
        or may have sent (``sending``, ``unknown``), oldest run first."""
        yield from self.conn.execute(
            "SELECT r.email, r.state, r.run_id FROM recipients AS r JOIN runs AS u"
            " ON u.id = r.run_id WHERE u.campaign_path = ? AND u.is_test = 0"
            f" AND u.dry_run = 0 AND {_NOT_SANDBOXED.replace('settings', 'u.settings')}"
            " AND r.state IN ('sent', 'sending', 'unknown')"
            " ORDER BY u.started_at, u.id",
            (campaign_path,),
        )

    def pending_addresses(self, run_id: str) -> Iterator[tuple[int, str]]:
        """``(row, email)`` of the run's ``pending`` rows, streamed in row order."""
        yield from self.conn.execute(
            "SELECT row, email FROM recipients WHERE run_id = ? AND state = ? ORDER BY row",
            (run_id, RecipientState.PENDING.value),
        )

    def run_rows(self, run_id: str) -> list[tuple[int, str, str, str | None]]:
        """``(row, email, state, reason)`` of every row of the run, in row order."""
        return list(
            self.conn.execute(
                "SELECT row, email, state, reason FROM recipients WHERE run_id = ? ORDER BY row",
                (run_id,),
            )
        )

    def set_report_path(self, run_id: str, path: str) -> None:
        """Remember where the run's latest report was written."""
        self.conn.execute(
            "UPDATE runs SET report_path = ?, updated_at = ? WHERE id = ?",
            (path, self.now(), run_id),
        )

    # -- recipients ----------------------------------------------------------------

    def add_recipients(
        self, run_id: str, recipients: Iterable[NewRecipient], *, chunk: int = INSERT_CHUNK
    ) -> int:
        """Insert the run's rows (``pending`` or ``skipped``) with ``executemany`` in chunks.

        One transaction per chunk, or, inside :meth:`creating_run`, that block's single
        transaction. Returns how many rows were inserted (``total_rows`` grows with them).
        """
        now = self.now()
        total = 0
        batch: list[tuple[Any, ...]] = []

        outer = self.conn.in_transaction  # inside creating_run: its transaction decides

        def write(params: list[tuple[Any, ...]]) -> None:
            if not outer:
                self._begin()
            try:
                # multi-row INSERTs: one statement per chunk, not one per row
                for i in range(0, len(params), VALUES_CHUNK):
                    chunk = params[i : i + VALUES_CHUNK]
                    flat: list[Any] = []
                    for r in chunk:
                        flat.extend(r)
                    self.conn.execute(insert_recipients_sql(len(chunk)), flat)
                self.conn.execute(
                    "UPDATE runs SET total_rows = total_rows + ?, updated_at = ? WHERE id = ?",
                    (len(params), now, run_id),
                )
                if not outer:
                    self._commit()
            except sqlite3.IntegrityError as exc:
                if not outer:
                    self._rollback()
                raise StoreError(f"run {run_id}: a row was inserted twice ({exc})") from None
            except BaseException:
                if not outer:
                    self._rollback()
                raise

        for r in recipients:
            batch.append(
                (
                    run_id,
                    r.row,
                    r.email,
                    r.name,
                    RecipientState(r.state).value,
                    r.reason,
                    redact(r.error_message) if r.error_message else None,
                    r.tag,
                    json.dumps(dict(r.metadata), ensure_ascii=False) if r.metadata else None,
                    r.message_key,
                    now,
                )
            )
            if len(batch) >= chunk:
                write(batch)
                total += len(batch)
                batch = []
        if batch:
            write(batch)
            total += len(batch)
        return total

    def counts(self, run_id: str) -> dict[str, int]:
        """How many rows are in each state (every state listed, zeros included)."""
        result = {s.value: 0 for s in RecipientState}
        for state, n in self.conn.execute(
            "SELECT state, COUNT(*) FROM recipients WHERE run_id = ? GROUP BY state", (run_id,)
        ):
            result[state] = n
        return result

    def rows_in_state(
        self, run_id: str, states: Iterable[RecipientState], *, retryable_only: bool = False
    ) -> list[int]:
        """Row numbers in any of ``states``, ascending."""
        values = [RecipientState(s).value for s in states]
        if not values:
            return []
        marks = ",".join("?" * len(values))
        sql = f"SELECT row FROM recipients WHERE run_id = ? AND state IN ({marks})"
        if retryable_only:
            sql += " AND retryable = 1"
        return [r for (r,) in self.conn.execute(sql + " ORDER BY row", (run_id, *values))]

    def pending_rows(self, run_id: str, limit: int | None = None) -> RowSet:
        """The run's ``pending`` rows (the first ``limit`` of them), one bit each."""
        sql = "SELECT row FROM recipients WHERE run_id = ? AND state = ? ORDER BY row"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cursor = self.conn.execute(sql, (run_id, RecipientState.PENDING.value))
        return RowSet(row for (row,) in cursor)

    def failed_retryable(self, run_id: str) -> int:
        """How many rows are ``failed`` with a retryable error (``--retry-failed`` sends them)."""
        (n,) = self.conn.execute(
            "SELECT COUNT(*) FROM recipients WHERE run_id = ? AND state = ? AND retryable = 1",
            (run_id, RecipientState.FAILED.value),
        ).fetchone()
        return int(n)

    def recipients(self, run_id: str) -> Iterator[dict[str, Any]]:
        """Every row of the run, in row order, as dicts (the report reads these)."""
        cursor = self.conn.execute(
            "SELECT * FROM recipients WHERE run_id = ? ORDER BY row", (run_id,)
        )
        names = [d[0] for d in cursor.description]
        for r in cursor:
            yield dict(zip(names, r, strict=True))

    def recipient(self, run_id: str, row: int) -> dict[str, Any]:
        """One row of the run as a dict; :class:`StoreError` if absent."""
        cursor = self.conn.execute(
            "SELECT * FROM recipients WHERE run_id = ? AND row = ?", (run_id, row)
        )
        found = cursor.fetchone()
        if found is None:
            raise StoreError(f"run {run_id} has no row {row}")
        return dict(zip([d[0] for d in cursor.description], found, strict=True))

    def sending_to_unknown(self, run_id: str) -> list[int]:
        """Turn every ``sending`` row (in flight when a process died) into ``unknown``.

        Returns the rows changed. Their unit stays recorded, so ``--resend-unknown`` can
        repeat the very same request.
        """
        rows = self.rows_in_state(run_id, [RecipientState.SENDING])
        if not rows:
            return rows
        now = self.now()
        self._begin()
        try:
            self.conn.execute(
                "UPDATE recipients SET state = ?, reason = ?, updated_at = ?"
                " WHERE run_id = ? AND state = ?",
                (
                    RecipientState.UNKNOWN.value,
                    IN_FLIGHT_REASON,
                    now,
                    run_id,
                    RecipientState.SENDING.value,
                ),
            )
            self.conn.execute(
                "UPDATE units SET state = 'unknown' WHERE run_id = ? AND state = 'sending'",
                (run_id,),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return rows

    def skip_rows(self, run_id: str, rows: Iterable[int], reason: str, message: str) -> None:
        """Mark still-``pending`` rows ``skipped`` (for example past ``--limit``)."""
        now = self.now()
        self._begin()
        try:
            self.conn.executemany(
                "UPDATE recipients SET state = ?, reason = ?, error_message = ?, updated_at = ?"
                " WHERE run_id = ? AND row = ? AND state = ?",
                [
                    (
                        RecipientState.SKIPPED.value,
                        reason,
                        message,
                        now,
                        run_id,
                        row,
                        RecipientState.PENDING.value,
                    )
                    for row in rows
                ],
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def forget_planned_keys(self, run_id: str) -> None:
        """Pending rows drop the message key their run's preflight planned.

        A resume plans them again, possibly (``--force`` after a template change) under
        other keys, which are written when the rows are sent: a row must never show a key
        its message did not carry.
        """
        self._begin()
        try:
            self.conn.execute(
                "UPDATE recipients SET message_key = NULL"
                " WHERE run_id = ? AND state = ? AND message_key IS NOT NULL",
                (run_id, RecipientState.PENDING.value),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    # -- reconcile -----------------------------------------------------------------

    def unsettled_messages(self, run_id: str) -> list[UnsettledMessage]:
        """The run's ``unknown`` and ``sending`` rows, grouped by the message they went in.

        Rows of one message (a merge) share its key and its fate; a row without a
        recorded message key is a message of its own, which no lookup can find.
        """
        groups: dict[Any, list[tuple[int, str, str | None, str, str]]] = {}
        for row, email, key, unit, updated, state in self.conn.execute(
            "SELECT row, email, message_key, unit_key, updated_at, state FROM recipients"
            " WHERE run_id = ? AND state IN (?, ?) ORDER BY row",
            (run_id, RecipientState.UNKNOWN.value, RecipientState.SENDING.value),
        ):
            groups.setdefault(key if key is not None else ("row", row), []).append(
                (row, email or "", unit, updated or "", state)
            )
        return [
            UnsettledMessage(
                key=key if isinstance(key, str) else None,
                rows=tuple(r[0] for r in rows),
                emails=tuple(r[1] for r in rows),
                unit_key=rows[0][2],
                updated_at=max(r[3] for r in rows),
                in_flight=any(r[4] == RecipientState.SENDING.value for r in rows),
            )
            for key, rows in groups.items()
        ]

    def attempt_times(
        self, run_id: str, unit_keys: Iterable[str]
    ) -> dict[str, list[tuple[str, float]]]:
        """``{unit key: [(answered at, elapsed ms), ...]}`` of the logged attempts of those
        requests (one pass over the run's attempts log)."""
        wanted = set(unit_keys)
        out: dict[str, list[tuple[str, float]]] = {}
        for key, at, elapsed in self.conn.execute(
            "SELECT unit_key, at, elapsed_ms FROM attempts WHERE run_id = ?", (run_id,)
        ):
            if key in wanted and at:
                out.setdefault(key, []).append((at, float(elapsed or 0.0)))
        return out

    def settle_lookups(self, run_id: str, settlements: Sequence[Settlement]) -> tuple[int, int]:
        """Record what reconcile learnt, in ONE transaction; returns (rows sent, rows pending).

        Found: the rows become ``sent`` (reason ``reconciled``, the provider's ids, its time
        of acceptance as ``sent_at``). Not accepted: back to ``pending`` (reason
        ``not_accepted``), attempts count and log kept, so the next resume sends them.
        Only rows still ``unknown`` under that message key change; ``http_status`` and
        ``error_type`` keep the lost answer's, and the request's unit takes its new state.
        """
        if not settlements:
            return 0, 0
        now = self.now()
        sent_params: list[tuple[Any, ...]] = []
        pending_params: list[tuple[Any, ...]] = []
        units: set[str] = set()
        for s in settlements:
            m = s.message
            if m.key is None:
                raise StoreError(f"run {run_id}: rows {list(m.rows)[:10]} have no message key")
            if m.unit_key:
                units.add(m.unit_key)
            note = redact(s.note)
            for row in m.rows:
                if s.sent:
                    sent_params.append(
                        (
                            s.provider_message_id,
                            s.provider_email_id,
                            s.accepted_at or now,
                            now,
                            note,
                            run_id,
                            row,
                            m.key,
                        )
                    )
                else:
                    pending_params.append((now, note, run_id, row, m.key))
        with self.transaction() as conn:
            sent = conn.executemany(
                "UPDATE recipients SET state = 'sent', reason = 'reconciled',"
                " provider_message_id = COALESCE(?, provider_message_id),"
                " provider_email_id = COALESCE(?, provider_email_id), sent_at = ?,"
                " updated_at = ?, retryable = NULL, error_message = ?"
                " WHERE run_id = ? AND row = ? AND state = 'unknown' AND message_key = ?",
                sent_params,
            ).rowcount
            pending = conn.executemany(
                "UPDATE recipients SET state = 'pending', reason = 'not_accepted',"
                " retryable = NULL, updated_at = ?, error_message = ?"
                " WHERE run_id = ? AND row = ? AND state = 'unknown' AND message_key = ?",
                pending_params,
            ).rowcount
            self._restate_units(run_id, sorted(units))
        return max(sent, 0), max(pending, 0)

    def _restate_units(self, run_id: str, keys: Sequence[str]) -> None:
        """Give recorded units the state of the rows they still carry (inside a transaction)."""
        states: dict[str, set[str]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for key, state in self.conn.execute(
                "SELECT unit_key, state FROM recipients WHERE run_id = ?"
                f" AND unit_key IN ({','.join('?' * len(chunk))})",
                (run_id, *chunk),
            ):
                states.setdefault(key, set()).add(state)
        self.conn.executemany(
            "UPDATE units SET state = ? WHERE run_id = ? AND key = ?",
            [
                (next(iter(found)) if len(found) == 1 else "mixed", run_id, key)
                for key, found in states.items()
            ],
        )

    def refresh_final_counts(self, run_id: str) -> None:
        """An ended run's recorded final counts follow a change made after it ended."""
        self.conn.execute(
            "UPDATE runs SET counts = ?, updated_at = ? WHERE id = ? AND ended_at IS NOT NULL",
            (json.dumps(self.counts(run_id)), self.now(), run_id),
        )

    # -- units ---------------------------------------------------------------------

    def unit(self, run_id: str, key: str) -> UnitRecord:
        """The recorded unit ``key``; :class:`StoreError` if it was never marked sending."""
        found = self.conn.execute(
            "SELECT key, composition, batch, state, attempts FROM units"
            " WHERE run_id = ? AND key = ?",
            (run_id, key),
        ).fetchone()
        if found is None:
            derived = self._single_message_units(run_id, [key])
            if not derived:
                raise StoreError(f"run {run_id} has no recorded request {key}")
            return derived[key]
        return UnitRecord(
            key=found[0],
            composition=tuple(tuple(m) for m in json.loads(found[1])),
            batch=bool(found[2]),
            state=found[3],
            attempts=found[4] or 0,
        )

    def rows_by_unit(
        self, run_id: str, state: RecipientState, *, retryable_only: bool = False
    ) -> dict[str, set[int]]:
        """The rows now in ``state``, grouped by the request (``unit_key``) they were last in."""
        sql = (
            "SELECT unit_key, row FROM recipients WHERE run_id = ? AND unit_key IS NOT NULL"
            " AND state = ?"
        )
        if retryable_only:
            sql += " AND retryable = 1"
        out: dict[str, set[int]] = {}
        for key, row in self.conn.execute(sql, (run_id, RecipientState(state).value)):
            out.setdefault(key, set()).add(row)
        return out

    def units_with_rows_in(
        self, run_id: str, states: Iterable[RecipientState], *, retryable_only: bool = False
    ) -> list[UnitRecord]:
        """The recorded units that carried rows now in ``states`` (in first-row order)."""
        values = [RecipientState(s).value for s in states]
        marks = ",".join("?" * len(values))
        sql = (
            "SELECT unit_key, MIN(row) FROM recipients WHERE run_id = ? AND unit_key IS NOT NULL"
            f" AND state IN ({marks})"
        )
        if retryable_only:
            sql += " AND retryable = 1"
        sql += " GROUP BY unit_key ORDER BY MIN(row)"
        keys = [k for k, _ in self.conn.execute(sql, (run_id, *values))]
        recorded: dict[str, UnitRecord] = {}
        for key in keys:
            found = self.conn.execute(
                "SELECT key, composition, batch, state, attempts FROM units"
                " WHERE run_id = ? AND key = ?",
                (run_id, key),
            ).fetchone()
            if found is not None:
                recorded[key] = UnitRecord(
                    key=found[0],
                    composition=tuple(tuple(m) for m in json.loads(found[1])),
                    batch=bool(found[2]),
                    state=found[3],
                    attempts=found[4] or 0,
                )
        derived = self._single_message_units(run_id, [k for k in keys if k not in recorded])
        return [recorded[k] if k in recorded else derived[k] for k in keys]

    def _single_message_units(self, run_id: str, keys: Sequence[str]) -> dict[str, UnitRecord]:
        """Units with no ``units`` row (one message, single send), rebuilt from their rows.

        One pass over the run's rows for any number of keys (``unit_key`` has no index:
        keeping one would cost every sending mark a random insert).
        """
        found: dict[str, list[tuple[int, str, int]]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for key, row, state, attempts in self.conn.execute(
                "SELECT unit_key, row, state, attempts FROM recipients WHERE run_id = ?"
                f" AND unit_key IN ({','.join('?' * len(chunk))}) ORDER BY row",
                (run_id, *chunk),
            ):
                found.setdefault(key, []).append((row, state, attempts or 0))
        return {
            key: UnitRecord(
                key=key,
                composition=(tuple(r for r, _, _ in rows),),
                batch=False,
                state=rows[0][1],
                attempts=max(a for _, _, a in rows),
            )
            for key, rows in found.items()
        }

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """Every logged HTTP attempt of the run, in time order."""
        cursor = self.conn.execute(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor]

    # -- checks --------------------------------------------------------------------

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``"ok"`` when sound)."""
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
