"""What batchsend reads back from the providers' APIs: v1's events, and both providers'
suppression lists.

**Events** (``batchsend events pull``): MailerLogic's Events API, for accounts whose
webhooks cannot reach this machine. ``GET /api/v1/events?from_timestamp=&to_timestamp=
&page=&limit=`` with ``Authorization: Bearer <key>`` (an enterprise feature; 403
``event_api_disabled`` or ``event_tracking_disabled`` otherwise). A pull fixes its window
at the start (from the user's ``--since``, or where the last pull stopped, to now), walks
its pages oldest first, and commits each page's events together with the position
reached, so a pull that is stopped -- Ctrl-C, a crash, a network failure -- continues
from its last page next time. Events already stored (a webhook delivered them, or an
earlier pull) are kept once.

**Suppression lists** (``batchsend suppressions sync``): ToSend's ``GET /v2/suppressions``
(an admin key with the ``suppressions:read`` scope) and MailerLogic's ``GET
/api/customer/suppressions`` (the account's key). Every address the provider refuses to
mail (hard bounces, complaints) joins batchsend's list, so a campaign skips it instead of
having the provider drop it; addresses batchsend has and the provider has not are
counted, not pushed (neither provider documents adding to its list).

Every request here is a read: a failed one is retried, within bounds, whatever the
failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from batchsend.addresses import suppression_key
from batchsend.errors import (
    CannotAskError,
    FatalSendError,
    InputError,
    RetryableSendError,
    UncertainSendError,
)
from batchsend.events import v1 as v1_events
from batchsend.retry import RetryPolicy
from batchsend.store import Store
from batchsend.store.events import (
    Suppression,
    add_suppressions,
    cursor,
    record_events,
    save_cursor,
    suppressed_addresses,
)
from batchsend.transport import HttpRequest, Transport, make_transport
from batchsend.version import USER_AGENT

PAGE_LIMIT = 100
READ_POLICY = RetryPolicy(max_attempts=6, max_time=120)


@dataclass(frozen=True, slots=True)
class PullResult:
    pages: int
    events: int
    new: int
    duplicates: int
    since: str
    until: str


@dataclass(frozen=True, slots=True)
class SyncResult:
    provider: str
    listed: int  # addresses on the provider's list
    added: int  # of those, new to batchsend's list
    only_ours: int  # on batchsend's list, not on the provider's


def cursor_name(base_url: str) -> str:
    return f"v1-events {base_url.rstrip('/')}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def _get(
    transport: Transport, url: str, headers: dict[str, str], policy: RetryPolicy, what: str
) -> Any:
    """GET ``url`` and decode its JSON, retrying what may pass (it is a read)."""
    request = HttpRequest("GET", url, headers)

    async def fetch(attempt: int) -> bytes:
        try:
            response = await transport.send(request)
        except UncertainSendError as exc:  # asking again is harmless
            raise RetryableSendError(str(exc), error_type=exc.error_type) from None
        if response.status == 200:
            return response.body
        if response.status == 429 or response.status >= 500:
            raise RetryableSendError(
                f"{what} answered {response.status}",
                error_type=f"http_{response.status}",
                status=response.status,
            )
        if response.status in (401, 403):
            raise CannotAskError(_refusal(what, response.status, response.body))
        raise FatalSendError(
            _refusal(what, response.status, response.body),
            error_type="refused",
            status=response.status,
        )

    body = await policy.call(fetch)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FatalSendError(f"{what} answered something that is not JSON") from None


def _refusal(what: str, status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
        errors = payload.get("errors") if isinstance(payload.get("errors"), dict) else {}
        code = payload.get("error") or errors.get("code") or payload.get("reason") or ""
        text = payload.get("message") or ""
    except (orjson.JSONDecodeError, AttributeError):
        code, text = "", ""
    if status == 403 and code in ("event_api_disabled", "event_tracking_disabled"):
        return (
            f"the Events API is not available for this account ({code}); batchsend changed "
            "nothing. Receive webhooks with `batchsend events serve` instead"
        )
    if status == 403 and code == "insufficient_scope":
        return f"{what} refused the key: it lacks a scope ({text}); batchsend changed nothing"
    if status in (401, 403):
        return f"{what} refused the key ({status} {code}): check the key; batchsend changed nothing"
    return f"{what} answered {status} {code} {text}".strip()


def _checked_time(text: str) -> str:
    """``--since`` as ISO 8601 UTC, or InputError (exit 2) before anything is asked."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--since {text!r} is not an ISO 8601 time",
            fix="give a date or a time, e.g. --since 2026-12-01 or --since 2026-12-01T08:00:00Z",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _iso(moment)


