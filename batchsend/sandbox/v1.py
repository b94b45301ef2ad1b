"""MailerLogic's "Send a single email" (``POST /api/v1/send``) and its Events API.

As docs/providers.md states them. Errors are ``{error, message}``; 403 adds ``reason``.
``error`` is a short machine code (``validation_error``, ``forbidden``, ``not_found``...),
``message`` says what to fix.

Events (``GET /api/v1/events``, ``GET /api/v1/emails/{email_id}/events``) come from the
state's event store: every accepted message has a ``queued`` event at its acceptance and
a ``sent`` event 1 ms later, for its ``to`` recipient, then each recipient's delivery
events (:mod:`batchsend.sandbox.outcomes`) once their time has come, with the message's
``metadata``, ``tag`` and ``message_id`` in ``event_data``. ``GET
/api/customer/suppressions`` lists the addresses that bounced hard or complained.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from batchsend.sandbox.rules import (
    MB,
    decoded_size,
    domain_of,
    logged_body,
    valid_address,
)
from batchsend.sandbox.state import (
    INVITE_ICS,
    Event,
    Logged,
    SandboxState,
    iso_time,
    json_object,
)

MAX_FILE = 10 * MB
MAX_TOTAL = 25 * MB
STREAM_TYPES = ("transactional", "broadcast", "shared")

Answer = tuple[int, dict[str, Any]]


def error(status: int, code: str, message: str, reason: str | None = None) -> Answer:
    """A v1 error answer."""
    body = {"error": code, "message": message}
    if reason is not None:
        body["reason"] = reason
    return status, body


def _invalid(message: str) -> Answer:
    return error(400, "validation_error", message)


MISSING_KEY = error(
    403,
    "forbidden",
    "API key is required: send it as X-API-Key or Authorization: Bearer.",
    "missing_api_key",
)
INVALID_KEY = error(403, "forbidden", "The provided API key is invalid.", "invalid_api_key")
MALFORMED = error(400, "bad_request", "The request body must be a valid JSON object.")
INSUFFICIENT_CREDITS = error(
    403,
    "forbidden",
    "Insufficient credit balance to send emails.",
    "insufficient_balance",
)


def idempotency_conflict() -> Answer:
    """Same Idempotency-Key, different body."""
    return error(
        409, "conflict", "This Idempotency-Key was already used with a different request body."
    )


def rate_limited(limit: int | None) -> Answer:
    """Past the per-minute limit (or a ``refuse_next`` storm)."""
    text = (
        f"Rate limit of {limit} requests per minute exceeded."
        if limit is not None
        else "Rate limit exceeded."
    )
    return error(429, "rate_limit_exceeded", text)


def server_fault(status: int) -> Answer:
    """An injected 500/502/503."""
    return error(status, "internal_error", "The sandbox injected a server fault.")


def api_key(headers: Any) -> str | None:
    """``X-API-Key``, else an ``Authorization: Bearer`` token; None when neither is given."""
    value = headers.get("X-API-Key")
    if value and value.strip():
        return value.strip()
    value = headers.get("Authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def bearer_key(headers: Any) -> str | None:
    """The Events API's ``Authorization: Bearer`` token, or None."""
    value = headers.get("Authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _addresses(email: dict[str, Any], field: str) -> Answer | list[str]:
    value = email.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(valid_address(a) for a in value):
        return _invalid(f"The {field} field must be an array of valid email addresses.")
    return value


def _check_attachments(email: dict[str, Any], html: Any) -> Answer | None:
    attachments = email.get("attachments")
    if attachments is None:
        return None
    if not isinstance(attachments, list):
        return _invalid("The attachments field must be an array.")
    total = len(html.encode()) if isinstance(html, str) else 0
    for number, item in enumerate(attachments, start=1):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("filename", "content", "contentType")
        ):
            return _invalid(f"Attachment {number} needs filename, content and contentType.")
        if item.get("encoding", "base64") != "base64":
            return _invalid(f"Attachment {item['filename']!r}: encoding must be base64.")
        size = decoded_size(item["content"])
        if size is None:
            return _invalid(f"Attachment {item['filename']!r}: content is not valid base64.")
        if size > MAX_FILE:
            return _invalid(f"Attachment {item['filename']!r} is larger than 10 MB.")
        total += size
    if total > MAX_TOTAL:
        return _invalid("Attachments and HTML together are larger than 25 MB.")
    return None


