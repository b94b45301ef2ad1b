"""MailerLogic's ``v1`` API: ``POST /api/v1/send``, one request per recipient, and the
Events API's ``GET /api/v1/events`` (reconcile's lookups).

The contract is docs/providers.md, "v1: MailerLogic". ``to`` is ONE address, so a unit
is always one message; ``cc`` and ``bcc`` are arrays of address strings; attachments
are ``{filename, content (base64), contentType}``.

Classification of answers:

====================  =========================================================
200                   accepted (``message_id``, ``email_id``)
408, 429              retryable (``Retry-After`` or ``X-RateLimit-Reset`` honoured)
5xx, another 2xx,     unknown: v1 may have delivered it (docs/providers.md,
a 200 without an id   "Was it processed?")
401, 403              fatal: missing or invalid key, inactive account, sender domain
                      not verified or not allowed, insufficient credits
404                   fatal: the ``domain`` is unknown to the account
other 4xx             permanent for that message (400 validation, 409 idempotency)
====================  =========================================================
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from batchsend.errors import RetryableSendError
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.providers.base import (
    RETRYABLE_STATUSES,
    HttpRequest,
    LookupAnswer,
    LookupKind,
    LookupTarget,
    Provider,
    RecipientLimits,
    _text,
    is_refusal,
    is_server_error,
    iso_utc,
    loads,
    rendered,
)

SEND_PATH = "/api/v1/send"
EVENTS_PATH = "/api/v1/events"
#: Events per page asked for (the Events API's maximum).
EVENTS_PER_PAGE = 100
#: A lookup reads at most this many pages of one recipient's events, then gives up.
MAX_EVENT_PAGES = 50
#: 403 reasons that say the account has no Events API (an enterprise feature).
EVENTS_DISABLED = frozenset({"event_api_disabled", "event_tracking_disabled"})


def _addr(address: Any) -> str:
    return address.email


class V1Provider(Provider):
    """MailerLogic v1. ``auth`` is ``"x-api-key"`` (default) or ``"bearer"``."""

    name = "v1"
    supports_batch = False

    def __init__(self, *, auth: str = "x-api-key", **kwargs: Any) -> None:
        if auth not in ("x-api-key", "bearer"):
            raise ValueError("auth must be 'x-api-key' or 'bearer'")
        self._auth = auth
        super().__init__(**kwargs)
        self._url = self.base_url + SEND_PATH

    @classmethod
    def default_limits(cls) -> RecipientLimits:
        return RecipientLimits(to=1, cc=50, bcc=50)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        if self._auth == "bearer":
            return {"Authorization": f"Bearer {api_key}"}
        return {"X-API-Key": api_key}

    def url_for(self, unit: SendUnit) -> str:
        return self._url

    def request_body(self, unit: SendUnit) -> Any:
        return self.message_body(unit.messages[0])

    def message_body(self, planned: PlannedMessage) -> dict[str, Any]:
        m = rendered(planned)
        if len(m.to) != 1:
            raise ValueError(f"v1 sends to exactly one address; row {m.row} has {len(m.to)}")
        body: dict[str, Any] = {"to": m.to[0].email, "subject": m.subject}
        if m.domain:
            body["domain"] = m.domain
        body["from"] = m.sender.email
        if m.reply_to is not None:
            body["reply_to"] = m.reply_to.email
        if m.cc:
            body["cc"] = [a.email for a in m.cc]
        if m.bcc:
            body["bcc"] = [a.email for a in m.bcc]
        if m.html is not None:
            body["html"] = m.html
        if m.text is not None:
            body["text"] = m.text
        if m.track_opens is not None:
            body["track_opens"] = m.track_opens
        if m.track_clicks is not None:
            body["track_clicks"] = m.track_clicks
        if m.headers:
            body["headers"] = dict(m.headers)
        if m.tag:
            body["tag"] = m.tag
        if m.stream_type:
            body["stream_type"] = m.stream_type
        # batchsend's own id travels in metadata (echoed in every event of the message),
        # so events and lookups map back to the row (docs/providers.md, "Decisions for
        # both providers").
        body["metadata"] = {**m.metadata, "batchsend_id": planned.key}
        if m.attachments:
            body["attachments"] = [
                {
                    "filename": a.filename,
                    "content": base64.b64encode(a.content).decode("ascii"),
                    "contentType": a.content_type,
                }
                for a in m.attachments
            ]
        if m.ical:
            body["icalEvent"] = m.ical
        return body

    def retry_after(self, headers: Mapping[str, str]) -> float | None:
        found = super().retry_after(headers)
        if found is not None:
            return found
        reset = headers.get("X-RateLimit-Reset")
        if reset:
            try:
                return max(0.0, float(reset) - self._wall_clock())
            except ValueError:
                return None
        return None

    def parse_response(
        self, unit: SendUnit, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[MessageOutcome]:
        key = unit.messages[0].key
        data = loads(body)
        if status == 200:
            if isinstance(data, dict) and data.get("message_id"):
                return [
                    MessageOutcome(
                        key,
                        OutcomeKind.ACCEPTED,
                        http_status=200,
                        provider_message_id=str(data["message_id"]),
                        provider_email_id=_opt(data.get("email_id")),
                    )
                ]
            # Accepted or not, we cannot tell, and v1 does not de-duplicate: unknown.
            return [
                MessageOutcome(
                    key,
                    OutcomeKind.UNKNOWN,
                    http_status=status,
                    error_type="bad_response",
                    error_message="200 without a message_id",
                )
            ]
        data = data if isinstance(data, dict) else {}
        error_type = _opt(data.get("reason")) or _opt(data.get("error")) or f"http_{status}"
        message = _text(data.get("message") or body[:200].decode("utf-8", "replace"))
        if status in RETRYABLE_STATUSES:
            kind = OutcomeKind.RETRYABLE
            retry_after = self.retry_after(headers)
        elif not is_refusal(status):  # a 5xx, a 2xx other than 200: it may have been taken
            kind = OutcomeKind.UNKNOWN
            retry_after = self.retry_after(headers)
            if not is_server_error(status):
                error_type = "bad_response"
        else:
            kind = OutcomeKind.FATAL if status in (401, 403, 404) else OutcomeKind.PERMANENT
            retry_after = None
        return [
            MessageOutcome(
                key,
                kind,
                http_status=status,
                error_type=error_type,
                error_message=message,
                retry_after=retry_after,
            )
        ]

    # --- the Events API (reconcile's lookups) ------------------------------------------

    def lookup_request(self, target: LookupTarget, page: int = 1) -> HttpRequest:
        """``GET /api/v1/events`` of the message's recipient within its send window.

        The Events API takes the account key as ``Authorization: Bearer`` whatever header
        the sends use (the docs).
        """
        headers = {
            "Accept": "application/json",
            "User-Agent": self._base_headers["User-Agent"],
            "Authorization": f"Bearer {self._api_key}",
        }
        query = urlencode(
            {
                "recipient": target.recipient,
                "from_timestamp": iso_utc(target.since),
                "to_timestamp": iso_utc(target.until),
                "page": page,
                "limit": EVENTS_PER_PAGE,
            }
        )
        return HttpRequest("GET", f"{self.base_url}{EVENTS_PATH}?{query}", headers, None)

    def parse_lookup(
        self,
        target: LookupTarget,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        page: int = 1,
    ) -> LookupAnswer:
        """Found when an event carries ``metadata.batchsend_id`` = the message's key; the
        next page when there is one; 429/5xx raise :class:`RetryableSendError`."""
        data = loads(body)
        data = data if isinstance(data, dict) else {}
        if status == 200:
            events = data.get("events")
            if not isinstance(events, list):
                return LookupAnswer(LookupKind.FAILED, detail="a 200 without an events list")
            for event in events:
                found = _matching(event, target.key)
                if found is not None:
                    return found
            pagination = data.get("pagination")
            pages = pagination.get("pages") if isinstance(pagination, dict) else None
            if isinstance(pages, int) and page < pages:
                if page >= MAX_EVENT_PAGES:
                    return LookupAnswer(
                        LookupKind.FAILED,
                        detail=f"more than {MAX_EVENT_PAGES} pages of events for one address",
                    )
                return LookupAnswer(LookupKind.MORE, next_page=page + 1)
            return LookupAnswer(LookupKind.NOT_FOUND)
        message = _text(data.get("message") or body[:200].decode("utf-8", "replace"))
        if status in RETRYABLE_STATUSES or is_server_error(status):
            raise RetryableSendError(
                f"GET {EVENTS_PATH} failed ({status}: {message})",
                status=status,
                error_type=_opt(data.get("error")) or f"http_{status}",
                retry_after=self.retry_after(headers),
            )
        reason = _opt(data.get("reason")) or _opt(data.get("error"))
        if status == 403 and reason in EVENTS_DISABLED:
            return LookupAnswer(
                LookupKind.REFUSED,
                detail=f"the Events API is not enabled for this account (403 {reason}: "
                f"{message}), so reconcile is not available; ask the provider to enable it",
            )
        if status in (401, 403):
            return LookupAnswer(
                LookupKind.REFUSED, detail=f"the provider refused the API key ({status}: {message})"
            )
        if status == 404:
            return LookupAnswer(
                LookupKind.REFUSED, detail=f"{self.base_url} has no Events API (404: {message})"
            )
        return LookupAnswer(LookupKind.FAILED, detail=f"unexpected HTTP {status}: {message}")


def _matching(event: Any, key: str) -> LookupAnswer | None:
    """The lookup's answer if ``event`` belongs to the message batchsend keyed ``key``."""
    if not isinstance(event, dict):
        return None
    data = event.get("event_data")
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(metadata, dict) or metadata.get("batchsend_id") != key:
        return None
    assert isinstance(data, dict)
    return LookupAnswer(
        LookupKind.FOUND,
        provider_message_id=_opt(data.get("message_id")),
        provider_email_id=_opt(event.get("email_id")),
        accepted_at=_opt(event.get("timestamp")),
        detail=f"event {_text(event.get('event_type'), 40)}",
    )


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
