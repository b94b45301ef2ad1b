"""The retry policy, configured with tenacity in this one place.

Only :class:`RetryableSendError` is retried: what the provider certainly did not process
(429, a refused connection, a connect timeout). The engine decides which answers are
that; maybe-processed ones (5xx, read timeouts) are only retried when the campaign says
its provider de-duplicates. Permanent and fatal errors, and every other exception, pass
straight through. Waits are
exponential with full jitter (``uniform(0, min(max_wait, initial x 2**n))``, AWS's
"full jitter"), never shorter than the provider's ``Retry-After``; attempts are bounded
by number (``max_attempts``) and by time (``max_time``, measured from the first attempt,
and counting the wait that would come next).

Example::

    policy = RetryPolicy(max_attempts=5, max_time=120)
    result = await policy.call(lambda attempt: send_once(attempt))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from batchsend.errors import RetryableSendError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``sleep`` and ``clock`` are injectable for tests."""

    max_attempts: int = 5
    max_time: float = 300.0
    initial_wait: float = 0.5
    max_wait: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def retrying(self, start: float | None = None) -> tenacity.AsyncRetrying:
        """A fresh tenacity controller for one call; its time bound runs from ``start``."""
        start = self.clock() if start is None else start
        jitter = tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait)

        def wait(state: tenacity.RetryCallState) -> float:
            base = jitter(state)
            exc = state.outcome.exception() if state.outcome else None
            after = getattr(exc, "retry_after", None)
            return max(base, after) if after else base

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return self.clock() - start + (state.upcoming_sleep or 0.0) > self.max_time

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(RetryableSendError),
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            reraise=True,
        )

    async def call(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        """Run ``attempt(n)`` (n = 1, 2, ...) until it returns, or re-raise its last error.

        The first attempt runs outside tenacity: nearly every request succeeds at once,
        and setting up a tenacity loop (it inspects its callables on every action) costs
        more than the rest of the engine's work per request. A retryable
        failure enters the loop, which replays that failure as its own attempt 1, so
        tenacity alone decides every wait and bound, exactly as if it had run from the
        start.
        """
        start = self.clock()
        try:
            return await attempt(1)
        except RetryableSendError as exc:
            first = exc
        async for trial in self.retrying(start):
            with trial:
                number = trial.retry_state.attempt_number
                if number == 1:
                    raise first
                return await attempt(number)
        raise AssertionError("unreachable: tenacity re-raises or returns")  # pragma: no cover


NO_RETRY = RetryPolicy(max_attempts=1)
