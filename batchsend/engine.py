"""The send engine: the one place that awaits the network.

``send_units`` takes planned units (one HTTP request each) and sends them with
``concurrency`` worker tasks sharing one transport (one connection pool). A worker
loops: take the next unit, wait for the rate limiter, mark the unit ``sending`` in the
store (committed before the request leaves), send, classify, retry if the policy says
so, record. One task per worker, not per message or per unit, and one JSON encoding
per request.

Neither provider de-duplicates (docs/providers.md, "No idempotency"): a request sent
twice may deliver twice. So what is sent again depends on whether the provider can have
processed it (docs/engine.md, "Was it processed?"):

* not processed (429, a refused connection, a connect timeout; each message the
  provider explicitly refused with a retryable answer): tried again, within the retry
  policy. When every message of the request is to go again, the same request goes
  again. When the provider answered per message (a ToSend 207) and settled some of
  them, only the others go again, in a NEW request of their own (its own key and
  composition, committed with the settled outcomes before it leaves): an accepted
  message never travels in a later request;
* maybe processed (a read timeout, a connection lost before the answer, a 5xx, an
  answer we cannot read): never sent again; its messages end ``unknown`` and the run
  goes on. Only a campaign that declares ``idempotent_provider`` (the provider honours
  ``Idempotency-Key``) retries them, repeating the very same request and key; with
  ``on_server_error = "retry"`` a 5xx answer is retried too, the user having accepted
  the duplicate risk;
* retries exhausted => ``failed``, kept retryable (certainly not accepted); permanent
  (a 4xx, ToSend's ``spam``) => ``failed``;
* a fatal answer (bad key, no credits, sender domain) stops the run at once: no new
  unit is taken, units in flight finish and are recorded, and the result carries the
  error.

A message the engine stops trying to send (a fatal answer, or ``stop_event``, Ctrl-C,
while it waited for a retry) goes back to where it was: ``pending`` for a fresh
message, so a resume sends it; the state it had for a request a resume rebuilt
(``SendUnit.prior``: failed stays failed, unknown stays unknown); ``unknown`` when an
earlier attempt may have been processed. A set ``stop_event`` has the same effect as a
fatal answer without an error: finish what is in flight, take nothing new.

An unreachable provider is a fatal error of its own (``unreachable``): when
:data:`UNREACHABLE_AFTER` requests in a row have used up their retries without a
connection being made, and no request reached the provider in between, the run stops
and their rows go back to ``pending`` with everything else never sent: nothing reached
the provider, and every other row would fail the same way, one back-off after another.
Until then such a request waits, unrecorded (its rows stay ``sending``); any request
that reaches the provider (an answer, or a failure after connecting) ends the streak,
and the waiting ones fail as usual (``failed``, retryable). The first connection failure
of a run is also told at once (``on_warning``), with the URL and what to check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from batchsend.crashpoints import crashpoint
from batchsend.errors import BatchsendError, FatalSendError, RetryableSendError, SendError
from batchsend.outcome import MessageOutcome, OutcomeKind, Recorder
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.progress import Progress
from batchsend.providers.base import Provider, is_server_error
from batchsend.ratelimit import RateLimiter, sleep_unless
from batchsend.retry import RetryPolicy
from batchsend.transport import CONNECT_FAILURES, HttpRequest, Transport, connect_hint, origin

ACCEPTED = OutcomeKind.ACCEPTED
RETRYABLE = OutcomeKind.RETRYABLE
UNKNOWN = OutcomeKind.UNKNOWN
PERMANENT = OutcomeKind.PERMANENT
FATAL = OutcomeKind.FATAL
UNSENT = OutcomeKind.UNSENT

#: Requests in a row that used up their retries without connecting, with no request
#: reaching the provider in between, after which the run stops as ``unreachable``. A
#: few, not one: one request's bad luck (a connection limit, a restart) must not stop a
#: run; with its retries each of them has been trying for several seconds.
UNREACHABLE_AFTER = 3


@dataclass(frozen=True, slots=True)
class Uncertainty:
    """What the campaign accepts for a request the provider may have processed.

    ``idempotent_provider``: the provider honours ``Idempotency-Key`` (neither documented
    provider does), so repeating the same request cannot deliver twice: maybe-processed
    requests are retried under the same key. ``retry_server_errors``: a 5xx answer is
    retried anyway (``on_server_error = "retry"``), accepting that it may deliver twice.
    """

    idempotent_provider: bool = False
    retry_server_errors: bool = False

    def retries(self, outcome: MessageOutcome) -> bool:
        """Is this maybe-processed outcome sent again?"""
        if self.idempotent_provider:
            return True
        status = outcome.http_status
        return self.retry_server_errors and status is not None and is_server_error(status)


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What a call to :func:`send_units` did."""

    sent: int  # rows accepted by the provider
    failed: int  # rows failed (permanent, or retries exhausted)
    unknown: int  # rows the provider may have accepted (a lost answer, a 5xx)
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
    """Some messages of the unit are worth another attempt."""

    def __init__(self, outcomes: list[MessageOutcome], retry_after: float | None) -> None:
        super().__init__("retryable answer", retry_after=retry_after)
        self.outcomes = outcomes


