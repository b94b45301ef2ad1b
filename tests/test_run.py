"""``run_campaign`` and ``batchsend run`` end to end, over real HTTP against the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from support.campaigns import recipients_in, write_campaign

from batchsend.cli import main
from batchsend.errors import FatalSendError, PreflightError, SecretError, UnfinishedRunError
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.states import RecipientState, RunState
from batchsend.store import Store

KEY = "sk-test"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ lands in the test's folder
    monkeypatch.delenv("BATCHSEND_API_KEY", raising=False)


def run(campaign: Path, sandbox: Sandbox, **kw):
    kw.setdefault("db_path", "b.db")
    kw.setdefault("api_key", KEY)
    kw.setdefault("progress", False)
    return run_campaign(campaign, base_url=sandbox.base_url, **kw)


@pytest.mark.parametrize(
    ("provider", "send"),
    [
        ("tosend", {"batch_size": 10}),
        ("tosend", {"batch_size": 1}),
        ("v1", {}),
    ],
)
def test_every_row_sent_once_and_recorded(
    tmp_path: Path, sandbox: Sandbox, provider: str, send: dict
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=25, provider=provider, send=send)
    summary = run(campaign, sandbox)
    assert summary.state is RunState.FINISHED and summary.exit_code == 0
    assert summary.counts["sent"] == 25 and summary.sent_now == 25
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter({f"user{n}@example.org": 1 for n in range(1, 26)})
    with Store("b.db") as store:
        rows = list(store.recipients(summary.run_id))
        assert all(r["state"] == "sent" and r["provider_message_id"] for r in rows)
        assert all(r["unit_key"] and r["sent_at"] for r in rows)
        # the Idempotency-Key each request carried is the unit key the store recorded
        sent_keys = {m["idempotency_key"] for m in sandbox.messages()}
        assert sent_keys == {r["unit_key"] for r in rows}
        assert store.get_run(summary.run_id).report_path == summary.report_path
    assert Path(summary.report_path).is_file()


def test_a_bad_row_stops_everything_before_sending(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=20, bad_rows=(7, 13))
    with pytest.raises(PreflightError) as info:
        run(campaign, sandbox)
    text = str(info.value)
    assert "row 7" in text and "row 13" in text and "--skip-invalid" in text
    assert info.value.exit_code == 2
    assert sandbox.stats()["requests"] == 0
    with Store("b.db") as store:
        assert store.list_runs() == []  # nothing recorded either


def test_skip_invalid_sends_the_others(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=20, bad_rows=(7, 13))
    summary = run(campaign, sandbox, skip_invalid=True)
    assert summary.counts["sent"] == 18 and summary.counts["skipped"] == 2
    with Store("b.db") as store:
        bad = store.recipient(summary.run_id, 7)
        assert bad["state"] == "skipped" and bad["reason"] == "invalid" and bad["error_message"]
    assert "not-an-address-7" not in recipients_in(sandbox.messages())


def test_limit_leaves_the_rest_pending_and_run_says_resume(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=20)
    first = run(campaign, sandbox, limit=5)
    assert first.state is RunState.INTERRUPTED and first.exit_code == 0
    assert first.counts["sent"] == 5 and first.counts["pending"] == 15
    with pytest.raises(UnfinishedRunError) as info:
        run(campaign, sandbox)
    assert f"batchsend resume {first.run_id} --db b.db" in str(info.value)
    assert info.value.exit_code == 2
    assert len(sandbox.messages()) == 5  # the refusal sent nothing
    second = run(campaign, sandbox, new_run=True)
    assert second.counts["sent"] == 20


def test_test_to_sends_proof_copies_to_one_address(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=10)
    summary = run(campaign, sandbox, test_to="me@example.com", limit=3)
    assert summary.is_test and summary.state is RunState.FINISHED
    assert summary.counts["sent"] == 3 and summary.counts["skipped"] == 7
    assert recipients_in(sandbox.messages()) == ["me@example.com"] * 3
    assert {m["body"]["subject"] for m in sandbox.messages()} == {
        "News for First1",
        "News for First2",
        "News for First3",
    }
    # a test run does not stand in the way of the real one
    real = run(campaign, sandbox)
    assert real.counts["sent"] == 10 and not real.is_test


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), env={"BATCHSEND_API_KEY": KEY})


def test_a_test_run_says_so_everywhere_and_lists_no_recipient_as_sent(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5)
    base = ("--db", "b.db", "--base-url", sandbox.base_url)
    ran = _cli("run", str(campaign), *base, "--test-to", "me@example.com", "--limit", "2")
    assert ran.exit_code == 0, ran.output
    assert recipients_in(sandbox.messages()) == ["me@example.com"] * 2
    # the run's summary
    assert "(test run)" in ran.output
    assert "2 proof copies sent to me@example.com, 3 skipped" in ran.output
    assert "no one on the recipient list was emailed" in ran.output
    assert " sent," not in ran.output.replace("copies sent", "")
    with Store("b.db") as store:
        (run_info,) = store.list_runs()
    run_id = run_info.id
    # the report the run wrote, and any report of it: proof_sent, never sent
    report = pl.read_csv(run_info.report_path, infer_schema=False)
    assert report["state"].to_list() == ["proof_sent"] * 2 + ["skipped"] * 3
    assert report["email"].to_list()[:2] == ["user1@example.org", "user2@example.org"]
    assert set(report["reason"].to_list()) == {"test_run", "limit"}
    assert all("me@example.com" in m for m in report["error_message"].to_list()[:2])
    assert all("test run" in m for m in report["error_message"].to_list()[2:])
    assert _cli("report", run_id, "--db", "b.db", "--out", "r.json").exit_code == 0
    states = {r["state"] for r in json.loads(Path("r.json").read_text("utf-8"))}
    assert states == {"proof_sent", "skipped"}
    # batchsend runs
    runs = _cli("runs", "--db", "b.db")
    assert "[test run: proof copies to me@example.com]" in runs.output
    assert "2 proof copies sent to me@example.com" in runs.output
    listed = json.loads(_cli("runs", "--db", "b.db", "--json").stdout)[0]
    assert listed["is_test"] and listed["test_to"] == "me@example.com"
    # the HTML page
    assert _cli("report", run_id, "--db", "b.db", "--out", "s.html").exit_code == 0
    page = Path("s.html").read_text("utf-8")
    assert "(test run)</title>" in page and "no one on the recipient list was emailed" in page
    assert "proof_sent (to me@example.com)" in page and "</span>sent</td>" not in page


def test_a_dry_run_says_how_many_rows_would_be_sent(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=12, bad_rows=(4,))
    base = ("--db", "b.db", "--base-url", sandbox.base_url)
    ran = _cli("run", str(campaign), *base, "--dry-run", "--skip-invalid", "--limit", "8")
    assert ran.exit_code == 0, ran.output
    assert "dry run: 8 row(s) would be sent, in 1 request; nothing was sent" in ran.output
    assert sandbox.stats()["requests"] == 0
    as_json = _cli("run", str(campaign), *base, "--dry-run", "--skip-invalid", "--json")
    assert json.loads(as_json.stdout)["would_send"] == 11  # every row but the bad one
    run_id = json.loads(_cli("runs", "--db", "b.db", "--json").stdout)[-1]["id"]
    assert _cli("report", run_id, "--db", "b.db", "--out", "s.html").exit_code == 0
    assert "Dry run: 8 rows would be sent; nothing was sent." in Path("s.html").read_text()


def test_dry_run_makes_no_request(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=12)
    summary = run(campaign, sandbox, dry_run=True)
    assert summary.dry_run and summary.requests == 2  # 12 messages, batches of 10
    assert sandbox.stats()["requests"] == 0
    assert summary.counts["skipped"] == 12 and summary.state is RunState.FINISHED
    with Store("b.db") as store:  # no row shows a key its message never carried
        assert {r["message_key"] for r in store.recipients(summary.run_id)} == {None}


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"credits": 5}, "credits"),
        ({"domains": ("other.com",)}, "not verified"),
        ({"api_keys": ("sk-other",)}, "refused the API key"),
    ],
)
def test_tosend_account_check_refuses_before_sending(
    tmp_path: Path, make_sandbox, options: dict, words: str
) -> None:
    sandbox = make_sandbox(**options)
    campaign = write_campaign(tmp_path / "c", rows=10)
    with pytest.raises(FatalSendError, match=words):
        run(campaign, sandbox)
    assert sandbox.messages() == []
    with Store("b.db") as store:
        assert store.list_runs() == []


def test_a_fatal_answer_stops_the_run_and_a_resume_finishes_it(
    tmp_path: Path, make_sandbox
) -> None:
    """v1 has no account check: a bad key is found by the first request."""
    from batchsend.resume import resume_run

    sandbox = make_sandbox()
    campaign = write_campaign(tmp_path / "c", rows=10, provider="v1", send={"concurrency": 1})
    summary = run(campaign, sandbox, api_key="sk-wrong")
    assert summary.state is RunState.FATAL and summary.exit_code == 1
    assert "403" in summary.fatal_error and "sk-wrong" not in summary.fatal_error
    assert summary.counts["pending"] == 10 and sandbox.messages() == []
    resumed = resume_run(
        summary.run_id, db_path="b.db", api_key=KEY, base_url=sandbox.base_url, progress=False
    )
    assert resumed.state is RunState.FINISHED and resumed.counts["sent"] == 10


def test_missing_key_is_an_input_error(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3)
    with pytest.raises(SecretError, match="BATCHSEND_API_KEY"):
        run_campaign(campaign, db_path="b.db", base_url=sandbox.base_url, progress=False)


def test_the_key_never_reaches_the_database_or_report(tmp_path: Path, make_sandbox) -> None:
    key = "sk-live-abcdef0123456789-secret"
    sandbox = make_sandbox(api_keys=(key,))
    campaign = write_campaign(tmp_path / "c", rows=5)
    summary = run(campaign, sandbox, api_key=key)
    assert summary.counts["sent"] == 5
    for path in [*tmp_path.glob("b.db*"), Path(summary.report_path)]:
        assert key.encode() not in path.read_bytes(), path


def test_cli_run_json_and_resume(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=8, base_url=sandbox.base_url)
    runner = CliRunner()
    env = {"BATCHSEND_API_KEY": KEY}
    result = runner.invoke(main, ["run", str(campaign), "--limit", "3", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["sent"] == 3 and data["state"] == "interrupted"
    # The database is the campaign's (README, "Where the database lives"), and the run
    # is in the user's index: the hint needs no --db.
    db = campaign.parent / "batchsend.db"
    assert data["db_path"] == str(db) and Path(data["report_path"]).is_file()
    assert data["resume"] == f"batchsend resume {data['run_id']}"
    again = runner.invoke(main, ["run", str(campaign)], env=env)
    assert again.exit_code == 2 and f"batchsend resume {data['run_id']}\n" in again.output
    resumed = runner.invoke(main, ["resume", data["run_id"], "--json"], env=env)
    assert resumed.exit_code == 0, resumed.output
    final = json.loads(resumed.stdout)
    assert final["counts"]["sent"] == 8 and final["state"] == "finished"
    with Store(db) as store:
        assert store.rows_in_state(data["run_id"], [RecipientState.SENT]) == list(range(1, 9))


def test_cli_bad_rows_exit_2(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, bad_rows=(2,), base_url=sandbox.base_url)
    result = CliRunner().invoke(main, ["run", str(campaign)], env={"BATCHSEND_API_KEY": KEY})
    assert result.exit_code == 2
    assert "row 2" in result.output and sandbox.stats()["requests"] == 0


def test_cli_sandbox_flag_needs_no_key(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=4)
    result = CliRunner().invoke(main, ["run", str(campaign), "--sandbox", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["sent"] == 4


def test_merged_broadcast_one_row_state_each(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=60, merge=True)
    summary = run(campaign, sandbox)
    assert summary.counts["sent"] == 60
    messages = sandbox.messages()
    assert sorted(len(m["bcc"]) for m in messages) == [10, 50]  # 50 per field at most
    assert Counter(recipients_in(messages)) == Counter(
        {**{f"user{n}@example.org": 1 for n in range(1, 61)}, "news@example.com": 2}
    )  # the visible "to" of a bcc broadcast is the sender
    with Store("b.db") as store:
        units = {r["unit_key"] for r in store.recipients(summary.run_id)}
        compositions = [store.unit(summary.run_id, k).composition for k in units]
        assert sorted(len(rows) for c in compositions for rows in c) == [10, 50]


def test_httpx_transport_sends_the_same(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = write_campaign(tmp_path / "c", rows=12, provider="v1")
    summary = run(campaign, sandbox, http_client="httpx")
    assert summary.counts["sent"] == 12
    assert len(sandbox.messages()) == 12


# httpx is an optional extra: this interpreter has it, so the child process is told to
# find no httpx at all (a None in sys.modules makes `import httpx` fail as if missing).
WITHOUT_HTTPX = (
    "import sys; sys.modules['httpx'] = None; from batchsend.cli import main; "
    "main(args=sys.argv[1:], prog_name='batchsend')"
)


@pytest.mark.parametrize("client", ["httpx", "aiohttp"])
def test_without_httpx_only_its_transport_is_refused(
    tmp_path: Path, sandbox: Sandbox, client: str
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=5, provider="v1", base_url=sandbox.base_url)
    command = ["run", str(campaign), "--db", "b.db", "--http-client", client]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_HTTPX, *command],
        env={**os.environ, "BATCHSEND_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if client == "aiohttp":  # the default path never needs httpx
        assert done.returncode == 0, done.stderr
        assert len(sandbox.messages()) == 5
        return
    assert done.returncode == 2
    assert "httpx" in done.stderr and "pip install 'batchsend[httpx]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert sandbox.stats()["requests"] == 0
    assert not Path("b.db").exists()  # refused before anything was recorded


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def bytes_campaign(tmp_path: Path, name: str) -> Path:
    """A generated campaign ("tosend", "v1") or a copy of a sample (HTML only, files, iCal)."""
    if name == "tosend":
        return write_campaign(tmp_path / "c", rows=25, provider="tosend", send={"batch_size": 10})
    if name == "v1":
        return write_campaign(tmp_path / "c", rows=25, provider="v1")
    import shutil

    folder = shutil.copytree(SAMPLES / name, tmp_path / name)
    path = folder / "campaign.toml"
    if name == "invoices":  # HTML only, a PDF per row: batched here, 5 a request
        text = path.read_text(encoding="utf-8").replace("batch_size = 1\n", "batch_size = 5\n")
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["tosend", "v1", "newsletter", "invoices", "event-invite"])
def test_a_runs_requests_are_the_bytes_a_resend_rebuilds(
    tmp_path: Path, make_sandbox, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A fresh run sends the messages preflight encoded; a resend after a crash rebuilds
    # them by rendering again. Same key + same bytes is a duplicate to a provider that
    # honours the key (the sandbox's --idempotency-keys; neither documented provider
    # does), anything else a 409: this is how byte identity is checked end to end.
    import asyncio

    from batchsend.campaign import load_campaign
    from batchsend.plan import rebuild_unit
    from batchsend.preflight import iter_rows
    from batchsend.providers import get_provider
    from batchsend.spool import MessageSpool
    from batchsend.transport import make_transport

    campaign_path = bytes_campaign(tmp_path, name)
    campaign = load_campaign(campaign_path)
    sandbox = make_sandbox(
        api_keys=(KEY,), domains=(campaign.sender_domain,), idempotency_keys=True
    )
    spooled = []
    add_planned = MessageSpool.add_planned
    monkeypatch.setattr(
        MessageSpool, "add_planned", lambda self, pm: (spooled.append(pm), add_planned(self, pm))
    )
    summary = run(campaign_path, sandbox)
    sent = summary.counts["sent"]
    assert sent >= 4 and summary.state is RunState.FINISHED
    assert len(spooled) == sent  # the run sent what preflight encoded: the path under test
    rendered = {r.row: r.message for r in iter_rows(campaign) if r.message is not None}
    p = get_provider(
        campaign.provider, base_url=sandbox.base_url, api_key=KEY,
        batch_size=campaign.send.batch_size,
    )  # fmt: skip
    with Store("b.db") as store:
        keys = {r["unit_key"] for r in store.recipients(summary.run_id) if r["unit_key"]}
        rebuilt = []
        for key in sorted(keys):
            unit = store.unit(summary.run_id, key)
            again = rebuild_unit(
                unit.composition, rendered, run_id=summary.run_id, batch=unit.batch
            )
            assert again.key == key
            rebuilt.append(p.build_request(again))
    assert len(rebuilt) == summary.requests

    async def resend() -> list[int]:
        async with make_transport("aiohttp", concurrency=4) as t:
            return [(await t.send(request)).status for request in rebuilt]

    before = sandbox.stats()["duplicates"]
    statuses = asyncio.run(resend())
    assert set(statuses) == {200}, statuses  # never 409: the very same bytes
    assert sandbox.stats()["duplicates"] - before == len(rebuilt)
    assert len(sandbox.messages()) == sent  # nobody got a second email


def test_a_calendar_invite_travels_on_tosend_as_invite_ics(tmp_path: Path, make_sandbox) -> None:
    import shutil

    folder = tmp_path / "invite"
    shutil.copytree(Path(__file__).resolve().parents[1] / "samples" / "event-invite", folder)
    text = (folder / "campaign.toml").read_text()
    for v1_only in ("tag = ", "stream_type = ", "domain = ", "track_opens = ", "track_clicks = "):
        text = "\n".join(line for line in text.splitlines() if not line.startswith(v1_only))
    (folder / "campaign.toml").write_text(text.replace('provider = "v1"', 'provider = "tosend"'))
    checked = CliRunner().invoke(main, ["check", str(folder / "campaign.toml")])
    assert checked.exit_code == 0, checked.output
    assert "invite.ics" in checked.output
    sb = make_sandbox(domains=("pydata-lisbon.example",))
    summary = run(folder / "campaign.toml", sb)
    assert summary.counts["sent"] == len(sb.messages()) > 0
    for m in sb.messages():
        (invite,) = [a for a in m["body"]["attachments"] if a["name"] == "invite.ics"]
        assert invite["type"] == "text/calendar; method=REQUEST"
