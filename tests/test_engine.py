"""The send engine over real HTTP: outcomes, retries, idempotency, fatal stops, rates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest
from aiohttp import web
from support.clock import FakeClock
from support.sandboxes import closed_port

from batchsend.engine import UNREACHABLE_AFTER, MemoryRecorder, Uncertainty, send_units
from batchsend.message import Address, Message
from batchsend.plan import SendUnit, plan_units
from batchsend.progress import Progress
from batchsend.providers import get_provider
from batchsend.ratelimit import RateLimiter
from batchsend.retry import RetryPolicy
from batchsend.transport import make_transport

KEY = "sk-test"


def msg(row: int, **changes) -> Message:
    fields = {
        "row": row,
        "sender": Address("news@example.com"),
        "to": (Address(f"user{row}@dest.test"),),
        "subject": f"Hello {row}",
        "text": f"Dear {row}",
    }
    fields.update(changes)
    return Message(**fields)


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


FAST_RETRY = RetryPolicy(max_attempts=8, sleep=no_wait)


def run(
    base_url,
    messages,
    *,
    provider="tosend",
    transport="aiohttp",
    concurrency=8,
    recorder=None,
    limiter=None,
    retry=FAST_RETRY,
    stop_event=None,
    on_progress=None,
    api_key=KEY,
    batch_size=100,
    asynchronous=False,
    uncertainty=None,
    on_warning=None,
):
    recorder = recorder or MemoryRecorder()
    p = get_provider(provider, base_url=base_url, api_key=api_key, batch_size=batch_size)
    planned = plan_units(messages, run_id="run-1", provider=p)

    async def go():
        units = planned
        if asynchronous:

            async def agen() -> AsyncIterator:
                for u in planned:
                    yield u

            units = agen()
        async with make_transport(transport, concurrency=concurrency, timeout=5) as t:
            return await send_units(
                units,
                provider=p,
                transport=t,
                recorder=recorder,
                concurrency=concurrency,
                limiter=limiter,
                retry=retry,
                stop_event=stop_event,
                on_progress=on_progress,
                on_warning=on_warning,
                progress_interval=0.0,
                uncertainty=uncertainty,
            )

    return asyncio.run(go()), recorder


def recipients(sb) -> list[str]:
    return sorted(a for m in sb.messages() for a in m["to"] + m["cc"] + m["bcc"])


def everyone(n: int) -> list[str]:
    return sorted(f"user{i}@dest.test" for i in range(1, n + 1))


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(("provider", "batch_size"), [("tosend", 100), ("tosend", 1), ("v1", 1)])
def test_every_row_is_sent_once_and_recorded(sandbox, transport, provider, batch_size):
    result, rec = run(
        sandbox.base_url,
        [msg(i) for i in range(1, 231)],
        provider=provider,
        transport=transport,
        batch_size=batch_size,
    )
    assert (result.sent, result.failed, result.fatal, result.complete) == (230, 0, None, True)
    assert rec.count("sent") == 230
    assert recipients(sandbox) == everyone(230)
    expected_requests = 3 if batch_size == 100 else 230
    assert result.requests == sandbox.stats()["requests"] == expected_requests
    assert rec.flushes == 1


def test_rows_are_marked_sending_before_their_request_leaves(sandbox):
    seen_at_mark: list[int] = []

    class Checking(MemoryRecorder):
        def mark_sending(self, unit):
            seen_at_mark.append(len(sandbox.messages()))  # the sandbox's log, right now
            super().mark_sending(unit)

    result, _rec = run(
        sandbox.base_url,
        [msg(i) for i in range(1, 6)],
        provider="v1",
        concurrency=1,
        recorder=Checking(),
    )
    assert result.sent == 5
    assert seen_at_mark == [0, 1, 2, 3, 4]


def test_permanent_failures_do_not_stop_the_run(sandbox):
    messages = [msg(i, subject="" if i % 10 == 0 else f"Hello {i}") for i in range(1, 101)]
    result, rec = run(sandbox.base_url, messages, batch_size=25)
    assert (result.sent, result.failed, result.fatal) == (90, 10, None)
    assert {rec.finals[i].http_status for i in range(10, 101, 10)} == {422}
    assert all(rec.states[i] == "failed" for i in range(10, 101, 10))


def test_insufficient_credits_stops_the_run_and_leaves_the_rest_pending(make_sandbox):
    # ToSend checks credits for the whole batch before processing any of it: the second
    # batch of 100 does not fit in the 50 credits left and is refused as a whole.
    sb = make_sandbox(credits=150)
    result, rec = run(sb.base_url, [msg(i) for i in range(1, 1001)], concurrency=1)
    assert result.fatal is not None
    assert result.fatal.error_type == "insufficient_balance"
    assert result.sent == 100
    assert rec.count("sent") == 100
    # the fatal unit's rows are pending again; units after it were never taken
    assert rec.count("pending") == 100
    assert set(rec.states) == set(range(1, 201))
    assert recipients(sb) == everyone(100)


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_a_bad_key_stops_at_once(sandbox, provider):
    result, rec = run(
        sandbox.base_url,
        [msg(i) for i in range(1, 501)],
        provider=provider,
        batch_size=1,
        api_key="sk-wrong",
        concurrency=4,
    )
    assert result.fatal is not None
    assert result.fatal.status in (401, 403)
    assert "sk-wrong" not in str(result.fatal)
    assert rec.sending_marks <= 4 + 4  # only what was already in flight or about to go
    assert rec.count("sent") == rec.count("failed") == 0
    assert sandbox.messages() == []


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_server_errors_leave_rows_unknown_and_nothing_is_sent_again(make_sandbox, provider):
    # A 5xx may come after the provider delivered the message: never sent again on our own.
    sb = make_sandbox(fail_rate=0.3, seed=7)
    result, rec = run(
        sb.base_url, [msg(i) for i in range(1, 301)], provider=provider, batch_size=10
    )
    assert result.failed == 0 and result.retries == 0
    assert result.unknown > 0 and result.sent + result.unknown == 300
    assert result.requests == result.units
    unknown = [row for row, state in rec.states.items() if state == "unknown"]
    assert len(unknown) == result.unknown
    assert all(rec.finals[row].http_status in (500, 502, 503) for row in unknown)
    sent = sorted(f"user{row}@dest.test" for row, s in rec.states.items() if s == "sent")
    assert recipients(sb) == sent  # each accepted once, the unknown ones never again


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_on_server_error_retry_sends_them_again(make_sandbox, provider):
    # The user accepted the duplicate risk; this sandbox refuses before processing, so
    # here the retries cannot deliver twice.
    sb = make_sandbox(fail_rate=0.3, seed=7)
    result, _rec = run(
        sb.base_url,
        [msg(i) for i in range(1, 301)],
        provider=provider,
        batch_size=10,
        uncertainty=Uncertainty(retry_server_errors=True),
    )
    assert (result.sent, result.failed, result.unknown) == (300, 0, 0)
    assert result.retries > 0
    assert recipients(sb) == everyone(300)


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_dropped_answers_end_unknown_and_each_message_is_delivered_once(make_sandbox, provider):
    sb = make_sandbox(drop_rate=0.2, seed=11)
    result, rec = run(
        sb.base_url, [msg(i) for i in range(1, 201)], provider=provider, batch_size=10
    )
    dropped = sb.stats()["faults"].get("dropped", 0)
    assert dropped > 0 and result.retries == 0
    per_request = 10 if provider == "tosend" else 1
    assert result.unknown == dropped * per_request
    assert (result.sent + result.unknown, result.failed) == (200, 0)
    assert {rec.finals[r].error_type for r, s in rec.states.items() if s == "unknown"} == {
        "connection_lost"
    }
    assert recipients(sb) == everyone(200)  # the dropped ones were delivered, once


def test_a_provider_unreachable_from_the_start_stops_the_run_with_every_row_pending():
    url = f"http://127.0.0.1:{closed_port()}"
    warnings: list[str] = []
    result, rec = run(
        url,
        [msg(i) for i in range(1, 41)],
        provider="v1",
        retry=RetryPolicy(max_attempts=3, sleep=no_wait),
        on_warning=warnings.append,
    )
    assert result.fatal is not None and result.fatal.error_type == "unreachable"
    assert url in str(result.fatal) and "batchsend sandbox" in str(result.fatal)
    # Nothing reached the provider: no row is failed, every one goes to a resume.
    assert (result.sent, result.failed, result.unknown) == (0, 0, 0)
    assert set(rec.states.values()) == {"pending"}
    # It stopped after a few requests' retries, not after trying all 40 rows: the 8
    # workers took one request each, and one more after each of the first that gave up.
    assert result.units <= 8 + UNREACHABLE_AFTER - 1 < 40
    assert len(warnings) == 1 and url in warnings[0] and "check base_url" in warnings[0]


def test_a_short_run_that_never_connects_is_unreachable_too():
    result, rec = run(
        f"http://127.0.0.1:{closed_port()}",
        [msg(1)],
        provider="v1",
        retry=RetryPolicy(max_attempts=2, sleep=no_wait),
    )
    assert UNREACHABLE_AFTER > 1 and result.fatal is not None
    assert result.fatal.error_type == "unreachable" and rec.states == {1: "pending"}


def test_a_connection_failure_between_answers_fails_its_rows_as_before(make_sandbox):
    # One request at a time: row 1 is answered, then the provider is down while row 2
    # uses up its retries and row 3 tries once; it is back for row 3's second attempt.
    sb = make_sandbox()
    naps = 0

    async def nap(seconds: float) -> None:
        nonlocal naps
        naps += 1
        if naps == 2:
            sb.start()
        await asyncio.sleep(0)

    def progress(p: Progress) -> None:
        if p.sent == 1 and sb.running:
            sb.stop()

    result, rec = run(
        sb.base_url,
        [msg(i) for i in range(1, 6)],
        provider="v1",
        concurrency=1,
        retry=RetryPolicy(max_attempts=2, sleep=nap),
        on_progress=progress,
    )
    assert result.fatal is None and result.complete
    assert rec.states == {1: "sent", 2: "failed", 3: "sent", 4: "sent", 5: "sent"}
    assert (rec.finals[2].kind.value, rec.finals[2].error_type) == (
        "retryable",
        "connection_refused",
    )
    assert recipients(sb) == sorted(f"user{i}@dest.test" for i in (1, 3, 4, 5))


def test_a_provider_that_goes_away_mid_run_stops_it_with_the_rest_pending(make_sandbox):
    sb = make_sandbox()

    def progress(p: Progress) -> None:
        if p.sent >= 10 and sb.running:
            sb.stop()

    result, rec = run(
        sb.base_url,
        [msg(i) for i in range(1, 61)],
        provider="v1",
        concurrency=2,
        retry=RetryPolicy(max_attempts=2, sleep=no_wait),
        on_progress=progress,
    )
    assert result.fatal is not None and result.fatal.error_type == "unreachable"
    assert "stopped answering" in str(result.fatal)
    delivered = recipients(sb)
    assert result.sent == len(delivered) >= 10
    assert result.failed == 0  # nothing after the stop failed: it is all for a resume
    states = [rec.states.get(i, "pending") for i in range(1, 61)]
    assert states.count("pending") == 60 - result.sent - result.unknown > 0


def test_async_iterables_are_consumed_too(sandbox):
    result, _ = run(
        sandbox.base_url, [msg(i) for i in range(1, 251)], batch_size=7, asynchronous=True
    )
    assert result.sent == 250
    assert recipients(sandbox) == everyone(250)


def test_stop_event_finishes_in_flight_and_takes_nothing_new(sandbox):
    stop = asyncio.Event()
    snapshots: list[Progress] = []

    def progress(p: Progress) -> None:
        snapshots.append(p)
        if p.sent >= 20:
            stop.set()

    result, rec = run(
        sandbox.base_url,
        [msg(i) for i in range(1, 1001)],
        provider="v1",
        concurrency=4,
        stop_event=stop,
        on_progress=progress,
    )
    assert result.stopped and result.fatal is None and not result.complete
    assert 20 <= result.sent < 40
    assert rec.count("sending") == 0  # nothing left in flight
    assert rec.count("sent") == result.sent == len(sandbox.messages())
    assert snapshots[-1].sent == result.sent
    assert snapshots[-1].in_flight == 0


def test_429_run_above_the_sandbox_limit_finishes_with_few_429s(make_sandbox):
    # ToSend single sends of one recipient: its emails-per-second bucket is then a
    # requests-per-second limit the client does not know in advance and must find.
    sb = make_sandbox(tosend_emails_per_second=20)
    result, _rec = run(
        sb.base_url,
        [msg(i) for i in range(1, 71)],
        provider="tosend",
        batch_size=1,
        concurrency=8,
        limiter=RateLimiter(),
        retry=RetryPolicy(max_attempts=10),
    )
    stats = sb.stats()
    assert (result.sent, result.failed) == (70, 0)
    assert stats["faults"].get("429", 0) == result.throttled > 0
    # the first burst (at most one per worker), then about one per recovery probe
    assert result.throttled <= 16
    assert result.requests == 70 + result.throttled


def test_our_own_rate_is_never_exceeded_in_any_second_at_the_sandbox(sandbox):
    result, _ = run(
        sandbox.base_url,
        [msg(i) for i in range(1, 26)],
        provider="v1",
        concurrency=8,
        limiter=RateLimiter(requests_per_second=10),
    )
    assert result.sent == 25
    per_second = sandbox.stats()["requests_per_second"]
    assert max(per_second.values()) <= 10
    assert result.elapsed >= 2.0


# --- a tiny scripted server for what the sandbox does not do -------------------------------


WALL = 1_700_000_000.0


def test_429_with_an_http_date_pauses_the_run_and_repeats_the_same_request():
    when = format_datetime(datetime.fromtimestamp(WALL + 3, UTC), usegmt=True)
    script = Scripted(
        [
            (429, {"Retry-After": when}, {"status_code": 429, "error_type": "rate_limit_exceeded"}),
            (
                200,
                {},
                {
                    "results": [
                        {"status": "success", "message_id": "m1"},
                        {"status": "success", "message_id": "m2"},
                    ]
                },
            ),
        ]
    )
    fake = FakeClock(100.0)
    limiter = RateLimiter(clock=fake, sleep=fake.sleep)
    retry = RetryPolicy(sleep=fake.sleep, clock=fake, initial_wait=0.01, max_wait=0.02)

    async def go():
        async with script as url:
            p = get_provider("tosend", base_url=url, api_key=KEY, wall_clock=lambda: WALL)
            rec = MemoryRecorder()
            async with make_transport("aiohttp") as t:
                result = await send_units(
                    plan_units([msg(1), msg(2)], run_id="r", provider=p),
                    provider=p,
                    transport=t,
                    recorder=rec,
                    limiter=limiter,
                    retry=retry,
                    clock=fake,
                )
            return result, rec

    result, rec = asyncio.run(go())
    assert result.sent == 2 and result.throttled == 1
    assert fake.slept[0] == pytest.approx(3.0)  # the retry waited the date out
    assert limiter.throttle_episodes == 1
    (key1, body1), (key2, body2) = script.seen
    assert key1 == key2 and body1 == body2
    assert [o.provider_message_id for o in (rec.finals[1], rec.finals[2])] == ["m1", "m2"]


def scripted_run(script, messages, *, retry, uncertainty=None):
    async def go():
        async with script as url:
            p = get_provider("tosend", base_url=url, api_key=KEY)
            rec = MemoryRecorder()
            async with make_transport("aiohttp") as t:
                result = await send_units(
                    plan_units(messages, run_id="r", provider=p),
                    provider=p,
                    transport=t,
                    recorder=rec,
                    retry=retry,
                    uncertainty=uncertainty,
                )
            return result, rec

    return asyncio.run(go())


SUCCESS = {"status": "success", "message_id": "m1"}
SPAM = {
    "status": "spam",
    "message": "All recipient email addresses are marked as spam / disposable.",
    "errors": {"to": {"spam": "All recipient email addresses are marked as spam / disposable."}},
}


def per_message_error(status: int) -> dict:
    return {"status": "error", "status_code": status, "error_type": "x", "message": "no"}


def test_a_207_sends_only_the_refused_messages_again_in_a_request_of_their_own():
    script = Scripted(
        [
            (207, {}, {"results": [SUCCESS, per_message_error(429), SPAM]}),
            (200, {}, {"results": [{"status": "success", "message_id": "m2"}]}),
        ]
    )
    result, rec = scripted_run(
        script, [msg(1), msg(2), msg(3)], retry=RetryPolicy(max_attempts=3, sleep=no_wait)
    )
    assert (result.sent, result.failed, result.unknown, result.requests) == (2, 1, 0, 2)
    assert rec.states == {1: "sent", 2: "sent", 3: "failed"}
    assert rec.finals[3].error_type == "disposable"  # spam: never retried
    (key1, body1), (key2, body2) = script.seen
    first = [e["message_hash"] for e in orjson.loads(body1)["emails"]]
    second = [e["message_hash"] for e in orjson.loads(body2)["emails"]]
    assert second == [first[1]]  # the accepted and the spam messages never travel again
    assert key2 != key1 and key2 in rec.units and rec.units[key2] == ((2,),)


def test_a_per_message_5xx_is_unknown_and_not_sent_again():
    script = Scripted([(207, {}, {"results": [SUCCESS, per_message_error(503)]})])
    result, rec = scripted_run(
        script, [msg(1), msg(2)], retry=RetryPolicy(max_attempts=3, sleep=no_wait)
    )
    assert (result.sent, result.failed, result.unknown, result.requests) == (1, 0, 1, 1)
    assert rec.states == {1: "sent", 2: "unknown"}
    assert rec.finals[1].provider_message_id == "m1"


def test_an_idempotent_provider_gets_the_same_request_again():
    script = Scripted(
        [
            (207, {}, {"results": [SUCCESS, per_message_error(503)]}),
            (500, {}, {"status_code": 500, "error_type": "internal_error", "message": "down"}),
        ]
    )
    result, rec = scripted_run(
        script,
        [msg(1), msg(2)],
        retry=RetryPolicy(max_attempts=2, sleep=no_wait),
        uncertainty=Uncertainty(idempotent_provider=True),
    )
    assert (result.sent, result.unknown, result.requests) == (1, 1, 2)
    assert rec.states == {1: "sent", 2: "unknown"}  # an attempt may have delivered it
    assert script.seen[0] == script.seen[1]  # same key, same bytes


def test_a_stop_while_a_unit_waits_for_its_retry_puts_its_rows_back_to_pending(make_sandbox):
    # Every request is refused as rate limited (not processed); the run is stopped while
    # the units wait for their retry: nothing was delivered, so a resume must send them.
    sb = make_sandbox()
    sb.configure(refuse_next=10_000)
    stop = asyncio.Event()

    def progress(p: Progress) -> None:
        if p.retrying:
            stop.set()

    result, rec = run(
        sb.base_url,
        [msg(i) for i in range(1, 31)],
        batch_size=10,
        concurrency=3,
        stop_event=stop,
        on_progress=progress,
        retry=RetryPolicy(max_attempts=10, initial_wait=30, max_wait=30),
    )
    assert result.stopped and (result.sent, result.failed, result.unknown) == (0, 0, 0)
    assert set(rec.states.values()) == {"pending"}
    assert result.elapsed < 10  # the 30 s back-off ended when the run stopped
    assert sb.messages() == []


def test_an_all_disposable_single_send_fails_only_that_message(sandbox):
    messages = [msg(1), msg(2, to=(Address("x@mailinator.com"),)), msg(3)]
    result, rec = run(sandbox.base_url, messages, batch_size=1)
    assert result.fatal is None and result.complete
    assert rec.states == {1: "sent", 2: "failed", 3: "sent"}
    assert rec.finals[2].error_type == "disposable"
    assert recipients(sandbox) == ["user1@dest.test", "user3@dest.test"]


class Answering:
    """A provider on 127.0.0.1 answering ``handler(body, n) -> (status, headers, body, delay)``."""

    def __init__(self, handler):
        self.handler = handler
        self.seen: list[tuple[str | None, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.headers.get("Idempotency-Key"), body))
        status, headers, payload, delay = self.handler(orjson.loads(body), len(self.seen))
        if delay:
            await asyncio.sleep(delay)
        if isinstance(payload, bytes):
            return web.Response(body=payload, status=status, headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


class Scripted(Answering):
    """Answers from a script, in order, and keeps every request's key and body."""

    def __init__(self, answers):
        queue = list(answers)
        super().__init__(lambda body, n: (*queue.pop(0), 0))


