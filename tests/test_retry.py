"""The retry policy: what is retried, how long it waits, when it gives up (fake time)."""

from __future__ import annotations

import asyncio

import pytest
from support.clock import FakeClock

from batchsend.errors import FatalSendError, PermanentSendError, RetryableSendError
from batchsend.retry import RetryPolicy


def policy(clock: FakeClock, **kwargs) -> RetryPolicy:
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kwargs)


def run(p: RetryPolicy, failures: list[BaseException]):
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if failures:
            raise failures.pop(0)
        return "ok"

    return asyncio.run(p.call(attempt)), calls


def test_retryable_errors_are_retried_until_success():
    t = FakeClock(0.0)
    result, calls = run(policy(t), [RetryableSendError("503"), RetryableSendError("timeout")])
    assert result == "ok"
    assert calls == [1, 2, 3]
    assert len(t.slept) == 2


@pytest.mark.parametrize(
    "error", [PermanentSendError("400"), FatalSendError("401"), ValueError("a bug")]
)
def test_other_errors_are_never_retried(error):
    t = FakeClock(0.0)
    with pytest.raises(type(error)):
        run(policy(t), [error])
    assert t.slept == []


def test_attempts_are_bounded_and_the_last_error_surfaces():
    t = FakeClock(0.0)
    errors = [RetryableSendError(f"try {i}") for i in range(10)]
    with pytest.raises(RetryableSendError, match="try 3"):
        run(policy(t, max_attempts=4), errors)
    assert len(t.slept) == 3


def test_time_is_bounded_counting_the_next_wait():
    t = FakeClock(0.0)
    errors = [RetryableSendError("x", retry_after=4.0) for _ in range(50)]
    with pytest.raises(RetryableSendError):
        run(policy(t, max_attempts=50, max_time=10.0), errors)
    # waits of 4 s: 4 + 4 = 8 <= 10, a third would end at 12 > 10
    assert t.slept == [4.0, 4.0]


def test_waits_are_full_jitter_exponential_and_capped():
    t = FakeClock(0.0)
    p = policy(t, max_attempts=400, max_time=1e9, initial_wait=0.5, max_wait=8.0)
    errors = [RetryableSendError("x") for _ in range(399)]
    run(p, errors)
    # attempt n waits uniform(0, min(8, 0.5 * 2**n)); jitter reaches low values too
    assert all(0 <= w <= min(8.0, 0.5 * 2 ** (i + 1)) for i, w in enumerate(t.slept))
    late = t.slept[10:]
    assert min(late) < 2.0 < max(late) <= 8.0


def test_retry_after_is_a_floor_on_the_wait():
    t = FakeClock(0.0)
    run(policy(t, initial_wait=0.01, max_wait=0.02), [RetryableSendError("429", retry_after=3)])
    assert t.slept == [3]


def test_max_attempts_must_be_positive():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
