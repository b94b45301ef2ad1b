"""The send pass shared by ``run`` and ``resume``, and what it returns.

:func:`send_and_finish` plans the pending rows into units (from the spool, or rendered
again), drives the engine under the rate limit and the signal handlers, records the
run's end state in the store and the ledger, and writes the report.

Interrupts: the first Ctrl-C (or SIGTERM, SIGHUP) sets the engine's stop event (no new
request, the ones in flight finish and are recorded, state ``interrupted``, exit 130);
the second cancels everything at once: rows in flight stay ``sending`` and become
``unknown`` at resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import signal
import sys
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchsend import ledger
from batchsend.apikeys import redact
from batchsend.campaign import Campaign
from batchsend.dblocation import Located, hint_db
from batchsend.engine import EngineResult, Uncertainty, send_units
from batchsend.errors import (
    BatchsendError,
    DiskFullError,
    FatalSendError,
    is_disk_full,
)
from batchsend.loops import interrupts_to
from batchsend.message import Address, Message
from batchsend.next_steps import (
    EXIT_ROWS_NOT_SENT,
    NextStep,
    describe_counts,
    next_steps,
    proof_note,
    resume_command,
    state_label,
)
from batchsend.outcome import Recorder
from batchsend.plan import PlannedMessage, SendUnit, plan_units
from batchsend.preflight import RowResult, iter_rows
from batchsend.progress import ProgressDisplay, workers_suffix
from batchsend.providers import Provider
from batchsend.providers.encoder import WireEncoder
from batchsend.ratelimit import RateLimiter
from batchsend.report import format_for, write_report
from batchsend.retry import RetryPolicy
from batchsend.rowset import RowSet
from batchsend.session import Session
from batchsend.spool import MessageSpool
from batchsend.states import RecipientState, RunState
from batchsend.store import RunRecorder, Store
from batchsend.transport import make_transport

DEFAULT_REPORT_DIR = "reports"

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by SIGINT"

EXIT_FATAL = 1


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run or a resume did, as the CLI prints it (``--json``: :meth:`to_dict`)."""

    run_id: str
    state: RunState
    counts: dict[str, int]
    duration_s: float
    db_path: str
    report_path: str | None
    is_test: bool = False
    dry_run: bool = False
    fatal_error: str | None = None
    interrupted: bool = False  # Ctrl-C
    requests: int = 0  # HTTP attempts made by this invocation (planned ones for a dry run)
    sent_now: int = 0  # rows accepted by this invocation
    notes: tuple[str, ...] = field(default=())
    failed_retryable: int = 0  # of counts["failed"]: the rows --retry-failed would send
    resent_unknown: int = 0  # unknown rows this invocation sent again (--resend-unknown)
    reconciled: dict[str, Any] | None = None  # resume --reconcile: what the lookups settled
    test_to: str | None = None  # a test run's one address
    would_send: int = 0  # a dry run: the rows whose requests were built
    # The commands printed carry --db: False when `batchsend resume RUN_ID` finds the
    # database without it (batchsend.dblocation.hint_db).
    db_named: bool = True

    @property
    def hint_db(self) -> str | None:
        """The ``--db`` of the commands printed for this run (None: not needed)."""
        return self.db_path if self.db_named else None

    @property
    def exit_code(self) -> int:
        """1 fatal provider error, 130 Ctrl-C, 3 the run ended (or stopped at ``--limit``)
        with rows failed or unknown, 0 otherwise."""
        if self.state is RunState.FATAL:
            return EXIT_FATAL
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.next_steps:
            return EXIT_ROWS_NOT_SENT
        return 0

    @property
    def state_label(self) -> str:
        """The state as shown: ``finished with 3 failed / 2 unknown`` rather than finished."""
        return state_label(self.state, self.counts)

    @property
    def next_steps(self) -> tuple[NextStep, ...]:
        """What to do about the failed and unknown rows, with the exact commands."""
        if self.dry_run:
            return ()
        return next_steps(
            self.run_id, self.hint_db, self.counts, failed_retryable=self.failed_retryable
        )

    @property
    def resume(self) -> str | None:
        """The command that continues this run, when there is something left to do."""
        if self.state is RunState.FINISHED or self.dry_run:
            return None
        return resume_command(self.run_id, self.hint_db)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready object: run id, counts by state, duration, database, report,
        and the next steps for failed and unknown rows."""
        failed = self.counts.get(RecipientState.FAILED.value, 0)
        return {
            "run_id": self.run_id,
            "state": self.state.value,
            "state_label": self.state_label,
            "counts": dict(self.counts),
            "failed_retryable": self.failed_retryable,
            "failed_permanent": failed - self.failed_retryable,
            "resent_unknown": self.resent_unknown,
            "reconciled": self.reconciled,
            "duration_s": round(self.duration_s, 3),
            "db_path": self.db_path,
            "report_path": self.report_path,
            "is_test": self.is_test,
            "test_to": self.test_to,
            "dry_run": self.dry_run,
            "would_send": self.would_send,
            "fatal_error": self.fatal_error,
            "interrupted": self.interrupted,
            "requests": self.requests,
            "sent_now": self.sent_now,
            "resume": self.resume,
            "next_steps": [step.to_dict() for step in self.next_steps],
            "exit_code": self.exit_code,
            # what preflight skipped and why (duplicates, suppressed), --limit, unknown rows
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A few human lines: what happened, where the report is, what to do next."""
        kind = " (dry run)" if self.dry_run else " (test run)" if self.is_test else ""
        counts = describe_counts(self.counts, is_test=self.is_test, test_to=self.test_to)
        lines = [
            f"run {self.run_id}{kind}: {self.state_label} in {self.duration_s:.1f}s",
            f"  {counts}",
        ]
        if self.dry_run:
            requests = f"{self.requests:,} request{'' if self.requests == 1 else 's'}"
            lines.append(
                f"  dry run: {self.would_send:,} row(s) would be sent, in {requests}; "
                "nothing was sent"
            )
        elif self.is_test:
            lines.append(f"  {proof_note(self.test_to)}")
        lines += [f"  {note}" for note in self.notes]
        if self.fatal_error:
            lines.append(f"  stopped: {self.fatal_error}")
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        if self.resume:
            lines.append(f"  resume: {self.resume}")
        steps = self.next_steps
        if steps:
            lines.append("  next:")
            lines += [f"    {step.describe()}" for step in steps]
        return "\n".join(lines)


