"""Provider events: the webhook receiver (both providers, over real HTTP), the events
pull from v1's Events API, and the suppression list every later campaign consults."""

from __future__ import annotations

import csv
import http.client
import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.campaigns import recipients_in, write_campaign
from support.processes import query, run_batchsend

from batchsend.events import tosend as tosend_events
from batchsend.receiver import Receiver, ReceiverConfig
from batchsend.sandbox import Sandbox

SECRET = "whsec-test-0123456789"
TOKEN = "v1-token-abcdef0123456789"


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_batchsend(*args)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-ToSend-Signature": tosend_events.signature(body, secret),
        "X-ToSend-Event": "bounced",
        "X-ToSend-Timestamp": "2026-12-03T08:00:00Z",
    }


def rows(db: Path, sql: str, *params: object) -> list[tuple]:
    return query(db, sql, *params)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    config = ReceiverConfig(tmp_path / "batchsend.db", tosend_secret=SECRET, v1_token=TOKEN)
    with Receiver(config) as r:
        yield r


def bounce(email: str, message_id: str | None, *, hard: bool = True) -> bytes:
    return json.dumps(
        {
            "type": "bounced",
            "data": {
                "email": email,
                "bounce_type": "Permanent" if hard else "Transient",
                "bounce_sub_type": "General",
                "is_hard_bounce": hard,
                "reason": "550 5.1.1 user unknown" if hard else "mailbox full",
                "timestamp": "2026-12-03T08:00:00Z",
                "message_id": message_id,
            },
            "created_at": "2026-12-03T08:00:01Z",
        }
    ).encode()


# -- the receiver -------------------------------------------------------------------


def test_a_signed_tosend_event_is_stored_once_however_often_it_arrives(
    receiver: Receiver, tmp_path: Path
) -> None:
    body = bounce("ann@example.org", "m-1")
    url = receiver.url + "/webhooks/tosend"
    assert post(url, body, signed(body)) == (200, {"stored": 1, "duplicates": 0})
    assert post(url, body, signed(body)) == (200, {"stored": 0, "duplicates": 1})
    db = tmp_path / "batchsend.db"
    assert rows(db, "SELECT type, bounce_type, recipient, message_key, deliveries FROM events") == [
        ("bounced", "hard", "ann@example.org", "m-1", 2)
    ]
    assert json.loads(rows(db, "SELECT raw FROM events")[0][0])["data"]["reason"].startswith("550")
    assert rows(db, "SELECT address, reason FROM suppressions") == [
        ("ann@example.org", "hard bounce")
    ]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-ToSend-Signature": "sha256=" + "0" * 64}, "signed-with-another-secret"],
    ids=["missing", "wrong", "other-secret"],
)
def test_a_bad_or_missing_signature_is_401_and_stores_nothing(
    receiver: Receiver, tmp_path: Path, headers: Any
) -> None:
    body = bounce("ann@example.org", "m-1")
    if headers == "signed-with-another-secret":
        headers = signed(body, "not-the-secret")
    status, _ = post(receiver.url + "/webhooks/tosend", body, headers)
    assert status == 401
    assert rows(tmp_path / "batchsend.db", "SELECT COUNT(*) FROM events") == [(0,)]
    assert rows(tmp_path / "batchsend.db", "SELECT COUNT(*) FROM suppressions") == [(0,)]


def test_the_signature_covers_the_exact_bytes(receiver: Receiver, tmp_path: Path) -> None:
    body = bounce("ann@example.org", "m-1")
    tampered = body.replace(b"ann@", b"bob@")
    status, _ = post(receiver.url + "/webhooks/tosend", tampered, signed(body))
    assert status == 401
    assert rows(tmp_path / "batchsend.db", "SELECT COUNT(*) FROM events") == [(0,)]


