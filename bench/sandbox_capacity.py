"""How many requests/s the sandbox takes on one core, next to a minimal aiohttp endpoint.

Both servers run as subprocesses pinned to one core (``taskset -c 1``); the load comes
from ``wrk`` pinned to the other core (``taskset -c 0``), or, when wrk is not installed,
from a small aiohttp-client loop in its own pinned process. Neither load generator is
batchsend. The payload is a typical ToSend single email (~1.4 KB JSON) with a fresh
``Idempotency-Key`` per request, as batchsend sends it.

Run: ``python bench/sandbox_capacity.py [--seconds 5] [--connections 64]``
Prints requests/s for both and the ratio (target: sandbox >= 50% of minimal).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

SERVER_CORE = "1"
LOAD_CORE = "0"
KEY = "sk-bench"

PAYLOAD = {
    "from": {"name": "Acme Newsletter", "email": "news@example.com"},
    "to": [{"name": "Jane Recipient", "email": "jane.recipient@recipients.org"}],
    "reply_to": {"name": "Acme Support", "email": "support@example.com"},
    "subject": "Your March update: three new features and an invitation",
    "html": (
        "<html><body><h1>Hello Jane,</h1>"
        + "<p>Thanks for being with us this month. Here is what changed in your account, "
        "what we shipped, and an invitation to our next live session.</p>"
        * 4
        + "<p><a href='https://example.com/u/12345'>Manage preferences</a></p></body></html>"
    ),
    "text": (
        "Hello Jane,\n\nThanks for being with us this month. Here is what changed in your "
        "account, what we shipped, and an invitation to our next live session.\n" * 2
    ),
    "headers": {"X-Campaign-ID": "spring-2024", "List-Unsubscribe": "<https://example.com/u>"},
    "tags": {"campaign": "spring-2024", "segment": "active"},
    "message_hash": "bs-3f9a1c2e-0001-4b7e-9d2a-5c6e7f8a9b0c",
}
BODY = json.dumps(PAYLOAD)
BATCH_SIZE = 100
BATCH_BODY = json.dumps(
    {"emails": [{**PAYLOAD, "message_hash": f"bs-{i:04d}"} for i in range(BATCH_SIZE)]}
)

MINIMAL_SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def handle(request):
        await request.read()
        return web.json_response({"message_id": "x"})

    app = web.Application()
    app.router.add_post("/v2/emails", handle)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = %(body)s
local n = 0
request = function()
  n = n + 1
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Idempotency-Key"] = "k-%(prefix)s-" .. n
  return wrk.format(nil, nil, headers, nil)
end
"""

PY_LOAD = textwrap.dedent(
    """
    import asyncio, secrets, sys, time, aiohttp
    url, seconds, conns, body, key = sys.argv[1:6]
    prefix = secrets.token_hex(6)  # fresh keys per invocation: no duplicate of the warm-up
    seconds, conns = float(seconds), int(conns)
    async def worker(session, deadline, counts, wid):
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                       "Idempotency-Key": f"k-{prefix}-{wid}-{n}"}
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                counts[r.status == 200] += 1
    async def main():
        counts = [0, 0]
        conn = aiohttp.TCPConnector(limit=conns)
        async with aiohttp.ClientSession(connector=conn) as s:
            start = time.perf_counter()
            await asyncio.gather(*(worker(s, start + seconds, counts, i) for i in range(conns)))
            took = time.perf_counter() - start
        print(f"{sum(counts) / took:.0f} {counts[0]}")
    asyncio.run(main())
    """
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", core, *args] if shutil.which("taskset") else args


def start_minimal() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        pinned(SERVER_CORE, [sys.executable, "-c", MINIMAL_SERVER, str(port)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    wait_listening(port)
    return proc, f"http://127.0.0.1:{port}/v2/emails"


def start_sandbox() -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "batchsend", "sandbox", "--port", "0", "--api-key", KEY]
    proc = subprocess.Popen(pinned(SERVER_CORE, args), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
    assert match, "the sandbox did not print its URL"
    return proc, f"{match.group(0)}/v2/emails"


def wait_listening(port: int) -> None:
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def load(url: str, seconds: float, connections: int, body: str = BODY) -> tuple[float, int]:
    """(requests/s, non-200 answers) from wrk, or from the Python fallback."""
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            # A fresh key prefix per invocation: the warm-up's keys must not come back in
            # the measured run, where the sandbox would answer them as cheap duplicates.
            prefix = secrets.token_hex(6)
            f.write(WRK_SCRIPT % {"key": KEY, "body": json.dumps(body), "prefix": prefix})
        try:
            out = subprocess.run(
                pinned(
                    LOAD_CORE,
                    ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", f.name, url],
                ),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            os.unlink(f.name)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        if errors:
            print("   wrk:", errors.group(0))
        return rps, int(bad.group(1)) if bad else 0
    out = subprocess.run(
        pinned(
            LOAD_CORE,
            [sys.executable, "-c", PY_LOAD, url, str(seconds), str(connections), body, KEY],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def measure(start, seconds: float, connections: int, batch: bool = False) -> float:
    """Start a server, warm it up, load it; requests/s (an error answer voids the run)."""
    proc, url = start()
    body = BODY
    if batch:
        url, body = url + "/batch", BATCH_BODY
    try:
        load(url, 1, connections, body)  # warm up
        rps, bad = load(url, seconds, connections, body)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if bad:
        raise SystemExit(f"{url} answered {bad} requests with an error: the figure is void")
    return rps


def main() -> None:
    """Measure both servers in alternating rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python aiohttp client (wrk not installed)"
    print(f"payload {len(BODY)} bytes JSON; load generator: {tool}; servers on core "
          f"{SERVER_CORE}, load on core {LOAD_CORE}; {args.connections} connections; "
          f"{args.rounds} alternating rounds of {args.seconds:g} s")  # fmt: skip
    results: dict[str, list[float]] = {"minimal aiohttp JSON": [], "sandbox POST /v2/emails": []}
    for _ in range(args.rounds):
        for name, start in zip(results, (start_minimal, start_sandbox), strict=True):
            rps = measure(start, args.seconds, args.connections)
            results[name].append(rps)
            print(f"  {name:<24} {rps:>9,.0f} req/s")
    best = {name: max(values) for name, values in results.items()}
    for name, values in results.items():
        print(
            f"{name:<24} best {best[name]:>7,.0f}  median {statistics.median(values):>7,.0f} req/s"
        )
    minimal, sandbox = best.values()
    print(f"sandbox / minimal = {sandbox / minimal:.0%} of best figures (target >= 50%)")
    batch = measure(start_sandbox, args.seconds, min(args.connections, 16), batch=True)
    print(
        f"sandbox POST /v2/emails/batch ({BATCH_SIZE} emails, {len(BATCH_BODY) // 1024} KB): "
        f"{batch:,.0f} req/s = {batch * BATCH_SIZE:,.0f} emails/s"
    )


if __name__ == "__main__":
    main()
