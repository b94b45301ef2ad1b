"""``batchsend events serve``: the webhook receiver for both providers.

Routes::

    POST /webhooks/tosend          ToSend; X-ToSend-Signature checked (off without a secret,
                                   unless unsigned events are accepted on purpose)
    POST /webhooks/v1/<token>      MailerLogic; the token in the path is the authentication
    GET  /healthz                  200 while the receiver can store

Durable before acknowledged: a request is answered 200 only after its events are
committed to the database (an :class:`EventWriter` thread owns the connection and commits
the events of every request waiting at that moment together, so many concurrent
deliveries share one commit). A provider that sees no 200 -- a crash, a full disk, a
timeout -- delivers again, and the store keeps a repeated event once. What the answers
mean to the provider:

- 200: stored (or stored before: a repeat);
- 400: the body is not an event (malformed JSON, not an object): retrying will not help;
- 401: the signature or the token is wrong or missing; nothing was stored;
- 404: no such route (v1 without a configured token is one);
- 413: the body is larger than ``max_body`` bytes;
- 503: the database could not take it (busy, disk full): deliver again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from batchsend import ledger
from batchsend.errors import ConcurrentCommandError, EventPayloadError
from batchsend.events import tosend as tosend_events
from batchsend.events import v1 as v1_events
from batchsend.events.model import Event
from batchsend.store import WAL_AUTOCHECKPOINT_PAGES, Store
from batchsend.store.events import Stored, record_events

#: Largest webhook body accepted. A provider event is well under a kilobyte; a bound keeps
#: one hostile request from holding the receiver's memory.
MAX_BODY = 256 * 1024
#: Most requests' events committed in one transaction.
GROUP_COMMIT = 512
#: How long the writer waits for the database's write lock (a run holds it while it
#: records its rows) before the group is answered 503 and left to the provider's retry.
LOCK_WAIT = 3.0
#: The longest a request waits for its commit before it is answered 503: well inside
#: ToSend's 30 s, so the provider retries rather than timing out. A commit that lands
#: after the 503 is harmless: the retry is stored once.
ANSWER_WITHIN = 20.0
#: Requests waiting for the writer beyond this are answered 503 at once.
MAX_WAITING = 10_000


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    db_path: Path
    tosend_secret: str | None = None
    #: Without a secret the ToSend route is off, unless unsigned events are accepted on
    #: purpose (anyone who can reach the port could then put addresses on the list).
    tosend_unsigned: bool = False
    v1_token: str | None = None
    max_body: int = MAX_BODY


class _Pending:
    __slots__ = ("events", "future", "loop")

    def __init__(self, events: Sequence[Event], loop: asyncio.AbstractEventLoop) -> None:
        self.events = events
        self.loop = loop
        self.future: asyncio.Future[Stored] = loop.create_future()


class EventWriter:
    """The one thread that writes events to the database, in group commits.

    :meth:`store` hands a request's events to the thread and waits until the transaction
    holding them has committed (or failed: the caller then answers 503 and the provider
    delivers again).
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        # Items are lists of requests: the event loop hands over, once per turn, every
        # request that arrived in that turn (one wake-up of the thread, not one each).
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._arrived: list[_Pending] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="batchsend-events", daemon=True)
        self.stored = 0
        self.duplicates = 0
        self.waiting = 0  # requests handed over and not answered yet

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def store(self, events: Sequence[Event]) -> Stored:
        if self.waiting >= MAX_WAITING:
            raise OverflowError(f"{self.waiting:,} requests already wait for the database")
        loop = asyncio.get_running_loop()
        pending = _Pending(events, loop)
        if not self._arrived:
            loop.call_soon(self._hand_over)
        self._arrived.append(pending)
        self.waiting += 1
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), ANSWER_WITHIN)
        finally:
            self.waiting -= 1

    def _hand_over(self) -> None:
        arrived, self._arrived = self._arrived, []
        self._queue.put(arrived)

    def _run(self) -> None:
        try:
            # FULL: an acknowledged event survives a power loss too, not only a crash of
            # this process (the provider never sends it again); the group commit pays
            # the one sync for every request waiting.
            store = Store(self.db_path, synchronous="FULL")
            # Every campaign of this user consults the suppression list kept here.
            ledger.index_db(self.db_path, role="events")
            store.conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = list(first)
                with contextlib.suppress(queue.Empty):
                    while len(group) < GROUP_COMMIT:
                        item = self._queue.get_nowait()
                        if item is None:
                            self._queue.put(None)  # stop after this group
                            break
                        group.extend(item)
                self._write(store, group)
        finally:
            store.close()

    def _write(self, store: Store, group: list[_Pending]) -> None:
        try:
            results = []
            now = store.now()
            # While a run is sending, its checkpoints are its own: they are how a lost
            # write-ahead log is detected (docs/engine.md). This connection makes none.
            sending = store.conn.execute("SELECT 1 FROM sending_marks LIMIT 1").fetchone()
            store.conn.execute(
                f"PRAGMA wal_autocheckpoint={0 if sending else WAL_AUTOCHECKPOINT_PAGES}"
            )
            with store.transaction() as conn:
                for pending in group:
                    results.append(record_events(conn, pending.events, now))
        except Exception as exc:  # every waiter must hear of it (and answer 503)
            _answer_all(group, [exc] * len(group))
            return
        for result in results:
            self.stored += result.new
            self.duplicates += result.duplicates
        _answer_all(group, results)


