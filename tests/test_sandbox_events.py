"""The sandbox plays the provider's part after acceptance: outcomes, webhooks, events.

Over real HTTP: the sandbox on 127.0.0.1 posts to a small receiver on 127.0.0.1 that
records every post and answers what the test tells it to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tosend import ToSendAdmin

from batchsend.sandbox import Sandbox

SENDING = {"Authorization": "Bearer sk-test"}
ADMIN = {"Authorization": "Bearer tsend_admin_test"}
V1_AUTH = {"X-API-Key": "sk-test"}
FAST = {"event_delay_s": 0.0, "webhook_backoff_s": 0.01, "webhook_timeout_s": 2.0}


class Receiver:
    """A webhook endpoint on 127.0.0.1: records each post, answers from ``answers``."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.answers: list[int] = []  # statuses to answer first, in order; then 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts.append(
                        {"path": self.path, "headers": dict(self.headers), "raw": raw}
                    )
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p["raw"]) for p in self.posts if path in (None, p["path"])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something true (the webhooks run in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "timed out waiting"
            return value
        time.sleep(0.01)


def events_after(sb: Sandbox, count: int) -> list[dict[str, Any]]:
    """The sandbox's events once ``count`` have happened (v1's come 1 ms after "sent")."""

    def enough() -> list[dict[str, Any]] | None:
        events = sb.events()
        return events if len(events) >= count else None

    return wait_for(enough)


def settled(sb: Sandbox) -> bool:
    return sb.stats()["webhooks"]["pending"] == 0


def tosend_batch(sb: Sandbox, addresses: list[str]) -> None:
    emails = [
        {
            "from": {"email": "news@example.com"},
            "to": [{"email": a}],
            "subject": "Hi",
            "text": "Read https://example.com/offer",
            "message_hash": f"m-{a}",
        }
        for a in addresses
    ]
    for start in range(0, len(emails), 100):
        r = httpx.post(
            sb.base_url + "/v2/emails/batch", json={"emails": emails[start : start + 100]},
            headers=SENDING,
        )  # fmt: skip
        assert r.status_code == 200, r.text


def tosend_send(sb: Sandbox, address: str, message_hash: str = "m-1") -> None:
    body = {
        "from": {"email": "news@example.com"},
        "to": [{"email": address}],
        "subject": "Hi",
        "text": "Hi",
        "message_hash": message_hash,
    }
    r = httpx.post(sb.base_url + "/v2/emails", json=body, headers=SENDING)
    assert r.status_code == 200, r.text


def v1_send(sb: Sandbox, to: str, row: str = "row-1", **extra: Any) -> dict[str, Any]:
    body = {
        "to": to,
        "subject": "Hi",
        "html": '<a href="https://example.com/a">a</a>',
        "tag": "spring",
        "metadata": {"batchsend_id": row},
        "headers": {"X-Campaign": "spring"},
        **extra,
    }
    r = httpx.post(sb.base_url + "/api/v1/send", json=body, headers=V1_AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def fates(sb: Sandbox) -> set[tuple[str, str, str | None]]:
    return {(e["recipient"], e["type"], e["bounce_type"]) for e in sb.events()}


RATES = {"bounce_rate": 0.3, "complaint_rate": 0.2, "open_rate": 0.5, "click_rate": 0.25}
ADDRESSES = [f"user{n}@recipients.org" for n in range(200)]


# outcomes ------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_outcomes_in_any_order(make_sandbox) -> None:
    first = make_sandbox(seed=7, **RATES, **FAST)
    tosend_batch(first, ADDRESSES)
    again = make_sandbox(seed=7, **RATES, **FAST)
    tosend_batch(again, ADDRESSES[::-1])  # another order, other batches
    other = make_sandbox(seed=8, **RATES, **FAST)
    tosend_batch(other, ADDRESSES)
    assert fates(first) == fates(again)
    assert fates(first) != fates(other)
    stats = first.stats()["outcomes"]
    bounced = stats["bounced_hard"] + stats.get("bounced_soft", 0)
    assert 30 <= bounced <= 90  # 30% of 200, loosely
    assert stats["delivered"] == 200 - bounced
    assert 0 < stats["complained"] < stats["delivered"]
    assert stats["clicked"] <= stats["opened"]
    assert stats == {
        kind: sum(1 for e in first.events() if (e["type"], e["bounce_type"]) == key)
        for kind, key in (
            ("delivered", ("delivered", None)),
            ("bounced_hard", ("bounced", "hard")),
            ("bounced_soft", ("bounced", "soft")),
            ("complained", ("complained", None)),
            ("opened", ("opened", None)),
            ("clicked", ("clicked", None)),
        )
    }
    clicked = [e for e in first.events() if e["type"] == "clicked"]
    assert {e["url"] for e in clicked} == {"https://example.com/offer"}


def test_by_default_every_recipient_is_delivered_and_nothing_is_posted(make_sandbox) -> None:
    sb = make_sandbox(event_delay_s=0.0)
    tosend_batch(sb, ADDRESSES[:20])
    events = sb.events()
    assert {(e["type"], e["webhook"]) for e in events} == {("delivered", None)}
    assert len(events) == 20
    assert sb.stats()["webhooks"]["posts"] == 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bounce@anywhere.org", [("bounced", "hard")]),
        ("Bounce+row7@recipients.org", [("bounced", "hard")]),
        ("softbounce@recipients.org", [("bounced", "soft")]),
        ("complaint@recipients.org", [("delivered", None), ("complained", None)]),
        ("success@recipients.org", [("delivered", None)]),
    ],
)
def test_special_addresses_ignore_the_rates(make_sandbox, address, expected) -> None:
    sb = make_sandbox(bounce_rate=1.0 if "bounce" not in address.lower() else 0.0, **FAST)
    tosend_send(sb, address)
    v1_send(sb, address)
    events = events_after(sb, 2 * len(expected))
    for provider in ("tosend", "v1"):
        got = [(e["type"], e["bounce_type"]) for e in events if e["provider"] == provider]
        assert got == expected, provider


