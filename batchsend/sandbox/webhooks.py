"""Posting events to the receiver, as each provider does: bodies, signature, retries.

The state decides what is posted and when (:meth:`SandboxState.due_posts`,
:meth:`SandboxState.posted`); :class:`WebhookSender` is the background task of the
sandbox's aiohttp app that makes the posts, at most ``webhook_concurrency`` at a time,
and stops with the app. docs/sandbox.md has the long form.

- ToSend posts ``bounced`` and ``complaint`` only, in one of the three bodies its docs
  show (``webhook_shape``), with ``X-ToSend-Event``, ``X-ToSend-Timestamp`` (when posted)
  and, with ``webhook_secret``, ``X-ToSend-Signature: sha256=<hex HMAC-SHA256 of the raw
  body>``.
- v1 posts every delivery event as ``{"id", "type": "email.<type>", "created_at",
  "data": {...}}``, with the message's ``metadata``, ``tag`` and ``headers``. v1
  documents no signature: a receiver knows it by a secret in its URL.
- A post is acknowledged by any 2xx; anything else (another status, a redirect, which is
  never followed, a refused connection, ``webhook_timeout_s``) is tried again after
  ``webhook_backoff_s``, doubling, up to ``webhook_max_attempts`` posts. A retry and a
  duplicate carry the same body as the first post.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from typing import Any

import aiohttp

from batchsend.sandbox.state import (
    Delivery,
    Event,
    Logged,
    SandboxState,
    iso_time,
    json_object,
)

#: How often the sender looks at the clock while a post waits (an injected clock moves
#: without telling anyone).
POLL_S = 0.05
USER_AGENT = "batchsend-sandbox-webhooks"

_TOSEND_EVENT = {"bounced": "bounced", "complained": "complaint"}
_BOUNCE_TYPE = {"hard": "Permanent", "soft": "Transient"}
_BOUNCE_SUBTYPE = {"hard": "General", "soft": "MailboxFull"}


def signature(secret: str, body: bytes) -> str:
    """``X-ToSend-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def tosend_body(event: Event, entry: Logged, shape: str) -> dict[str, Any]:
    """A ToSend webhook body in one of its three documented shapes."""
    stamp = iso_time(event.at)
    if event.type == "complained":
        if shape == "legacy":
            return {
                "event": "complaint",
                "email": event.recipient,
                "domain": entry.domain,
                "timestamp": stamp,
                "message_id": event.message_id,
            }
        if shape == "flat":
            return {"type": "complaint", "email": event.recipient, "message_id": event.message_id}
        data: dict[str, Any] = {
            "email": event.recipient,
            "timestamp": stamp,
            "message_id": event.message_id,
        }
        return {"type": "complaint", "data": data, "created_at": stamp}
    kind = event.bounce_type or "hard"
    if shape == "legacy":
        return {
            "event": "bounced",
            "email": event.recipient,
            "domain": entry.domain,
            "bounce_type": _BOUNCE_TYPE[kind],
            "bounce_subtype": _BOUNCE_SUBTYPE[kind],
            "timestamp": stamp,
            "message_id": event.message_id,
        }
    if shape == "flat":
        return {
            "type": "bounce",
            "email": event.recipient,
            "bounce_sub_type": _BOUNCE_SUBTYPE[kind],
            "reason": event.reason,
            "is_hard_bounce": kind == "hard",
            "message_id": event.message_id,
        }
    data = {
        "email": event.recipient,
        "bounce_type": _BOUNCE_TYPE[kind],
        "bounce_sub_type": _BOUNCE_SUBTYPE[kind],
        "is_hard_bounce": kind == "hard",
        "reason": event.reason,
        "timestamp": stamp,
        "message_id": event.message_id,
    }
    return {"type": "bounced", "data": data, "created_at": stamp}


def v1_body(event: Event, entry: Logged) -> dict[str, Any]:
    """A v1 webhook body (the shape docs/sandbox.md records)."""
    body = json_object(entry.body_json)
    bounce = None
    if event.type == "bounced":
        bounce = {"type": event.bounce_type, "reason": event.reason}
    return {
        "id": event.id,
        "type": f"email.{event.type}",
        "created_at": iso_time(event.at),
        "data": {
            "email_id": event.email_id,
            "message_id": event.message_id,
            "to": event.recipient,
            "tag": body.get("tag"),
            "metadata": body.get("metadata") or {},
            "headers": body.get("headers") or {},
            "bounce": bounce,
            "url": event.url,
        },
    }


def render(state: SandboxState, event: Event, now: float) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of one post of ``event``."""
    cfg = state.config
    entry = state.log[event.position]
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if event.provider == "v1":
        return json.dumps(v1_body(event, entry), ensure_ascii=False).encode(), headers
    raw = json.dumps(tosend_body(event, entry, cfg.webhook_shape), ensure_ascii=False).encode()
    headers["X-ToSend-Event"] = _TOSEND_EVENT[event.type]
    headers["X-ToSend-Timestamp"] = iso_time(now)
    if cfg.webhook_secret:
        headers["X-ToSend-Signature"] = signature(cfg.webhook_secret, raw)
    return raw, headers


class WebhookSender:
    """The background task that posts due events; started and stopped with the app."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Post events as they fall due, until cancelled (then in-flight posts stop too)."""
        state = self.state
        wake = self._wake
        state.wake = wake.set
        running = self._running
        session = aiohttp.ClientSession(auto_decompress=False)
        try:
            while True:
                now = state.clock()
                room = state.config.webhook_concurrency - len(running)
                for event, delivery in state.due_posts(now, max(0, room)):
                    task = asyncio.create_task(self._post(session, event, delivery))
                    running.add(task)
                    task.add_done_callback(self._finished)
                wake.clear()
                next_at = state.next_post_at()
                timeout = None
                if next_at is not None and len(running) < state.config.webhook_concurrency:
                    timeout = min(max(next_at - now, 0.0), POLL_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
        finally:
            state.wake = None
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await session.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _post(self, session: aiohttp.ClientSession, event: Event, delivery: Delivery) -> None:
        state = self.state
        body, headers = render(state, event, state.clock())
        timeout = aiohttp.ClientTimeout(total=state.config.webhook_timeout_s)
        try:
            async with session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                await response.read()
                ok = 200 <= response.status < 300
        except asyncio.CancelledError:
            state.post_later(event, state.clock())  # the sandbox stopped: post after a restart
            raise
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        state.posted(event, delivery, ok, state.clock())