def _answer_all(group: list[_Pending], outcomes: Sequence[Stored | BaseException]) -> None:
    """Wake each waiting request with its outcome: one call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, Stored | BaseException]]] = {}
    for pending, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(pending.loop, []).append((pending, outcome))
    for loop, answers in by_loop.items():
        loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[tuple[_Pending, Stored | BaseException]]) -> None:
    for pending, outcome in answers:
        if pending.future.done():
            continue
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


WRITER = web.AppKey("writer", EventWriter)
CONFIG = web.AppKey("config", ReceiverConfig)


def _answer(status: int, **body: object) -> web.Response:
    return web.json_response(body, status=status)


async def _store(request: web.Request, events: list[Event]) -> web.Response:
    try:
        result = await request.app[WRITER].store(events)
    except TimeoutError:
        return _answer(503, error="the database is busy; deliver the event again later")
    except Exception as exc:  # the writer's failure, any kind: answered 503, sent again
        reason = (
            "another batchsend command holds the database's write lock"
            if isinstance(exc, ConcurrentCommandError)
            else str(exc).splitlines()[0]
        )
        print(f"batchsend events: an event was not stored (503): {reason}", file=sys.stderr)
        return _answer(503, error="the event could not be stored; deliver it again later")
    return _answer(200, stored=result.new, duplicates=result.duplicates)


#: Seconds between two lines about refused requests (a storm of them is one line, counted).
REFUSAL_LOG_EVERY = 5.0
_last_refusal: dict[int, tuple[float, int]] = {}


def _refused(request: web.Request, status: int, what: str) -> None:
    """Say on stderr that a request was refused, so a miswired webhook is seen at once."""
    now = time.monotonic()
    last, quiet = _last_refusal.get(status, (0.0, 0))
    if now - last < REFUSAL_LOG_EVERY:
        _last_refusal[status] = (last, quiet + 1)
        return
    more = f" (and {quiet:,} more since the last line)" if quiet else ""
    # v1's path holds the secret token: never printed.
    path = "/webhooks/v1/<token>" if request.path.startswith("/webhooks/v1/") else request.path
    print(
        f"batchsend events: refused ({status}) {request.method} {path}"
        f" from {request.remote}: {what}{more}",
        file=sys.stderr,
        flush=True,
    )
    _last_refusal[status] = (now, 0)


async def tosend_webhook(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    secret = config.tosend_secret
    if secret is None and not config.tosend_unsigned:
        raise web.HTTPNotFound()
    body = await request.read()
    if secret is not None and not tosend_events.signature_ok(
        body, request.headers.get(tosend_events.SIGNATURE_HEADER), secret
    ):
        _refused(
            request,
            401,
            "ToSend event with a missing or wrong X-ToSend-Signature "
            "(is the receiver's secret the webhook's?)",
        )
        return _answer(401, error="missing or wrong X-ToSend-Signature")
    try:
        events = tosend_events.parse_webhook(body, request.headers)
    except EventPayloadError as exc:
        _refused(request, 400, f"a body that is not an event ({exc})")
        return _answer(400, error=str(exc))
    return await _store(request, events)


async def v1_webhook(request: web.Request) -> web.Response:
    token = request.app[CONFIG].v1_token
    given = request.match_info["token"]
    if token is None:
        raise web.HTTPNotFound()
    if not hmac.compare_digest(given.encode(), token.encode()):
        _refused(request, 401, "v1 event with a wrong token in the URL")
        return _answer(401, error="wrong webhook token in the URL")
    body = await request.read()
    try:
        events = v1_events.parse_webhook(body)
    except EventPayloadError as exc:
        _refused(request, 400, f"a body that is not an event ({exc})")
        return _answer(400, error=str(exc))
    return await _store(request, events)


async def healthz(request: web.Request) -> web.Response:
    return _answer(200, health="ok", stored=request.app[WRITER].stored)


def make_app(config: ReceiverConfig, writer: EventWriter) -> web.Application:
    """The receiver's aiohttp application (the writer already started)."""
    app = web.Application(client_max_size=config.max_body)
    app[WRITER] = writer
    app[CONFIG] = config
    app.router.add_post("/webhooks/tosend", tosend_webhook)
    app.router.add_post("/webhooks/v1/{token}", v1_webhook)
    app.router.add_get("/healthz", healthz)
    return app


class Receiver:
    """The receiver on a port of its own, in a background thread (tests, notebooks, the CLI).

    Example::

        with Receiver(ReceiverConfig(Path("batchsend.db"), tosend_secret=s)) as r:
            print(r.url + "/webhooks/tosend")
    """

    def __init__(self, config: ReceiverConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.writer = EventWriter(config.db_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Receiver:
        self.writer.start()
        self._thread = threading.Thread(target=self._serve, name="batchsend-receiver", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self.writer.stop()
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        if self._runner is not None:
            loop.run_until_complete(self._runner.cleanup())
        loop.close()

    async def _open(self) -> None:
        self._runner = web.AppRunner(make_app(self.config, self.writer), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # the port the system chose
            self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self.writer.stop()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve_forever(config: ReceiverConfig, host: str, port: int) -> None:
    """Run the receiver in this event loop until cancelled (``batchsend events serve``)."""
    writer = EventWriter(config.db_path)
    writer.start()
    runner = web.AppRunner(make_app(config, writer), access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        writer.stop()
