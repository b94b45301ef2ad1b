"""Run the sandbox: embedded in a background thread, or in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from aiohttp import web

from batchsend.sandbox.app import make_app
from batchsend.sandbox.rules import is_loopback
from batchsend.sandbox.state import (
    CONFIG_FIELDS,
    DEFAULT_KEEP_MESSAGES,
    SandboxConfig,
    SandboxState,
    unknown_settings,
)

T = TypeVar("T")


def _tune_gc() -> None:
    """Collect the young generation less often, and never rescan the startup heap.

    Each request leaves a few hundred short-lived containers; with the default
    threshold (700) the collector runs every couple of requests and takes a large share
    of the server's time (``bench/sandbox_capacity.py`` shows it). Only the foreground
    server does this: it owns its process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class Sandbox:
    """Both provider APIs on loopback, served from a background thread with its own loop.

    Example::

        with Sandbox(api_keys=("sk-test",), domains=("example.com",)) as sb:
            httpx.post(sb.base_url + "/v2/emails", ...)
            assert len(sb.messages()) == 1

    Every :class:`~batchsend.sandbox.state.SandboxConfig` field is a keyword argument
    (``credits=5``, ``tosend_emails_per_second=50``, ``idempotency_keys=True``...).
    ``port=0`` picks a free port; :meth:`stop` then :meth:`start` serves again on the same
    port with the state kept (a "provider restarted" scenario). Every setting can change
    live with :meth:`configure`. ``clock`` (epoch seconds) drives the rate limits and
    timestamps; inject one to test rate limits without sleeping.
    """

    def __init__(
        self,
        api_keys: Iterable[str] = ("sk-test",),
        domains: Iterable[str] = ("example.com",),
        *,
        record: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        **settings: Any,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the sandbox listens on loopback only, not {host!r}")
        unknown = set(settings) - CONFIG_FIELDS
        if unknown:
            raise TypeError(unknown_settings(unknown))
        settings.setdefault("keep_messages", DEFAULT_KEEP_MESSAGES)
        config = SandboxConfig(api_keys=tuple(api_keys), domains=tuple(domains), **settings)
        self.state = SandboxState(config, record=str(record) if record else None, clock=clock)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Is the server accepting connections?"""
        return self._thread is not None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``; the provider paths hang off it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The keys currently accepted."""
        return self.state.config.api_keys

    def start(self) -> Sandbox:
        """Start serving (on the port of the previous run, if there was one)."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()

        thread = threading.Thread(target=run, name=f"sandbox:{self.port}", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop serving, dropping open connections; the state is kept for a restart."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._loop = self._thread = None
        self.state.close()

    def serve_forever(self, on_ready: Callable[[Sandbox], None] | None = None) -> None:
        """Serve in the foreground (this thread's loop) until Ctrl-C or SIGTERM.

        The CLI's path: no background thread, and the collector tuned for a server that
        allocates a lot of short-lived objects per request (see :func:`_tune_gc`).
        """
        if self._thread is not None:
            raise RuntimeError("this sandbox is already running in the background")
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open())
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, loop.stop)
            if on_ready is not None:
                on_ready(self)
            _tune_gc()
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            loop.close()
            self.state.close()

    async def _open(self) -> None:
        runner = web.AppRunner(
            make_app(self.state), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._runner = runner

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # inspection and control --------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (the state's only writer), or here if stopped."""
        loop = self._loop
        if loop is None:
            return fn()

        async def call() -> T:
            return fn()

        coro: Coroutine[Any, Any, T] = call()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def messages(self) -> list[dict[str, Any]]:
        """The accepted emails still kept (see ``keep_messages``), oldest first.

        As ``GET /_sandbox/messages``; ``stats()["messages_forgotten"]`` says how many
        older ones were let go.
        """
        messages = self._call(lambda: list(self.state.messages))
        return [m.as_dict() for m in messages]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The delivery events that have happened, oldest id first (``GET /_sandbox/events``).

        Each says what the sandbox decided (``type``, ``bounce_type``, ``recipient``,
        ``batchsend_id``...) and, when it was due a webhook, how the posts went.
        """
        return self._call(lambda: self.state.events_view(since))

    def stats(self) -> dict[str, Any]:
        """The counters (as ``GET /_sandbox/stats``)."""
        return self._call(self.state.stats)

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change settings live, e.g. ``configure(api_keys=())`` revokes every key."""
        return self._call(lambda: self.state.configure(**changes))

    @property
    def config(self) -> SandboxConfig:
        """The current settings."""
        return self.state.config
