"""The Python API (``import batchsend as bs``): campaigns built in Python, sent over real
HTTP to the sandbox, from a plain call and from inside a running event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support.campaigns import deliveries, write_campaign
from support.sandboxes import TEST_KEY

import batchsend as bs
from batchsend.api import CAMPAIGNS_FOLDER
from batchsend.loops import interrupts_to, sync_anywhere
from batchsend.sandbox import Sandbox

PEOPLE = pl.DataFrame(
    {
        "email": ["ann@example.org", "bob@example.org", "cy@example.org"],
        "first_name": ["Ann", "Bob", "Cy"],
    }
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the database, campaign folders and reports land here
    monkeypatch.setenv("BATCHSEND_API_KEY", TEST_KEY)


def news(recipients: Any = PEOPLE, **extra: Any) -> bs.Campaign:
    keys: dict[str, Any] = {
        "provider": "tosend",
        "sender": "Example News <news@example.com>",
        "subject": "Hi {{ first_name }}",
        "text": "Hello {{ first_name }}!",
        **extra,
    }
    return bs.Campaign(recipients=recipients, **keys)


def test_a_dataframe_campaign_is_sent_once_to_each_row(sandbox: Sandbox) -> None:
    run = news().run(base_url=sandbox.base_url, progress=False)
    got = sandbox.messages()
    assert deliveries(got) == {e: 1 for e in PEOPLE["email"]}
    assert sorted(m["body"]["subject"] for m in got) == ["Hi Ann", "Hi Bob", "Hi Cy"]
    assert run.state is bs.RunState.FINISHED
    assert run.counts["sent"] == 3
    report = run.report()
    assert isinstance(report, pl.DataFrame)
    assert report.select("email", "state", "first_name").rows() == [
        ("ann@example.org", "sent", "Ann"),
        ("bob@example.org", "sent", "Bob"),
        ("cy@example.org", "sent", "Cy"),
    ]
    assert bs.open_run(run.run_id).report().height == 3


def test_sync_calls_work_inside_a_running_event_loop(sandbox: Sandbox) -> None:
    async def notebook_cell() -> bs.Run:
        asyncio.get_running_loop()  # a loop is running, as in Jupyter
        return news().run(base_url=sandbox.base_url, progress=False)

    run = asyncio.run(notebook_cell())
    assert run.counts["sent"] == 3
    assert deliveries(sandbox.messages()) == {e: 1 for e in PEOPLE["email"]}


def test_arun_and_aresume_do_not_block_the_loop(sandbox: Sandbox) -> None:
    async def main() -> tuple[bs.Run, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        run = await news().arun(base_url=sandbox.base_url, progress=False, limit=1)
        await run.aresume(base_url=sandbox.base_url, progress=False)
        ticker.cancel()
        return run, ticks

    run, ticks = asyncio.run(main())
    assert ticks > 0
    assert run.counts["sent"] == 3
    assert deliveries(sandbox.messages()) == {e: 1 for e in PEOPLE["email"]}


def test_a_stopped_run_resumes_from_the_same_inputs(sandbox: Sandbox) -> None:
    campaign = news(name="autumn news")
    run = campaign.run(base_url=sandbox.base_url, progress=False, limit=2)
    assert run.counts["pending"] == 1
    assert run.state is bs.RunState.INTERRUPTED
    # a new Campaign object with the same name finds the same folder and database record
    with pytest.raises(bs.UnfinishedRunError):
        news(name="autumn news").run(base_url=sandbox.base_url, progress=False)
    bs.open_run(run.run_id).resume(base_url=sandbox.base_url, progress=False)
    assert run.counts["sent"] == 3
    assert deliveries(sandbox.messages()) == {e: 1 for e in PEOPLE["email"]}
    assert (Path("batchsend-campaigns/autumn-news/recipients.parquet")).is_file()


def test_the_same_campaign_is_not_sent_twice_by_accident(sandbox: Sandbox) -> None:
    news().run(base_url=sandbox.base_url, progress=False)
    with pytest.raises(bs.CampaignSentError):
        news().run(base_url=sandbox.base_url, progress=False)
    grown = pl.concat([PEOPLE, pl.DataFrame({"email": ["di@example.org"], "first_name": ["Di"]})])
    news(grown).run(base_url=sandbox.base_url, progress=False, skip_sent=True)
    assert deliveries(sandbox.messages()) == {e: 1 for e in grown["email"]}


@pytest.mark.parametrize(
    "form",
    ["list_of_dicts", "csv_file", "parquet_file", "lazy_frame", "dict_settings"],
)
def test_recipients_and_settings_come_in_every_form(form: str, sandbox: Sandbox) -> None:
    recipients: Any = PEOPLE
    if form == "list_of_dicts":
        recipients = PEOPLE.to_dicts()
    elif form == "csv_file":
        PEOPLE.write_csv("people.csv")
        recipients = "people.csv"
    elif form == "parquet_file":
        PEOPLE.write_parquet("people.parquet")
        recipients = Path("people.parquet")
    elif form == "lazy_frame":
        recipients = PEOPLE.lazy()
    if form == "dict_settings":
        campaign = bs.Campaign(
            {
                "provider": "tosend",
                "sender": {"email": "news@example.com"},
                "message": {"subject": "Hi {{ first_name }}", "text": "Hello"},
            },
            recipients=recipients,
        )
    else:
        campaign = news(recipients)
    assert campaign.check().sendable == 3
    assert campaign.preview(2).subject == "Hi Bob"
    assert campaign.run(base_url=sandbox.base_url, progress=False).counts["sent"] == 3


def test_templates_are_strings_or_files(tmp_path: Path) -> None:
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "news.html").write_text("<p>Dear {{ first_name }}</p>", encoding="utf-8")
    campaign = news(html=Path("mail/news.html"), text=None)
    assert campaign.preview(1).html == "<p>Dear Ann</p>"
    folder = campaign.write().parent
    assert (folder / "mail" / "news.html").read_text(
        encoding="utf-8"
    ) == "<p>Dear {{ first_name }}</p>"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"subject": 5}, "batchsend.Campaign: message.subject: expected a string, got int 5"),
        (
            {"send": {"concurency": 3}},
            "send.concurency: unknown key in [send]; did you mean 'concurrency'",
        ),
        ({"sender": "not an address"}, "sender.email: 'not an address' is not a valid address"),
        ({"provider": "tosnd"}, "unknown provider 'tosnd'; did you mean 'tosend'"),
        (
            {"html_file": "missing.html"},
            "message.html_file: template file 'missing.html' not found",
        ),
        ({"api_key": "sk-live-123"}, "api_key: API keys never go in the campaign file"),
        ({"api_key_env": "AWS_SECRET_ACCESS_KEY"}, "api_key_env: names a variable outside"),
        ({"html_file": "../elsewhere.html"}, "'../elsewhere.html' is outside the campaign folder"),
    ],
)
def test_bad_keys_get_the_campaign_files_messages(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(bs.CampaignError) as caught:
        news(**extra)
    assert needle in str(caught.value)
    assert "sk-live-123" not in str(caught.value)


def test_bad_rows_are_a_table_of_problems() -> None:
    rows = [*PEOPLE.to_dicts(), {"email": "not-an-address", "first_name": "X"}]
    check = news(rows).check()
    assert not check.ok
    assert check.skipped == {"invalid": 1}
    problems = check.problems
    assert problems.columns == ["row", "column", "problem", "fix"]
    assert problems.select("row", "column").rows() == [(4, "email")]
    assert "1 problem(s)" in str(check)
    with pytest.raises(bs.PreflightError):
        news(rows).run(sandbox=True, progress=False)


def test_no_recipients_is_a_clear_error() -> None:
    with pytest.raises(bs.CampaignError, match="recipients: missing"):
        news(None)
    with pytest.raises(bs.SourceError, match="empty"):
        news([])
    with pytest.raises(bs.CampaignError, match="recipients: expected a DataFrame"):
        news(42)
    with pytest.raises(bs.SourceError, match="does not exist"):
        news("nobody.csv")


def test_ctrl_c_in_a_worker_reaches_the_send_s_handler() -> None:
    """Inside a running loop the call runs in a worker thread, which cannot install a
    signal handler: the waiting caller hands its KeyboardInterrupt over instead."""
    seen: list[str] = []

    async def send() -> str:
        stop = asyncio.Event()
        with interrupts_to(stop.set):
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            await asyncio.wait_for(stop.wait(), timeout=5)
        seen.append(threading.current_thread().name)
        return "stopped"

    call = sync_anywhere(lambda: asyncio.run(send()))

    async def cell() -> str:
        return call()

    # Ctrl-C raises KeyboardInterrupt in the main thread, as in a kernel (a process
    # started in the background may inherit SIGINT ignored); the loop has no handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(cell()) == "stopped"
    finally:
        loop.close()
        signal.signal(signal.SIGINT, previous)
    assert seen == ["batchsend-worker"]


def test_a_pandas_dataframe_is_read_like_a_polars_one(sandbox: Sandbox) -> None:
    import pandas as pd  # a test dependency; not one of batchsend's

    frame = pd.DataFrame({"email": list(PEOPLE["email"]), "first_name": list(PEOPLE["first_name"])})
    run = news(frame).run(base_url=sandbox.base_url, progress=False)
    assert run.counts["sent"] == 3
    assert deliveries(sandbox.messages()) == {e: 1 for e in PEOPLE["email"]}


def test_a_campaign_file_runs_as_it_is(tmp_path: Path, sandbox: Sandbox) -> None:
    toml = write_campaign(tmp_path / "c", rows=3, base_url=sandbox.base_url)
    campaign = bs.Campaign.from_file(toml.parent)
    assert campaign.check().sendable == 3
    assert campaign.recipients.height == 3
    run = campaign.run(progress=False)
    assert run.counts["sent"] == 3
    assert not Path(CAMPAIGNS_FOLDER).exists()  # nothing copied
    with pytest.raises(bs.CampaignSentError):
        bs.Campaign.from_file(toml).run(progress=False)


def test_interrupting_a_notebook_run_stops_it_resumably(make_sandbox) -> None:
    """Ctrl-C in a notebook: the run, in its worker thread, stops after the requests in
    flight, as the command line's first Ctrl-C does, and the resume sends the rest once."""
    sandbox = make_sandbox(latency_ms=20)
    rows = [{"email": f"user{n}@example.org", "first_name": f"U{n}"} for n in range(40)]
    campaign = news(rows, send={"batch_size": 1, "concurrency": 1})

    def press_ctrl_c_once_sending() -> None:
        deadline = time.monotonic() + 10
        while len(sandbox.messages()) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    async def cell() -> bs.Run:
        threading.Thread(target=press_ctrl_c_once_sending, daemon=True).start()
        return campaign.run(base_url=sandbox.base_url, progress=False)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    loop = asyncio.new_event_loop()  # a kernel's loop: no SIGINT handler of its own
    try:
        run = loop.run_until_complete(cell())
    finally:
        loop.close()
        signal.signal(signal.SIGINT, previous)
    assert run.result is not None and run.result.interrupted
    assert run.state is bs.RunState.INTERRUPTED
    assert 0 < run.counts["sent"] < 40
    assert run.counts["sending"] == 0  # the request in flight finished and was recorded
    run.resume(base_url=sandbox.base_url, progress=False)
    assert run.counts["sent"] == 40
    assert deliveries(sandbox.messages()) == {r["email"]: 1 for r in rows}


def test_cancelling_arun_stops_the_send_like_ctrl_c(make_sandbox) -> None:
    sandbox = make_sandbox(latency_ms=20)
    rows = [{"email": f"user{n}@example.org", "first_name": f"U{n}"} for n in range(40)]
    campaign = news(rows, send={"batch_size": 1, "concurrency": 1})

    async def main() -> None:
        task = asyncio.create_task(campaign.arun(base_url=sandbox.base_url, progress=False))
        while len(sandbox.messages()) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    listed = bs.runs()
    assert listed.height == 1
    assert listed["state"].to_list() == ["interrupted"]
    assert listed["sending"].to_list() == [0]  # what was in flight finished and was recorded
    sent = listed["sent"][0]
    assert 0 < sent < 40
    assert len(sandbox.messages()) == sent
    run = bs.open_run(listed["run_id"][0])
    run.resume(base_url=sandbox.base_url, progress=False)
    assert deliveries(sandbox.messages()) == {r["email"]: 1 for r in rows}
    assert bs.runs()["state"].to_list() == ["finished"]