def test_all_three_tosend_payload_generations_are_read(receiver: Receiver, tmp_path: Path) -> None:
    bodies = [
        {  # current
            "type": "complaint",
            "data": {"email": "c1@example.org", "message_id": "m-c1", "timestamp": "t1"},
            "created_at": "2026-12-03T08:00:00Z",
        },
        {  # flat
            "type": "bounce",
            "email": "b2@example.org",
            "bounce_sub_type": "NoEmail",
            "reason": "no such user",
            "is_hard_bounce": True,
            "message_id": "m-b2",
        },
        {  # oldest
            "event": "bounced",
            "email": "b3@example.org",
            "domain": "example.org",
            "bounce_type": "Transient",
            "bounce_subtype": "MailboxFull",
            "timestamp": "2026-12-03T08:00:00Z",
            "message_id": "m-b3",
        },
    ]
    for payload in bodies:
        body = json.dumps(payload).encode()
        assert post(receiver.url + "/webhooks/tosend", body, signed(body))[0] == 200
    db = tmp_path / "batchsend.db"
    stored = rows(db, "SELECT recipient, type, bounce_type, message_key FROM events ORDER BY rowid")
    assert stored == [
        ("c1@example.org", "complained", None, "m-c1"),
        ("b2@example.org", "bounced", "hard", "m-b2"),
        ("b3@example.org", "bounced", "soft", "m-b3"),
    ]
    # a soft bounce may succeed later: it never suppresses
    assert rows(db, "SELECT address, reason FROM suppressions ORDER BY address") == [
        ("b2@example.org", "hard bounce"),
        ("c1@example.org", "complaint"),
    ]


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_an_event_is_400_and_stores_nothing(
    receiver: Receiver, tmp_path: Path, body: bytes
) -> None:
    status, _ = post(receiver.url + "/webhooks/tosend", body, signed(body))
    assert status == 400
    assert rows(tmp_path / "batchsend.db", "SELECT COUNT(*) FROM events") == [(0,)]


def test_a_body_over_the_bound_is_413(tmp_path: Path) -> None:
    config = ReceiverConfig(tmp_path / "b.db", tosend_secret=SECRET, max_body=2048)
    with Receiver(config) as r:
        body = bounce("ann@example.org", "m" * 4000)
        status, _ = post(r.url + "/webhooks/tosend", body, signed(body))
    assert status == 413


def test_v1_webhooks_need_the_token_in_the_path(receiver: Receiver, tmp_path: Path) -> None:
    event = {
        "id": "evt-1",
        "type": "email.complained",
        "created_at": "2026-12-03T08:00:00Z",
        "data": {
            "email_id": "e-1",
            "message_id": "<e-1@example.com>",
            "to": "ann@example.org",
            "metadata": {"batchsend_id": "k-1"},
        },
    }
    body = json.dumps(event).encode()
    assert post(receiver.url + "/webhooks/v1/wrong-token", body)[0] == 401
    assert rows(tmp_path / "batchsend.db", "SELECT COUNT(*) FROM events") == [(0,)]
    assert post(receiver.url + f"/webhooks/v1/{TOKEN}", body)[0] == 200
    assert post(receiver.url + f"/webhooks/v1/{TOKEN}", body) == (
        200,
        {"stored": 0, "duplicates": 1},
    )
    assert rows(tmp_path / "batchsend.db", "SELECT key, type, message_key FROM events") == [
        ("v1:evt-1", "complained", "k-1")
    ]


def test_v1_is_off_without_a_token(tmp_path: Path) -> None:
    with Receiver(ReceiverConfig(tmp_path / "b.db", tosend_secret=SECRET)) as r:
        assert post(r.url + "/webhooks/v1/anything", b"{}")[0] == 404


# -- end to end: a campaign, its events, the next campaign ---------------------------------


def _messages(sandbox: Sandbox) -> list[dict[str, Any]]:
    with urllib.request.urlopen(sandbox.base_url + "/_sandbox/messages", timeout=10) as r:
        payload = json.loads(r.read())
    return payload["messages"] if isinstance(payload, dict) else payload


