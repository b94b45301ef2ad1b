"""The aiohttp application: routes, the request pipeline shared by both providers, inspection.

Order of checks on a provider endpoint, and why:

1. count the request (totals and per-second histogram), then ``latency`` delays it (and
   a drawn latency spike, ``spike_rate``/``spike_ms``);
2. read the body (always, so keep-alive connections stay in step); on ToSend, a
   ``Python-urllib`` user agent is refused as ToSend's edge refuses it (403, plain text
   ``error code: 1010``), so a client without its own User-Agent fails here, not in
   production. A send's JSON is parsed here, once: ToSend may carry its key in the body
   and its rate counts the emails inside;
3. auth (missing / invalid key; on ToSend the ``Authorization`` header, else the body's
   ``api_key``; a sending key on an admin endpoint or an admin key without
   ``emails:send`` on a send endpoint is 403 ``insufficient_scope``): a stranger is
   refused before anything else happens, and a bad key is never hidden behind a fault;
4. rate limits: a ``refuse_next`` storm first, then ToSend's email bucket on sends
   (``tosend_emails_per_second``) and v1's sliding minute on every v1 request
   (``v1_requests_per_minute``, whose ``X-RateLimit-*`` headers then ride on every v1
   answer); 429 + ``Retry-After`` unless ``retry_after`` is off. A refused request takes
   nothing from a limit;
5. ``GET /v2/info``, the admin lookups, suppression lists and v1 events stop here:
   faults are for sends;
6. ``fail_rate``: an injected 500/502/503, before any processing, so it never accepts;
7. only with ``idempotency_keys``: a known key with the same body replays the stored
   answer (counted as a duplicate, no new message); with a different body, 409. Without
   it (the default, as at both real providers) the header is ignored;
8. malformed JSON (400), then the provider's rules, then acceptance (logged, indexed);
9. what happens to an answer that accepted something, one seeded draw per enabled
   fault: ``drop_rate`` closes the connection with no answer, ``fail_after_accept_rate``
   answers 500, ``slow_rate`` answers after ``slow_ms``. The message was delivered in
   all three; only a refused or rejected request is certain not to be.

Inspection endpoints (``/_sandbox/...``) need no key; the server binds to loopback only
and these handlers also refuse any non-loopback peer. The app's one background task,
:class:`~batchsend.sandbox.webhooks.WebhookSender`, posts delivery events; it starts and
stops with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from aiohttp import web

from batchsend.sandbox import tosend, v1
from batchsend.sandbox.state import SandboxState
from batchsend.sandbox.webhooks import WebhookSender

STATE: web.AppKey[SandboxState] = web.AppKey("state", SandboxState)
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
#: v1 allows 10 MB per file and 25 MB in all, base64 adds a third: leave room.
MAX_BODY = 40 * 1024 * 1024

_JSON = "application/json"
_SENDS = frozenset({"send", "batch"})
#: Admin endpoints and the scope each needs.
_ADMIN = {
    "email": tosend.ADMIN_READ_SCOPE,
    "emails": tosend.ADMIN_READ_SCOPE,
    "suppressions": tosend.SUPPRESSIONS_READ_SCOPE,
}
_EVENTS = frozenset({"events", "email_events"})

Answer = tuple[int, dict[str, Any]]


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


def _authorize(state: SandboxState, provider: ModuleType, kind: str, key: str) -> Answer | None:
    """The refusal for ``key`` on this endpoint, or None when it may go on."""
    if provider is v1:
        return None if key in state.keys else v1.INVALID_KEY
    if key in state.admin_keys:
        scopes = state.admin_scopes(key)
        if kind in _SENDS and tosend.ADMIN_SEND_SCOPE not in scopes:
            return tosend.insufficient_scope(tosend.ADMIN_SEND_SCOPE)
        if kind in _ADMIN and _ADMIN[kind] not in scopes:
            return tosend.insufficient_scope(_ADMIN[kind])
        return None
    if key in state.keys:
        if kind in _ADMIN:  # a sending key holds no admin scope
            return tosend.insufficient_scope(_ADMIN[kind])
        return None
    return tosend.INVALID_KEY


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
    try:
        raw = await request.read()
    except ConnectionResetError:
        # The client went away before its body was read (it gave up during the
        # latency): nothing was processed, and there is no one left to answer.
        state.client_gone += 1
        return web.Response(status=499)

    if provider is tosend and _edge_refuses(request.headers.get("User-Agent", "")):
        state.reject(403)
        return web.Response(status=403, text="error code: 1010")

    payload = _parse(raw) if kind in _SENDS else _MALFORMED
    if kind in _EVENTS:
        key = v1.bearer_key(request.headers)
    else:
        key = provider.api_key(request.headers)
        if key is None and provider is tosend:
            key = tosend.body_key(payload)
    refused = provider.MISSING_KEY if key is None else _authorize(state, provider, kind, key)
    if refused is not None:
        status, body = refused
        state.reject(status)
        return _response(status, _dump(body))
    assert key is not None

    headers: dict[str, str] | None = None
    limited = False
    wait = 1.0
    if state.refuse_storm():
        limited = True
        if provider is v1 and cfg.v1_requests_per_minute is not None:
            remaining, reset = state.v1_window_state(now)
            headers = _v1_headers(cfg.v1_requests_per_minute, remaining, reset)
    elif provider is v1:
        if cfg.v1_requests_per_minute is not None:
            admitted, remaining, reset, after = state.v1_admit(now)
            headers = _v1_headers(cfg.v1_requests_per_minute, remaining, reset)
            limited, wait = not admitted, float(after)
    elif kind in _SENDS and cfg.tosend_emails_per_second is not None:
        wait = state.tosend_admit(now, tosend.emails_in(payload))
        limited = wait > 0
    if limited:
        headers = headers or {}
        if cfg.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        limit = cfg.v1_requests_per_minute if provider is v1 else cfg.tosend_emails_per_second
        status, body = provider.rate_limited(limit)
        return _response(status, _dump(body), headers)

    if kind not in _SENDS:
        status, body = _lookup(request, state, kind, key)
        if status >= 400:
            state.reject(status)
        return _response(status, _dump(body), headers)

    fault = state.draw_failure()
    if fault is not None:
        status, body = provider.server_fault(fault)
        return _response(status, _dump(body), headers)

    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key and cfg.idempotency_keys:
        scope = (key, request.path, idempotency_key)
        digest = state.digest(raw)
        stored = state.recall(scope, now)
        if stored is not None:
            if stored.digest != digest:
                status, body = provider.idempotency_conflict()
                state.reject(status)
                return _response(status, _dump(body), headers)
            state.duplicates += 1
            return await _after_accept(
                request, state, provider, stored.status, stored.body, headers
            )

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
    if not accepted:
        return _response(status, data, headers)
    if idempotency_key and cfg.idempotency_keys:
        state.remember(scope, digest, status, data, now)
    return await _after_accept(request, state, provider, status, data, headers)


async def _after_accept(
    request: web.Request,
    state: SandboxState,
    provider: ModuleType,
    status: int,
    data: bytes,
    headers: dict[str, str] | None,
) -> web.StreamResponse:
    """Answer a request that accepted something, or fail to (the after-accept faults)."""
    outcome = state.draw_after_accept()
    if outcome is None:
        return _response(status, data, headers)
    if outcome == "drop":
        return _drop(request)
    if outcome == "fail":
        fault_status, body = provider.server_fault(500)
        return _response(fault_status, _dump(body), headers)
    await asyncio.sleep(state.config.slow_ms / 1000)
    return _response(status, data, headers)


def _lookup(request: web.Request, state: SandboxState, kind: str, key: str) -> Answer:
    """The answer of a read endpoint (info, admin lookups, v1 events)."""
    if kind == "info":
        return 200, tosend.info(state, key)
    if kind == "email":
        return tosend.get_email(state, request.match_info["message_id"])
    if kind == "emails":
        return tosend.list_emails(state, request.query)
    if kind == "suppressions":
        return tosend.list_suppressions(state, request.query)
    if kind == "customer_suppressions":
        return v1.list_suppressions(state, request.query)
    if not state.config.events_api:
        return v1.EVENTS_DISABLED
    if kind == "events":
        return v1.list_events(state, request.query)
    return v1.email_events(state, request.match_info["email_id"], request.query)


def _v1_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


_MALFORMED = object()


def _parse(raw: bytes) -> Any:
    """The request's JSON, or ``_MALFORMED``."""
    try:
        return json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return _MALFORMED


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


