"""Keeping to the provider's pace: token buckets, and slowing the whole run on 429.

:class:`RateLimiter` holds two token buckets, requests per second and recipients per
second, kept as GCRA "theoretical arrival times" (a reservation is O(1) and needs no
background task or lock: each caller learns at once how long to wait, so waiters are
served in arrival order). Time comes from an injected ``clock`` and ``sleep``, so tests
drive it without real sleeps.

On a 429 the whole run slows down, not just the request that got it:

1. every acquire waits until the provider's ``Retry-After`` has passed (a pause);
2. the request rate is capped at ``slowdown`` x the rate the provider was accepting in
   the last second (measured from :meth:`RateLimiter.on_success` calls), or, with no
   measure yet, ``slowdown`` x the current rate;
3. the cap then grows back linearly: ``cap0 x (1 + t / recovery_seconds)``, until it no
   longer binds (it exceeds the configured rate) or, with no configured rate, for good.

429s that answer requests sent before the pause (they arrive while it lasts) extend the
pause but do not cut the rate again: one throttle episode, one cut.

Pacing keeps ``PACING_MARGIN`` under the configured rates: jitter between our release
times and the provider's clock must never put R+1 requests into one of its one-second
windows, nor send a batch before the provider's emails-per-second bucket has refilled
for it. The recipients bucket charges a request's recipients when it leaves, so a
one-second window can exceed the recipient rate by at most one request.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime

PACING_MARGIN = 0.01


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` is the wall-clock time (epoch seconds) the HTTP-date is measured from.
    Returns None when the value is absent or unreadable; never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


async def sleep_unless(
    wake: asyncio.Event,
    seconds: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> bool:
    """Sleep ``seconds`` with ``sleep``; end early, returning False, once ``wake`` is set."""
    if wake.is_set():
        return False
    sleeping = asyncio.ensure_future(sleep(seconds))
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeping.cancel()
        woken.cancel()
    return not wake.is_set()


class RateLimiter:
    """Requests/s and recipients/s buckets, plus the run-wide slowdown after a 429.

    ``None`` for a rate means no limit of that kind. ``burst`` is how many requests may
    leave back to back after an idle spell (1: strictly paced).
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        recipients_per_second: float | None = None,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        slowdown: float = 0.8,
        recovery_seconds: float = 10.0,
        min_rate: float = 1.0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
    ) -> None:
        rates = (("requests", requests_per_second), ("recipients", recipients_per_second))
        for name, rate in rates:
            if rate is not None and rate <= 0:
                raise ValueError(f"the {name} rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.requests_per_second = requests_per_second
        self.recipients_per_second = recipients_per_second
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self.slowdown = slowdown
        self.recovery_seconds = recovery_seconds
        self.min_rate = min_rate
        self.default_pause = default_pause
        self.max_pause = max_pause

        self._req_tat = -math.inf
        self._rcpt_tat = -math.inf
        self._paused_until = -math.inf
        self._cap0: float | None = None
        self._cap_since = 0.0
        self._active = requests_per_second is not None or recipients_per_second is not None
        # The actual departure times of the last floor(rate) requests. Slots are reserved
        # ahead on a schedule; a worker that wakes late would otherwise leave close behind
        # the next one, and a one-second window could then hold rate + 1 requests.
        self._departures: collections.deque[float] | None = None
        if requests_per_second is not None:
            self._departures = collections.deque(
                maxlen=max(1, math.floor(requests_per_second + burst - 1.0))
            )
        # successes per clock second: the current second and the one before it
        self._sec = 0
        self._sec_count = 0
        self._prev_count = 0
        self._released_sec = 0
        self._released_count = 0
        self._released_prev = 0
        self.throttle_episodes = 0
        self.throttled_responses = 0

    # --- the adaptive part -----------------------------------------------------------------

    def request_rate(self, at: float | None = None) -> float | None:
        """The request rate in force at ``at`` (now by default); None when unlimited."""
        configured = self.requests_per_second
        if self._cap0 is None:
            return configured
        t = self._clock() if at is None else at
        cap = self._cap0 * (1.0 + max(0.0, t - self._cap_since) / self.recovery_seconds)
        if configured is not None and cap >= configured:
            self._cap0 = None  # fully recovered
            return configured
        return cap

    @property
    def paused_until(self) -> float:
        """Clock time before which nothing leaves (``-inf`` when not paused)."""
        return self._paused_until

    def on_success(self) -> None:
        """Count an answer that was not a 429 (the measure behind the post-429 cap)."""
        sec = int(self._clock())
        if sec != self._sec:
            self._prev_count = self._sec_count if sec == self._sec + 1 else 0
            self._sec = sec
            self._sec_count = 0
        self._sec_count += 1

    def accepted_rate(self, at: float | None = None) -> float:
        """Answers per second that were not 429 over the last second (interpolated)."""
        t = self._clock() if at is None else at
        sec = int(t)
        if sec == self._sec:
            cur, prev = self._sec_count, self._prev_count
        elif sec == self._sec + 1:
            cur, prev = 0, self._sec_count
        else:
            return 0.0
        return cur + prev * (1.0 - (t - sec))

    def on_throttled(self, retry_after: float | None) -> None:
        """A 429 arrived: pause everyone for ``retry_after`` seconds and cut the rate."""
        now = self._clock()
        pause = self.default_pause if retry_after is None else retry_after
        pause = min(max(pause, 0.0), self.max_pause)
        self.throttled_responses += 1
        if now < self._paused_until:
            # An answer to a request sent before this episode's pause: same episode.
            self._paused_until = max(self._paused_until, now + pause)
            self._req_tat = max(self._req_tat, self._paused_until)
            return
        self.throttle_episodes += 1
        accepted = self.accepted_rate(now)
        current = self.request_rate(now)
        if accepted > 0:
            base = accepted if current is None else min(accepted, current)
        elif current is not None:
            base = current
        else:
            base = max(self._released_rate(now), self.min_rate)
        self._cap0 = max(self.min_rate, base * self.slowdown)
        self._paused_until = now + pause
        self._cap_since = self._paused_until
        self._req_tat = max(self._req_tat, self._paused_until)
        self._active = True

    def _released_rate(self, t: float) -> float:
        sec = int(t)
        if sec == self._released_sec:
            return self._released_count + self._released_prev * (1.0 - (t - sec))
        if sec == self._released_sec + 1:
            return self._released_count * (1.0 - (t - sec))
        return 0.0

    # --- the buckets ---------------------------------------------------------------------

    def reserve(self, recipients: int = 1) -> float:
        """Take a slot for one request carrying ``recipients``; returns seconds to wait.

        The slot is taken at once (later callers queue behind it), so the caller must
        then wait the returned time before sending.
        """
        now = self._clock()
        t0 = now if now >= self._paused_until else self._paused_until
        send_at = t0
        rate = self.request_rate(t0)
        if rate is not None:
            interval = (1.0 + PACING_MARGIN) / rate
            tat = self._req_tat if self._req_tat > t0 else t0
            allowed = tat - (self.burst - 1.0) * interval
            if allowed > send_at:
                send_at = allowed
            self._req_tat = tat + interval
        if self.recipients_per_second is not None:
            tat = self._rcpt_tat if self._rcpt_tat > t0 else t0
            if tat > send_at:
                send_at = tat
            # the same margin as requests: a provider's bucket refilling at exactly this
            # rate must find each request's emails there when it arrives
            self._rcpt_tat = tat + recipients * (1.0 + PACING_MARGIN) / self.recipients_per_second
        self._count_release(send_at)
        return send_at - now

    async def acquire(self, recipients: int = 1, *, wake: asyncio.Event | None = None) -> None:
        """Wait for the right to send one request carrying ``recipients``.

        A set ``wake`` ends the wait early (the run stopped): the caller checks why it
        returned before it sends. Nothing is created for ``wake`` unless there is a wait.
        """
        if not self._active:
            self._count_release(self._clock())
            return
        wait = self.reserve(recipients)
        if wait > 0 and not await self._pause(wait, wake):
            return
        departures = self._departures
        if departures is None:
            return
        window = 1.0 + PACING_MARGIN
        while True:
            now = self._clock()
            if len(departures) == departures.maxlen and now < departures[0] + window:
                if not await self._pause(departures[0] + window - now, wake):
                    return
                continue
            departures.append(now)  # no await between the check and this: atomic in asyncio
            return

    async def _pause(self, seconds: float, wake: asyncio.Event | None) -> bool:
        if wake is None:
            await self._sleep(seconds)
            return True
        return await sleep_unless(wake, seconds, self._sleep)

    def _count_release(self, at: float) -> None:
        sec = int(at)
        if sec != self._released_sec:
            self._released_prev = self._released_count if sec == self._released_sec + 1 else 0
            self._released_sec = sec
            self._released_count = 0
        self._released_count += 1
