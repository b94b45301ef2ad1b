"""The API key: where it may come from, and everywhere it must never appear.

A recognisable key sends a campaign through real ``batchsend`` processes -- from the
environment, from ``--api-key-file`` and from ``--api-key-stdin`` -- with retryable
failures, a fatal error (the key revoked mid-run) and a resume. Then the bytes of the
database (and its -wal/-shm files), every report format, stdout/stderr of every process
and every error message are searched for the key: it appears nowhere. batchsend has no
log files or log-level option (its output is stdout/stderr); the in-process test turns
every Python logger to DEBUG, aiohttp's and httpx's included, and searches that too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import gauntlet
from support.campaigns import DOMAIN
from support.processes import run_batchsend

from batchsend.cli import main
from batchsend.errors import BatchsendError, SendError
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.transport import HttpRequest, make_transport

KEY = "sk-live-GAUNTLET-5e1f0c9a7b3d4411"


def files_with_key(folder: Path) -> list[str]:
    """Every file under ``folder`` whose bytes contain the key (raw, or UTF-16 encoded)."""
    needles = (KEY.encode(), KEY.encode("utf-16-le"))
    return [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]


def revoke_at_request(sandbox: Sandbox, n: int) -> None:
    """Revoke every key as the ``n``-th provider request from now arrives.

    Keyed to the sandbox's request count, the revocation lands mid-run however fast the
    run goes (a thread watching the counters could miss a fast one).
    """
    start = sandbox.stats()["requests"]
    sandbox.configure(schedule=((start + n, {"api_keys": ()}),))


def test_the_key_never_reaches_the_store_reports_output_or_errors(tmp_path: Path) -> None:
    sandbox = Sandbox(api_keys=(KEY,), domains=(DOMAIN,), latency_ms=2).start()
    try:
        sandbox.configure(fail_rate=0.2, seed=4)  # 5xx: those rows end unknown
        campaign = gauntlet.write_campaign(
            tmp_path / "c",
            rows=300,
            send={"concurrency": 2, "batch_size": 10, "max_attempts": 2, "max_retry_time": 2},
            base_url=sandbox.base_url,
        )
        db = str(tmp_path / "store.db")
        outputs: list[str] = []

        # 1. the key from the environment; revoked mid-run: a fatal stop
        revoke_at_request(sandbox, 12)  # GET /v2/info, then 10 or so batches of 10
        first = run_batchsend("run", str(campaign), "--db", db, "--json", key=KEY)
        outputs += [first.stdout, first.stderr]
        assert first.returncode == 1, first.stderr
        summary = json.loads(first.stdout)
        assert summary["state"] == "fatal" and "403" in summary["fatal_error"]

        # 2. a resume with the old key still revoked: refused by the account check
        refused = run_batchsend("resume", summary["run_id"], "--db", db, key=KEY)
        outputs += [refused.stdout, refused.stderr]
        assert refused.returncode == 1 and "403" in refused.stderr

        # 3. the key fixed, from a key file
        sandbox.configure(api_keys=(KEY,))
        key_file = tmp_path / "key.txt"
        key_file.write_text(KEY + "\n")
        second = run_batchsend("resume", summary["run_id"], "--db", db, "--json",
                               "--api-key-file", str(key_file), key=None)  # fmt: skip
        outputs += [second.stdout, second.stderr]
        counts = json.loads(second.stdout)["counts"]
        # 3: finished, with the rows the injected faults left failed or unknown
        assert second.returncode == (3 if counts["failed"] + counts["unknown"] else 0), (
            second.stderr
        )
        key_file.unlink()  # the only file allowed to hold the key

        # 4. from standard input, retrying the failures and resending the unknown rows
        # (this sandbox's 5xx come before processing, so nothing was delivered twice)
        sandbox.configure(fail_rate=0.0)
        third = run_batchsend("resume", summary["run_id"], "--db", db, "--json", "--retry-failed",
                              "--resend-unknown", "--api-key-stdin", key=None,
                              stdin=KEY + "\n")  # fmt: skip
        outputs += [third.stdout, third.stderr]
        assert third.returncode == 0, third.stderr
        assert json.loads(third.stdout)["counts"]["sent"] == 300

        # every report format, and the runs listing
        for fmt in ("csv", "json", "parquet", "html"):
            out = run_batchsend("report", summary["run_id"], "--db", db,
                                "--out", str(tmp_path / f"report.{fmt}"), key=None)  # fmt: skip
            outputs += [out.stdout, out.stderr]
            assert out.returncode == 0, out.stderr
        listing = run_batchsend("runs", "--db", db, key=None)
        outputs += [listing.stdout, listing.stderr]
    finally:
        sandbox.stop()

    assert not [o for o in outputs if KEY in o]
    assert (tmp_path / "store.db").exists()
    assert not files_with_key(tmp_path), files_with_key(tmp_path)


def test_the_key_is_not_in_debug_logs_of_either_http_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root: every library's logger, at its most verbose
    with Sandbox(api_keys=(KEY,), domains=(DOMAIN,)) as sandbox:
        sandbox.configure(fail_rate=0.3, drop_rate=0.2, seed=9)
        for client in ("aiohttp", "httpx"):
            campaign = gauntlet.write_campaign(
                tmp_path / client, rows=60,
                send={"concurrency": 2, "batch_size": 5, "max_attempts": 2, "max_retry_time": 2},
                base_url=sandbox.base_url,
            )  # fmt: skip
            revoke_at_request(sandbox, 6)  # a fatal 403 mid-run (12 batches, info first)
            summary = run_campaign(campaign, db_path=tmp_path / f"{client}.db", api_key=KEY,
                                   http_client=client, progress=False, again=True,
                                   report_path=tmp_path / f"{client}.html")  # fmt: skip
            assert summary.state.value == "fatal"
            sandbox.configure(api_keys=(KEY,))
            with pytest.raises(BatchsendError) as info:  # a refused resume: its message
                resume_run(summary.run_id, db_path=tmp_path / f"{client}.db",
                           api_key="sk-wrong-" + KEY[::-1], progress=False)  # fmt: skip
            assert KEY not in str(info.value)
    assert caplog.records  # the libraries did log at DEBUG
    assert KEY not in caplog.text
    assert not files_with_key(tmp_path)


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
@pytest.mark.parametrize("fault", ["refused", "timeout", "bad_url"])
def test_transport_errors_carry_no_headers(client: str, fault: str, make_sandbox) -> None:
    """aiohttp's and httpx's exceptions (which may hold the request) never surface."""
    sandbox = make_sandbox(latency_ms=500)
    url = {
        "refused": "http://127.0.0.1:9/v2/emails",
        "timeout": sandbox.base_url + "/v2/emails",
        "bad_url": "http://127.0.0.1:99999/v2/emails",
    }[fault]
    headers = {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY}
    request = HttpRequest("POST", url, headers, b"{}")

    async def send() -> None:
        async with make_transport(client, concurrency=1, timeout=0.1) as transport:
            await transport.send(request)

    with pytest.raises(SendError) as info:
        asyncio.run(send())
    error = info.value
    assert error.__cause__ is None and error.__suppress_context__
    assert KEY not in str(error) and KEY not in repr(error)
    import traceback

    assert KEY not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize("command", ["run", "resume"])
def test_there_is_no_api_key_option(command: str) -> None:
    """A key on the command line would show in ``ps``: no option takes one."""
    target = "campaign.toml" if command == "run" else "RUN_ID"
    result = CliRunner().invoke(main, [command, target, "--api-key", KEY])
    assert result.exit_code == 2
    assert "No such option '--api-key'" in result.output
    help_text = CliRunner().invoke(main, [command, "--help"]).output
    options = {word.rstrip(",") for word in help_text.split() if word.startswith("--api-key")}
    assert options == {"--api-key-file", "--api-key-stdin"}


def test_a_key_written_in_the_campaign_is_refused_without_echoing_it(tmp_path: Path) -> None:
    campaign = gauntlet.write_campaign(tmp_path / "c", rows=1)
    campaign.write_text(f'api_key = "{KEY}"\n' + campaign.read_text())
    result = CliRunner().invoke(main, ["run", str(campaign), "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 2
    assert "api_key" in result.output and KEY not in result.output


def test_an_unreadable_key_file_is_named_not_read_into_the_message(tmp_path: Path) -> None:
    campaign = gauntlet.write_campaign(tmp_path / "c", rows=1)
    result = CliRunner().invoke(
        main,
        ["run", str(campaign), "--db", str(tmp_path / "s.db"),
         "--api-key-file", str(tmp_path / "missing.key")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "missing.key" in result.output
    db = tmp_path / "s.db"
    if db.exists():  # the store may be opened, but no run may be recorded in it
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
