"""The one-page summary of a run: counts, the reasons rows did not go, attempts over time.

:func:`read_summary` gathers it from the store; :mod:`batchsend.report_html` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchsend.history import RunListing, find_run, listing_of, open_db
from batchsend.store import Store, reports

__all__ = ["ReasonCount", "RunSummary", "TimeBucket", "read_summary"]


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


def _timeline(
    store: Store, run_id: str, buckets: int
) -> tuple[tuple[TimeBucket, ...], str | None, str | None, int]:
    first, last, total, span = reports.attempts_span(store, run_id)
    if first is None:
        return (), None, None, 0
    width = max(span, 0.001) / buckets
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
    """Gather the one-page summary of run ``run_id``: counts, reasons, attempts over time.

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
        )