def rows_to_messages(
    campaign: Campaign,
    wanted: Callable[[int], bool],
    test_address: Address | None,
    rows: dict[int, int] | None = None,
    workers: int | None = 1,
    encoder: WireEncoder | None = None,
) -> Iterator[RowResult | PlannedMessage]:
    """Preflight rows (rendered in full) for the rows ``wanted`` says, proof-copied if asked.

    ``rows`` (a forced resume): ``{file row: run row}``; ``wanted`` then names run rows,
    and each message carries its run row, found by its address, not its position.
    ``workers``: the row pass's processes (None: the machine's cores); the first
    messages come out as soon as their chunk is rendered. ``encoder`` (neither ``rows``
    nor ``test_address``): the workers also key and encode each message, and its
    :class:`PlannedMessage` comes out instead of the row.
    """
    if encoder is not None and (rows is not None or test_address is not None):
        raise ValueError("an encoder cannot re-address or re-number the messages")

    accept = wanted
    if rows is not None:
        by_file = rows

        def accept(file_row: int) -> bool:
            run_row = by_file.get(file_row)
            return run_row is not None and wanted(run_row)

    passed = iter_rows(
        campaign, only=accept, workers=workers, keep_values=False, encoder=encoder, others=False
    )
    for r in passed:
        if r.planned is not None:
            if accept(r.row):
                yield r.planned
            continue
        message = r.message
        if message is None or not accept(r.row):
            continue
        if rows is not None:
            run_row = rows[r.row]
            message = dataclasses.replace(message, row=run_row)
            r = dataclasses.replace(r, row=run_row, message=message)
        if test_address is not None:
            r = dataclasses.replace(r, message=_proof(message, test_address))
        yield r


