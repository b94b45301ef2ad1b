"""The send engine: the one place that awaits the network.

``send_units`` takes planned units (one HTTP request each) and sends them with
``concurrency`` worker tasks sharing one transport (one connection pool). A worker
loops: take the next unit, wait for the rate limiter, mark the unit ``sending`` in the
store (committed before the request leaves), send, classify, retry if the policy says
so, record. One task per worker, not per message or per unit, and one JSON encoding
per request (the body is built once and re-sent as the same bytes on every retry).

Retrying a unit means repeating the SAME request: same body, same ``Idempotency-Key``.
A provider that honours the key answers a repeat with its first answer (the sandbox
answers 409 if the body changed under the same key), so we never re-plan a batch to
send only its failed messages: a new composition would need a new key, the recorded
composition would no longer match, and a crash between the two would leave nobody
knowing which request carried which rows. The consequences, all deliberate:

* a batch retries as a whole when any of its messages is retryable; messages the
  provider accepted on the first attempt are absorbed by its idempotency on the retry
  (it stores a response that accepted anything and replays it);
* a message accepted on any attempt stays accepted, even if a later attempt of the
  same unit got no answer (a timeout on the repeat does not undo the first delivery);
* retries exhausted => the retryable messages end ``failed`` (kept retryable, so
  ``resume --retry-failed`` sends the same request again); permanent => ``failed``;
* a fatal answer (bad key, no credits, sender domain) stops the run at once: no new
  unit is taken, units in flight finish and are recorded, and the result carries the
  error. The fatal unit's rows go back to ``pending`` (the store's rule), as does every
  unit never taken, so a resume after fixing the cause sends them.

A set ``stop_event`` (Ctrl-C) has the same effect without an error: finish what is in
flight, take nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass

from batchsend.crashpoints import crashpoint
from batchsend.errors import FatalSendError, RetryableSendError, SendError
from batchsend.outcome import MessageOutcome, OutcomeKind, Recorder
from batchsend.plan import SendUnit
from batchsend.providers.base import Provider
from batchsend.ratelimit import RateLimiter
from batchsend.retry import RetryPolicy
from batchsend.transport import Transport

ACCEPTED = OutcomeKind.ACCEPTED
RETRYABLE = OutcomeKind.RETRYABLE
FATAL = OutcomeKind.FATAL


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for a progress display. Counts are rows (recipients of the input)."""

    sent: int
    failed: int
    retrying: int  # units waiting to be tried again
    in_flight: int  # rows whose request is out (or waiting to be retried)
    requests: int  # HTTP attempts made
    elapsed: float  # seconds since the engine started
    rate: float  # rows sent per second since the start


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What a call to :func:`send_units` did."""

    sent: int  # rows accepted by the provider
    failed: int  # rows failed (permanent, or retries exhausted)
    units: int  # units answered (recorded final)
    requests: int  # HTTP attempts
    retries: int  # attempts beyond the first
    throttled: int  # 429 answers
    elapsed: float
    stopped: bool  # the stop event ended the run early
    fatal: FatalSendError | None  # the error that stopped the run, if any

    @property
    def complete(self) -> bool:
        """True when every unit offered was sent and recorded."""
        return not self.stopped and self.fatal is None


class _RetryUnit(RetryableSendError):
    """Some messages of the unit are worth another attempt of the same request."""

    def __init__(self, outcomes: list[MessageOutcome], retry_after: float | None) -> None:
        super().__init__("retryable answer", retry_after=retry_after)
        self.outcomes = outcomes


def recipients_of(unit: SendUnit) -> int:
    """Addresses one request delivers to (to + cc + bcc of every message)."""
    return sum(pm.recipient_count for pm in unit.messages)


async def send_units(
    units: Iterable[SendUnit] | AsyncIterable[SendUnit],
    *,
    provider: Provider,
    transport: Transport,
    recorder: Recorder,
    concurrency: int = 16,
    limiter: RateLimiter | None = None,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 0.25,
    stop_event: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EngineResult:
    """Send every unit, at most ``concurrency`` requests in flight; record everything.

    Returns when the units are exhausted, or early on a fatal answer (``result.fatal``)
    or when ``stop_event`` is set (``result.stopped``); in both early cases the units
    in flight finish first and units never taken stay pending in the store.

    Example::

        async with make_transport("aiohttp", concurrency=16) as transport:
            result = await send_units(
                plan_units(rows, run_id=run_id, provider=provider),
                provider=provider, transport=transport, recorder=recorder,
            )
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    engine = _Engine(
        provider=provider,
        transport=transport,
        recorder=recorder,
        limiter=limiter or RateLimiter(clock=clock),
        retry=retry or RetryPolicy(),
        on_progress=on_progress,
        progress_interval=progress_interval,
        stop_event=stop_event or asyncio.Event(),
        clock=clock,
    )
    return await engine.run(units, concurrency)


