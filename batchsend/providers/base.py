"""The provider interface: messages to HTTP requests, HTTP answers to outcomes.

A provider knows one API's JSON and nothing else: it never touches the network (the
engine sends the bytes it builds through a :mod:`batchsend.transport`), so request
building and response classification are pure functions, tested without I/O.

Two rules every provider follows:

* a :class:`SendUnit` becomes exactly one :class:`HttpRequest` whose body is serialised
  once; a retry sends the very same bytes with the same ``Idempotency-Key`` (the unit's
  key). Neither provider honours the key (docs/providers.md): it is sent because it is
  harmless and helps a provider that does;
* an answer (or a transport failure) becomes exactly one :class:`MessageOutcome` per
  planned message, in the unit's order, of the kind that says whether the provider can
  have processed it: ``RETRYABLE`` only when it certainly did not (429, no connection),
  ``UNKNOWN`` when it may have (5xx, a lost answer, an answer we cannot read).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from batchsend.apikeys import redact
from batchsend.errors import FatalSendError, PermanentSendError, SendError, UncertainSendError
from batchsend.message import Message
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.ratelimit import parse_retry_after
from batchsend.transport import HttpRequest
from batchsend.version import USER_AGENT

# docs/providers.md, "Was it processed?": a 429 refused the request before processing it
# (as does a 408: the server gave up waiting for it); a 5xx may come after the provider
# delivered it (an error on the way back).
RETRYABLE_STATUSES = frozenset({408, 429})


def is_server_error(status: int) -> bool:
    """A 5xx: the provider may have processed the request (its rows are unknown)."""
    return 500 <= status <= 599


def is_refusal(status: int) -> bool:
    """A 4xx: the provider answered that it did not take the request."""
    return 400 <= status <= 499


@dataclass(frozen=True, slots=True)
class RecipientLimits:
    """How many addresses one email may carry in each field."""

    to: int = 50
    cc: int = 50
    bcc: int = 50


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What ``GET /v2/info`` says about the account, reduced to what a sender checks."""

    status: str  # active | suspended | pending
    credit_balance: int | None  # None: the plan is not credit-based
    limit_per_second: float | None
    verified_domains: tuple[str, ...]
    pending_domains: tuple[str, ...] = ()
    plan_type: str | None = None

    def domain_verified(self, domain: str) -> bool:
        return domain.lower() in {d.lower() for d in self.verified_domains}


class LookupKind(StrEnum):
    """What the provider's log says about one message batchsend asked it about."""

    FOUND = "found"  # the provider accepted it: its rows are sent
    NOT_FOUND = "not_found"  # no record of it (yet): not accepted, if old enough
    MORE = "more"  # not on this page of the answer; ask for ``next_page``
    FAILED = "failed"  # this lookup could not tell (an answer we cannot read)
    REFUSED = "refused"  # no lookup can work: bad key, missing scope, feature disabled


@dataclass(frozen=True, slots=True)
class LookupTarget:
    """One message to look up: its key (ToSend's ``message_hash``, v1's ``batchsend_id``),
    the address its ``to`` carried, and the epoch-seconds window its requests left in."""

    key: str
    recipient: str
    since: float
    until: float


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    """A provider's answer to one lookup request, reduced to what reconcile decides on."""

    kind: LookupKind
    provider_message_id: str | None = None
    provider_email_id: str | None = None
    accepted_at: str | None = None  # the provider's time of acceptance, as it wrote it
    detail: str | None = None  # why, for FAILED and REFUSED (redacted)
    next_page: int | None = None  # MORE only


def iso_utc(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2026-11-21T10:34:55.120Z``)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def dumps(value: Any) -> bytes:
    """The one JSON encoder of the send path: orjson, because encoding every request
    body with ``json`` would be a large share of the CPU a batch request costs."""
    return orjson.dumps(value)


def loads(body: bytes) -> Any:
    """Decode a JSON answer; ``None`` when the body is empty or not JSON."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _text(value: Any, limit: int = 500) -> str:
    """A short, secret-free string for error messages taken from a provider's body."""
    text = value if isinstance(value, str) else repr(value)
    return redact(text)[:limit]