def _spooled(
    spool: MessageSpool, wanted: Container[int], test_address: Address | None
) -> Iterator[tuple[str | None, Message]]:
    """The spooled ``(group, message)`` of the rows ``wanted``, proof-copied if asked."""
    for group, message in spool:
        if message.row not in wanted:  # defence: the spool holds the pending rows only
            raise RuntimeError(f"row {message.row} is in the spool but not pending")
        if test_address is not None:
            message = _proof(message, test_address)
        yield group, message


def _spooled_planned(spool: MessageSpool, wanted: Container[int]) -> Iterator[PlannedMessage]:
    """The spooled planned messages of the rows ``wanted`` (exactly those, in order)."""
    for planned in spool.planned():
        for row in planned.rows:
            if row not in wanted:  # defence: the spool holds the pending rows only
                raise RuntimeError(f"row {row} is in the spool but not pending")
        yield planned


def _proof(message: Message, to: Address) -> Message:
    return dataclasses.replace(message, to=(to,), cc=(), bcc=())


class RenderedAhead:
    """Units planned in a thread, ahead of the engine: a send pass that renders its rows.

    Rendering happens in the row pass's worker processes; waiting for them (and keying
    and encoding each message) must not stall the engine's event loop, whose answers
    would wait too. A thread takes the units from ``units`` and hands them to the loop
    through a bounded queue, ``depth`` units ahead at most. Iterated without a loop (a dry
    run), it is ``units`` itself. An error raised while planning surfaces in the engine
    as if it had planned the unit itself; when the engine stops early, so does the thread.
    """

    def __init__(self, units: Iterable[SendUnit], depth: int = 64) -> None:
        self.units = units
        self.depth = depth

    def __iter__(self) -> Iterator[SendUnit]:
        return iter(self.units)

    def __aiter__(self) -> AsyncIterator[SendUnit]:
        return self._ahead()

    async def _ahead(self) -> AsyncIterator[SendUnit]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[SendUnit | None, BaseException | None]] = asyncio.Queue()
        room = threading.Semaphore(self.depth)
        stop = threading.Event()

        def hand(item: tuple[SendUnit | None, BaseException | None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def plan() -> None:
            units = iter(self.units)
            try:
                for unit in units:
                    while not room.acquire(timeout=0.2):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    hand((unit, None))
                hand((None, None))
            except BaseException as exc:  # raised in the engine, where it is handled
                hand((None, exc))
            finally:
                close = getattr(units, "close", None)
                if close is not None:
                    close()  # a generator's cleanup: the row pass's workers are stopped

        threading.Thread(target=plan, name="batchsend-plan", daemon=True).start()
        try:
            while True:
                unit, error = await queue.get()
                if error is not None:
                    raise error
                if unit is None:
                    return
                room.release()
                yield unit
        finally:
            stop.set()


def units_for_pending(
    store: Store,
    campaign: Campaign,
    run_id: str,
    provider: Provider,
    test_address: Address | None,
    limit: int | None,
    spool: MessageSpool | None = None,
    rows: dict[int, int] | None = None,
    workers: int | None = 1,
    unspooled: Collection[int] = (),
    before: Iterable[SendUnit] = (),
    wanted: RowSet | None = None,
) -> Iterable[SendUnit]:
    """Plan the run's ``pending`` rows (the first ``limit`` of them) into units, streaming.

    With a ``spool`` holding exactly those rows (a run right after its preflight), the
    messages come from it; otherwise (a resume, a dropped spool) they are rendered again
    (``rows``: matched to the file by address, see :func:`_match_rows_by_address`).
    ``unspooled``: the pending rows the spool does not hold (it was full, or a run's
    preflight went on from a killed one's checkpoint): they are rendered again, after
    the spooled ones are read back.
    ``before``: units to send first (a resume's units rebuilt for rows sent again). When
    rows are rendered, the units come as a :class:`RenderedAhead`.
    ``wanted``: those pending rows, when the caller has them already (the intake that
    recorded them, a resume that counted them); otherwise they are read from the store.
    """
    if wanted is None:
        wanted = store.pending_rows(run_id, limit)  # a bit a row: ten million rows fit
    if not wanted:
        return before
    merge = campaign.merge.enabled and test_address is None
    messages: Iterable[PlannedMessage | tuple[str | None, Message] | RowResult]
    rendering = True
    if spool is not None and spool.usable and spool.count + len(unspooled) == len(wanted):
        rendering = bool(unspooled)
        if spool.form == "planned":
            messages = _spooled_planned(spool, wanted)
        else:
            messages = _spooled(spool, wanted, test_address)
        if unspooled:  # the rows a full spool refused, or a checkpoint gave back
            again = unspooled if isinstance(unspooled, RowSet) else RowSet(unspooled)
            encoder = _encoder(campaign, provider, run_id, test_address, merge, None)
            rendered = rows_to_messages(
                campaign, again.__contains__, test_address, None, workers, encoder
            )
            messages = itertools.chain(messages, rendered)  # the spooled ones leave first
    else:
        encoder = _encoder(campaign, provider, run_id, test_address, merge, rows)
        messages = rows_to_messages(
            campaign, wanted.__contains__, test_address, rows, workers, encoder
        )

    def units() -> Iterator[SendUnit]:  # a generator: closing it stops the row pass
        yield from before
        yield from plan_units(
            messages,
            run_id=run_id,
            provider=provider,
            merge=merge,
            placement=campaign.merge.placement,
            max_recipients_per_field=campaign.send.max_recipients_per_field,
        )

    return RenderedAhead(units()) if rendering else units()


def _encoder(
    campaign: Campaign,
    provider: Provider,
    run_id: str,
    test_address: Address | None,
    merge: bool,
    rows: dict[int, int] | None,
) -> WireEncoder | None:
    """The encoder for the row pass's workers, when the messages go as rendered: not
    merged, not proof copies, not re-numbered (a forced resume)."""
    if merge or test_address is not None or rows is not None:
        return None
    n = campaign.send.max_recipients_per_field
    return WireEncoder(campaign.provider, provider.base_url, provider.batch_size, n, run_id)


#: Signals that stop a run like Ctrl-C: SIGTERM is what ``docker stop``, systemd and CI
#: send, SIGHUP what a closed terminal sends. The first finishes what is in flight.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupts:
    """Ctrl-C (or SIGTERM, SIGHUP) once: set the stop event; twice: cancel the send at once."""

    def __init__(self, stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
        self.stop = stop
        self.task = task
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            self.stop.set()
            print(
                "\nbatchsend: stopping -- finishing the requests in flight "
                "(press Ctrl-C again, or send the signal again, to quit at once)",
                file=sys.stderr,
            )
        else:
            self.task.cancel()


async def _drive(
    units: Iterable[SendUnit] | AsyncIterable[SendUnit],
    *,
    provider: Provider,
    recorder: Recorder,
    campaign: Campaign,
    rate: float | None,
    recipients_rate: float | None,
    http_client: str,
    display: ProgressDisplay,
    interrupts: list[_Interrupts],
) -> EngineResult:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    handler = _Interrupts(stop, task)
    interrupts.append(handler)
    installed: list[signal.Signals] = []
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, handler)  # main thread only
            installed.append(signum)
    send = campaign.send
    try:
        # In a worker thread (called from a notebook) no signal handler can be
        # installed: the waiting caller hands its Ctrl-C to the same handler instead.
        with interrupts_to(handler):
            async with make_transport(
                http_client, concurrency=send.concurrency, timeout=send.timeout
            ) as transport:
                return await send_units(
                    units,
                    provider=provider,
                    transport=transport,
                    recorder=recorder,
                    concurrency=send.concurrency,
                    limiter=RateLimiter(
                        requests_per_second=rate, recipients_per_second=recipients_rate
                    ),
                    retry=RetryPolicy(max_attempts=send.max_attempts, max_time=send.max_retry_time),
                    on_progress=display.update,
                    on_warning=display.warn,
                    stop_event=stop,
                    uncertainty=Uncertainty(
                        idempotent_provider=send.idempotent_provider,
                        retry_server_errors=send.on_server_error == "retry",
                    ),
                )
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _stops_cleanly_on_a_full_disk(
    send_and_finish: Callable[..., RunResult],
) -> Callable[..., RunResult]:
    """A full disk while sending is one error with the resume command, not a traceback
    per worker. Nothing more can be written, so the run stays as last committed: a row
    whose ``sending`` mark is committed becomes ``unknown`` at resume, the rest pending."""

    @functools.wraps(send_and_finish)
    def guarded(store: Store, session: Session, run_id: str, **kwargs: Any) -> RunResult:
        try:
            return send_and_finish(store, session, run_id, **kwargs)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            raise DiskFullError(
                f"the disk holding {store.path} is full: run {run_id} stopped; what it"
                " recorded is kept (rows that were in flight will be unknown), and the"
                " report was not written\n  fix: free some space, then: "
                + resume_command(run_id, store.path)
            ) from None

    return guarded


@_stops_cleanly_on_a_full_disk
def send_and_finish(
    store: Store,
    session: Session,
    run_id: str,
    *,
    units: Callable[[Provider], Iterable[SendUnit]],
    started: float,
    http_client: str,
    report_path: str | Path | None,
    progress: bool | None,
    notes: tuple[str, ...],
    check_account: bool = False,
    extra_rows: int = 0,
    limit: int | None = None,
    resending: set[int] | None = None,
    located: Located | None = None,
    workers: int | None = None,
    pending: int | None = None,
) -> RunResult:
    """Send what ``units`` plans, then record the run's end and write its report.

    ``pending``: how many pending rows ``units`` sends (``limit`` applied), when the
    caller knows; otherwise they are counted in the store, a scan of the run's rows
    (0.4 s at a million) before the first request.
    """
    run = store.get_run(run_id)
    campaign = session.campaign
    provider = session.provider()
    recorder = RunRecorder(store, run_id)
    since = store.now()
    fatal: str | None = None
    interrupted = False
    requests = 0
    sent_now = 0
    notes_list = list(notes)
    would_send = 0
    if run.dry_run:
        requests, would_send = _dry_run(store, run_id, provider, units(provider))
    else:
        planned = units(provider)
        if pending is None:
            pending = store.counts(run_id)[RecipientState.PENDING.value]
        to_send = pending if limit is None else min(pending, limit)
        to_send += extra_rows
        if check_account and to_send:
            try:
                session.check_account(to_send)
            except FatalSendError as exc:
                store.set_run_state(run_id, RunState.FATAL, fatal_error=str(exc), ended=True)
                raise
        # Before the first request: the run is marked as sending in the main database
        # file (checkpointed) and in the ledger beside it, so that losing the -wal file
        # or the database itself is detected, not met with a second send (docs/engine.md).
        store.mark_sending_started(run_id)
        if not run.is_test:
            if not ledger.record(
                store.path, "sending", run_id=run_id, campaign=run.campaign_path, rows=to_send
            ):
                notes_list.append(
                    f"could not write {ledger.ledger_path(store.path)}: a later loss of this "
                    "database would not be detected"
                )
            if not session.sandboxed and not ledger.register_send(
                store.path,
                run_id=run_id,
                campaign=run.campaign_path,
                fingerprints=(run.input_fingerprint or "", run.templates_fingerprint or ""),
            ):
                notes_list.append(
                    f"could not write {ledger.register_path()}: a run of this campaign from "
                    "another database would not be refused"
                )
        # ToSend's limit_per_second counts emails (every address), not requests: it is
        # the recipients' rate unless the campaign sets its own.
        rate = campaign.send.rate
        recipients_rate = campaign.send.recipients_rate or session.account_rate
        display = ProgressDisplay(to_send, enabled=progress, suffix=workers_suffix(workers))
        interrupts: list[_Interrupts] = []
        result = None
        try:
            result = asyncio.run(
                _drive(
                    planned,
                    provider=provider,
                    recorder=recorder,
                    campaign=campaign,
                    rate=rate,
                    recipients_rate=recipients_rate,
                    http_client=http_client,
                    display=display,
                    interrupts=interrupts,
                )
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
        finally:
            display.close()
            recorder.flush()  # every answer that arrived is kept, whatever happened
        if result is not None:
            requests = result.requests
            sent_now = result.sent
            interrupted = interrupted or result.stopped
            if result.fatal is not None:
                fatal = redact(str(result.fatal))
        if interrupts and interrupts[0].count >= 2:
            left = len(store.rows_in_state(run_id, [RecipientState.SENDING]))
            notes_list.append(f"stopped at once: {left:,} row(s) in flight become unknown")
    counts = store.counts(run_id)
    resent = 0
    if resending:
        # Sent again = marked sending by this invocation (its request left), whatever
        # came back: an answer lost again leaves the row unknown, but it did travel.
        resent = sum(1 for row in resending if store.recipient(run_id, row)["updated_at"] >= since)
        notes_list.append(
            f"--resend-unknown: {resent:,} row(s) of unknown outcome sent again (the "
            "provider may have delivered them twice)"
        )
    if fatal:
        state = RunState.FATAL
    elif interrupted or counts[RecipientState.PENDING.value] or counts["sending"]:
        state = RunState.INTERRUPTED
    else:
        state = RunState.FINISHED
    store.set_run_state(run_id, state, fatal_error=fatal, ended=True)
    if not run.dry_run:
        store.clear_sending_mark(run_id)
        if not run.is_test:
            ledger.record(
                store.path, "ended", run_id=run_id, campaign=run.campaign_path, counts=counts
            )
            if not session.sandboxed:  # the embedded sandbox reached no one
                ledger.register_send(
                    store.path,
                    run_id=run_id,
                    campaign=run.campaign_path,
                    fingerprints=(run.input_fingerprint or "", run.templates_fingerprint or ""),
                    counts=counts,
                )
    written = _write_report(store, run_id, report_path)
    return RunResult(
        run_id=run_id,
        state=state,
        counts=counts,
        duration_s=time.monotonic() - started,
        db_path=str(store.path),
        report_path=written,
        is_test=run.is_test,
        dry_run=run.dry_run,
        fatal_error=fatal,
        interrupted=interrupted,
        requests=requests,
        sent_now=sent_now,
        notes=tuple(notes_list),
        failed_retryable=store.failed_retryable(run_id),
        resent_unknown=resent,
        test_to=run.test_to,
        would_send=would_send,
        db_named=located is None or hint_db(run_id, located) is not None,
    )


def _dry_run(
    store: Store, run_id: str, provider: Provider, units: Iterable[SendUnit]
) -> tuple[int, int]:
    """Build every request (proving each serialises), send none; rows end ``skipped``.

    Returns ``(requests built, rows they carry)``: what a real run would send.
    """
    rows: list[int] = []
    requests = 0
    for unit in units:
        provider.build_request(unit)
        requests += 1
        rows.extend(unit.rows)
    store.skip_rows(run_id, rows, "dry_run", "dry run: the request was built, not sent")
    rest = store.rows_in_state(run_id, [RecipientState.PENDING])  # beyond --limit
    store.skip_rows(run_id, rest, "limit", "dry run: beyond --limit")
    return requests, len(rows)


def _write_report(store: Store, run_id: str, report_path: str | Path | None) -> str | None:
    # By default beside the database (the campaign's folder), wherever the command ran:
    # a resume from another folder updates the same report, not a second one.
    default = store.path.resolve().parent / DEFAULT_REPORT_DIR / f"{run_id}.csv"
    out = Path(report_path) if report_path else default
    # Absolute, so the path printed at the end can be opened from anywhere.
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_report(store.path, run_id, out, format=format_for(out))
    except BatchsendError as exc:
        print(f"batchsend: the report could not be written: {exc}", file=sys.stderr)
        return None
    store.set_report_path(run_id, str(written))
    return str(written)
