"""The one-page summary of a run: counts, the reasons rows did not go, attempts over time.

:func:`read_summary` gathers it from the store; :mod:`batchsend.report_html` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from batchsend.history import RunListing, find_run, listing_of, open_db
from batchsend.store import Store, reports
from batchsend.store.events import run_engagement, run_has_events

__all__ = ["Engagement", "ReasonCount", "RunSummary", "TimeBucket", "read_summary"]


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """How many rows ended in ``state`` for one reason."""

    state: str
    reason: str
    error_type: str | None
    http_status: int | None
    example: str | None  # one provider message for that reason
    count: int


@dataclass(frozen=True, slots=True)
class TimeBucket:
    """The attempts log over one slice of time, ``start``..``start + width`` seconds."""

    start: float  # seconds since the first attempt
    width: float
    attempts: int
    accepted: int  # recipients accepted in this slice
    retries: int  # attempts after the first for their request
    failed_attempts: int  # attempts answered retryable, permanent or fatal

    @property
    def rate(self) -> float:
        """Recipients accepted per second over the slice."""
        return self.accepted / self.width if self.width else 0.0


#: The narrowest slice of time the timeline has. A rate per second is measured over a
#: second at least: three rows answered within a few milliseconds are 3 per second, not
#: the thousands their milliseconds would make of them.
MIN_BUCKET_SECONDS = 1.0

#: Complaint rate Gmail and Yahoo require bulk senders to stay under (their 2024 rules).
COMPLAINT_LIMIT = 0.003
#: Bounce rate above which AWS SES (under ToSend) reviews an account; SES counts hard
#: (permanent) bounces only.
BOUNCE_LIMIT = 0.05


@dataclass(frozen=True, slots=True)
class Engagement:
    """What the provider's events say happened after it accepted the run's messages.

    Every figure counts recipients (rows), not events. Rates are of ``accepted``.
    """

    accepted: int  # rows the provider accepted (state sent)
    with_events: int
    delivered: int
    hard_bounces: int
    soft_bounces: int
    complained: int
    opened: int
    clicked: int
    unsubscribed: int
    bounce_reasons: tuple[tuple[str, int], ...]

    def rate(self, n: int) -> float:
        return n / self.accepted if self.accepted else 0.0

    @property
    def bounce_rate(self) -> float:
        """Hard bounces of accepted, as SES counts its bounce rate (soft ones may pass later)."""
        return self.rate(self.hard_bounces)

    @property
    def complaint_rate(self) -> float:
        return self.rate(self.complained)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything the one-page summary shows about one run."""

    listing: RunListing
    counts: dict[str, int]
    reasons: tuple[ReasonCount, ...]
    timeline: tuple[TimeBucket, ...]
    first_attempt: str | None
    last_attempt: str | None
    total_attempts: int
    db_path: str
    engagement: Engagement | None = None  # None when no event of the run is stored
    would_send: int = 0  # a dry run: the rows whose requests were built, not sent


def _timeline(
    store: Store, run_id: str, buckets: int
) -> tuple[tuple[TimeBucket, ...], str | None, str | None, int]:
    first, last, total, span = reports.attempts_span(store, run_id)
    if first is None:
        return (), None, None, 0
    width = max(span / buckets, MIN_BUCKET_SECONDS)
    buckets = min(buckets, max(1, math.ceil(span / width)))
    by_bucket = reports.attempt_buckets(store, run_id, first, width, buckets)
    timeline = []
    for b in range(buckets):
        _, attempts, accepted, retries, failed = by_bucket.get(b, (b, 0, 0, 0, 0))
        attempts, accepted, retries, failed = (
            int(v or 0) for v in (attempts, accepted, retries, failed)
        )
        timeline.append(
            TimeBucket(
                start=b * width,
                width=width,
                attempts=attempts,
                accepted=accepted,
                retries=retries,
                failed_attempts=failed,
            )
        )
    return tuple(timeline), first, last, total


def read_summary(
    db_path: str | Path, run_id: str, *, buckets: int = 60, top_reasons: int = 10
) -> RunSummary:
    """Gather the one-page summary of run ``run_id``: counts, reasons, attempts over time
    (in at most ``buckets`` slices of :data:`MIN_BUCKET_SECONDS` or more).

    Example::

        summary = read_summary("batchsend.db", run_id)
        print(summary.counts, summary.reasons[:3])
    """
    with open_db(db_path) as store:
        listing = listing_of(store, find_run(store, run_id), db_path)
        timeline, first, last, total = _timeline(store, run_id, buckets)
        return RunSummary(
            listing=listing,
            counts=dict(listing.run.counts),
            reasons=tuple(
                ReasonCount(*r) for r in reports.failure_reasons(store, run_id, top_reasons)
            ),
            timeline=timeline,
            first_attempt=first,
            last_attempt=last,
            total_attempts=total,
            db_path=str(db_path),
            engagement=_engagement(store, run_id, listing.run.counts.get("sent", 0)),
            would_send=(
                reports.rows_with_reason(store, run_id, "skipped", "dry_run")
                if listing.run.dry_run
                else 0
            ),
        )


def _engagement(store: Store, run_id: str, accepted: int) -> Engagement | None:
    if not run_has_events(store.conn, run_id):
        return None
    rows, delivered, hard, soft, complained, opened, clicked, unsub, reasons = run_engagement(
        store.conn, run_id
    )
    return Engagement(
        accepted, rows, delivered, hard, soft, complained, opened, clicked, unsub, tuple(reasons)
    )
