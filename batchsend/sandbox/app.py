"""The aiohttp application: routes, the request pipeline shared by both providers, inspection.

Order of checks on a provider endpoint, and why:

1. count the request (totals and per-second histogram), then ``latency`` delays it (and
   a drawn latency spike, ``spike_rate``/``spike_ms``);
2. read the body (always, so keep-alive connections stay in step); on ToSend, a
   ``Python-urllib`` user agent is refused as ToSend's edge refuses it (403, plain text
   ``error code: 1010``), so a client without its own User-Agent fails here, not in
   production;
3. auth (missing / invalid key): a stranger is refused before anything else happens,
   and a bad key is never hidden behind a random fault;
4. rate limit (429 + ``Retry-After`` unless ``retry_after`` is off; v1 also
   ``X-RateLimit-*`` on every answer);
5. ``fail_rate``: an injected 500/502/503, before any processing, so it never accepts;
   (``GET /v2/info`` stops after step 4: faults are for sends);
6. idempotency: a known key with the same body replays the stored answer (counted as a
   duplicate, no new message); with a different body, 409;
7. malformed JSON (400), then the provider's rules, then acceptance;
8. ``drop_rate``: only an answer that accepted something may be dropped, and only after
   it was logged and stored for replay, so a retry with the same key gets it back.

Inspection endpoints (``/_sandbox/...``) need no key; the server binds to loopback only
and these handlers also refuse any non-loopback peer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from types import ModuleType
from typing import Any

from aiohttp import web

from batchsend.sandbox import tosend, v1
from batchsend.sandbox.state import SandboxState

STATE: web.AppKey[SandboxState] = web.AppKey("state", SandboxState)
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
#: v1 allows 10 MB per file and 25 MB in all, base64 adds a third: leave room.
MAX_BODY = 40 * 1024 * 1024

_JSON = "application/json"


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def _dump(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


async def _provider_request(
    request: web.Request, provider: ModuleType, kind: str
) -> web.StreamResponse:
    state = request.app[STATE]
    state.in_flight += 1
    try:
        return await _answer(request, state, provider, kind)
    finally:
        state.in_flight -= 1


async def _answer(
    request: web.Request, state: SandboxState, provider: ModuleType, kind: str
) -> web.StreamResponse:
    now = state.clock()
    state.count_request(now)
    cfg = state.config
    delay = cfg.latency_ms / 1000 + state.draw_spike()
    if delay:
        await asyncio.sleep(delay)
        now = state.clock()
    raw = await request.read()

    if provider is tosend and _edge_refuses(request.headers.get("User-Agent", "")):
        state.reject(403)
        return web.Response(status=403, text="error code: 1010")

    key = provider.api_key(request.headers)
    if key is None or key not in state.keys:
        status, body = provider.MISSING_KEY if key is None else provider.INVALID_KEY
        state.reject(status)
        return _response(status, _dump(body))

    headers: dict[str, str] | None = None
    admitted, remaining, reset = state.rate_check(now)
    if cfg.rate_limit is not None and provider is v1:
        headers = {
            "X-RateLimit-Limit": str(cfg.rate_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }
    if not admitted:
        headers = headers or {}
        if cfg.retry_after:
            headers["Retry-After"] = "1"  # the window is one wall-clock second
        status, body = provider.rate_limited(cfg.rate_limit or 1)
        return _response(status, _dump(body), headers)

    if kind == "info":
        return _response(200, _dump(tosend.info(state)))

    fault = state.draw_failure()
    if fault is not None:
        status, body = provider.server_fault(fault)
        return _response(status, _dump(body), headers)

    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key:
        scope = (key, request.path, idempotency_key)
        digest = state.digest(raw)
        stored = state.recall(scope, now)
        if stored is not None:
            if stored.digest != digest:
                status, body = provider.idempotency_conflict()
                state.reject(status)
                return _response(status, _dump(body), headers)
            state.duplicates += 1
            if state.draw_drop():
                return _drop(request)
            return _response(stored.status, stored.body, headers)

    try:
        payload = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        payload = _MALFORMED
    if payload is _MALFORMED or (kind == "send" and not isinstance(payload, dict)):
        status, body = provider.MALFORMED if kind == "send" else tosend.MALFORMED_BATCH
        state.reject(status)
        return _response(status, _dump(body), headers)

    if kind == "batch":
        status, body, passed = tosend.send_batch(
            state, key, payload, endpoint=request.path, idempotency_key=idempotency_key, now=now
        )
        accepted = passed > 0
    else:
        send = tosend.send_one if provider is tosend else v1.send
        status, body = send(
            state,
            key,
            payload,
            endpoint=request.path,
            idempotency_key=idempotency_key,
            now=now,
            raw=raw,
        )
        accepted = status == 200
    if status >= 400:
        state.reject(status)
    data = _dump(body)
    if accepted:
        if idempotency_key:
            state.remember(scope, digest, status, data, now)
        if state.draw_drop():
            return _drop(request)
    return _response(status, data, headers)


_MALFORMED = object()

#: User agents ToSend's edge (a browser integrity check in front of the API) refuses with
#: a bare ``403 error code: 1010`` before the API sees the request. The official SDK
#: sets ``tosend-python/<version>`` for this reason: urllib's default is refused.
_REFUSED_AGENTS = ("python-urllib/",)


def _edge_refuses(user_agent: str) -> bool:
    return user_agent.strip().lower().startswith(_REFUSED_AGENTS)


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without answering: the client cannot know it was accepted."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Nothing will be written; aiohttp sees a closed transport and discards this.
    return web.Response(status=204)


async def v1_send(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/send``."""
    return await _provider_request(request, v1, "send")


