"""A loopback server that implements both provider APIs (see shared API-CONTRACTS.md).

``Sandbox`` embeds it (background thread, free port); ``batchsend sandbox`` runs it in
the foreground. Endpoints: ``POST /api/v1/send`` (v1), ``POST /v2/emails``,
``POST /v2/emails/batch``, ``GET /v2/info`` (ToSend), and for inspection without a key
``GET /_sandbox/messages``, ``GET /_sandbox/stats``, ``GET|POST /_sandbox/config``.
The order of checks is documented in :mod:`batchsend.sandbox.app`, the accounting
decisions (credits, rate window, idempotency) in :mod:`batchsend.sandbox.state`.
"""

from __future__ import annotations

from batchsend.sandbox.server import Sandbox, is_loopback
from batchsend.sandbox.state import DISPOSABLE_DOMAINS, SandboxConfig, SandboxState

__all__ = ["DISPOSABLE_DOMAINS", "Sandbox", "SandboxConfig", "SandboxState", "is_loopback"]