def test_bounces_and_complaints_reach_the_report_and_the_next_campaign_skips_them(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    db = tmp_path / "batchsend.db"
    campaign = write_campaign(tmp_path / "c", rows=12, base_url=sandbox.base_url)
    first = cli("run", str(campaign), "--db", str(db))
    assert first.returncode == 0, first.stderr
    sent = _messages(sandbox)
    by_address = {}
    for m in sent:
        for a in m["to"]:
            by_address[a["email"] if isinstance(a, dict) else a] = m["message_id"]
    assert len(by_address) == 12
    hard, soft, complained = "user2@example.org", "user5@example.org", "user7@example.org"
    config = ReceiverConfig(db, tosend_secret=SECRET)
    with Receiver(config) as r:
        url = r.url + "/webhooks/tosend"
        for body in (
            bounce(hard, by_address[hard]),
            bounce(soft, by_address[soft], hard=False),
            json.dumps(
                {"type": "complaint", "data": {"email": complained,
                 "message_id": by_address[complained]}}
            ).encode(),
            bounce("stranger@example.org", "no-such-message"),
        ):  # fmt: skip
            assert post(url, body, signed(body))[0] == 200

    listed = cli("events", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    linked = {e["recipient"]: e["row"] for e in events}
    assert linked == {hard: 2, soft: 5, complained: 7, "stranger@example.org": None}
    assert "1 unmatched" in listed.stderr

    # the report shows what happened after "accepted"
    first_run = rows(db, "SELECT id FROM runs ORDER BY started_at LIMIT 1")[0][0]
    out = tmp_path / "report.csv"
    assert cli("report", first_run, "--db", str(db), "--out", str(out)).returncode == 0
    with out.open(encoding="utf-8-sig") as fh:
        report = {r["email"]: r for r in csv.DictReader(fh)}
    assert (report[hard]["delivery"], report[hard]["bounce_type"]) == ("bounced", "hard")
    assert report[hard]["bounce_reason"].startswith("550")
    assert (report[soft]["delivery"], report[soft]["bounce_type"]) == ("bounced", "soft")
    assert report[complained]["complained_at"] != ""
    assert report["user1@example.org"]["delivery"] == ""
    assert report["user1@example.org"]["state"] == "sent"
    page = tmp_path / "report.html"
    assert cli("report", first_run, "--db", str(db), "--out", str(page)).returncode == 0
    html = page.read_text()
    # 12 accepted: 1 hard bounce = 8.33% (the soft one is not counted), 1 complaint = 8.33%
    assert "Bounce rate (1 hard; 1 soft, not counted): 8.33% (over the 5%" in html
    assert "Complaint rate (1): 8.33% (over the 0.3%" in html
    assert "550 5.1.1 user unknown" in html and "mailbox full" in html

    # the next campaign to the same list: exactly the hard bounce and the complaint skipped
    check = cli("check", str(campaign), "--db", str(db))
    assert "sendable 10, skipped: suppressed 2" in check.stdout, check.stdout
    second = write_campaign(tmp_path / "c2", rows=12, base_url=sandbox.base_url)
    before = len(_messages(sandbox))
    again = cli("run", str(second), "--db", str(db), "--json", "--again")
    assert again.returncode == 0, again.stderr
    new = _messages(sandbox)[before:]
    mailed = {a["email"] if isinstance(a, dict) else a for m in new for a in m["to"]}
    assert mailed == set(by_address) - {hard, complained}
    run_id = json.loads(again.stdout)["run_id"]
    skipped = rows(
        db,
        "SELECT email, state, reason FROM recipients WHERE run_id = ? AND state = 'skipped' "
        "ORDER BY row",
        run_id,
    )
    # the day each was first seen: the bounce's own timestamp, or the day the complaint
    # (which carries none) arrived
    day = dict(rows(db, "SELECT email, substr(first_seen, 1, 10) FROM suppressions"))
    assert day[hard] == "2026-12-03"
    assert skipped == [
        (hard, "skipped", f"suppressed: hard bounce on {day[hard]}"),
        (complained, "skipped", f"suppressed: complaint on {day[complained]}"),
    ]


# -- the suppression list's own commands ---------------------------------------------


def test_suppressions_add_list_remove_export(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    assert (
        cli("suppressions", "add", "Ann@Example.org", "bob@example.org", "--db", db).returncode == 0
    )
    again = cli("suppressions", "add", "ann@example.org", "--db", db)
    assert "0 added, 1 already on the list" in again.stderr
    listed = cli("suppressions", "list", "--db", db, "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["address"], e["reason"], e["source"]) for e in entries] == [
        ("ann@example.org", "manual", "manual"),
        ("bob@example.org", "manual", "manual"),
    ]
    removed = cli("suppressions", "remove", "ANN@example.org", "--db", db)
    assert "1 removed" in removed.stderr
    out = tmp_path / "out.csv"
    assert cli("suppressions", "export", "--db", db, "--out", str(out)).returncode == 0
    assert out.read_text().splitlines()[0] == "email,reason,source,first_seen,note"
    assert out.read_text().splitlines()[1].startswith("bob@example.org,manual,manual,")


def test_suppressions_import_names_the_bad_row_and_adds_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    good = tmp_path / "good.csv"
    good.write_text("Email,when\nann@example.org,2020\n\nbob@example.org,2021\n")
    result = cli("suppressions", "import", str(good), "--column", "Email", "--db", db)
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("email\ncarol@example.org\nnot an address\n")
    result = cli("suppressions", "import", str(bad), "--db", db)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "row 2" in result.stderr and "fix:" in result.stderr
    emails = rows(Path(db), "SELECT email FROM suppressions ORDER BY address")
    assert emails == [("ann@example.org",), ("bob@example.org",)]


# -- pulling v1's Events API --------------------------------------------------------


def test_events_pull_reads_v1_events_once_and_continues_where_it_stopped(
    make_sandbox: Any, tmp_path: Path
) -> None:
    sandbox = make_sandbox()
    db = tmp_path / "batchsend.db"
    campaign = write_campaign(tmp_path / "c", rows=5, provider="v1", base_url=sandbox.base_url)
    assert cli("run", str(campaign), "--db", str(db)).returncode == 0
    first = cli(
        "events", "pull", "--campaign", str(campaign), "--since", "2000-01-01T00:00:00Z",
        "--db", str(db), "--json",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["new"] == summary["events"] >= 5
    stored = rows(db, "SELECT COUNT(*), COUNT(DISTINCT message_key) FROM events")
    assert stored[0][1] == 5  # every message linked by its batchsend_id
    # no --since: it continues from the last position; what it sees again is kept once
    second = cli("events", "pull", "--campaign", str(campaign), "--db", str(db), "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["new"] == 0
    assert rows(db, "SELECT COUNT(*) FROM events") == [(stored[0][0],)]


def test_events_pull_on_an_account_without_the_events_api_changes_nothing(
    make_sandbox: Any, tmp_path: Path
) -> None:
    sandbox = make_sandbox(events_api=False)
    db = tmp_path / "batchsend.db"
    campaign = write_campaign(tmp_path / "c", rows=2, provider="v1", base_url=sandbox.base_url)
    assert cli("run", str(campaign), "--db", str(db)).returncode == 0
    result = cli(
        "events", "pull", "--campaign", str(campaign), "--since", "2000-01-01", "--db", str(db)
    )
    assert result.returncode != 0
    assert "event_api_disabled" in result.stderr and "Traceback" not in result.stderr
    assert rows(db, "SELECT COUNT(*) FROM events") == [(0,)]


# -- the providers' own lists ----------------------------------------------------------


def _campaign_with(folder: Path, provider: str, base_url: str, emails: list[str]) -> Path:
    campaign = write_campaign(folder, rows=len(emails), provider=provider, base_url=base_url)
    lines = ["email,first,n", *(f"{e},F{n},{n}" for n, e in enumerate(emails, 1))]
    (folder / "recipients.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return campaign


def _wait_for_events(sandbox: Sandbox, count: int) -> None:
    deadline = time.monotonic() + 20
    while len([e for e in sandbox.events() if e["type"] in ("bounced", "complained")]) < count:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_suppressions_sync_takes_the_providers_list(
    make_sandbox: Any, tmp_path: Path, provider: str
) -> None:
    sandbox = make_sandbox(event_delay_s=0.01)
    db = tmp_path / "b.db"
    emails = ["bounce@example.org", "complaint@example.org", "ann@example.org"]
    campaign = _campaign_with(tmp_path / "c", provider, sandbox.base_url, emails)
    assert run_batchsend("run", str(campaign), "--db", str(db)).returncode == 0
    _wait_for_events(sandbox, 2)
    env = {"BATCHSEND_ADMIN_KEY": "tsend_admin_test"} if provider == "tosend" else {}
    result = run_batchsend(
        "suppressions", "sync", "--campaign", str(campaign), "--db", str(db), "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "provider": provider, "listed": 2, "added": 2, "only_ours": 0,
    }  # fmt: skip
    assert rows(db, "SELECT address, reason, source FROM suppressions ORDER BY address") == [
        ("bounce@example.org", "hard bounce", f"sync:{provider}"),
        ("complaint@example.org", "complaint", f"sync:{provider}"),
    ]
    again = run_batchsend(
        "suppressions", "sync", "--campaign", str(campaign), "--db", str(db), "--json", env=env
    )
    assert json.loads(again.stdout)["added"] == 0


def test_suppressions_sync_refuses_a_sending_key_as_the_admin_key(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1, base_url=sandbox.base_url)
    db = tmp_path / "b.db"
    result = run_batchsend(
        "suppressions", "sync", "--campaign", str(campaign), "--db", str(db),
        env={"BATCHSEND_ADMIN_KEY": "sk-test"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a ToSend admin key" in result.stderr and "sk-test" not in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_batchsend("suppressions", "sync", "--campaign", str(campaign), "--db", str(db))
    assert missing.returncode == 2 and "BATCHSEND_ADMIN_KEY" in missing.stderr


# -- what an independent review found ---------------------------------------------------


def test_resume_skips_pending_rows_suppressed_since_the_run_began(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    db = tmp_path / "b.db"
    campaign = write_campaign(tmp_path / "c", rows=5, base_url=sandbox.base_url)
    first = run_batchsend("run", str(campaign), "--db", str(db), "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    assert (
        run_batchsend("suppressions", "add", "User4@Example.org", "--db", str(db)).returncode == 0
    )
    resumed = run_batchsend("resume", run_id, "--db", str(db))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 pending row(s) skipped" in resumed.stderr + resumed.stdout
    mailed = sorted(recipients_in(sandbox.messages()))
    assert mailed == [f"user{n}@example.org" for n in (1, 2, 3, 5)]
    ((state, reason),) = rows(
        db, "SELECT state, reason FROM recipients WHERE run_id = ? AND row = 4", run_id
    )
    assert state == "skipped" and reason.startswith("suppressed: manual on ")


def test_report_columns_named_like_event_columns_keep_their_names(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    db = tmp_path / "b.db"
    campaign = write_campaign(tmp_path / "c", rows=2, base_url=sandbox.base_url)
    (tmp_path / "c" / "recipients.csv").write_text(
        "email,first,n,delivery\nuser1@example.org,A,1,by hand\nuser2@example.org,B,2,post\n"
    )
    first = run_batchsend("run", str(campaign), "--db", str(db), "--json")
    run_id = json.loads(first.stdout)["run_id"]
    message_id = sandbox.messages()[0]["message_id"]
    with Receiver(ReceiverConfig(db, tosend_secret=SECRET)) as r:
        body = bounce("user1@example.org", message_id)
        assert post(r.url + "/webhooks/tosend", body, signed(body))[0] == 200
    out = tmp_path / "r.csv"
    assert run_batchsend("report", run_id, "--db", str(db), "--out", str(out)).returncode == 0
    with out.open(encoding="utf-8-sig") as fh:
        report = list(csv.DictReader(fh))
    assert [r["delivery"] for r in report] == ["by hand", "post"]  # the file's own column
    assert [r["batchsend_delivery"] for r in report] == ["bounced", ""]


def test_a_soft_then_hard_bounce_is_hard_and_counted_once(sandbox: Sandbox, tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    campaign = write_campaign(tmp_path / "c", rows=1, base_url=sandbox.base_url)
    run_id = json.loads(run_batchsend("run", str(campaign), "--db", str(db), "--json").stdout)[
        "run_id"
    ]
    message_id = sandbox.messages()[0]["message_id"]
    with Receiver(ReceiverConfig(db, tosend_secret=SECRET)) as r:
        for hard in (False, True):
            body = bounce("user1@example.org", message_id, hard=hard)
            assert post(r.url + "/webhooks/tosend", body, signed(body))[0] == 200
    out = tmp_path / "r.csv"
    assert run_batchsend("report", run_id, "--db", str(db), "--out", str(out)).returncode == 0
    with out.open(encoding="utf-8-sig") as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["bounce_type"], row["bounce_reason"]) == ("hard", "550 5.1.1 user unknown")
    page = tmp_path / "r.html"
    assert run_batchsend("report", run_id, "--db", str(db), "--out", str(page)).returncode == 0
    assert "Bounce rate (1 hard; 0 soft, not counted): 100.00%" in page.read_text()


def test_an_internationalised_address_is_suppressed_as_preflight_compares_it(
    receiver: Receiver, tmp_path: Path
) -> None:
    body = bounce("Ann@Straße.de", "m-1")
    assert post(receiver.url + "/webhooks/tosend", body, signed(body))[0] == 200
    from batchsend.addresses import AddressBook

    key = AddressBook().normalise("ann@straße.de").key
    assert rows(tmp_path / "batchsend.db", "SELECT address FROM suppressions") == [(key,)]


def test_without_a_secret_the_tosend_route_is_off_unless_unsigned_is_accepted(
    tmp_path: Path,
) -> None:
    body = bounce("ann@example.org", "m-1")
    with Receiver(ReceiverConfig(tmp_path / "a.db", v1_token=TOKEN)) as r:
        assert post(r.url + "/webhooks/tosend", body)[0] == 404
    with Receiver(ReceiverConfig(tmp_path / "b.db", tosend_unsigned=True)) as r:
        assert post(r.url + "/webhooks/tosend", body)[0] == 200
    nothing = run_batchsend("events", "serve", "--db", str(tmp_path / "c.db"), "--port", "0")
    assert nothing.returncode == 2 and "nothing to receive" in nothing.stderr


def test_a_v1_token_that_cannot_travel_in_a_url_path_is_refused(tmp_path: Path) -> None:
    result = run_batchsend(
        "events", "serve", "--db", str(tmp_path / "a.db"), "--port", "0",
        env={"BATCHSEND_V1_WEBHOOK_TOKEN": "ab/cd+ef==0123456789"},
    )  # fmt: skip
    assert result.returncode == 2 and "URL path" in result.stderr
    assert "ab/cd" not in result.stderr


def test_a_signature_header_that_is_not_ascii_is_401(receiver: Receiver) -> None:
    body = bounce("ann@example.org", "m-1")
    host, port = receiver.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/webhooks/tosend")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("X-ToSend-Signature", "sha256=\u00e9".encode())  # UTF-8 bytes on the wire
    conn.endheaders(body)
    assert conn.getresponse().status == 401
    conn.close()


def test_an_event_typed_only_by_its_header_is_not_taken_for_another(
    receiver: Receiver, tmp_path: Path
) -> None:
    fields = {"email": "ann@example.org", "message_id": "m-1"}
    body = json.dumps(fields).encode()
    for kind in ("bounced", "complaint"):
        headers = {**signed(body), "X-ToSend-Event": kind}
        assert post(receiver.url + "/webhooks/tosend", body, headers)[0] == 200
    stored = rows(tmp_path / "batchsend.db", "SELECT type FROM events ORDER BY rowid")
    assert stored == [("bounced",), ("complained",)]


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    for args in (("events", "list"), ("suppressions", "list"), ("suppressions", "export")):
        result = run_batchsend(*args, "--db", str(missing))
        assert result.returncode == 2 and "no batchsend database" in result.stderr, args
    assert not missing.exists()


def test_an_import_file_csv_cannot_read_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "huge.csv"
    bad.write_text("email\n" + '"' + "x" * 200_000 + '"\n')
    result = run_batchsend("suppressions", "import", str(bad), "--db", str(tmp_path / "b.db"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_a_locked_database_is_answered_503_in_time_and_the_retry_is_stored(
    receiver: Receiver, tmp_path: Path
) -> None:
    db = tmp_path / "batchsend.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # as a run's intake holds it
    body = bounce("ann@example.org", "m-1")
    started = time.monotonic()
    status, _ = post(receiver.url + "/webhooks/tosend", body, signed(body))
    waited = time.monotonic() - started
    holder.execute("ROLLBACK")
    holder.close()
    assert status == 503 and waited < 10
    assert post(receiver.url + "/webhooks/tosend", body, signed(body))[0] == 200
    assert rows(db, "SELECT COUNT(*) FROM events") == [(1,)]


def test_a_bounce_received_into_one_database_bars_the_address_in_every_campaign(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Campaigns keep their own databases (one per campaign folder): the suppression list
    of every database this user's batchsend knows is consulted, the receiver's too."""
    events_db = tmp_path / "events" / "events.db"
    events_db.parent.mkdir()
    with Receiver(ReceiverConfig(events_db, tosend_secret=SECRET)) as r:
        body = bounce("user2@example.org", "m-elsewhere")
        assert post(r.url + "/webhooks/tosend", body, signed(body))[0] == 200
    assert run_batchsend("suppressions", "add", "user3@example.org", "--db",
                         str(tmp_path / "manual.db")).returncode == 0  # fmt: skip
    campaign = write_campaign(tmp_path / "other", rows=4, base_url=sandbox.base_url)
    check = run_batchsend("check", str(campaign))  # its own database: other/batchsend.db
    assert "skipped: suppressed 2" in check.stdout, check.stdout
    result = run_batchsend("run", str(campaign))
    assert result.returncode == 0, result.stderr
    assert sorted(recipients_in(sandbox.messages())) == ["user1@example.org", "user4@example.org"]