def answered(handler, messages, *, provider="tosend", batch_size=100, concurrency=1,
             retry=None, uncertainty=None, prior=None):  # fmt: skip
    server = Answering(handler)

    async def go():
        async with server as url:
            p = get_provider(provider, base_url=url, api_key=KEY, batch_size=batch_size)
            units = list(plan_units(messages, run_id="r", provider=p))
            if prior:
                units = [SendUnit(u.key, u.messages, u.batch, prior) for u in units]
            rec = MemoryRecorder()
            async with make_transport("aiohttp", concurrency=concurrency, timeout=5) as t:
                started = time.monotonic()
                result = await send_units(
                    units, provider=p, transport=t, recorder=rec, concurrency=concurrency,
                    retry=retry or RetryPolicy(max_attempts=3, sleep=no_wait),
                    uncertainty=uncertainty,
                )  # fmt: skip
                return result, rec, time.monotonic() - started

    return asyncio.run(go())


def error_body(status: int) -> dict:
    return {"status_code": status, "error_type": "x", "message": "no"}


def test_a_fatal_answer_wakes_a_unit_waiting_for_its_retry():
    def handler(body, n):
        if body["to"][0]["email"] == "user1@dest.test":
            return 429, {"Retry-After": "8"}, error_body(429), 0
        return 401, {}, error_body(401), 0.3

    result, _rec, took = answered(
        handler, [msg(1), msg(2)], batch_size=1, concurrency=2, retry=RetryPolicy(max_attempts=3)
    )
    assert result.fatal is not None
    assert took < 3  # not the 8 s back-off