def _check_types(email: dict[str, Any]) -> Answer | None:
    for field in ("reply_to",):
        value = email.get(field)
        if value is not None and not valid_address(value):
            return _invalid(f"The {field} field must be a valid email address.")
    for field in ("track_opens", "track_clicks"):
        value = email.get(field)
        if value is not None and not isinstance(value, bool):
            return _invalid(f"The {field} field must be a boolean.")
    for field in ("tag", "icalEvent"):
        value = email.get(field)
        if value is not None and not isinstance(value, str):
            return _invalid(f"The {field} field must be a string.")
    headers = email.get("headers")
    if headers is not None and not (
        isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return _invalid("The headers field must be an object of strings.")
    metadata = email.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return _invalid("The metadata field must be an object.")
    stream_type = email.get("stream_type")
    if stream_type is not None and stream_type not in STREAM_TYPES:
        return _invalid("The stream_type field must be one of: " + ", ".join(STREAM_TYPES) + ".")
    return None


def send(
    state: SandboxState,
    key: str,
    email: Any,
    *,
    endpoint: str,
    idempotency_key: str | None,
    now: float,
    raw: bytes | None = None,
) -> Answer:
    """Validate one v1 request and, when it passes, accept it (200 ``queued``)."""
    if not isinstance(email, dict):
        return MALFORMED
    to = email.get("to")
    if to is None or to == "":
        return _invalid("The to field is required.")
    if not isinstance(to, str) or not valid_address(to):
        return _invalid("The to field must be ONE valid email address (a string).")
    subject = email.get("subject")
    if not isinstance(subject, str) or not subject:
        return _invalid("The subject field is required.")
    html = email.get("html")
    text = email.get("text")
    for field, value in (("html", html), ("text", text)):
        if value is not None and not isinstance(value, str):
            return _invalid(f"The {field} field must be a string.")
    if not html and not text:
        return _invalid("Either html or text content is required.")

    requested = email.get("domain")
    if requested is None:
        domain = state.first_verified()
        if domain is None:
            return error(
                403,
                "forbidden",
                "The account has no verified domain to send from.",
                "domain_not_verified",
            )
    else:
        if not isinstance(requested, str) or not requested:
            return _invalid("The domain field must be a domain name.")
        domain = requested.lower()
        if domain in state.pending:
            return error(
                403, "forbidden", f"Domain {domain!r} is not verified.", "domain_not_verified"
            )
        if domain not in state.verified:
            return error(404, "not_found", f"Domain {domain!r} was not found on this account.")
    if not state.domain_allowed(key, domain):
        return error(
            403,
            "forbidden",
            f"Domain {domain!r} is not allowed for this API key.",
            "domain_not_allowed",
        )
    sender = email.get("from")
    if sender is not None:
        if not valid_address(sender):
            return _invalid("The from field must be a valid email address.")
        sender_domain = domain_of(sender)
        if sender_domain != domain and not sender_domain.endswith("." + domain):
            return _invalid(f"The from address must belong to the sending domain {domain!r}.")

    cc = _addresses(email, "cc")
    if isinstance(cc, tuple):
        return cc
    bcc = _addresses(email, "bcc")
    if isinstance(bcc, tuple):
        return bcc
    bad = _check_types(email) or _check_attachments(email, html)
    if bad is not None:
        return bad

    count = 1 + len(cc) + len(bcc)
    if not state.has_credits(count):
        return INSUFFICIENT_CREDITS
    email_id = str(uuid.uuid4())
    message_id = f"<{email_id}@{domain}>"
    submitted_at = iso_time(now)
    attachments = email.get("attachments")
    names = tuple(a["filename"] for a in attachments) if attachments else ()
    if email.get("icalEvent"):  # sent as a text/calendar alternative AND invite.ics
        names += (INVITE_ICS,)
    entry = Logged(
        "v1",
        endpoint,
        idempotency_key,
        message_id,
        email_id,
        (to,),
        tuple(cc),
        tuple(bcc),
        logged_body(email, raw),
        now,
        None,
        sender if sender is not None else f"noreply@{domain}",
        domain,
        subject,
        names,
    )
    state.accept(entry, count)
    return 200, {
        "to": to,
        "submitted_at": submitted_at,
        "message_id": message_id,
        "email_id": email_id,
        "status": "queued",
        "message": "Email queued for delivery.",
    }


# Events API --------------------------------------------------------------------------------

EVENT_TYPES = (
    "queued",
    "sent",
    "delivered",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
CUSTOMER_ID = 1
SUPPRESSION_TYPES = ("bounce", "complaint")

EVENTS_DISABLED = error(
    403,
    "event_api_disabled",
    "The Events API is not enabled for this account.",
    "event_api_disabled",
)


def _shown(state: SandboxState, event: Event, bodies: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One event as the Events API answers it (``bodies`` caches parsed message bodies)."""
    entry = state.log[event.position]
    body = bodies.get(event.position)
    if body is None:
        body = bodies[event.position] = json_object(entry.body_json)
    data: dict[str, Any] = {
        "message_id": entry.message_id,
        "tag": body.get("tag"),
        "metadata": body.get("metadata") or {},
        "subject": entry.subject,
    }
    if event.type == "bounced":
        data["bounce"] = {"type": event.bounce_type, "reason": event.reason}
    if event.type == "clicked":
        data["url"] = event.url
    stamp = iso_time(event.at)
    return {
        "id": event.id,
        "email_id": entry.email_id,
        "customer_id": CUSTOMER_ID,
        "event_type": event.type,
        "status": event.type,
        "recipient": event.recipient,
        "from": entry.sender,
        "timestamp": stamp,
        "event_data": data,
        "created_at": stamp,
    }


def _moment(value: str) -> float | None:
    """Epoch seconds from epoch digits or an ISO 8601 time (a Z, or UTC if none given)."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).timestamp()
    return moment.timestamp()


def _page(state: SandboxState, events: list[Event], page: int, limit: int) -> dict[str, Any]:
    start = (page - 1) * limit
    bodies: dict[int, dict[str, Any]] = {}
    return {
        "events": [_shown(state, e, bodies) for e in events[start : start + limit]],
        "pagination": {
            "page": page,
            "limit": limit,
            "total": len(events),
            "pages": math.ceil(len(events) / limit),
        },
    }


def _paging(query: Any) -> tuple[int, int, Answer | None]:
    """(page, limit, None), or (0, 0, the 400 to answer)."""
    try:
        page = int(query.get("page", "1"))
        limit = int(query.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        return 0, 0, _invalid("page and limit must be integers.")
    if page < 1 or not 1 <= limit <= MAX_LIMIT:
        return 0, 0, _invalid(f"page must be >= 1 and limit between 1 and {MAX_LIMIT}.")
    return page, limit, None


def list_events(state: SandboxState, query: Any) -> Answer:
    """``GET /api/v1/events``: every event matching the filters, oldest first, paged."""
    page, limit, refused = _paging(query)
    if refused is not None:
        return refused
    kind = query.get("type") or None
    if kind is not None:
        kind = kind.removeprefix("email.")
        if kind not in EVENT_TYPES:
            return _invalid("The type filter must be one of: " + ", ".join(EVENT_TYPES) + ".")
    bounds: list[float | None] = []
    for name in ("from_timestamp", "to_timestamp"):
        raw = query.get(name)
        if raw:
            moment = _moment(raw)
            if moment is None:
                return _invalid(f"{name} must be an ISO 8601 time or epoch seconds.")
            bounds.append(moment)
        else:
            bounds.append(None)
    low, high = bounds
    recipient = (query.get("recipient") or "").lower() or None
    email_id = query.get("email_id") or None
    now = state.clock()
    candidates: Any
    if email_id is not None:
        position = state.v1_index.get(email_id)
        candidates = [] if position is None else state.events_of(state.log[position])
    else:
        candidates = state.events
    events = [
        event
        for event in candidates
        if event.provider == "v1"
        and event.seen(now)
        and (kind is None or event.type == kind)
        and (recipient is None or event.recipient.lower() == recipient)
        and (low is None or event.at >= low)
        and (high is None or event.at <= high)
    ]
    events.sort(key=_when)
    return 200, _page(state, events, page, limit)


def _when(event: Event) -> tuple[float, int]:
    return event.at, event.id


def email_events(state: SandboxState, email_id: str, query: Any) -> Answer:
    """``GET /api/v1/emails/{email_id}/events``: one email's timeline, or 404."""
    position = state.v1_index.get(email_id)
    if position is None:
        return error(404, "not_found", f"No email {email_id!r} on this account.")
    page, limit, refused = _paging(query)
    if refused is not None:
        return refused
    now = state.clock()
    events = [e for e in state.events_of(state.log[position]) if e.seen(now)]
    events.sort(key=_when)
    return 200, _page(state, events, page, limit)


def list_suppressions(state: SandboxState, query: Any) -> Answer:
    """``GET /api/customer/suppressions?type&search&page&limit``: newest first.

    One entry per address: the first hard bounce or complaint that put it there.
    """
    page, limit, refused = _paging(query)
    if refused is not None:
        return refused
    wanted = query.get("type") or None
    if wanted is not None and wanted not in SUPPRESSION_TYPES:
        return _invalid("The type filter must be one of: " + ", ".join(SUPPRESSION_TYPES) + ".")
    search = (query.get("search") or "").lower() or None
    rows = []
    for event in state.listed("v1", state.clock()):
        kind = "complaint" if event.type == "complained" else "bounce"
        if wanted is not None and kind != wanted:
            continue
        if search is not None and search not in event.recipient.lower():
            continue
        rows.append((kind, event))
    start = (page - 1) * limit
    return 200, {
        "suppressions": [
            {
                "email": event.recipient,
                "type": kind,
                "reason": event.reason,
                "email_id": event.email_id,
                "created_at": iso_time(event.at),
            }
            for kind, event in rows[start : start + limit]
        ],
        "pagination": {
            "page": page,
            "limit": limit,
            "total": len(rows),
            "pages": math.ceil(len(rows) / limit),
        },
    }
