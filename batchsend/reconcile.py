"""Settling unknown rows by asking the provider: the library behind ``batchsend reconcile``.

A row is ``unknown`` when its request may have reached the provider and no answer said
what became of it (a read timeout, a connection lost mid-answer, a 5xx, a crash).
Neither provider de-duplicates, so batchsend never sends such a row again on its own:
reconcile asks the provider's log instead, one lookup per message.

* ToSend: ``GET /v2/emails/{message_id}`` with an admin key (``tsend_admin_...``, from
  ``--admin-key-file``, ``--admin-key-stdin``, the campaign's ``admin_key_file`` or
  ``$BATCHSEND_ADMIN_KEY``, in that order; never a command-line value). The message id
  is the ``message_hash`` batchsend set: its own message key, recorded with the row.
* v1: ``GET /api/v1/events`` for the message's recipient, in a window around its
  attempts, matched by the ``batchsend_id`` batchsend put in its ``metadata``; with the
  account's own key, as ``Authorization: Bearer``.

Found: the rows are ``sent`` (reason ``reconciled``, the provider's ids and time). Not
found: the provider did not accept it -- unless it did a moment ago and its log does not
show it yet. So only a message whose last request is older than the grace period
(:data:`DEFAULT_GRACE`) goes back to ``pending`` (reason ``not_accepted``, its attempts
kept), for the next ``resume`` to send in a new request; a younger one stays unknown
and the summary says when to try again. A row found ``sending`` (its process died)
counts as having left just now. A lookup that fails after its own retries leaves its
rows unknown.

An answer that says no lookup can work (a key refused, a missing scope, an account
without the Events API) stops reconcile. The first lookup is made alone, before any row
changes, so such a refusal changes nothing. The lookups then run concurrently, under a
rate limit and a retry policy of their own (a GET changes nothing at the provider, so a
timeout is simply asked again). Every change goes through the store, whole messages per
transaction: a kill at any instant leaves each row either still unknown or settled as
its provider's answer said.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchsend import dblocation
from batchsend.apikeys import (
    ADMIN_KEY_ENV,
    check_admin_key,
    load_admin_key,
    load_api_key,
    redact,
    remember,
    remember_env,
)
from batchsend.campaign import load_campaign
from batchsend.crashpoints import crashpoint
from batchsend.errors import (
    ConcurrentCommandError,
    FatalSendError,
    ReconcileError,
    RetryableSendError,
    UncertainSendError,
)
from batchsend.next_steps import reconcile_command, resume_command
from batchsend.overrides import parse_test_to
from batchsend.process import alive
from batchsend.progress import Progress, ProgressDisplay
from batchsend.providers import (
    LookupAnswer,
    LookupKind,
    LookupTarget,
    get_provider,
)
from batchsend.ratelimit import RateLimiter
from batchsend.report import format_for, write_report
from batchsend.retry import RetryPolicy
from batchsend.states import RecipientState, RunState
from batchsend.store import RunInfo, Settlement, Store, UnsettledMessage
from batchsend.transport import make_transport

__all__ = [
    "ADMIN_KEY_ENV",
    "DEFAULT_GRACE",
    "ReconcileResult",
    "parse_grace",
    "reconcile_run",
]

#: A message not in the provider's log this long after its last request was not accepted.
DEFAULT_GRACE = 600.0
DEFAULT_CONCURRENCY = 8
#: Lookups per second unless --rate: v1 counts them in its 600 requests/minute.
DEFAULT_RATES = {"tosend": 20.0, "v1": 9.0}
#: Seconds added on each side of a v1 message's send window: the clocks may differ.
WINDOW_MARGIN = 300.0
#: Settled messages are committed in groups of at most this many (or this old).
FLUSH_MESSAGES = 32
FLUSH_SECONDS = 0.25
PROGRESS_SECONDS = 0.1  # the progress line is redrawn at most this often
LOOKUP_RETRY = RetryPolicy(max_attempts=5, max_time=60)
_SHOWN_FAILURES = 5


def parse_grace(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"0"`` (seconds when no unit) as seconds.

    Raises :class:`ValueError` with what is accepted.
    """
    value = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration: use e.g. 10m, 90s, 1h or 0") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{text!r}: the grace period cannot be negative")
    return seconds


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _clock_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M UTC")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What a reconcile did, as the CLI prints it (``--json``: :meth:`to_dict`).

    ``sent`` / ``pending``: rows it settled as sent / returned to pending; ``too_young``
    and ``lookup_failed``: rows left unknown, for those reasons; ``unkeyed``: unknown
    rows with no message key to look up.
    """

    run_id: str
    provider: str
    db_path: str
    db_hint: str | None = None  # the --db of the commands printed (None: not needed)
    messages: int = 0  # messages looked up
    requests: int = 0  # HTTP lookups made (pages and retries included)
    sent: int = 0
    pending: int = 0
    too_young: int = 0
    lookup_failed: int = 0
    unkeyed: int = 0
    retry_at: float | None = None  # epoch seconds after which the young ones can be judged
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    interrupted: bool = False
    failures: tuple[str, ...] = ()  # a few of the failed lookups' reasons
    notes: tuple[str, ...] = ()

    @property
    def still_unknown(self) -> int:
        """Rows of the run that are unknown after this reconcile."""
        return self.counts.get(RecipientState.UNKNOWN.value, 0)

    @property
    def exit_code(self) -> int:
        """130 interrupted, 3 rows of the run are still unknown, 0 otherwise."""
        if self.interrupted:
            return 130
        return 3 if self.still_unknown else 0

    @property
    def next_commands(self) -> dict[str, str]:
        """``resume`` when rows went back to pending, ``reconcile`` when some are unknown."""
        out = {}
        if self.counts.get(RecipientState.PENDING.value, 0):
            out["resume"] = resume_command(self.run_id, self.db_hint)
        if self.still_unknown:
            out["reconcile"] = reconcile_command(self.run_id, self.db_hint)
        return out

    def note(self) -> str:
        """One line for the summary of ``resume --reconcile``."""
        left = []
        if self.too_young:
            assert self.retry_at is not None
            left.append(
                f"{self.too_young:,} sent too recently to tell: try again after "
                f"{_clock_time(self.retry_at)}"
            )
        if self.lookup_failed:
            left.append(f"{self.lookup_failed:,} whose lookup failed")
        if self.unkeyed:
            left.append(f"{self.unkeyed:,} with no message key")
        text = (
            f"reconcile: {self.messages:,} message(s) looked up: {self.sent:,} row(s) found "
            f"sent, {self.pending:,} never accepted (back to pending)"
        )
        return text + (f"; still unknown: {', '.join(left)}" if left else "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready object: what was settled, what is left and why, what to run next."""
        return {
            "run_id": self.run_id,
            "provider": self.provider,
            "messages": self.messages,
            "requests": self.requests,
            "sent": self.sent,
            "pending": self.pending,
            "too_young": self.too_young,
            "lookup_failed": self.lookup_failed,
            "unkeyed": self.unkeyed,
            "still_unknown": self.still_unknown,
            "try_again_after": _iso(self.retry_at) if self.too_young else None,
            "counts": dict(self.counts),
            "duration_s": round(self.duration_s, 3),
            "db_path": self.db_path,
            "interrupted": self.interrupted,
            "failures": list(self.failures),
            "next": self.next_commands,
            "exit_code": self.exit_code,
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A few human lines: settled, returned, left unknown and why, what to run next."""
        lines = [
            f"reconcile {self.run_id} ({self.provider}): {self.messages:,} message(s) looked "
            f"up with {self.requests:,} request(s) in {self.duration_s:.1f}s"
            + (" (interrupted)" if self.interrupted else "")
        ]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  {self.sent:,} row(s) now sent: the provider's log has their message")
        resume = resume_command(self.run_id, self.db_hint)
        again = reconcile_command(self.run_id, self.db_hint)
        if self.pending:
            lines.append(
                f"  {self.pending:,} row(s) back to pending: the provider never accepted "
                f"them; send them with: {resume}"
            )
        if self.too_young:
            assert self.retry_at is not None
            lines.append(
                f"  {self.too_young:,} row(s) still unknown: sent too recently for the "
                "provider's log to be sure; try again after "
                f"{_clock_time(self.retry_at)}: {again}"
            )
        if self.lookup_failed:
            lines.append(
                f"  {self.lookup_failed:,} row(s) still unknown: the lookup failed "
                f"({'; '.join(self.failures[:2])}); try again later: {again}"
            )
        if self.unkeyed:
            lines.append(
                f"  {self.unkeyed:,} row(s) still unknown: no message key was recorded for "
                "them, so the provider cannot be asked"
            )
        counts = ", ".join(f"{n:,} {state}" for state, n in self.counts.items() if n)
        lines.append(f"  the run now: {counts or 'no rows'}")
        return "\n".join(lines)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _Asked:
    """One message to look up, and when its last request may have left (epoch)."""

    message: UnsettledMessage
    target: LookupTarget
    last_request: float


def reconcile_run(
    run_id: str,
    *,
    db_path: str | Path | None = None,
    grace: float = DEFAULT_GRACE,
    admin_key: str | None = None,
    admin_key_file: str | Path | None = None,
    admin_key_stdin: bool = False,
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    api_key_stdin: bool = False,
    base_url: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    http_client: str = "aiohttp",
    progress: bool | None = None,
    allow_outside: Iterable[str | Path] = (),
    retry: RetryPolicy = LOOKUP_RETRY,
    clock: Any = time.time,
) -> ReconcileResult:
    """Ask the provider about run ``run_id``'s unknown rows and settle what it answers.

    ToSend needs an admin key (``admin_key``, ``admin_key_file``, ``admin_key_stdin`` or
    ``$BATCHSEND_ADMIN_KEY``); v1 uses the account's key, found as ``resume`` finds it.
    ``retry`` is each lookup request's policy (429, 5xx, timeouts); ``clock`` the wall
    clock the grace period is measured with (epoch seconds).
    Raises :class:`ReconcileError` or :class:`SecretError` (exit 2, nothing changed)
    when the provider cannot be asked at all.

    Example::

        result = reconcile_run("20261121T103455-ab12cd", grace=600)
        print(result.sent, result.pending, result.still_unknown)
    """
    started = time.monotonic()
    remember_env(ADMIN_KEY_ENV)
    located = dblocation.for_run(run_id, db_path)
    db_path = located.path
    if not Path(db_path).is_file():
        raise ReconcileError(f"{db_path}: no batchsend database here (pass --db)")
    with Store(db_path) as store:
        run = store.get_run(run_id)
        _refuse_unaskable(run)
        url = base_url or run.base_url
        if not url:
            raise ReconcileError(f"run {run_id} recorded no provider base URL; pass --base-url")
        provider, sender = _provider(
            run,
            url,
            admin_key=admin_key,
            admin_key_file=admin_key_file,
            admin_key_stdin=admin_key_stdin,
            api_key=api_key,
            api_key_file=api_key_file,
            api_key_stdin=api_key_stdin,
            allow_outside=allow_outside,
        )
        store.claim(
            run.campaign_path,
            command=f"batchsend reconcile {shlex.quote(run_id)}",
            run_id=run_id,
            exclusive=True,
        )
        _refuse_running(run)
        now = clock()
        unsettled = store.unsettled_messages(run_id)
        keyed = [m for m in unsettled if m.key is not None]
        unkeyed = sum(len(m.rows) for m in unsettled if m.key is None)
        times = store.attempt_times(run_id, {m.unit_key for m in keyed if m.unit_key})
        asked = [_asked(m, run, times, now, sender) for m in keyed]
        state = _Reconcile(
            store, run_id, grace, clock, retry=retry, total=len(asked), progress=progress
        )
        notes: list[str] = []
        interrupted = False
        if asked:
            try:
                asyncio.run(
                    state.ask_all(
                        asked,
                        provider=provider,
                        http_client=http_client,
                        concurrency=concurrency or DEFAULT_CONCURRENCY,
                        rate=rate if rate is not None else DEFAULT_RATES.get(run.provider),
                    )
                )
            except (KeyboardInterrupt, asyncio.CancelledError):
                interrupted = True
            finally:
                state.close()
            if state.in_flight_converted:
                notes.append(
                    f"{state.in_flight_converted:,} row(s) were in flight when the run "
                    "stopped: now unknown, and looked up"
                )
        if state.sent or state.pending:
            if state.pending and run.state is RunState.FINISHED:
                # Rows to send again: the run is unfinished, and `runs` says to resume it.
                store.set_run_state(run_id, RunState.INTERRUPTED)
            store.refresh_final_counts(run_id)
            _rewrite_report(store, run)
        return ReconcileResult(
            run_id=run_id,
            provider=run.provider,
            db_path=str(store.path),
            db_hint=dblocation.hint_db(run_id, located),
            messages=state.answered,
            requests=state.requests,
            sent=state.sent,
            pending=state.pending,
            too_young=state.too_young,
            lookup_failed=state.failed,
            unkeyed=unkeyed,
            retry_at=state.retry_at,
            counts=store.counts(run_id),
            duration_s=time.monotonic() - started,
            interrupted=interrupted,
            failures=tuple(state.failures[:_SHOWN_FAILURES]),
            notes=tuple(notes),
        )


def _refuse_unaskable(run: RunInfo) -> None:
    if run.dry_run:
        raise ReconcileError(f"run {run.id} was a dry run: it sent nothing to reconcile")
    if run.settings.get("sandbox"):
        raise ReconcileError(
            f"run {run.id} was sent to an embedded sandbox (--sandbox), which ended with its "
            "process: there is no provider left to ask"
        )


def _refuse_running(run: RunInfo) -> None:
    """A run that a live process is sending is that process's to settle."""
    if (
        run.state is RunState.RUNNING
        and run.pid
        and run.pid != os.getpid()
        and alive(run.settings.get("host"), run.pid, None)
    ):
        raise ConcurrentCommandError(
            f"run {run.id} is being sent right now by process {run.pid}; reconcile it "
            "once that process has finished (or stop it first, Ctrl-C)"
        )


def _provider(
    run: RunInfo,
    url: str,
    *,
    admin_key: str | None,
    admin_key_file: str | Path | None,
    admin_key_stdin: bool,
    api_key: str | None,
    api_key_file: str | Path | None,
    api_key_stdin: bool,
    allow_outside: Iterable[str | Path],
) -> tuple[Any, str]:
    """The provider to ask, holding the key lookups need, and the campaign's sender."""
    if run.provider == "tosend":
        if admin_key is None and admin_key_file is None and not admin_key_stdin:
            # The campaign's admin_key_file, as its api_key_file, comes before the variable.
            campaign = load_campaign(run.campaign_path, allow_outside=allow_outside)
            admin_key_file = campaign.admin_key_file
        key = _admin_key(admin_key, admin_key_file, admin_key_stdin)
        return get_provider("tosend", base_url=url, api_key=key), ""
    if admin_key is not None or admin_key_file is not None or admin_key_stdin:
        raise ReconcileError(
            f"run {run.id} went through {run.provider}, which has no admin keys: its Events "
            "API takes the account's own key (BATCHSEND_API_KEY, the campaign's api_key_env "
            "or api_key_file, --api-key-file or --api-key-stdin); drop the --admin-key option"
        )
    campaign = load_campaign(run.campaign_path, allow_outside=allow_outside)
    if api_key is not None:
        key = remember(api_key)
    else:
        key = load_api_key(
            env_var=campaign.api_key_env,
            key_file=api_key_file or campaign.api_key_file,
            stdin=api_key_stdin,
        )
    sender = campaign.message.sender.email
    return get_provider(run.provider, base_url=url, api_key=key), sender


def _admin_key(key: str | None, key_file: str | Path | None, stdin: bool) -> str:
    """The ToSend admin key, checked to be one (never shown, whatever is wrong with it)."""
    if key is None:
        return load_admin_key(
            key_file=key_file,
            stdin=stdin,
            needed_for="reconcile reads ToSend's delivery log, which",
            scope="emails:read",
        )
    return check_admin_key(key, scope="emails:read", cannot="read the delivery log")


def _asked(
    message: UnsettledMessage,
    run: RunInfo,
    times: dict[str, list[tuple[str, float]]],
    now: float,
    sender: str,
) -> _Asked:
    """What to ask about ``message``, and since when its last request may have been out.

    v1's window: from its first logged attempt (or the run's start) to its last change
    (or now, for a row still ``sending``: its process died at an unknown moment).
    """
    assert message.key is not None
    logged = times.get(message.unit_key or "", [])
    starts = [_epoch(at) - elapsed / 1000 for at, elapsed in logged]
    ends = [_epoch(at) for at, _ in logged]
    if message.updated_at:
        ends.append(_epoch(message.updated_at))
    last = now if message.in_flight or not ends else max(ends)
    since = min(starts) if starts else _epoch(run.started_at)
    test_to = run.settings.get("test_to")
    if run.is_test and test_to:
        recipient = parse_test_to(test_to).email
    elif len(message.rows) > 1:  # merged on v1: the rows in bcc, the sender in ``to``
        recipient = sender
    else:
        recipient = message.emails[0]
    target = LookupTarget(
        key=message.key,
        recipient=recipient,
        since=min(since, last) - WINDOW_MARGIN,
        until=max(last, now) + WINDOW_MARGIN,
    )
    return _Asked(message, target, last)


class _Reconcile:
    """The lookups of one reconcile, their tallies, and the settlements not committed yet."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        grace: float,
        clock: Any,
        *,
        retry: RetryPolicy,
        total: int,
        progress: bool | None,
    ) -> None:
        self.store = store
        self.retry = retry
        self.run_id = run_id
        self.grace = grace
        self.clock = clock
        self.total = total
        self.requests = 0
        self.answered = 0
        self.sent = 0
        self.pending = 0
        self.too_young = 0
        self.failed = 0
        self.found_messages = 0
        self.retry_at: float | None = None
        self.failures: list[str] = []
        self.in_flight_converted = 0
        self._buffer: list[Settlement] = []
        self._oldest: float | None = None
        self._display = ProgressDisplay(total, enabled=progress, line=self._line)
        self._shown = -math.inf

    def _line(self, progress: Progress, total: int, rate: float | None, eta: float | None) -> str:
        pace = f"{rate:,.0f}/s" if rate is not None else "-/s"
        left = "--:--" if eta is None else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        return (
            f"looked up {progress.sent:,}/{total:,}  found {self.found_messages:,}  "
            f"failed {self.failed:,}  {pace}  ETA {left}"
        )

    async def ask_all(
        self,
        asked: Sequence[_Asked],
        *,
        provider: Any,
        http_client: str,
        concurrency: int,
        rate: float | None,
    ) -> None:
        limiter = RateLimiter(requests_per_second=rate)
        async with make_transport(http_client, concurrency=concurrency) as transport:
            # The first lookup alone: a refused key or a disabled feature is then one
            # clear error raised before any row changed.
            first = await self._ask(asked[0].target, provider, transport, limiter)
            if first.kind is LookupKind.REFUSED:
                raise ReconcileError(
                    f"cannot reconcile run {self.run_id}: {first.detail}; nothing was changed"
                )
            self.in_flight_converted = len(self.store.sending_to_unknown(self.run_id))
            self._answer(asked[0], first)
            stop = asyncio.Event()
            refused: list[LookupAnswer] = []
            rest = iter(asked[1:])

            async def worker() -> None:
                for item in rest:  # one iterator shared by every worker: each takes the next
                    if stop.is_set():
                        return
                    answer = await self._ask(item.target, provider, transport, limiter)
                    if answer.kind is LookupKind.REFUSED:
                        refused.append(answer)
                        stop.set()
                        return
                    self._answer(item, answer)

            workers = max(1, min(concurrency, len(asked) - 1))
            await asyncio.gather(*(worker() for _ in range(workers)))
        if refused:
            self.flush()
            raise ReconcileError(
                f"run {self.run_id}: the provider stopped answering lookups: "
                f"{refused[0].detail}; the {self.sent + self.pending:,} row(s) settled before "
                "are recorded, the others are still unknown"
            )

    async def _ask(
        self, target: LookupTarget, provider: Any, transport: Any, limiter: RateLimiter
    ) -> LookupAnswer:
        """One message's lookup, every page of it, each request retried on its own."""
        page = 1
        while True:
            request = provider.lookup_request(target, page)

            async def once(_attempt: int, request: Any = request, page: int = page) -> Any:
                await limiter.acquire()
                self.requests += 1
                try:
                    response = await transport.send(request)
                except UncertainSendError as exc:
                    # A lookup changes nothing at the provider: asking again is safe.
                    raise RetryableSendError(str(exc), error_type=exc.error_type) from None
                crashpoint("response")
                try:
                    answer = provider.parse_lookup(
                        target, response.status, response.headers, response.body, page
                    )
                except RetryableSendError as exc:
                    if exc.status == 429:
                        limiter.on_throttled(exc.retry_after)
                    raise
                limiter.on_success()
                return answer

            try:
                answer = await self.retry.call(once)
            except RetryableSendError as exc:
                return LookupAnswer(LookupKind.FAILED, detail=redact(str(exc)))
            except FatalSendError as exc:  # a URL no request can go to
                return LookupAnswer(LookupKind.REFUSED, detail=redact(str(exc)))
            if answer.kind is LookupKind.MORE and answer.next_page:
                page = answer.next_page
                continue
            return answer

    def _answer(self, item: _Asked, answer: LookupAnswer) -> None:
        """Tally one message's answer; buffer what it settles."""
        rows = len(item.message.rows)
        self.answered += 1
        now = self.clock()
        if answer.kind is LookupKind.FOUND:
            self.found_messages += 1
            self._buffer.append(
                Settlement(
                    item.message,
                    sent=True,
                    note=f"reconcile: found in the provider's log ({answer.detail or 'accepted'})",
                    provider_message_id=answer.provider_message_id,
                    provider_email_id=answer.provider_email_id,
                    accepted_at=answer.accepted_at,
                )
            )
        elif answer.kind is LookupKind.NOT_FOUND and now - item.last_request >= self.grace:
            self._buffer.append(
                Settlement(
                    item.message,
                    sent=False,
                    note="reconcile: not in the provider's log "
                    f"{(now - item.last_request) / 60:.0f} min after its last request: never "
                    "accepted; the next resume sends it",
                )
            )
        elif answer.kind is LookupKind.NOT_FOUND:
            self.too_young += rows
            ready = item.last_request + self.grace
            self.retry_at = ready if self.retry_at is None else max(self.retry_at, ready)
        else:
            self.failed += rows
            if answer.detail and answer.detail not in self.failures:
                self.failures.append(answer.detail)
        if self._oldest is None:
            self._oldest = now
        if len(self._buffer) >= FLUSH_MESSAGES or now - self._oldest >= FLUSH_SECONDS:
            self.flush()
        shown = time.monotonic()
        if shown - self._shown >= PROGRESS_SECONDS or self.answered == self.total:
            self._shown = shown
            self._display.update(Progress(sent=self.answered))

    def flush(self) -> None:
        """Commit the buffered settlements (whole messages, one transaction)."""
        self._oldest = None
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        sent, pending = self.store.settle_lookups(self.run_id, batch)
        self.sent += sent
        self.pending += pending

    def close(self) -> None:
        """Commit what is buffered (every answer that arrived is kept) and end the display."""
        try:
            self.flush()
        finally:
            self._display.close()


def _rewrite_report(store: Store, run: RunInfo) -> None:
    """The run's report, where it was last written, follows the settled rows."""
    if not run.report_path or not Path(run.report_path).exists():
        return
    out = Path(run.report_path)
    write_report(store.path, run.id, out, format=format_for(out))