def test_events_happen_after_the_delay(make_sandbox) -> None:
    now = [1_700_000_000.0]
    sb = make_sandbox(clock=lambda: now[0], event_delay_s=30.0)
    tosend_send(sb, "bounce@recipients.org")
    assert sb.events() == []
    now[0] += 30
    (event,) = sb.events()
    assert event["type"] == "bounced"
    assert event["created_at"] == "2023-11-14T22:13:50.000Z"


def test_the_event_store_is_bounded(make_sandbox) -> None:
    sb = make_sandbox(keep_events=3, event_delay_s=0.0)
    tosend_batch(sb, ADDRESSES[:5])
    assert [e["recipient"] for e in sb.events()] == ADDRESSES[2:5]
    stats = sb.stats()
    assert (stats["events_kept"], stats["events_forgotten"]) == (3, 2)


# ToSend webhooks -----------------------------------------------------------------------------


def test_tosend_posts_bounces_and_complaints_signed(make_sandbox, receiver) -> None:
    sb = make_sandbox(
        tosend_webhook_url=receiver.url + "/tosend", webhook_secret="whsec-test", **FAST
    )
    for n, address in enumerate(("bounce@r.org", "complaint@r.org", "ann@r.org")):
        tosend_send(sb, address, message_hash=f"m-{n}")
    wait_for(lambda: settled(sb))
    posts = receiver.posts
    assert {p["headers"]["X-ToSend-Event"] for p in posts} == {"bounced", "complaint"}
    for post in posts:
        expected = hmac.new(b"whsec-test", post["raw"], hashlib.sha256).hexdigest()
        assert post["headers"]["X-ToSend-Signature"] == f"sha256={expected}"
        datetime.fromisoformat(post["headers"]["X-ToSend-Timestamp"].replace("Z", "+00:00"))
    bounce = next(b for b in receiver.bodies() if b["type"] == "bounced")
    assert bounce["data"]["email"] == "bounce@r.org"
    assert bounce["data"]["message_id"] == "m-0"
    assert bounce["data"]["bounce_type"] == "Permanent" and bounce["data"]["is_hard_bounce"]
    complaint = next(b for b in receiver.bodies() if b["type"] == "complaint")
    assert complaint["data"]["email"] == "complaint@r.org"
    # the sandbox's own record agrees with what the receiver acknowledged
    posted = [e for e in sb.events() if e["webhook"] is not None]
    assert sorted(e["type"] for e in posted) == ["bounced", "complained"]
    assert all(e["webhook"]["acknowledged"] and e["webhook"]["attempts"] == 1 for e in posted)