def _headers(**extra: str) -> dict[str, str]:
    return {"Accept": "application/json", "User-Agent": USER_AGENT, **extra}


async def pull_v1_events(
    store: Store,
    *,
    base_url: str,
    api_key: str,
    since: str | None,
    policy: RetryPolicy = READ_POLICY,
    on_page: Callable[[int, int], None] | None = None,
) -> PullResult:
    """Fetch every event from ``since`` (or the saved position) to now into the store."""
    name = cursor_name(base_url)
    if since is not None:
        since = _checked_time(since)
    start = since or cursor(store, name)
    if start is None:
        raise InputError(
            f"no --since, and no earlier pull from {base_url} to continue from",
            fix="pass --since with an ISO 8601 time, e.g. --since 2026-12-01T00:00:00Z",
        )
    until = _iso(datetime.now(UTC))
    headers = _headers(Authorization=f"Bearer {api_key}")
    pages = events = new = duplicates = 0
    page, total_pages = 1, 1
    latest = start
    root = base_url.rstrip("/")
    async with make_transport("aiohttp", concurrency=1) as transport:
        while page <= total_pages:
            query = urlencode(
                {"from_timestamp": start, "to_timestamp": until, "page": page, "limit": PAGE_LIMIT}
            )
            body = await _get(
                transport, f"{root}/api/v1/events?{query}", headers, policy, "the Events API"
            )
            found, _, total_pages = v1_events.parse_api_page(orjson.dumps(body))
            with store.transaction() as conn:
                stored = record_events(conn, found, store.now())
                for e in found:
                    if e.occurred_at and e.occurred_at > latest:
                        latest = e.occurred_at
                # Where the next pull begins: the newest event taken (its timestamp is
                # included again next time; the repeat is stored once).
                save_cursor(conn, name, latest, store.now())
            pages += 1
            events += len(found)
            new += stored.new
            duplicates += stored.duplicates
            if on_page is not None:
                on_page(page, total_pages)
            page += 1
    return PullResult(pages, events, new, duplicates, start, until)


def _entry(item: Any, provider: str, kind_field: str, complaint: str) -> Suppression | None:
    """One provider list entry as ours (None for one without an address)."""
    email = item.get("email") if isinstance(item, dict) else None
    if not isinstance(email, str) or "@" not in email:
        return None
    reason = "complaint" if item.get(kind_field) == complaint else "hard bounce"
    stamp = str(item.get("created_at") or "")
    note = item.get("reason") if isinstance(item.get("reason"), str) else None
    return Suppression(suppression_key(email), email, reason, f"sync:{provider}", stamp, note=note)


async def sync_suppressions(
    store: Store,
    *,
    provider: str,
    base_url: str,
    key: str,
    policy: RetryPolicy = READ_POLICY,
) -> SyncResult:
    """Add every address on the provider's suppression list to batchsend's."""
    root = base_url.rstrip("/")
    entries: dict[str, Suppression] = {}
    async with make_transport("aiohttp", concurrency=1) as transport:
        page = 1
        while True:
            if provider == "tosend":
                query = urlencode({"page": page, "per_page": PAGE_LIMIT})
                body = await _get(
                    transport,
                    f"{root}/v2/suppressions?{query}",
                    _headers(Authorization=f"Bearer {key}"),
                    policy,
                    "ToSend's suppression list",
                )
                items = body.get("data") if isinstance(body, dict) else None
                total = int(body.get("total") or 0) if isinstance(body, dict) else 0
                # The page size the server used (it may cap ours): pages of that size.
                size = int(body.get("per_page") or PAGE_LIMIT) if isinstance(body, dict) else 0
                more = size > 0 and page * size < total
                kind_field, complaint = "status", "complained"
            else:
                query = urlencode({"page": page, "limit": PAGE_LIMIT})
                body = await _get(
                    transport,
                    f"{root}/api/customer/suppressions?{query}",
                    _headers(**{"X-API-Key": key}),
                    policy,
                    "v1's suppression list",
                )
                items = body.get("suppressions") if isinstance(body, dict) else None
                paging = body.get("pagination") if isinstance(body, dict) else None
                pages = int(paging.get("pages") or 1) if isinstance(paging, dict) else 1
                more = page < pages
                kind_field, complaint = "type", "complaint"
            if not isinstance(items, list):
                raise FatalSendError(f"{provider}'s suppression list answered no list")
            for item in items:
                entry = _entry(item, provider, kind_field, complaint)
                if entry is not None:
                    entries.setdefault(entry.address, entry)
            if not more or not items:
                break
            page += 1
    added = add_suppressions(store, entries.values())
    theirs = set(entries)
    only_ours = sum(1 for address in suppressed_addresses(store) if address not in theirs)
    return SyncResult(provider, len(entries), added, only_ours)