class _Halted(Exception):
    """The run stopped while a unit waited for its next attempt (not retried)."""

    def __init__(self, outcomes: list[MessageOutcome]) -> None:
        super().__init__("halted")
        self.outcomes = outcomes


class _Delivery:
    """One unit's way through its attempts: the request in flight and what is known."""

    __slots__ = ("attempts", "kept", "last", "maybe", "request", "stopped", "unconnected", "unit")

    def __init__(self, unit: SendUnit, request: HttpRequest) -> None:
        self.unit = unit
        self.request = request
        self.attempts = 0
        self.last: list[MessageOutcome] = []
        # accepted on an earlier attempt of the same request (idempotent provider only)
        self.kept: dict[str, MessageOutcome] = {}
        # an earlier attempt may have been processed (a maybe-processed failure retried)
        self.maybe = False
        self.stopped = False
        self.unconnected = False  # the latest attempt made no connection


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
    on_progress: Callable[[Progress], object] | None = None,
    progress_interval: float = 0.25,
    stop_event: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    uncertainty: Uncertainty | None = None,
    on_warning: Callable[[str], object] | None = None,
) -> EngineResult:
    """Send every unit, at most ``concurrency`` requests in flight; record everything.

    Returns when the units are exhausted, or early on a fatal answer (``result.fatal``)
    or when ``stop_event`` is set (``result.stopped``); in both early cases the units
    in flight finish first and units never taken stay pending in the store. An
    unreachable provider is a fatal error too (``error_type`` ``unreachable``, see the
    module notes). ``on_warning`` is told, once, of the first failure to connect.

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
        uncertainty=uncertainty or Uncertainty(),
        on_warning=on_warning,
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
    # requests (v1) share each commit among several times more units than a commit on
    # the first turn would. A worker waits a few turns more before its request leaves,
    # never less: its rows are still committed first.
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
        on_progress: Callable[[Progress], object] | None,
        progress_interval: float,
        stop_event: asyncio.Event,
        clock: Callable[[], float],
        uncertainty: Uncertainty,
        on_warning: Callable[[str], object] | None = None,
    ) -> None:
        self.provider = provider
        self.transport = transport
        self.recorder = recorder
        self.limiter = limiter
        # A wait for a retry ends early when the run stops: the unit's messages then go
        # back at once instead of after the back-off.
        self.retry = dataclasses.replace(retry, sleep=self._napper(retry.sleep))
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.stop_event = stop_event
        self.clock = clock
        self.uncertainty = uncertainty
        self.fatal: FatalSendError | None = None
        self._halt = asyncio.Event()  # set on a fatal answer or when stop_event is set
        self.sent = self.failed = self.unknown = self.units = self.requests = self.retries = 0
        self.throttled = self.in_flight = self.retrying = 0
        self.start = clock()
        self._next_progress = self.start
        self.marks = _SendingMarks(recorder)
        self.on_warning = on_warning
        self.warned = False
        self.reached = False  # some request reached the provider
        # deliveries whose retries ran out without connecting, since the last request
        # that reached the provider, with their outcomes: not recorded yet
        self.unreached: list[tuple[_Delivery, list[MessageOutcome]]] = []

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
        watcher = asyncio.ensure_future(self._watch_stop())
        # Progress also while nothing settles (every unit waiting for a retry, a slow
        # pace): a log line must not fall silent when the run is stuck.
        ticker = asyncio.ensure_future(self._tick()) if self.on_progress is not None else None
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(self.worker(take))
        except BaseExceptionGroup as failed:
            # One of batchsend's own errors (the store refusing, say) says what happened
            # in one message: raise it as it is, not wrapped in the workers' group.
            ours = [e for e in failed.exceptions if isinstance(e, BatchsendError)]
            if ours and len(ours) == len(failed.exceptions):
                raise ours[0] from None
            raise
        finally:
            watcher.cancel()
            if ticker is not None:
                ticker.cancel()
        if self.unreached and not self.reached and not self.halted():
            # The whole run made no connection (fewer requests than UNREACHABLE_AFTER).
            self.stop_unreachable()
        self.release_unreached()
        self.recorder.flush()
        self.progress(force=True)
        return EngineResult(
            sent=self.sent,
            failed=self.failed,
            unknown=self.unknown,
            units=self.units,
            requests=self.requests,
            retries=self.retries,
            throttled=self.throttled,
            elapsed=self.clock() - self.start,
            stopped=self.stop_event.is_set() and self.fatal is None,
            fatal=self.fatal,
        )

    async def _watch_stop(self) -> None:
        await self.stop_event.wait()
        self._halt.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(max(self.progress_interval, 0.05))
            self.progress()

    def _napper(
        self, sleep: Callable[[float], Awaitable[None]]
    ) -> Callable[[float], Awaitable[None]]:
        async def nap(seconds: float) -> None:
            await sleep_unless(self._halt, seconds, sleep)

        return nap

    async def worker(self, take: Callable[[], object]) -> None:
        limiter = self.limiter
        marks = self.marks
        while not self.halted():
            unit = await take()  # type: ignore[misc]
            if unit is None:
                return
            assert isinstance(unit, SendUnit)
            # A slow pace reserves slots far ahead (16 workers at one batch every 2 s wait
            # up to 32 s): the wait ends early when the run stops.
            await limiter.acquire(recipients_of(unit), wake=self._halt)
            if self.halted():
                return  # never marked sending: the unit stays as it was
            rows = sum(len(pm.rows) for pm in unit.messages)
            await marks.mark(unit)  # committed `sending` when this returns
            crashpoint("sending")  # test-only: the gauntlet's kill -9 after the commit
            self.in_flight += rows
            try:
                await self.deliver(unit)
            finally:
                self.in_flight -= rows
            if self.on_progress is not None:
                self.progress()

    async def deliver(self, unit: SendUnit) -> None:
        """Send ``unit`` until its messages are settled; record and count each of them."""
        delivery = _Delivery(unit, self.provider.build_request(unit))
        try:
            outcomes = await self.retry.call(lambda number: self.attempt(delivery, number))
        except _RetryUnit as exc:  # attempts or time exhausted
            self.retrying -= 1
            outcomes = exc.outcomes
            if delivery.unconnected and not self.halted():
                self.unreached.append((delivery, outcomes))  # recorded when the streak ends
                if len(self.unreached) >= UNREACHABLE_AFTER:
                    self.stop_unreachable()
                    self.release_unreached()
                return
        except _Halted as exc:
            delivery.stopped = True
            outcomes = exc.outcomes
        self.finish(delivery, outcomes)

    def finish(self, delivery: _Delivery, outcomes: list[MessageOutcome]) -> None:
        """Record the delivery's final outcomes, and count them."""
        if delivery.kept:
            outcomes = [delivery.kept.get(o.key, o) for o in outcomes]
        final = self.settle(delivery, outcomes)
        self.recorder.record_final(delivery.unit, final, delivery.attempts)
        self.tally(delivery.unit, final)

    def release_unreached(self) -> None:
        """Record the deliveries that could not connect: failed when the run goes on
        (some request reached the provider since), pending when it stopped."""
        waiting, self.unreached = self.unreached, []
        for delivery, outcomes in waiting:
            self.finish(delivery, outcomes)

    def stop_unreachable(self) -> None:
        """Stop the run: the provider cannot be reached (see the module notes)."""
        delivery, outcomes = self.unreached[-1]
        url = delivery.request.url
        count = len(self.unreached)
        requests = f"{count} requests" if count > 1 else "request"
        if self.reached:
            what = f"stopped answering ({_why(outcomes)}): the last {requests}"
            left = "their rows and the rows not sent yet stay pending"
        else:
            what = f"is unreachable ({_why(outcomes)}): the first {requests}"
            left = "nothing was sent, every row stays pending"
        self._halt.set()
        self.fatal = FatalSendError(
            f"the provider at {origin(url)} {what} could not connect, after their retries;"
            f" {left}; {connect_hint(url)}",
            error_type="unreachable",
        )

    async def attempt(self, delivery: _Delivery, number: int) -> list[MessageOutcome]:
        """One HTTP attempt of the delivery's current request; raises to retry."""
        delivery.attempts = number
        if number > 1:
            self.retrying -= 1
            self.retries += 1
            if self.halted():
                raise _Halted(delivery.last)
            await self.limiter.acquire(recipients_of(delivery.unit), wake=self._halt)
            if self.halted():
                raise _Halted(delivery.last)
        unit = delivery.unit
        started = self.clock()
        self.requests += 1
        status = 0
        try:
            response = await self.transport.send(delivery.request)
        except SendError as exc:
            outcomes = self.provider.outcomes_for_error(unit, exc)
            delivery.unconnected = exc.error_type in CONNECT_FAILURES
        else:
            crashpoint("response")  # test-only: kill -9 with the answer unrecorded
            status = response.status
            outcomes = self.provider.parse_response(unit, status, response.headers, response.body)
            delivery.unconnected = False
        if delivery.unconnected:
            self.warn_unconnected(delivery.request.url, outcomes)
        else:  # it reached the provider: the deliveries that could not connect fail now
            self.reached = True
            if self.unreached:
                self.release_unreached()
        self.recorder.record_attempt(unit, number, outcomes, (self.clock() - started) * 1000.0)
        delivery.last = outcomes
        throttled = [o for o in outcomes if o.http_status == 429] if status != 429 else outcomes
        if throttled:  # the whole request, or some messages of a batch (a 207)
            self.throttled += 1
            self.limiter.on_throttled(throttled[0].retry_after)
        elif status:
            self.limiter.on_success()

        again: list[PlannedMessage] = []
        retry_after = None
        uncertain = False
        for pm, o in zip(unit.messages, outcomes, strict=True):
            kind = o.kind
            if kind is ACCEPTED or kind is PERMANENT:
                continue
            if kind is FATAL:
                self.stop_on(o)  # take no new unit from now on
                return outcomes
            if kind is UNKNOWN:
                if not self.uncertainty.retries(o):
                    continue
                uncertain = True
            again.append(pm)
            if o.retry_after is not None and (retry_after is None or o.retry_after > retry_after):
                retry_after = o.retry_after
        if not again:
            return outcomes
        if self.halted():
            delivery.stopped = True
            return outcomes
        delivery.maybe = delivery.maybe or uncertain
        if self.uncertainty.idempotent_provider:
            # The provider de-duplicates: repeat the very same request, keep what it took.
            for o in outcomes:
                if o.kind is ACCEPTED:
                    delivery.kept[o.key] = o
        elif len(again) < len(unit.messages):
            # Settle what the provider answered for good now, and commit the rest as a
            # request of its own before the back-off: a crash while waiting then leaves
            # the accepted rows sent, not in flight.
            outcomes = self.split(delivery, again, outcomes, number)
        self.retrying += 1
        if self.on_progress is not None:
            self.progress()  # a unit now waits for its retry: show it
        raise _RetryUnit(outcomes, retry_after)

    def split(
        self,
        delivery: _Delivery,
        again: list[PlannedMessage],
        outcomes: list[MessageOutcome],
        attempts: int,
    ) -> list[MessageOutcome]:
        """Record the settled part of the request, commit the rest as a request of its own.

        Returns the outcomes of the rest, which is the delivery's request from now on.
        """
        unit = delivery.unit
        going = {pm.key for pm in again}
        settled_unit = SendUnit(
            unit.key, tuple(pm for pm in unit.messages if pm.key not in going), unit.batch,
            unit.prior,
        )  # fmt: skip
        settled = self.settle(delivery, [o for o in outcomes if o.key not in going])
        self.recorder.record_final(settled_unit, settled, attempts)
        self.tally(settled_unit, settled)
        rest = unit.subset(again)
        self.recorder.mark_split(unit, rest)  # committed with the settled outcomes
        delivery.unit = rest
        delivery.request = self.provider.build_request(rest)
        delivery.last = [o for o in outcomes if o.key in going]
        return delivery.last

    def settle(self, delivery: _Delivery, outcomes: list[MessageOutcome]) -> list[MessageOutcome]:
        """Each outcome as the state it leaves: what was not settled goes back or fails.

        A message not accepted is ``unknown`` whatever this answer said if an earlier
        attempt may have been processed or a resume is sending an unknown row again.
        Otherwise one never answered for good (retryable, or the run stopped on a fatal
        answer or a stop) is ``failed`` (retryable) if its retries ran out or a resume was
        sending a failed row again, else ``unsent`` (pending).
        """
        prior = delivery.unit.prior
        stopped = delivery.stopped or self.halted()
        # An earlier attempt (or the run a resume is sending again) may have delivered
        # it: only an acceptance settles it, any refusal now says nothing about then.
        uncertain = delivery.maybe or prior == "unknown"
        out = []
        for o in outcomes:
            kind = o.kind
            if kind is ACCEPTED or kind is UNKNOWN:
                pass
            elif uncertain:
                o = dataclasses.replace(o, kind=UNKNOWN)
            elif kind is FATAL or (kind is RETRYABLE and stopped):
                o = dataclasses.replace(o, kind=RETRYABLE if prior == "failed" else UNSENT)
            out.append(o)
        return out

    def tally(self, unit: SendUnit, outcomes: list[MessageOutcome]) -> None:
        self.units += 1
        for pm, o in zip(unit.messages, outcomes, strict=True):
            kind = o.kind
            if kind is ACCEPTED:
                self.sent += len(pm.rows)
            elif kind is UNKNOWN:
                self.unknown += len(pm.rows)
            elif kind is not UNSENT:
                self.failed += len(pm.rows)

    def warn_unconnected(self, url: str, outcomes: list[MessageOutcome]) -> None:
        if self.warned or self.on_warning is None:
            return
        self.warned = True
        reason = next((o.error_message for o in outcomes if o.error_message), "no connection")
        self.on_warning(
            f"{reason}; {connect_hint(url)} (retrying; the run stops after"
            f" {UNREACHABLE_AFTER} requests in a row cannot connect)"
        )

    def stop_on(self, outcome: MessageOutcome) -> None:
        self._halt.set()  # wake the workers waiting for a retry or a rate slot
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
                unknown=self.unknown,
                in_flight=self.in_flight,
                requests=self.requests,
                elapsed=elapsed,
                rate=self.sent / elapsed if elapsed > 0 else 0.0,
            )
        )