class Provider(ABC):
    """One provider API. Subclasses set ``name`` and implement the abstract methods."""

    name: str = ""
    #: True when several different messages can travel in one request.
    supports_batch: bool = False

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        batch_size: int = 1,
        limits: RecipientLimits | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.batch_size = batch_size if self.supports_batch else 1
        self.limits = limits or self.default_limits()
        self._wall_clock = wall_clock
        self._base_headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **self.auth_headers(api_key),
        }

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, batch_size={self.batch_size})"

    # --- what subclasses provide -------------------------------------------------------

    @classmethod
    def default_limits(cls) -> RecipientLimits:
        return RecipientLimits()

    @abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The header(s) that carry the key."""

    @abstractmethod
    def message_body(self, planned: PlannedMessage) -> dict[str, Any]:
        """The exact JSON object of one email as this provider receives it."""

    @abstractmethod
    def url_for(self, unit: SendUnit) -> str:
        """Where the unit goes."""

    @abstractmethod
    def request_body(self, unit: SendUnit) -> Any:
        """The JSON value of the whole request (one email, or a batch of them)."""

    @abstractmethod
    def parse_response(
        self, unit: SendUnit, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[MessageOutcome]:
        """One outcome per planned message of ``unit``, in order."""

    # --- shared behaviour ------------------------------------------------------------------

    @property
    def is_batch(self) -> bool:
        """True when units go to a batch endpoint (batch size above 1)."""
        return self.supports_batch and self.batch_size > 1

    def build_request(self, unit: SendUnit) -> HttpRequest:
        """The request for ``unit``: serialised once, identical on every retry and resume."""
        headers = dict(self._base_headers)
        headers["Idempotency-Key"] = unit.key
        return HttpRequest("POST", self.url_for(unit), headers, self.encode_body(unit))

    def encode_message(self, planned: PlannedMessage) -> bytes:
        """One email's JSON, byte for byte as it appears in a request.

        A run calls this in preflight and keeps the bytes (``PlannedMessage.wire``): the
        send pass then only joins them (:meth:`join_messages`).
        """
        return dumps(self.message_body(planned))

    def encode_body(self, unit: SendUnit) -> bytes:
        """The request body: ``dumps(request_body(unit))``, from each email's bytes."""
        encode = self.encode_message
        return self.join_messages(
            unit, [encode(pm) if pm.wire is None else pm.wire for pm in unit.messages]
        )

    def join_messages(self, unit: SendUnit, parts: list[bytes]) -> bytes:
        """The request body made of its emails' encoded JSON (one email by default)."""
        if len(parts) != 1:
            raise ValueError(f"{self.name} sends one email per request, not {len(parts)}")
        return parts[0]

    def retry_after(self, headers: Mapping[str, str]) -> float | None:
        """Seconds to wait, from ``Retry-After`` (seconds or HTTP-date)."""
        return parse_retry_after(headers.get("Retry-After"), now=self._wall_clock())

    def outcomes_for_error(self, unit: SendUnit, error: SendError) -> list[MessageOutcome]:
        """Every message of ``unit`` shares the fate of a request that got no answer."""
        kind = _kind_of_error(error)
        message = _text(str(error))
        return [
            MessageOutcome(
                pm.key,
                kind,
                http_status=error.status,
                error_type=error.error_type,
                error_message=message,
                retry_after=error.retry_after,
            )
            for pm in unit.messages
        ]

    def same_for_all(
        self,
        unit: SendUnit,
        kind: OutcomeKind,
        status: int,
        error_type: str | None,
        message: str | None,
        retry_after: float | None = None,
    ) -> list[MessageOutcome]:
        """The outcome of a request refused as a whole, repeated for each message."""
        return [
            MessageOutcome(
                pm.key,
                kind,
                http_status=status,
                error_type=error_type,
                error_message=message,
                retry_after=retry_after,
            )
            for pm in unit.messages
        ]


def rendered(planned: PlannedMessage) -> Message:
    """The planned email's rendered message (absent when it travels encoded only)."""
    if planned.message is None:
        raise ValueError(f"message {planned.key} was planned encoded only: nothing to rebuild")
    return planned.message


def _kind_of_error(error: SendError) -> OutcomeKind:
    if isinstance(error, FatalSendError):
        return OutcomeKind.FATAL
    if isinstance(error, PermanentSendError):
        return OutcomeKind.PERMANENT
    if isinstance(error, UncertainSendError):
        return OutcomeKind.UNKNOWN
    return OutcomeKind.RETRYABLE


def addresses(values: Sequence[Any]) -> list[dict[str, str]]:
    """``Address`` values as ToSend's ``{email, name?}`` objects."""
    return [a.to_dict() for a in values]
