"""What the store hands out and takes in: run, recipient and unit records, run ids,
the settings filter and the store's timestamps."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchsend.states import RecipientState, RunState

INSERT_CHUNK = 20_000

# Setting names that could hold a secret; they never reach the store.
_SECRET_WORDS = ("key", "secret", "token", "password", "authorization")

# Reason code of a row found ``sending`` at resume: its request may or may not have left.
IN_FLIGHT_REASON = "in_flight_at_crash"

SENDABLE_STATES = (
    RecipientState.PENDING,
    RecipientState.UNKNOWN,
    RecipientState.FAILED,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


# The last second formatted: strftime is most of the cost of a timestamp, and the store
# writes three per single send. Keyed by the fields, not a float timestamp (exact).
_SECOND: dict[tuple[int, ...], str] = {}


def iso_time(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    second = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year)
    prefix = _SECOND.get(second)
    if prefix is None:
        _SECOND.clear()
        prefix = _SECOND[second] = moment.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{prefix}{moment.microsecond // 1000:03d}Z"


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261121T103455-ab12cd``."""
    moment = (now or utc_now()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def safe_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without any entry whose name suggests a secret (api_key, token...)."""
    return {
        k: v for k, v in settings.items() if not any(word in k.lower() for word in _SECRET_WORDS)
    }


@dataclass(frozen=True, slots=True)
class NewRecipient:
    """One input row as it enters the store at run start (``pending`` or ``skipped``)."""

    row: int
    email: str
    name: str | None = None
    state: RecipientState = RecipientState.PENDING
    reason: str | None = None  # skipped: invalid | duplicate | suppressed
    error_message: str | None = None  # skipped: what was wrong, for the report
    tag: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The key of the row's message when preflight planned it already (a run's encoded
    # spool): an accepted batch then takes its provider ids from the store (see
    # RunRecorder.record_final).
    message_key: str | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A row of the ``runs`` table, as values."""

    id: str
    campaign_path: str
    campaign_name: str | None
    provider: str
    base_url: str | None
    input_path: str | None
    input_fingerprint: str | None
    templates_fingerprint: str | None
    settings: dict[str, Any]
    state: RunState
    is_test: bool
    dry_run: bool
    fatal_error: str | None
    started_at: str
    ended_at: str | None
    updated_at: str
    total_rows: int | None
    report_path: str | None
    metadata_columns: list[str]
    pid: int | None
    counts: dict[str, int]

    @property
    def finished(self) -> bool:
        return self.state is RunState.FINISHED

    @property
    def test_to(self) -> str | None:
        """The one address a test run sent its proof copies to (None for other runs)."""
        value = self.settings.get("test_to") if self.is_test else None
        return str(value) if value else None


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """A recorded send unit: its key and, per message, the rows it carried."""

    key: str
    composition: tuple[tuple[int, ...], ...]
    batch: bool
    state: str
    attempts: int


@dataclass(frozen=True, slots=True)
class UnsettledMessage:
    """One message whose rows are ``unknown`` (or ``sending`` in a dead process): what a
    reconcile asks the provider about. ``key`` is None when no message key was recorded."""

    key: str | None
    rows: tuple[int, ...]
    emails: tuple[str, ...]
    unit_key: str | None
    updated_at: str  # the latest change of its rows: no request of it left after this
    in_flight: bool  # some of its rows are still ``sending``


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a reconcile learnt about one message: ``sent`` (found in the provider's log,
    with its ids and time) or not accepted (back to ``pending``); ``note`` says so."""

    message: UnsettledMessage
    sent: bool
    note: str
    provider_message_id: str | None = None
    provider_email_id: str | None = None
    accepted_at: str | None = None
