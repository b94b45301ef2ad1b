"""``batchsend events pull``: MailerLogic's Events API, for accounts whose webhooks cannot
reach this machine.

``GET /api/v1/events?from_timestamp=&to_timestamp=&page=&limit=`` with
``Authorization: Bearer <key>`` (an enterprise feature; 403 ``event_api_disabled`` or
``event_tracking_disabled`` otherwise). A pull fixes its window at the start (from the
user's ``--since``, or where the last pull stopped, to now), walks its pages oldest first,
and commits each page's events together with the position reached, so a pull that is
stopped -- Ctrl-C, a crash, a network failure -- continues from its last page next time.
Events already stored (a webhook delivered them, or an earlier pull) are kept once.
A page is a read: a failed fetch is retried, within bounds, whatever the failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson

from batchsend.errors import FatalSendError, RetryableSendError, UncertainSendError
from batchsend.events import v1 as v1_events
from batchsend.retry import RetryPolicy
from batchsend.store import Store
from batchsend.store.events import cursor, record_events, save_cursor
from batchsend.transport import HttpRequest, make_transport
from batchsend.version import USER_AGENT

PAGE_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PullResult:
    pages: int
    events: int
    new: int
    duplicates: int
    since: str
    until: str


def cursor_name(base_url: str) -> str:
    return f"v1-events {base_url.rstrip('/')}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def pull_v1_events(
    store: Store,
    *,
    base_url: str,
    api_key: str,
    since: str | None,
    policy: RetryPolicy | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> PullResult:
    """Fetch every event from ``since`` (or the saved position) to now into the store."""
    name = cursor_name(base_url)
    start = since or cursor(store, name)
    if start is None:
        raise FatalSendError(
            "no --since and no earlier pull to continue from", error_type="no_position"
        )
    until = _iso(datetime.now(UTC))
    policy = policy or RetryPolicy(max_attempts=6, max_time=120)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    pages = events = new = duplicates = 0
    page, total_pages = 1, 1
    latest = start
    async with make_transport("aiohttp", concurrency=1) as transport:
        while page <= total_pages:
            query = urlencode(
                {
                    "from_timestamp": start,
                    "to_timestamp": until,
                    "page": page,
                    "limit": PAGE_LIMIT,
                }
            )
            request = HttpRequest("GET", f"{base_url.rstrip('/')}/api/v1/events?{query}", headers)

            async def fetch(attempt: int, request: HttpRequest = request) -> bytes:
                try:
                    response = await transport.send(request)
                except UncertainSendError as exc:  # a read: asking again is harmless
                    raise RetryableSendError(str(exc), error_type=exc.error_type) from None
                if response.status == 200:
                    return response.body
                if response.status == 429 or response.status >= 500:
                    raise RetryableSendError(
                        f"the Events API answered {response.status}",
                        error_type=f"http_{response.status}",
                        status=response.status,
                    )
                raise FatalSendError(
                    _refusal(response.status, response.body),
                    error_type="events_api",
                    status=response.status,
                )

            body = await policy.call(fetch)
            found, _, total_pages = v1_events.parse_api_page(body)
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


def _refusal(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
        code = payload.get("error") or payload.get("reason") or ""
        text = payload.get("message") or ""
    except (orjson.JSONDecodeError, AttributeError):
        code, text = "", ""
    if status == 403 and code in ("event_api_disabled", "event_tracking_disabled"):
        return (
            f"the Events API is not available for this account ({code}); batchsend changed "
            "nothing. Receive webhooks with `batchsend events serve` instead"
        )
    if status in (401, 403):
        return f"the Events API refused the key ({status} {code}): check the account's API key"
    return f"the Events API answered {status} {code} {text}".strip()
