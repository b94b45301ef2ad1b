"""Sandbox accounts and a scripted ToSend, for what the sandbox itself does not do."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from aiohttp import web

# The account of the conftest ``sandbox`` fixture.
TEST_KEY = "sk-test"
TEST_DOMAIN = "example.com"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScriptedToSend:
    """A ToSend on 127.0.0.1, in a thread, whose batch answers come from a script.

    ``batch(emails, n) -> (status, results)``: each result is a batch entry, with an
    extra ``"delivered": True`` on an entry that is not a success but was delivered all
    the same (a per-message 5xx after the provider sent it). ``delivered`` lists every
    address the provider sent to, the ground truth a test counts.
    """

    INFO: ClassVar[dict[str, Any]] = {
        "account": {"status": "active", "credit_balance": None, "limit_per_second": None},
        "domains": [{"domain_name": "example.com", "verification_status": "verified"}],
    }

    def __init__(self, batch: Callable[[list[dict[str, Any]], int], tuple[int, list[dict]]]):
        self.batch = batch
        self.delivered: list[str] = []
        self.requests: list[list[str]] = []

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self.INFO)

    async def _send_batch(self, request: web.Request) -> web.Response:
        emails = json.loads(await request.read())["emails"]
        self.requests.append([e["to"][0]["email"] for e in emails])
        status, results = self.batch(emails, len(self.requests))
        for email, result in zip(emails, results, strict=True):
            if result.pop("delivered", result.get("status") == "success"):
                self.delivered.append(email["to"][0]["email"])
        return web.json_response({"results": results}, status=status)

    def start(self) -> ScriptedToSend:
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/v2/info", self._info)
            app.router.add_post("/v2/emails/batch", self._send_batch)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(5), "the scripted provider did not start"
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
