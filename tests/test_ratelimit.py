"""The rate limiter, driven by a fake clock: pacing, Retry-After, slowdown and recovery."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from support.clock import FakeClock, VirtualTime

from batchsend.ratelimit import PACING_MARGIN, RateLimiter, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-4", 0.0),
        (format_datetime(datetime.fromtimestamp(NOW + 7, UTC), usegmt=True), 7.0),
        ("Tue, 14 Nov 2023 22:13:27 GMT", 7.0),
        (format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


def releases(limiter: RateLimiter, clock: FakeClock, n: int, recipients: int = 1) -> list[float]:
    """Clock times at which n requests acquired in a row are released."""

    async def go() -> list[float]:
        out = []
        for _ in range(n):
            await limiter.acquire(recipients)
            out.append(clock.t)
        return out

    return asyncio.run(go())


def test_requests_are_paced_at_the_rate_minus_the_margin():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=10, clock=clock, sleep=clock.sleep)
    times = releases(limiter, clock, 21)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {round((1 + PACING_MARGIN) / 10, 9)}
    # no one-second window holds more than 10
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) == 10


def test_burst_lets_requests_go_back_to_back_after_idling():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=10, burst=3, clock=clock, sleep=clock.sleep)
    times = releases(limiter, clock, 5)
    assert times[:3] == [1000.0] * 3
    assert times[3] > 1000.0


def test_recipients_bucket_charges_each_request_its_recipients():
    clock = FakeClock()
    limiter = RateLimiter(recipients_per_second=100, clock=clock, sleep=clock.sleep)
    times = releases(limiter, clock, 4, recipients=50)
    step = 0.5 * (1 + PACING_MARGIN)  # a margin under the rate, as for requests
    assert [round(t - 1000.0, 6) for t in times] == [round(n * step, 6) for n in range(4)]


def test_a_wait_for_a_slot_ends_when_the_run_stops():
    async def go() -> tuple[float, float]:
        limiter = RateLimiter(recipients_per_second=10)
        wake = asyncio.Event()
        await limiter.acquire(100)  # the next slot is 10 s away
        asyncio.get_running_loop().call_later(0.05, wake.set)
        started = time.monotonic()
        await limiter.acquire(100, wake=wake)
        return time.monotonic() - started, limiter.paused_until

    waited, _ = asyncio.run(go())
    assert waited < 2.0


def test_concurrent_waiters_each_get_their_own_slot():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=4, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(4)]  # four callers at the same instant
    step = (1 + PACING_MARGIN) / 4
    assert waits == pytest.approx([0, step, 2 * step, 3 * step])


def test_unlimited_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    releases(limiter, clock, 1000)
    assert clock.slept == []


def test_a_429_pauses_everyone_for_retry_after_then_slows_down_and_recovers():
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_second=100, clock=clock, sleep=clock.sleep, recovery_seconds=10
    )
    for _ in range(40):  # the provider accepted 40 in the last second
        limiter.on_success()
    limiter.on_throttled(2.0)
    assert limiter.paused_until == 1002.0
    first = releases(limiter, clock, 1)[0]
    assert first == pytest.approx(1002.0)
    # right after the pause: 0.8 x the 40/s the provider was accepting
    assert limiter.request_rate() == pytest.approx(32.0, rel=0.01)
    clock.t += 5
    assert limiter.request_rate() == pytest.approx(32.0 * 1.5, rel=0.02)
    clock.t += 100
    assert limiter.request_rate() == 100  # recovered: the configured rate again


def test_429s_answering_requests_sent_before_the_pause_cut_the_rate_once():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=50, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        limiter.on_success()
    limiter.on_throttled(1.0)
    rate = limiter.request_rate()
    clock.t += 0.01
    limiter.on_throttled(1.0)
    limiter.on_throttled(1.0)
    assert limiter.request_rate() == pytest.approx(rate, rel=0.01)
    assert limiter.throttle_episodes == 1
    assert limiter.throttled_responses == 3
    assert limiter.paused_until == pytest.approx(1001.01)


def test_unlimited_run_gets_a_cap_after_a_429():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(30):
        limiter.on_success()
    limiter.on_throttled(None)  # no Retry-After: the default one-second pause
    assert limiter.paused_until == 1001.0
    times = releases(limiter, clock, 10)
    assert times[0] == pytest.approx(1001.0)
    gap = times[-1] - times[-2]
    assert gap == pytest.approx((1 + PACING_MARGIN) / 24, rel=0.05)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(requests_per_second=0)
    with pytest.raises(ValueError):
        RateLimiter(burst=0.5)


def test_a_late_wake_up_never_puts_rate_plus_one_requests_in_a_second() -> None:
    """Slots are reserved ahead; a worker that wakes 50 ms late must not leave so close
    behind the next ones that one second of departures holds 11 at 10 requests/s."""
    clock = VirtualTime(late_call=1, lateness=0.05)
    limiter = RateLimiter(requests_per_second=10, clock=clock, sleep=clock.sleep)
    departures: list[float] = []

    async def worker() -> None:
        for _ in range(5):
            await limiter.acquire()
            departures.append(clock.t)

    async def main() -> None:
        tasks = [asyncio.create_task(worker()) for _ in range(6)]
        await clock.run(tasks)

    asyncio.run(main())
    departures.sort()
    assert len(departures) == 30
    busiest = max(sum(1 for d in departures if start <= d < start + 1.0) for start in departures)
    assert busiest <= 10