@pytest.mark.parametrize(
    ("shape", "bounce_keys"),
    [
        ("current", {"type", "data", "created_at"}),
        ("flat", {"type", "email", "bounce_sub_type", "reason", "is_hard_bounce", "message_id"}),
        (
            "legacy",
            {
                "event",
                "email",
                "domain",
                "bounce_type",
                "bounce_subtype",
                "timestamp",
                "message_id",
            },
        ),
    ],
)
def test_tosend_bodies_in_each_documented_shape(make_sandbox, receiver, shape, bounce_keys) -> None:
    sb = make_sandbox(webhook_url=receiver.url, webhook_shape=shape, **FAST)
    tosend_send(sb, "softbounce@r.org")
    (body,) = wait_for(receiver.bodies)
    assert set(body) == bounce_keys
    assert "X-ToSend-Signature" not in receiver.posts[0]["headers"]  # no secret, no signature
    if shape == "legacy":
        assert (body["event"], body["bounce_type"], body["domain"]) == (
            "bounced",
            "Transient",
            "example.com",
        )
    if shape == "flat":
        assert (body["type"], body["is_hard_bounce"]) == ("bounce", False)


def test_unacknowledged_posts_are_retried_with_the_same_body(make_sandbox, receiver) -> None:
    receiver.answers = [500, 503]
    sb = make_sandbox(webhook_url=receiver.url, **FAST)
    tosend_send(sb, "bounce@r.org")
    wait_for(lambda: settled(sb))
    assert len(receiver.posts) == 3
    assert len({p["raw"] for p in receiver.posts}) == 1
    (event,) = sb.events()
    assert event["webhook"] == {
        "url": receiver.url,
        "attempts": 3,
        "acknowledged": True,
        "deliveries_sent": 1,
        "pending": False,
    }
    assert sb.stats()["webhooks"] == {
        "posts": 3,
        "acknowledged": 1,
        "failed": 2,
        "duplicates": 0,
        "abandoned": 0,
        "pending": 0,
    }


def test_the_retries_are_bounded(make_sandbox, receiver) -> None:
    receiver.answers = [500] * 10
    closed = Receiver()
    closed.close()  # a port nobody listens on: connection refused
    sb = make_sandbox(
        tosend_webhook_url=receiver.url, v1_webhook_url=closed.url, webhook_max_attempts=3, **FAST
    )
    tosend_send(sb, "bounce@r.org")
    v1_send(sb, "bounce@r.org")
    wait_for(lambda: settled(sb))
    assert len(receiver.posts) == 3
    for event in sb.events():
        assert event["webhook"]["attempts"] == 3
        assert not event["webhook"]["acknowledged"] and not event["webhook"]["pending"]
    assert sb.stats()["webhooks"]["abandoned"] == 2


