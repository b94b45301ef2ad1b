"""The one-page summary of a run: its counts, why rows failed, its attempts over time.

:func:`read_summary` gathers it from an open :class:`batchsend.store.Store`;
:mod:`batchsend.report_html` renders it. The queries are the store's
(:mod:`batchsend.store.reports`); this module only shapes their rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchsend.store import Store, reports

if TYPE_CHECKING:  # the listing is built by its caller; typing only
    from batchsend.report import RunListing

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
    if not total or first is None:
        return (), None, None, 0
    span = max(span, 0.001)
    width = span / buckets
    by_bucket = reports.attempt_buckets(store, run_id, first, width, buckets)
    timeline = []
    for b in range(buckets):
        r = by_bucket.get(b)
        timeline.append(
            TimeBucket(
                start=b * width,
                width=width,
                attempts=int(r[1]) if r else 0,
                accepted=int(r[2] or 0) if r else 0,
                retries=int(r[3] or 0) if r else 0,
                failed_attempts=int(r[4] or 0) if r else 0,
            )
        )
    return tuple(timeline), first, last, total


def read_summary(
    store: Store,
    listing: RunListing,
    db_path: str | Path,
    *,
    buckets: int = 60,
    top_reasons: int = 10,
) -> RunSummary:
    """Gather the one-page summary of ``listing``'s run: counts, reasons, attempts over time.

    Example::

        summary = read_summary(store, listing, "batchsend.db")
        print(summary.counts, summary.reasons[:3])
    """
    run_id = listing.run.id
    timeline, first, last, total = _timeline(store, run_id, buckets)
    return RunSummary(
        listing=listing,
        counts=dict(listing.run.counts),
        reasons=tuple(ReasonCount(*r) for r in reports.failure_reasons(store, run_id, top_reasons)),
        timeline=timeline,
        first_attempt=first,
        last_attempt=last,
        total_attempts=total,
        db_path=str(db_path),
    )
