"""ToSend's contract: sends, batches, ``GET /v2/info`` and the admin API's email lookups
and suppression list.

Error bodies are ``{status_code, error_type, message, errors: {field: {rule: text}}}``;
where ToSend's documentation shows an example (the send page, seed 003, and the batch
page), the message and rule text here are the docs', word for word. Checks run in a
fixed order and the first failing group answers (subject and content are reported
together, as in the docs). The admin API answers its errors flat, as ToSend's SDK
describes them: ``{status_code, message, errors: {"code": ..., ...}}``, no error_type.
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
    rfc5322_address,
    valid_address,
)
from batchsend.sandbox.state import (
    ADMIN_KEY_PREFIX,
    DISPOSABLE_DOMAINS,
    Logged,
    SandboxState,
    iso_time,
)

MAX_PER_FIELD = 50
MAX_BATCH = 100
MAX_SUBJECT = 998
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_MESSAGE_HASH = 255
MAX_ATTACHMENTS = 10 * MB

ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "validation_error",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}

Answer = tuple[int, dict[str, Any]]


def error(status: int, message: str, errors: dict[str, dict[str, str]]) -> Answer:
    """A ToSend error answer."""
    return status, {
        "status_code": status,
        "error_type": ERROR_TYPES[status],
        "message": message,
        "errors": errors,
    }


def _one(status: int, field: str, rule: str, text: str, message: str | None = None) -> Answer:
    return error(status, message or text, {field: {rule: text}})


# The seed's examples, verbatim -------------------------------------------------------------

MISSING_KEY = _one(401, "api_key", "required", "API key is required.", "API Key is missing")
INVALID_KEY = _one(403, "api_key", "invalid", "The provided API key is invalid.", "Invalid API Key")
DOMAIN_NOT_VERIFIED = _one(
    422, "from", "domain_not_verified", "The from email domain is not verified."
)
DOMAIN_NOT_ALLOWED = _one(
    422, "from", "domain_not_allowed", "The from email domain is not allowed for this API key."
)
# the batch page's example
DOMAIN_NOT_FOUND = _one(
    422,
    "from",
    "domain_not_found",
    "The from email domain is not found in your account.",
    "The from email domain is not found.",
)
SPAM_TEXT = "All recipient email addresses are marked as spam / disposable."
#: A batch email whose every recipient is disposable: no status_code, it will never send.
SPAM_RESULT: dict[str, Any] = {
    "status": "spam",
    "message": SPAM_TEXT,
    "errors": {"to": {"spam": SPAM_TEXT}},
}
BATCH_EMPTY = _one(
    422,
    "emails",
    "required",
    "Emails data is required and must be an array.",
    "Emails data is required and must be an array",
)
BATCH_TOO_MANY = _one(
    422,
    "emails",
    "max_limit",
    f"Maximum {MAX_BATCH} emails allowed per batch request.",
)
INSUFFICIENT_CREDITS = _one(
    403,
    "account",
    "insufficient_balance",
    "Insufficient credit balance to send emails. Please buy more credits.",
    "Insufficient credit balance to send emails.",
)
CONTENT_MESSAGE = "Subject and either html or text content are required."
SUBJECT_REQUIRED = ("subject", "required", "Subject is required.")
CONTENT_REQUIRED = ("content", "required", "Either html or text content is required.")
TOO_MANY_TEXT = "Maximum 50 recipient email addresses are allowed."

# Ours, in the same style --------------------------------------------------------------------

MALFORMED = _one(
    400,
    "body",
    "invalid_json",
    "The request body must be a valid JSON object.",
    "Malformed request body.",
)
MALFORMED_BATCH = _one(
    400,
    "body",
    "invalid_json",
    'The request body must be valid JSON: {"emails": [...]} or an array of emails.',
    "Malformed request body.",
)
# A single send whose every recipient is disposable: the batch page's spam text, as a
# 403 forbidden (the docs list "all recipients disposable" among the 403s).
ALL_DISPOSABLE = _one(403, "to", "spam", SPAM_TEXT)
NOT_AN_OBJECT = _one(422, "email", "object", "Each email must be a JSON object.")


def idempotency_conflict() -> Answer:
    """Same Idempotency-Key, different body."""
    return _one(
        409,
        "idempotency_key",
        "mismatch",
        "This Idempotency-Key was already used with a different request body.",
    )


def not_found(method: str, path: str) -> Answer:
    """No such endpoint."""
    return _one(404, "endpoint", "not_found", f"No endpoint {method} {path}.", "Not found.")


def rate_limited(limit: int | None) -> Answer:
    """Past the account's emails-per-second limit (or a ``refuse_next`` storm)."""
    text = (
        f"Rate limit of {limit} emails per second exceeded."
        if limit is not None
        else "Rate limit exceeded."
    )
    return _one(429, "rate_limit", "exceeded", text, "Too many requests. Please slow down.")