async def tosend_get_email(request: web.Request) -> web.StreamResponse:
    """``GET /v2/emails/{message_id}`` (admin key with ``emails:read``)."""
    return await _provider_request(request, tosend, "email")


async def tosend_list_emails(request: web.Request) -> web.StreamResponse:
    """``GET /v2/emails`` (admin key with ``emails:read``)."""
    return await _provider_request(request, tosend, "emails")


async def tosend_suppressions(request: web.Request) -> web.StreamResponse:
    """``GET /v2/suppressions`` (admin key with ``suppressions:read``)."""
    return await _provider_request(request, tosend, "suppressions")


async def v1_suppressions(request: web.Request) -> web.StreamResponse:
    """``GET /api/customer/suppressions``."""
    return await _provider_request(request, v1, "customer_suppressions")


async def v1_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``."""
    return await _provider_request(request, v1, "events")


async def v1_email_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/emails/{email_id}/events``."""
    return await _provider_request(request, v1, "email_events")


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
    log = state.log
    kept = range(max(since, state.forgotten), len(log))  # indexed: no walk over the skipped
    return _response(200, _dump([log[i].as_dict() for i in kept]))


async def stats(request: web.Request) -> web.Response:
    """``GET /_sandbox/stats``: counters."""
    _loopback_only(request)
    return _response(200, _dump(request.app[STATE].stats()))


