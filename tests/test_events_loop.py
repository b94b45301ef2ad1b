"""The whole loop over real HTTP: a campaign, the sandbox's delivery outcomes posted as
webhooks (with duplicates), the receiver, the report, and the next campaign's skips."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.campaigns import recipients_in, write_campaign
from support.processes import query, run_batchsend

from batchsend.receiver import Receiver, ReceiverConfig
from batchsend.sandbox import Sandbox

SECRET = "whsec-loop-0123456789"
ROWS = 5000


def _settled(sandbox: Sandbox, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The sandbox's events once every webhook it owed was acknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        events = sandbox.events()
        posted = [e for e in events if e["webhook"] is not None]
        if posted and all(e["webhook"]["acknowledged"] for e in posted):
            return events
        assert time.monotonic() < deadline, Counter(
            (e["type"], bool(e["webhook"] and e["webhook"]["acknowledged"])) for e in posted
        )
        time.sleep(0.2)


def test_stored_events_match_the_sandbox_and_the_next_campaign_skips_exactly_the_barred(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    db = tmp_path / "batchsend.db"
    with Receiver(ReceiverConfig(db, tosend_secret=SECRET)) as receiver:
        sandbox = make_sandbox(
            seed=13,
            bounce_rate=0.05,
            complaint_rate=0.005,
            event_delay_s=0.05,
            tosend_webhook_url=receiver.url + "/webhooks/tosend",
            webhook_secret=SECRET,
            webhook_dup_rate=0.3,
            webhook_backoff_s=0.05,
        )
        campaign = write_campaign(
            tmp_path / "c", rows=ROWS, base_url=sandbox.base_url, send={"batch_size": 100}
        )
        first = run_batchsend("run", str(campaign), "--db", str(db), "--json")
        assert first.returncode == 0, first.stderr
        run_id = json.loads(first.stdout)["run_id"]
        events = _settled(sandbox)

    # ToSend posts bounces and complaints only; every one it saw acknowledged is stored once
    posted = [e for e in events if e["webhook"] is not None]
    assert {e["type"] for e in posted} == {"bounced", "complained"}
    expected = Counter(
        (e["type"], e["bounce_type"], e["recipient"], e["message_id"]) for e in posted
    )
    stored = Counter(query(db, "SELECT type, bounce_type, recipient, message_key FROM events"))
    assert stored == expected
    assert max(stored.values()) == 1  # no duplicate...
    sent_twice = sum(e["webhook"]["deliveries_sent"] > 1 for e in posted)
    assert sent_twice > 0  # ...although the sandbox delivered some twice
    (repeats,) = query(db, "SELECT SUM(deliveries) - COUNT(*) FROM events")[0]
    assert repeats >= sent_twice
    bounced = {e["recipient"] for e in posted if e["type"] == "bounced"}
    hard = {e["recipient"] for e in posted if e["bounce_type"] == "hard"}
    complained = {e["recipient"] for e in posted if e["type"] == "complained"}
    assert 150 < len(bounced) < 350 and len(complained) > 5  # the rates, roughly
    assert hard < bounced  # some soft ones: they do not suppress

    # the report's counts equal the events
    out = tmp_path / "report.csv"
    assert run_batchsend("report", run_id, "--db", str(db), "--out", str(out)).returncode == 0
    with out.open(encoding="utf-8-sig") as fh:
        report = list(csv.DictReader(fh))
    assert len(report) == ROWS
    assert {r["email"] for r in report if r["delivery"] == "bounced"} == bounced
    assert {r["email"] for r in report if r["bounce_type"] == "hard"} == hard
    assert {r["email"] for r in report if r["complained_at"]} == complained

    # a second campaign to the same list skips exactly the hard bounces and complaints
    barred = hard | complained
    before = len(sandbox.messages())
    again = run_batchsend("run", str(campaign), "--db", str(db), "--again", "--json")
    assert again.returncode == 0, again.stderr
    mailed = Counter(recipients_in(sandbox.messages()[before:]))
    everyone = {r["email"] for r in report}
    assert set(mailed) == everyone - barred and max(mailed.values()) == 1
    second = json.loads(again.stdout)["run_id"]
    skipped = query(
        db,
        "SELECT email, reason FROM recipients WHERE run_id = ? AND state = 'skipped'",
        second,
    )
    assert {email for email, _ in skipped} == barred
    assert all(reason.startswith("suppressed: ") for _, reason in skipped)