def test_some_events_are_delivered_twice_on_purpose(make_sandbox, receiver) -> None:
    sb = make_sandbox(webhook_url=receiver.url, webhook_dup_rate=0.5, seed=3, **FAST)
    addresses = [f"bounce+{n}@r.org" for n in range(40)]
    tosend_batch(sb, addresses)
    wait_for(lambda: settled(sb))
    twice = {e["recipient"] for e in sb.events() if e["webhook"]["deliveries_sent"] == 2}
    assert 5 < len(twice) < 35
    got: dict[str, int] = {}
    for body in receiver.bodies():
        got[body["data"]["email"]] = got.get(body["data"]["email"], 0) + 1
    assert {a for a, n in got.items() if n == 2} == twice
    assert set(got) == set(addresses)
    assert sb.stats()["webhooks"]["duplicates"] == len(twice)
    # the same seed picks the same events to repeat
    again = make_sandbox(webhook_url=receiver.url, webhook_dup_rate=0.5, seed=3, **FAST)
    tosend_batch(again, addresses)
    wait_for(lambda: settled(again))
    assert {e["recipient"] for e in again.events() if e["webhook"]["deliveries_sent"] == 2} == (
        twice
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.10/hooks",
        "https://example.com/hooks",
        "http://10.0.0.1:8080/",
        "ftp://127.0.0.1/x",
        "not a url",
    ],
)
def test_a_webhook_url_off_this_machine_is_refused(make_sandbox, url) -> None:
    with pytest.raises(ValueError, match="webhook_url"):
        Sandbox(webhook_url=url)
    sb = make_sandbox()
    r = httpx.post(sb.base_url + "/_sandbox/config", json={"v1_webhook_url": url})
    assert r.status_code == 400
    assert "v1_webhook_url" in r.json()["message"]
    assert sb.config.v1_webhook_url is None


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://127.8.9.10/", "http://[::1]:9/", "http://localhost:9/"]
)
def test_loopback_webhook_urls_are_accepted(url) -> None:
    assert Sandbox(webhook_url=url).config.webhook_url == url


# v1 webhooks and Events API -------------------------------------------------------------------


def test_v1_posts_every_delivery_event_with_the_metadata(make_sandbox, receiver) -> None:
    sb = make_sandbox(
        v1_webhook_url=receiver.url + "/v1/secret-token", open_rate=1.0, click_rate=1.0, **FAST
    )
    sent = v1_send(sb, "ann@r.org", row="row-9")
    v1_send(sb, "bounce@r.org", row="row-10")
    wait_for(lambda: settled(sb) and len(receiver.posts) == 4)
    bodies = receiver.bodies("/v1/secret-token")
    by_type = {b["type"]: b for b in bodies}
    assert set(by_type) == {"email.delivered", "email.opened", "email.clicked", "email.bounced"}
    clicked = by_type["email.clicked"]
    assert set(clicked) == {"id", "type", "created_at", "data"}
    assert clicked["data"] == {
        "email_id": sent["email_id"],
        "message_id": sent["message_id"],
        "to": "ann@r.org",
        "tag": "spring",
        "metadata": {"batchsend_id": "row-9"},
        "headers": {"X-Campaign": "spring"},
        "bounce": None,
        "url": "https://example.com/a",
    }
    bounce = by_type["email.bounced"]["data"]
    assert bounce["metadata"] == {"batchsend_id": "row-10"}
    assert bounce["bounce"]["type"] == "hard" and bounce["bounce"]["reason"]
    record = {(e["batchsend_id"], e["type"]) for e in sb.events()}
    assert record == {
        ("row-9", "delivered"),
        ("row-9", "opened"),
        ("row-9", "clicked"),
        ("row-10", "bounced"),
    }
    ids = {e["id"] for e in sb.events()}
    assert {b["id"] for b in bodies} == ids  # a receiver can match them by id


