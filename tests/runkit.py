"""Generated campaigns for the run, resume and crash tests (plain files in tmp_path)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

KEY = "sk-crash-test"

TOSEND_SEND = {"concurrency": 4, "batch_size": 10, "max_attempts": 2, "max_retry_time": 5}


def write_campaign(
    folder: Path,
    *,
    rows: int = 30,
    provider: str = "tosend",
    base_url: str = "http://127.0.0.1:9",
    sender: str = "news@example.com",
    bad_rows: tuple[int, ...] = (),
    send: dict[str, Any] | None = None,
    merge: bool = False,
    api_key_env: str = "BATCHSEND_API_KEY",
) -> Path:
    """A campaign folder with ``rows`` personalised recipients; returns campaign.toml.

    Row ``n`` (1-based) goes to ``user{n}@example.org``; rows in ``bad_rows`` get an
    invalid address, which preflight rejects.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "recipients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first", "n"])
        for n in range(1, rows + 1):
            email = f"not-an-address-{n}" if n in bad_rows else f"user{n}@example.org"
            writer.writerow([email, f"First{n}", n])
    settings = dict(TOSEND_SEND if provider == "tosend" else {"concurrency": 4})
    settings.update(send or {})
    if provider != "tosend":
        settings.pop("batch_size", None)
    send_lines = "\n".join(f"{k} = {v!r}" for k, v in settings.items())
    body = "{{ first }}, this is message {{ n }}." if not merge else "The same news for everyone."
    text = f"""name = "generated"
provider = "{provider}"
base_url = "{base_url}"
api_key_env = "{api_key_env}"

[source]
path = "recipients.csv"

[sender]
email = "{sender}"
name = "Example News"

[message]
subject = "{"News for {{ first }}" if not merge else "News"}"
text = "{body}"

[send]
{send_lines}
"""
    if merge:
        text += "\n[merge]\nenabled = true\n"
    path = folder / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def recipients_in(messages: list[dict[str, Any]]) -> list[str]:
    """Every address the sandbox delivered to, once per delivery (to + cc + bcc)."""
    out: list[str] = []
    for m in messages:
        for field in ("to", "cc", "bcc"):
            for a in m.get(field) or []:
                out.append(a["email"] if isinstance(a, dict) else a)
    return out


def start_sandbox(record: Path, latency_ms: int) -> tuple[subprocess.Popen, str]:
    """A ``batchsend sandbox`` process accepting :data:`KEY`; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchsend", "sandbox", "--port", "0", "--api-key", KEY,
         "--domain", "example.com", "--latency", str(latency_ms), "--record", str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    """Read the database as an outside observer (a fresh connection per question)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


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