def _why(outcomes: list[MessageOutcome]) -> str:
    """Why a request could not connect, in a few words (``Connection refused``)."""
    for o in outcomes:
        if o.error_type == "connect_timeout":
            return "connecting timed out"
        if o.error_message:
            return o.error_message.rpartition(": ")[2] or o.error_message
    return "no connection"


_STATE_OF = {ACCEPTED: "sent", UNKNOWN: "unknown", UNSENT: "pending", FATAL: "pending"}


class MemoryRecorder:
    """A :class:`Recorder` that keeps everything in memory (tests, benchmarks, scripts).

    ``states`` maps each row to ``"sending"``, ``"sent"``, ``"failed"``, ``"unknown"`` or
    ``"pending"`` (an unsent message goes back to pending, as in the store); ``finals``
    keeps each row's last outcome, ``attempts`` every (unit key, attempt, status) seen and
    ``units`` every request's composition, split ones included.
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

    def mark_split(self, parent: SendUnit, unit: SendUnit) -> None:
        for row in unit.rows:
            if self.states.get(row) != "sending":
                raise AssertionError(f"row {row} of {unit.key} is not in flight")
        self.sending_marks += 1
        self.units[unit.key] = tuple(pm.rows for pm in unit.messages)

    def record_final(
        self, unit: SendUnit, outcomes: Sequence[MessageOutcome], attempts: int
    ) -> None:
        by_key = {o.key: o for o in outcomes}
        for pm in unit.messages:
            o = by_key[pm.key]
            state = _STATE_OF.get(o.kind, "failed")
            for row in pm.rows:
                self.states[row] = state
                self.finals[row] = o

    def flush(self) -> None:
        self.flushes += 1

    def count(self, state: str) -> int:
        """How many rows are in ``state``."""
        return sum(1 for s in self.states.values() if s == state)