def server_fault(status: int) -> Answer:
    """An injected 500/502/503."""
    return _one(status, "server", "fault", "The sandbox injected a server fault.", "Server error.")


def api_key(headers: Any) -> str | None:
    """The bearer token, or None when the header is missing or empty."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def body_key(payload: Any) -> str | None:
    """The ``api_key`` field of a send or ``{"emails": [...]}`` body (the docs allow it)."""
    if isinstance(payload, dict):
        value = payload.get("api_key")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def emails_in(payload: Any) -> int:
    """What a send request costs against the rate: every to+cc+bcc address, at least 1."""
    if isinstance(payload, dict):
        emails = payload.get("emails")
        items = emails if isinstance(emails, list) else [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        return 1
    total = 0
    for item in items:
        if isinstance(item, dict):
            for field in ("to", "cc", "bcc"):
                value = item.get(field)
                if isinstance(value, list):
                    total += len(value)
    return max(1, total)


def insufficient_scope(scope: str) -> Answer:
    """An admin call (or an admin key sending) without the scope it needs (SDK: flat)."""
    return 403, {
        "status_code": 403,
        "message": f"This API key does not have the required scope: {scope}.",
        "errors": {"code": "insufficient_scope", "required_scope": scope},
    }


# One email ----------------------------------------------------------------------------------


def _recipients(email: dict[str, Any], field: str) -> Answer | list[str]:
    value = email.get(field)
    if value is None or value == []:
        if field == "to":
            return _one(422, "to", "required", "At least one recipient is required.")
        return []
    if not isinstance(value, list):
        return _one(
            422, field, "array", f"The {field} field must be an array of recipient objects."
        )
    if len(value) > MAX_PER_FIELD:
        return error(422, TOO_MANY_TEXT, {field: {"max_limit": TOO_MANY_TEXT}})
    out = []
    for item in value:
        address = item.get("email") if isinstance(item, dict) else None
        if not valid_address(address):
            return _one(
                422, field, "email", f"Every {field} recipient needs a valid email address."
            )
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            return _one(422, field, "name", f"A {field} recipient's name must be a string.")
        out.append(address)
    return out


def _check_extras(email: dict[str, Any]) -> Answer | None:
    reply_to = email.get("reply_to")
    if reply_to is not None:
        if isinstance(reply_to, dict):
            ok = valid_address(reply_to.get("email"))
        else:
            ok = isinstance(reply_to, str) and rfc5322_address(reply_to) is not None
        if not ok:
            return _one(
                422,
                "reply_to",
                "email",
                "The reply_to address must be {email, name} or an RFC 5322 address string.",
            )
    headers = email.get("headers")
    if headers is not None and not (
        isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return _one(422, "headers", "object", "Headers must be an object of strings.")
    tags = email.get("tags")
    if tags is not None:
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            return _one(422, "tags", "object", "Tags must be an object of strings.")
        if any(len(k) > MAX_TAG_KEY for k in tags):
            return _one(
                422,
                "tags",
                "max_key_length",
                f"Tag keys may not be greater than {MAX_TAG_KEY} characters.",
            )
        if any(len(v) > MAX_TAG_VALUE for v in tags.values()):
            return _one(
                422,
                "tags",
                "max_value_length",
                f"Tag values may not be greater than {MAX_TAG_VALUE} characters.",
            )
    message_hash = email.get("message_hash")
    if message_hash is not None:
        if not isinstance(message_hash, str) or not message_hash:
            return _one(
                422, "message_hash", "string", "The message hash must be a non-empty string."
            )
        if len(message_hash) > MAX_MESSAGE_HASH:
            return _one(
                422,
                "message_hash",
                "max_length",
                f"The message hash may not be greater than {MAX_MESSAGE_HASH} characters.",
            )
    attachments = email.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            return _one(422, "attachments", "array", "Attachments must be an array.")
        total = 0
        for item in attachments:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("type"), str)
                and "content" in item
            ):
                return _one(
                    422,
                    "attachments",
                    "required",
                    "Every attachment needs type, name and content.",
                )
            size = decoded_size(item["content"])
            if size is None:
                return _one(
                    422, "attachments", "base64", "Attachment content must be base64 encoded."
                )
            total += size
        if total > MAX_ATTACHMENTS:
            return _one(
                422,
                "attachments",
                "max_size",
                "Attachments may not exceed 10 MB in total (decoded).",
            )
    return None


def send_one(
    state: SandboxState,
    key: str,
    email: Any,
    *,
    endpoint: str,
    idempotency_key: str | None,
    now: float,
    batch_index: int | None = None,
    raw: bytes | None = None,
) -> Answer:
    """Validate one email and, when it passes, accept it: ``(200, {"message_id"})``."""
    if not isinstance(email, dict):
        return NOT_AN_OBJECT
    sender = email.get("from")
    if sender is None:
        return _one(422, "from", "required", "The from field is required.")
    sender_address = sender.get("email") if isinstance(sender, dict) else None
    if not valid_address(sender_address):
        return _one(
            422, "from", "email", "The from field must be {email, name?} with a valid email."
        )
    domain = domain_of(sender_address)
    if domain not in state.verified:
        return DOMAIN_NOT_VERIFIED if domain in state.pending else DOMAIN_NOT_FOUND
    if not state.domain_allowed(key, domain):
        return DOMAIN_NOT_ALLOWED

    lists = []
    for field in ("to", "cc", "bcc"):
        got = _recipients(email, field)
        if isinstance(got, tuple):
            return got
        lists.append(got)

    subject = email.get("subject")
    html = email.get("html")
    text = email.get("text")
    missing = {}
    if not isinstance(subject, str) or not subject:
        missing[SUBJECT_REQUIRED[0]] = {SUBJECT_REQUIRED[1]: SUBJECT_REQUIRED[2]}
    if not ((isinstance(html, str) and html) or (isinstance(text, str) and text)):
        missing[CONTENT_REQUIRED[0]] = {CONTENT_REQUIRED[1]: CONTENT_REQUIRED[2]}
    if missing:
        return error(422, CONTENT_MESSAGE, missing)
    assert isinstance(subject, str)
    if len(subject) > MAX_SUBJECT:
        return _one(
            422,
            "subject",
            "max_length",
            f"Subject may not be greater than {MAX_SUBJECT} characters.",
        )
    bad = _check_extras(email)
    if bad is not None:
        return bad

    kept = [tuple(a for a in lst if domain_of(a) not in DISPOSABLE_DOMAINS) for lst in lists]
    count = len(kept[0]) + len(kept[1]) + len(kept[2])
    state.dropped_disposable += len(lists[0]) + len(lists[1]) + len(lists[2]) - count
    if state.suppressions["tosend"]:  # the docs: a suppressed address is blocked, as spam
        left = [tuple(a for a in lst if not state.is_suppressed("tosend", a, now)) for lst in kept]
        blocked = count - (len(left[0]) + len(left[1]) + len(left[2]))
        if blocked:
            state.dropped_suppressed += blocked
            kept, count = left, count - blocked
    if count == 0:
        return ALL_DISPOSABLE
    if not state.has_credits(count):
        return INSUFFICIENT_CREDITS

    message_id = email.get("message_hash") or uuid.uuid4().hex
    attachments = email.get("attachments")
    names = tuple(a["name"] for a in attachments) if attachments else ()
    entry = Logged(
        "tosend",
        endpoint,
        idempotency_key,
        message_id,
        None,
        kept[0],
        kept[1],
        kept[2],
        logged_body(email, raw),
        now,
        batch_index,
        sender_address,
        domain,
        subject,
        names,
    )
    state.accept(entry, count)
    return 200, {"message_id": message_id}


def send_batch(
    state: SandboxState,
    key: str,
    payload: Any,
    *,
    endpoint: str,
    idempotency_key: str | None,
    now: float,
) -> tuple[int, dict[str, Any], int]:
    """Each email on its own: 200 if all pass, else 207; also returns how many passed."""
    emails = payload.get("emails") if isinstance(payload, dict) else payload
    if not isinstance(emails, list) or not emails:
        status, body = BATCH_EMPTY
        return status, body, 0
    if len(emails) > MAX_BATCH:
        status, body = BATCH_TOO_MANY
        return status, body, 0
    # The docs: "Credit balance is checked before processing the batch": every address of
    # every email, as given, so a short balance refuses the batch whole.
    if state.credits is not None and not state.has_credits(_addresses_in(emails)):
        status, body = INSUFFICIENT_CREDITS
        return status, body, 0
    results: list[dict[str, Any]] = []
    ok = 0
    for index, email in enumerate(emails):
        answer = send_one(
            state,
            key,
            email,
            endpoint=endpoint,
            idempotency_key=idempotency_key,
            now=now,
            batch_index=index,
        )
        status, body = answer
        if status == 200:
            ok += 1
            results.append({"status": "success", "message_id": body["message_id"]})
        elif answer is ALL_DISPOSABLE:
            state.reject("spam")
            results.append(SPAM_RESULT)
        else:
            state.reject(status)
            results.append({"status": "error", **body})
    return (200 if ok == len(emails) else 207), {"results": results}, ok


def _addresses_in(emails: list[Any]) -> int:
    total = 0
    for item in emails:
        if isinstance(item, dict):
            for field in ("to", "cc", "bcc"):
                value = item.get(field)
                if isinstance(value, list):
                    total += len(value)
    return total


def info(state: SandboxState, key: str) -> dict[str, Any]:
    """The body of ``GET /v2/info`` in the configured shape (``info_shape``).

    A key restricted to some domains sees only those (the docs: "only that domain's
    statistics will be shown").
    """
    cfg = state.config
    first = state.first_verified()
    names = [d.lower() for d in cfg.domains] + [
        d.lower() for d in cfg.pending_domains if d.lower() not in state.verified
    ]
    restricted = state.key_domains.get(key)
    shown = [
        (number, name)
        for number, name in enumerate(dict.fromkeys(names), start=1)
        if restricted is None or name in restricted
    ]
    plan = "credits" if state.credits is not None else "unlimited"
    if cfg.info_shape == "older":
        created = datetime.fromtimestamp(int(state.started), UTC).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "account": {
                "title": "batchsend sandbox",
                "plan_type": plan,
                "status": "active",
                "emails_usage_this_month": _usage(state, month=True),
                "emails_sent_last_24hrs": _usage(state, month=False),
            },
            "domains": [
                {
                    "domain_name": name,
                    "verification_status": "verified" if name in state.verified else "pending",
                    "created_at": created,
                }
                for _number, name in shown
            ],
        }
    domains = []
    for number, name in shown:
        delivered, bounced, complained = state.domain_outcomes.get(name, (0, 0, 0))
        domains.append(
            {
                "id": number,
                "domain_name": name,
                "verification_status": "verified" if name in state.verified else "pending",
                "is_default": 1 if name == first else 0,
                "total_sent": state.domain_sent.get(name, 0),
                "total_delivered": delivered,
                "total_bounced": bounced,
                "total_complained": complained,
            }
        )
    # over every domain (the account's rates), in recipients, as drawn at acceptance
    delivered, bounced, complained = (
        sum(t[i] for t in state.domain_outcomes.values()) for i in range(3)
    )
    return {
        "account": {
            "id": 1,
            "status": "active",
            "plan_type": plan,
            "credit_balance": state.credits,
            "monthly_email_limit": None,
            "limit_per_second": cfg.tosend_emails_per_second,
            "ses_region": "sandbox",
            "bounce_rate": round(bounced / (delivered + bounced), 4) if bounced else 0.0,
            "complaint_rate": round(complained / delivered, 4) if complained else 0.0,
            "ses_status": "active",
        },
        "domains": domains,
    }


def _usage(state: SandboxState, *, month: bool) -> int:
    """Recipients accepted this calendar month (UTC), or in the last 24 hours."""
    now = state.clock()
    if month:
        day = datetime.fromtimestamp(now, UTC)
        since = datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() // 3600
    else:
        since = now // 3600 - 23  # hour granularity: the last 24 started hours
    return sum(n for hour, n in state.recipients_per_hour.items() if hour >= since)


# Admin API: the delivery log -------------------------------------------------------------

ADMIN_READ_SCOPE = "emails:read"
ADMIN_SEND_SCOPE = "emails:send"
SUPPRESSIONS_READ_SCOPE = "suppressions:read"
#: Suppression statuses (the dashboard's filter) and the bounce type shown for a bounce.
SUPPRESSION_STATUSES = ("bounced", "complained")
SUPPRESSED_BOUNCE_TYPE = "General"
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


def is_admin_key(key: str) -> bool:
    """Does ``key`` look like an admin key (``tsend_admin_...``)?"""
    return key.startswith(ADMIN_KEY_PREFIX)


def email_resource(entry: Logged, status: str = "sent") -> dict[str, Any]:
    """One accepted message as the admin API shows it (``status``: sent|bounced|complaint)."""
    return {
        "message_id": entry.message_id,
        "status": status,
        "from": entry.sender,
        "to": list(entry.to),
        "cc": list(entry.cc),
        "bcc": list(entry.bcc),
        "subject": entry.subject,
        "domain": entry.domain,
        "attachments": list(entry.attachments),
        "created_at": iso_time(entry.received),
    }


def admin_error(status: int, message: str, errors: dict[str, Any] | None = None) -> Answer:
    """An admin API error (flat ``errors``, no error_type)."""
    body: dict[str, Any] = {"status_code": status, "message": message}
    if errors:
        body["errors"] = errors
    return status, body


def get_email(state: SandboxState, message_id: str) -> Answer:
    """``GET /v2/emails/{message_id}``: ``{"data": {...}}`` or 404."""
    position = state.tosend_index.get(message_id)
    if position is None:
        return admin_error(404, "Email not found.", {"code": "not_found"})
    entry = state.log[position]
    return 200, {"data": email_resource(entry, state.message_status(entry, state.clock()))}


def _bound(value: str, *, upper: bool) -> float | None:
    """An ISO 8601 date or date-time as epoch seconds; a bare date as an upper bound
    means the end of that day."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.timestamp()
    if upper and len(text) == 10:  # YYYY-MM-DD
        stamp += 86400 - 0.001
    return stamp


def _paging(query: Any) -> tuple[int, int, Answer | None]:
    """(page, per_page, None) from the query, or (0, 0, the 422 to answer)."""
    try:
        page = int(query.get("page", "1"))
        per_page = int(query.get("per_page", str(DEFAULT_PER_PAGE)))
    except ValueError:
        return 0, 0, admin_error(422, "page and per_page must be integers.", {"page": "integer"})
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        return (
            0,
            0,
            admin_error(
                422,
                f"page must be >= 1 and per_page between 1 and {MAX_PER_PAGE}.",
                {"per_page": "between"},
            ),
        )
    return page, per_page, None


def list_emails(state: SandboxState, query: Any) -> Answer:
    """``GET /v2/emails``: the delivery log, newest first, filtered and paged."""
    page, per_page, refused = _paging(query)
    if refused is not None:
        return refused
    status = query.get("status") or None
    domain = (query.get("domain") or "").lower() or None
    if domain is not None and domain.isdigit():  # a domain id, as /v2/info numbers them
        names = list(
            dict.fromkeys(d.lower() for d in (*state.config.domains, *state.config.pending_domains))
        )
        number = int(domain)
        domain = names[number - 1] if 1 <= number <= len(names) else "\0"
    bounds = []
    for name, upper in (("from", False), ("to", True)):
        raw = query.get(name)
        if raw:
            stamp = _bound(raw, upper=upper)
            if stamp is None:
                return admin_error(422, f"{name} must be an ISO 8601 date.", {name: "date"})
            bounds.append(stamp)
        else:
            bounds.append(-math.inf if not upper else math.inf)
    low, high = bounds
    search = (query.get("search") or "").lower() or None
    now = state.clock()
    matched = []
    for entry in reversed(state.log):
        if entry.provider != "tosend":
            continue
        if status is not None and status != state.message_status(entry, now):
            continue
        if domain is not None and entry.domain != domain:
            continue
        if not low <= entry.received <= high:
            continue
        if search is not None and not any(
            search in text.lower()
            for text in (
                entry.subject,
                entry.message_id,
                entry.sender,
                *entry.to,
                *entry.cc,
                *entry.bcc,
            )
        ):
            continue
        matched.append(entry)
    start = (page - 1) * per_page
    return 200, {
        "data": [
            email_resource(e, state.message_status(e, now))
            for e in matched[start : start + per_page]
        ],
        "total": len(matched),
        "page": page,
        "per_page": per_page,
    }


# Admin API: the suppression list ---------------------------------------------------------


def list_suppressions(state: SandboxState, query: Any) -> Answer:
    """``GET /v2/suppressions?search&status&page&per_page``: hard bounces and complaints.

    Newest first, one entry per address (the first event that put it there).
    """
    page, per_page, refused = _paging(query)
    if refused is not None:
        return refused
    status = query.get("status") or None
    if status is not None and status not in SUPPRESSION_STATUSES:
        return admin_error(
            422,
            "status must be one of: " + ", ".join(SUPPRESSION_STATUSES) + ".",
            {"status": "in"},
        )
    search = (query.get("search") or "").lower() or None
    rows = []
    for event in state.listed("tosend", state.clock()):
        kind = "complained" if event.type == "complained" else "bounced"
        if status is not None and kind != status:
            continue
        if search is not None and search not in event.recipient.lower():
            continue
        rows.append((kind, event))
    start = (page - 1) * per_page
    return 200, {
        "data": [
            {
                "email": event.recipient,
                "status": kind,
                "bounce_type": SUPPRESSED_BOUNCE_TYPE if kind == "bounced" else None,
                "reason": event.reason,
                "domain": state.log[event.position].domain,
                "message_id": event.message_id,
                "created_at": iso_time(event.at),
            }
            for kind, event in rows[start : start + per_page]
        ],
        "total": len(rows),
        "page": page,
        "per_page": per_page,
    }