def test_v1_events_api_serves_the_delivery_events(make_sandbox) -> None:
    sb = make_sandbox(**FAST)
    ok = v1_send(sb, "ann@r.org", row="a")
    bad = v1_send(sb, "softbounce@r.org", row="b")
    events_after(sb, 2)

    def events(path: str = "/api/v1/events", **params: Any) -> list[dict[str, Any]]:
        r = httpx.get(sb.base_url + path, headers=SENDING, params=params)
        assert r.status_code == 200, r.text
        return r.json()["events"]

    types = [(e["event_data"]["metadata"]["batchsend_id"], e["event_type"]) for e in events()]
    assert sorted(types) == sorted(
        [
            *[("a", "queued"), ("a", "sent"), ("a", "delivered")],
            *[("b", "queued"), ("b", "sent"), ("b", "bounced")],
        ]
    )
    (bounce,) = events(type="email.bounced")
    assert bounce["email_id"] == bad["email_id"]
    assert bounce["recipient"] == "softbounce@r.org"
    assert bounce["event_data"]["bounce"]["type"] == "soft"
    assert [e["event_type"] for e in events(f"/api/v1/emails/{ok['email_id']}/events")] == [
        "queued",
        "sent",
        "delivered",
    ]
    assert [e["event_type"] for e in events(recipient="ANN@r.org", type="delivered")] == [
        "delivered"
    ]


# suppressions and lookups ---------------------------------------------------------------------