class _SendingMarks:
    """Group commit: the ``sending`` marks of every worker ready in one loop turn, one commit.

    When several answers arrive together, several workers reach their next unit in the
    same turn of the event loop. Each registers its unit and waits; the first schedules
    a commit a few turns later (:attr:`TURNS`, sooner when :attr:`ENOUGH` wait), which
    marks every registered unit ``sending`` in ONE transaction
    (``recorder.mark_sending_many``) and only then releases the workers. A
    request still leaves only after its own rows are committed; what changes is that a
    commit (the costliest step of a small request) is shared. A recorder without
    ``mark_sending_many`` is called unit by unit, as before.
    """

    # The commit waits up to TURNS turns of the loop, or until ENOUGH units wait: on a
    # busy single core each turn brings a few more answers, so small single-send
    # requests (v1) share a commit among ~3x more units (v1, 20k rows, concurrency 32:
    # sending commits 46-53 -> 31-38 us per message). A worker waits a few turns more
    # before its request leaves, never less: its rows are still committed first.
    TURNS = 3
    ENOUGH = 16

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.many: Callable[[Sequence[SendUnit]], None] | None = getattr(
            recorder, "mark_sending_many", None
        )
        self.waiting: list[tuple[SendUnit, asyncio.Future[None]]] = []
        self.commits = 0

    async def mark(self, unit: SendUnit) -> None:
        if self.many is None:
            self.recorder.mark_sending(unit)
            self.commits += 1
            return
        loop = asyncio.get_running_loop()
        if not self.waiting:
            loop.call_soon(self.later, self.TURNS - 1)
        done: asyncio.Future[None] = loop.create_future()
        self.waiting.append((unit, done))
        await done

    def later(self, turns: int) -> None:
        if turns > 0 and len(self.waiting) < self.ENOUGH:
            asyncio.get_running_loop().call_soon(self.later, turns - 1)
        else:
            self.commit()

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        assert self.many is not None
        try:
            self.many([unit for unit, _ in waiting])
        except BaseException as exc:  # nothing of the group was committed: none may leave
            for _, done in waiting:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for _, done in waiting:
            if not done.done():  # a worker cancelled meanwhile: its rows become unknown
                done.set_result(None)


