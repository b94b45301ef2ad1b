"""ToSend webhooks: the signature and the three payload generations its docs describe.

ToSend posts ``bounced`` and ``complaint`` events only. A webhook created with a secret
signs each body: ``X-ToSend-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw body
with the secret (docs/providers.md, "tosend: ToSend v2", Webhooks). Three body shapes
are documented and a receiver accepts all three::

    {"type": "bounced", "data": {"email", "bounce_type", "is_hard_bounce", "reason",
                                 "timestamp", "message_id", ...}, "created_at"}
    {"type": "bounce", "email", "bounce_sub_type", "reason", "is_hard_bounce", "message_id"}
    {"event": "bounced", "email", "domain", "bounce_type", "bounce_subtype", "timestamp",
     "message_id"}

(complaints: ``type``/``event`` ``complaint``). No shape carries an event id, so an
event's key is a digest of its content: a retried delivery has the same body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from batchsend.events.model import Event, EventPayloadError, content_key, dumps, text

PROVIDER = "tosend"
SIGNATURE_HEADER = "X-ToSend-Signature"
EVENT_HEADER = "X-ToSend-Event"

_TYPES = {
    "bounced": "bounced",
    "bounce": "bounced",
    "complaint": "complained",
    "complained": "complained",
}


def signature(body: bytes, secret: str) -> str:
    """The header value ToSend sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is the right signature of ``body`` (constant-time compare)."""
    if not header:
        return False
    # As bytes: a header with non-ASCII characters is simply wrong, not an error.
    given = header.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(given, signature(body, secret).encode())


def _bounce_type(fields: Mapping[str, Any]) -> str:
    hard = fields.get("is_hard_bounce")
    if isinstance(hard, bool):
        return "hard" if hard else "soft"
    kind = str(fields.get("bounce_type") or "").strip().lower()
    # SES's words (ToSend sends through SES): Permanent is a hard bounce; Transient and
    # Undetermined may succeed later, so they never suppress an address.
    return "hard" if kind in ("permanent", "hard") else "soft"


def parse_one(payload: Any, header_type: str | None = None) -> Event:
    """The :class:`Event` in one decoded ToSend webhook body (any generation)."""
    if not isinstance(payload, dict):
        raise EventPayloadError("a ToSend event must be a JSON object")
    name = payload.get("type") or payload.get("event") or header_type
    # Generation 1 nests the fields under "data"; the others are flat.
    fields = payload["data"] if isinstance(payload.get("data"), dict) else payload
    kind = _TYPES.get(str(name or "").strip().lower(), "other")
    message_id = text(fields.get("message_id"))
    bounced = kind == "bounced"
    reason = fields.get("reason") or fields.get("bounce_sub_type") or fields.get("bounce_subtype")
    # The type may come in the X-ToSend-Event header only: it is part of what the event
    # is, so two bodies alike but for it are two events.
    identity = payload if (payload.get("type") or payload.get("event")) else {
        "header_type": header_type, "payload": payload,
    }  # fmt: skip
    return Event(
        key=content_key(PROVIDER, identity),
        provider=PROVIDER,
        type=kind,
        recipient=text(fields.get("email")),
        message_key=message_id,
        provider_message_id=message_id,
        bounce_type=_bounce_type(fields) if bounced else None,
        reason=text(reason) if bounced or kind == "other" else text(fields.get("reason")),
        occurred_at=text(fields.get("timestamp") or payload.get("created_at")),
        raw=dumps(payload),
    )


def parse_webhook(body: bytes, headers: Mapping[str, str]) -> list[Event]:
    """Every event in a webhook body: one object (documented), or an array of them."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EventPayloadError("the body is not JSON") from None
    header_type = headers.get(EVENT_HEADER)
    items = payload if isinstance(payload, list) else [payload]
    return [parse_one(item, header_type) for item in items]
