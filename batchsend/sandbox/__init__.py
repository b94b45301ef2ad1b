"""A loopback server that implements both provider APIs (docs/providers.md).

It is the real service, not a mirror of our client: nothing is de-duplicated unless
``idempotency_keys`` says so, and each provider's limit counts its own unit.
``Sandbox`` embeds it (background thread, free port); ``batchsend sandbox`` runs it in
the foreground. Endpoints: ``POST /api/v1/send``, ``GET /api/v1/events``,
``GET /api/v1/emails/{email_id}/events`` (v1); ``POST /v2/emails``,
``POST /v2/emails/batch``, ``GET /v2/info``, and with an admin key ``GET /v2/emails``,
``GET /v2/emails/{message_id}``, ``GET /v2/suppressions`` (ToSend);
``GET /api/customer/suppressions`` (v1); for inspection without a key
``GET /_sandbox/messages``, ``GET /_sandbox/events``, ``GET /_sandbox/stats``,
``GET|POST /_sandbox/config``. Accepted messages then bounce, complain, open and click
as :mod:`batchsend.sandbox.outcomes` draws it, and :mod:`batchsend.sandbox.webhooks`
posts those events to a loopback webhook URL as each provider would.
The order of checks is documented in :mod:`batchsend.sandbox.app`, the accounting
decisions (credits, rate limits, idempotency, lookups) in :mod:`batchsend.sandbox.state`,
and every decision the providers' documents leave open in ``docs/sandbox.md``.
"""

from __future__ import annotations

from batchsend.sandbox.rules import is_loopback
from batchsend.sandbox.server import Sandbox
from batchsend.sandbox.state import DISPOSABLE_DOMAINS, SandboxConfig, SandboxState

__all__ = ["DISPOSABLE_DOMAINS", "Sandbox", "SandboxConfig", "SandboxState", "is_loopback"]