def test_tosend_lists_hard_bounces_and_complaints_as_suppressed(make_sandbox) -> None:
    sb = make_sandbox(**FAST)
    for n, address in enumerate(
        ("bounce@r.org", "softbounce@r.org", "complaint@r.org", "ann@r.org")
    ):
        tosend_send(sb, address, message_hash=f"m-{n}")

    def listed(**params: Any) -> dict[str, Any]:
        r = httpx.get(sb.base_url + "/v2/suppressions", headers=ADMIN, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    everything = listed()
    assert {(s["email"], s["status"]) for s in everything["data"]} == {
        ("bounce@r.org", "bounced"),
        ("complaint@r.org", "complained"),
    }
    assert (everything["total"], everything["page"], everything["per_page"]) == (2, 1, 20)
    assert [s["email"] for s in listed(status="bounced")["data"]] == ["bounce@r.org"]
    assert [s["email"] for s in listed(search="COMPLAINT")["data"]] == ["complaint@r.org"]
    bounced = listed(status="bounced")["data"][0]
    assert (bounced["bounce_type"], bounced["message_id"]) == ("General", "m-0")
    r = httpx.get(sb.base_url + "/v2/suppressions", headers=SENDING)
    assert r.status_code == 403 and r.json()["errors"]["code"] == "insufficient_scope"
    r = httpx.get(sb.base_url + "/v2/suppressions", headers=ADMIN, params={"status": "x"})
    assert r.status_code == 422
    # the delivery log shows each message's fate
    status = {
        m: httpx.get(f"{sb.base_url}/v2/emails/{m}", headers=ADMIN).json()["data"]["status"]
        for m in ("m-0", "m-1", "m-2", "m-3")
    }
    assert status == {"m-0": "bounced", "m-1": "bounced", "m-2": "complaint", "m-3": "sent"}
    r = httpx.get(sb.base_url + "/v2/emails", headers=ADMIN, params={"status": "bounced"})
    assert sorted(e["message_id"] for e in r.json()["data"]) == ["m-0", "m-1"]


def test_v1_lists_suppressions(make_sandbox) -> None:
    sb = make_sandbox(**FAST)
    hard = v1_send(sb, "bounce@r.org")
    v1_send(sb, "softbounce@r.org")
    v1_send(sb, "complaint@r.org")
    events_after(sb, 4)
    r = httpx.get(sb.base_url + "/api/customer/suppressions", headers=V1_AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {(s["email"], s["type"]) for s in body["suppressions"]} == {
        ("bounce@r.org", "bounce"),
        ("complaint@r.org", "complaint"),
    }
    assert body["pagination"] == {"page": 1, "limit": 50, "total": 2, "pages": 1}
    r = httpx.get(
        sb.base_url + "/api/customer/suppressions", headers=V1_AUTH, params={"type": "bounce"}
    )
    (only,) = r.json()["suppressions"]
    assert only["email_id"] == hard["email_id"]
    r = httpx.get(sb.base_url + "/api/customer/suppressions", headers={"X-API-Key": "nope"})
    assert r.status_code == 403


def test_the_sandbox_stops_with_posts_outstanding(make_sandbox, receiver) -> None:
    receiver.answers = [500] * 100
    sb = make_sandbox(webhook_url=receiver.url, webhook_backoff_s=30.0, event_delay_s=0.0)
    tosend_send(sb, "bounce@r.org")
    wait_for(lambda: receiver.posts)
    started = time.monotonic()
    sb.stop()
    assert time.monotonic() - started < 2
    (event,) = sb.events()
    assert event["webhook"]["pending"] and event["webhook"]["attempts"] == 1


def test_tosend_info_counts_the_outcomes(make_sandbox) -> None:
    sb = make_sandbox(**FAST)
    for n, address in enumerate(("bounce@r.org", "complaint@r.org", "a@r.org", "b@r.org")):
        tosend_send(sb, address, message_hash=f"m-{n}")
    info = httpx.get(sb.base_url + "/v2/info", headers=SENDING).json()
    (domain,) = info["domains"]
    assert (domain["total_delivered"], domain["total_bounced"], domain["total_complained"]) == (
        3,
        1,
        1,
    )
    assert info["account"]["bounce_rate"] == 0.25
    assert info["account"]["complaint_rate"] == round(1 / 3, 4)


def test_outcomes_and_webhooks_can_be_set_live(sandbox, receiver) -> None:
    tosend_send(sandbox, "ann@r.org", message_hash="before")  # no URL yet: never posted
    changes = {"bounce_rate": 1.0, "webhook_url": receiver.url, "webhook_secret": "s", **FAST}
    r = httpx.post(sandbox.base_url + "/_sandbox/config", json=changes)
    assert r.status_code == 200, r.text
    assert r.json()["webhook_secret"] is True  # shown as set, never the value
    tosend_send(sandbox, "ann@r.org", message_hash="after")
    wait_for(lambda: settled(sandbox) and receiver.posts)
    assert [b["data"]["message_id"] for b in receiver.bodies()] == ["after"]
    assert httpx.get(sandbox.base_url + "/_sandbox/config").json()["webhook_secret"] is True


def test_tosend_blocks_a_suppressed_address_as_spam(make_sandbox) -> None:
    sb = make_sandbox(credits=10, **FAST)
    tosend_send(sb, "bounce@r.org", message_hash="first")
    tosend_send(sb, "softbounce@r.org", message_hash="soft")  # soft: not suppressed
    events_after(sb, 2)
    again = {
        "from": {"email": "news@example.com"},
        "to": [{"email": "BOUNCE@r.org"}],
        "subject": "Hi",
        "text": "Hi",
    }
    r = httpx.post(sb.base_url + "/v2/emails", json=again, headers=SENDING)
    assert r.status_code == 403 and "spam" in r.json()["errors"]["to"]
    r = httpx.post(sb.base_url + "/v2/emails/batch", json={"emails": [again]}, headers=SENDING)
    assert r.json()["results"][0]["status"] == "spam"
    tosend_send(sb, "softbounce@r.org", message_hash="soft-again")
    with_cc = {**again, "cc": [{"email": "ann@r.org"}]}
    r = httpx.post(sb.base_url + "/v2/emails", json=with_cc, headers=SENDING)
    assert r.status_code == 200
    assert sb.messages()[-1]["to"] == [] and sb.messages()[-1]["cc"] == ["ann@r.org"]
    stats = sb.stats()
    assert stats["suppressed_dropped"] == 3
    assert stats["credits"] == 10 - 4  # first, soft, soft-again, ann


def test_the_official_sdk_reads_the_suppression_list(make_sandbox) -> None:
    sb = make_sandbox(**FAST)
    tosend_send(sb, "complaint@r.org")
    events_after(sb, 2)
    page = ToSendAdmin("tsend_admin_test", base_url=sb.base_url).list_suppressions(
        status="complained", search="complaint"
    )
    assert [(s["email"], s["status"]) for s in page["data"]] == [("complaint@r.org", "complained")]
    assert page["total"] == 1