async def events(request: web.Request) -> web.Response:
    """``GET /_sandbox/events[?since=ID]``: delivery events that have happened, by id.

    ``since`` leaves out events with an id up to it (a poller passes the last id seen).
    v1's ``queued`` and ``sent`` are not delivery events and are not listed.
    """
    _loopback_only(request)
    state = request.app[STATE]
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="since must be an integer") from None
    return _response(200, _dump({"events": state.events_view(since)}))


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
    out["webhook_secret"] = out["webhook_secret"] is not None
    out["admin_keys"] = len(out["admin_keys"])
    out["admin_scopes"] = sorted({s for v in out["admin_scopes"].values() for s in v})
    out["key_domains"] = sorted({d for v in out["key_domains"].values() for d in v})
    return out


def make_app(state: SandboxState) -> web.Application:
    """The sandbox's aiohttp application over ``state``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    app.cleanup_ctx.append(_webhook_sender)
    app.router.add_post("/api/v1/send", v1_send)
    app.router.add_post("/v2/emails", tosend_send)
    app.router.add_post("/v2/emails/batch", tosend_batch)
    app.router.add_get("/v2/info", tosend_info)
    app.router.add_get("/v2/emails", tosend_list_emails)
    app.router.add_get("/v2/emails/{message_id}", tosend_get_email)
    app.router.add_get("/api/v1/events", v1_events)
    app.router.add_get("/api/v1/emails/{email_id}/events", v1_email_events)
    app.router.add_get("/v2/suppressions", tosend_suppressions)
    app.router.add_get("/api/customer/suppressions", v1_suppressions)
    app.router.add_route("*", "/v2/{tail:.*}", tosend_not_found)
    app.router.add_route("*", "/api/{tail:.*}", v1_not_found)
    app.router.add_get("/_sandbox/messages", messages)
    app.router.add_get("/_sandbox/stats", stats)
    app.router.add_get("/_sandbox/events", events)
    app.router.add_get("/_sandbox/config", get_config)
    app.router.add_post("/_sandbox/config", post_config)
    return app


async def _webhook_sender(app: web.Application) -> AsyncIterator[None]:
    """Run the webhook sender while the app serves; cancel it when the app stops."""
    task = asyncio.create_task(WebhookSender(app[STATE]).run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