async def tosend_send(request: web.Request) -> web.StreamResponse:
    """``POST /v2/emails``."""
    return await _provider_request(request, tosend, "send")


async def tosend_batch(request: web.Request) -> web.StreamResponse:
    """``POST /v2/emails/batch``."""
    return await _provider_request(request, tosend, "batch")


async def tosend_info(request: web.Request) -> web.StreamResponse:
    """``GET /v2/info``."""
    return await _provider_request(request, tosend, "info")


async def tosend_not_found(request: web.Request) -> web.Response:
    """Any other ``/v2/...`` path or method: ToSend's JSON 404."""
    status, body = tosend.not_found(request.method, request.path)
    return _response(status, _dump(body))


async def v1_not_found(request: web.Request) -> web.Response:
    """Any other ``/api/...`` path or method: v1's JSON 404."""
    status, body = v1.error(404, "not_found", f"No endpoint {request.method} {request.path}.")
    return _response(status, _dump(body))


# inspection --------------------------------------------------------------------------------


def _loopback_only(request: web.Request) -> None:
    if request.remote not in LOOPBACK_PEERS:
        raise web.HTTPForbidden(text="the sandbox inspection endpoints answer loopback only")


async def messages(request: web.Request) -> web.Response:
    """``GET /_sandbox/messages[?since=N]``: accepted messages, oldest first.

    ``since`` counts every message ever accepted (the first N are skipped), also those
    forgotten beyond ``keep_messages``: a poller's position stays valid. A position
    among the forgotten ones starts at the oldest message still kept (the stats'
    ``messages_forgotten`` says how many went).
    """
    _loopback_only(request)
    state = request.app[STATE]
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="since must be an integer") from None
    if since < 0:
        raise web.HTTPBadRequest(text="since must not be negative")
    start = max(0, since - state.forgotten)
    kept = itertools.islice(state.messages, start, None)
    return _response(200, _dump([m.as_dict() for m in kept]))


async def stats(request: web.Request) -> web.Response:
    """``GET /_sandbox/stats``: counters."""
    _loopback_only(request)
    return _response(200, _dump(request.app[STATE].stats()))


async def get_config(request: web.Request) -> web.Response:
    """``GET /_sandbox/config``: the current settings (keys shown by count only)."""
    _loopback_only(request)
    return _response(200, _dump(public_config(request.app[STATE])))


async def post_config(request: web.Request) -> web.Response:
    """``POST /_sandbox/config`` with a JSON object of settings to change live."""
    _loopback_only(request)
    state = request.app[STATE]
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of settings")
        state.configure(**changes)
    except (ValueError, TypeError) as exc:
        return _response(400, _dump({"error": "bad_request", "message": str(exc)}))
    return _response(200, _dump(public_config(state)))


def public_config(state: SandboxState) -> dict[str, Any]:
    """Settings without the keys themselves."""
    out = state.config_dict()
    out["api_keys"] = len(out["api_keys"])
    out["key_domains"] = sorted({d for v in out["key_domains"].values() for d in v})
    return out


def make_app(state: SandboxState) -> web.Application:
    """The sandbox's aiohttp application over ``state``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_post("/api/v1/send", v1_send)
    app.router.add_post("/v2/emails", tosend_send)
    app.router.add_post("/v2/emails/batch", tosend_batch)
    app.router.add_get("/v2/info", tosend_info)
    app.router.add_route("*", "/v2/{tail:.*}", tosend_not_found)
    app.router.add_route("*", "/api/{tail:.*}", v1_not_found)
    app.router.add_get("/_sandbox/messages", messages)
    app.router.add_get("/_sandbox/stats", stats)
    app.router.add_get("/_sandbox/config", get_config)
    app.router.add_post("/_sandbox/config", post_config)
    return app