class _Engine:
    def __init__(
        self,
        *,
        provider: Provider,
        transport: Transport,
        recorder: Recorder,
        limiter: RateLimiter,
        retry: RetryPolicy,
        on_progress: Callable[[Progress], None] | None,
        progress_interval: float,
        stop_event: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.provider = provider
        self.transport = transport
        self.recorder = recorder
        self.limiter = limiter
        self.retry = retry
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.stop_event = stop_event
        self.clock = clock
        self.fatal: FatalSendError | None = None
        self.sent = self.failed = self.units = self.requests = self.retries = 0
        self.throttled = self.in_flight = self.retrying = 0
        self.start = clock()
        self._next_progress = self.start
        self.marks = _SendingMarks(recorder)

    def halted(self) -> bool:
        return self.fatal is not None or self.stop_event.is_set()

    async def run(
        self, units: Iterable[SendUnit] | AsyncIterable[SendUnit], concurrency: int
    ) -> EngineResult:
        if isinstance(units, AsyncIterable):
            source = units.__aiter__()
            lock = asyncio.Lock()  # an async generator must not be advanced concurrently

            async def take() -> SendUnit | None:
                async with lock:
                    if self.halted():
                        return None
                    try:
                        return await source.__anext__()
                    except StopAsyncIteration:
                        return None

        else:
            iterator = iter(units)

            async def take() -> SendUnit | None:
                return next(iterator, None)

        # A TaskGroup: if planning or recording raises, the other workers are cancelled
        # (their rows stay `sending`, i.e. `unknown` to a resume) and the error surfaces.
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(self.worker(take))
        self.recorder.flush()
        self.progress(force=True)
        return EngineResult(
            sent=self.sent,
            failed=self.failed,
            units=self.units,
            requests=self.requests,
            retries=self.retries,
            throttled=self.throttled,
            elapsed=self.clock() - self.start,
            stopped=self.stop_event.is_set() and self.fatal is None,
            fatal=self.fatal,
        )

    async def worker(self, take: Callable[[], object]) -> None:
        limiter = self.limiter
        recorder = self.recorder
        marks = self.marks
        while not self.halted():
            unit = await take()  # type: ignore[misc]
            if unit is None:
                return
            assert isinstance(unit, SendUnit)
            await limiter.acquire(recipients_of(unit))
            if self.halted():
                return  # never marked sending: the unit stays pending
            rows = sum(len(pm.rows) for pm in unit.messages)
            await marks.mark(unit)  # committed `sending` when this returns
            crashpoint("sending")  # test-only: the gauntlet's kill -9 after the commit
            self.in_flight += rows
            try:
                outcomes, attempts = await self.send(unit)
            finally:
                self.in_flight -= rows
            recorder.record_final(unit, outcomes, attempts)
            self.tally(unit, outcomes)
            if self.on_progress is not None:
                self.progress()

    async def send(self, unit: SendUnit) -> tuple[list[MessageOutcome], int]:
        request = self.provider.build_request(unit)  # serialised once, for every attempt
        accepted: dict[str, MessageOutcome] = {}
        attempts = 0

        async def attempt(number: int) -> list[MessageOutcome]:
            nonlocal attempts
            attempts = number
            if number > 1:
                self.retrying -= 1
                self.retries += 1
                await self.limiter.acquire(recipients_of(unit))
            started = self.clock()
            self.requests += 1
            status = 0
            try:
                response = await self.transport.send(request)
            except SendError as exc:
                outcomes = self.provider.outcomes_for_error(unit, exc)
            else:
                crashpoint("response")  # test-only: kill -9 with the answer unrecorded
                status = response.status
                outcomes = self.provider.parse_response(
                    unit, status, response.headers, response.body
                )
            self.recorder.record_attempt(unit, number, outcomes, (self.clock() - started) * 1000.0)
            if status == 429:
                self.throttled += 1
                self.limiter.on_throttled(outcomes[0].retry_after if outcomes else None)
            elif status:
                self.limiter.on_success()
            retry = False
            retry_after = None
            for o in outcomes:
                kind = o.kind
                if kind is ACCEPTED:
                    continue
                if kind is FATAL:
                    self.stop_on(o)  # take no new unit from now on
                    return outcomes
                if kind is RETRYABLE:
                    retry = True
                    if o.retry_after is not None and (
                        retry_after is None or o.retry_after > retry_after
                    ):
                        retry_after = o.retry_after
            if retry and not self.halted():
                for o in outcomes:
                    if o.kind is ACCEPTED:
                        accepted[o.key] = o
                self.retrying += 1
                raise _RetryUnit(outcomes, retry_after)
            return outcomes

        try:
            outcomes = await self.retry.call(attempt)
        except _RetryUnit as exc:  # attempts or time exhausted
            self.retrying -= 1
            outcomes = exc.outcomes
        if accepted:
            outcomes = [accepted.get(o.key, o) if o.kind is not ACCEPTED else o for o in outcomes]
        return outcomes, attempts

    def tally(self, unit: SendUnit, outcomes: list[MessageOutcome]) -> None:
        self.units += 1
        if len(outcomes) == 1:
            rows = len(unit.messages[0].rows)
            kind = outcomes[0].kind
            if kind is ACCEPTED:
                self.sent += rows
            elif kind is FATAL:
                self.stop_on(outcomes[0])
            else:
                self.failed += rows
            return
        for pm, o in zip(unit.messages, outcomes, strict=True):
            kind = o.kind
            if kind is ACCEPTED:
                self.sent += len(pm.rows)
            elif kind is FATAL:
                self.stop_on(o)
            else:
                self.failed += len(pm.rows)

    def stop_on(self, outcome: MessageOutcome) -> None:
        if self.fatal is None:
            detail = outcome.error_message or outcome.error_type or "fatal error"
            self.fatal = FatalSendError(
                f"the provider refused the run ({outcome.http_status}: {detail})",
                status=outcome.http_status,
                error_type=outcome.error_type,
            )

    def progress(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = self.clock()
        if not force and now < self._next_progress:
            return
        self._next_progress = now + self.progress_interval
        elapsed = now - self.start
        self.on_progress(
            Progress(
                sent=self.sent,
                failed=self.failed,
                retrying=self.retrying,
                in_flight=self.in_flight,
                requests=self.requests,
                elapsed=elapsed,
                rate=self.sent / elapsed if elapsed > 0 else 0.0,
            )
        )


class MemoryRecorder:
    """A :class:`Recorder` that keeps everything in memory (tests, benchmarks, scripts).

    ``states`` maps each row to ``"sending"``, ``"sent"``, ``"failed"`` or ``"pending"``
    (a fatal answer puts rows back to pending, as the store does); ``finals`` keeps each
    row's last outcome and ``attempts`` every (unit key, attempt, status) seen.
    """

    def __init__(self, *, keep_attempts: bool = True) -> None:
        self.states: dict[int, str] = {}
        self.finals: dict[int, MessageOutcome] = {}
        self.attempts: list[tuple[str, int, int | None]] = []
        self.units: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.sending_marks = 0
        self.flushes = 0
        self._keep_attempts = keep_attempts

    def mark_sending(self, unit: SendUnit) -> None:
        self.sending_marks += 1
        self.units[unit.key] = tuple(pm.rows for pm in unit.messages)
        for pm in unit.messages:
            for row in pm.rows:
                self.states[row] = "sending"

    def mark_sending_many(self, units: Sequence[SendUnit]) -> None:
        for unit in units:
            self.mark_sending(unit)

    def record_attempt(
        self, unit: SendUnit, attempt: int, outcomes: Sequence[MessageOutcome], elapsed_ms: float
    ) -> None:
        if self._keep_attempts:
            status = outcomes[0].http_status if outcomes else None
            self.attempts.append((unit.key, attempt, status))

    def record_final(
        self, unit: SendUnit, outcomes: Sequence[MessageOutcome], attempts: int
    ) -> None:
        by_key = {o.key: o for o in outcomes}
        for pm in unit.messages:
            o = by_key[pm.key]
            fatal_state = "pending" if attempts == 1 else "failed"  # as the SQLite store does
            state = {ACCEPTED: "sent", FATAL: fatal_state}.get(o.kind, "failed")
            for row in pm.rows:
                self.states[row] = state
                self.finals[row] = o

    def flush(self) -> None:
        self.flushes += 1

    def count(self, state: str) -> int:
        """How many rows are in ``state``."""
        return sum(1 for s in self.states.values() if s == state)