@pytest.mark.parametrize(
    ("uncertainty", "prior", "second"),
    [
        (Uncertainty(idempotent_provider=True), None, 409),  # "this key is in use"
        (Uncertainty(retry_server_errors=True), None, 422),
        (None, "unknown", 409),  # a --resend-unknown refused now says nothing about then
    ],
)
def test_a_refusal_after_a_maybe_processed_attempt_stays_unknown(uncertainty, prior, second):
    def handler(body, n):
        if n == 1 and prior is None:
            return 503, {}, error_body(503), 0
        return second, {}, error_body(second), 0

    _result, rec, _ = answered(
        handler, [msg(1)], batch_size=1, uncertainty=uncertainty, prior=prior
    )
    assert rec.states == {1: "unknown"}


@pytest.mark.parametrize(("provider", "status"), [("tosend", 201), ("tosend", 202),
                                                  ("tosend", 204), ("v1", 202)])  # fmt: skip
def test_a_2xx_other_than_the_documented_one_is_unknown_not_failed(provider, status):
    def handler(body, n):
        return status, {}, (b"" if status == 204 else {"message_id": "<x@y>"}), 0

    _result, rec, _ = answered(handler, [msg(1)], provider=provider, batch_size=1)
    assert rec.states == {1: "unknown"}
    assert rec.finals[1].error_type == "bad_response"


def test_the_accepted_part_of_a_207_is_recorded_before_the_back_off():
    # A second Ctrl-C or a kill during the wait must not leave accepted rows in flight.
    def handler(body, n):
        return 207, {}, {"results": [SUCCESS, per_message_error(429)]}, 0

    rec = MemoryRecorder()

    async def go():
        async with Answering(handler) as url:
            p = get_provider("tosend", base_url=url, api_key=KEY)
            units = list(plan_units([msg(1), msg(2)], run_id="r", provider=p))
            async with make_transport("aiohttp") as t:
                task = asyncio.ensure_future(
                    send_units(
                        units, provider=p, transport=t, recorder=rec,
                        retry=RetryPolicy(max_attempts=5, initial_wait=30, max_wait=30),
                    )
                )  # fmt: skip
                await asyncio.sleep(1.0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(go())
    assert rec.states == {1: "sent", 2: "sending"}
    assert len(rec.units) == 2  # the rest was committed as a request of its own
