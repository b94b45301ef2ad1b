"""What a sender can ask afterwards: ToSend's admin email lookups and v1's Events API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.clock import FakeClock
from tosend import ToSendAdmin, ToSendError

T0 = 1_700_000_000.0
ADMIN_KEY = "tsend_admin_test"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SENDING = {"Authorization": "Bearer sk-test"}
EMAIL: dict[str, Any] = {
    "from": {"email": "news@example.com"},
    "to": [{"email": "ann@recipients.org"}],
    "subject": "Hello",
    "text": "Hi",
}
V1: dict[str, Any] = {
    "to": "ann@recipients.org",
    "subject": "Hello",
    "text": "Hi",
    "tag": "spring",
    "metadata": {"batchsend_id": "row-1", "campaign": "spring"},
}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def post(client, sb, body, path="/v2/emails", headers=SENDING):
    return client.post(sb.base_url + path, json=body, headers=headers)


def get(client, sb, path, headers=ADMIN, **params):
    return client.get(sb.base_url + path, headers=headers, params=params)


# ToSend admin API ---------------------------------------------------------------------------


def test_get_email_by_the_message_id_the_send_returned(client, make_sandbox) -> None:
    sb = make_sandbox(clock=FakeClock(T0))
    body = {**EMAIL, "cc": [{"email": "c@recipients.org"}], "message_hash": "bs-1"}
    assert post(client, sb, body).json() == {"message_id": "bs-1"}
    r = get(client, sb, "/v2/emails/bs-1")
    assert r.status_code == 200
    assert r.json() == {
        "data": {
            "message_id": "bs-1",
            "status": "sent",
            "from": "news@example.com",
            "to": ["ann@recipients.org"],
            "cc": ["c@recipients.org"],
            "bcc": [],
            "subject": "Hello",
            "domain": "example.com",
            "attachments": [],
            "created_at": "2023-11-14T22:13:20.000Z",
        }
    }


def test_unknown_message_is_404(client, sandbox) -> None:
    r = get(client, sandbox, "/v2/emails/nope")
    assert r.status_code == 404
    assert r.json() == {
        "status_code": 404,
        "message": "Email not found.",
        "errors": {"code": "not_found"},
    }


def test_lookups_find_messages_forgotten_from_memory(client, make_sandbox) -> None:
    sb = make_sandbox(keep_messages=1)
    ids = [
        post(client, sb, {**EMAIL, "message_hash": f"m{i}"}).json()["message_id"] for i in range(4)
    ]
    assert [m["message_id"] for m in sb.messages()] == ["m3"]
    assert sb.stats()["messages_forgotten"] == 3 and sb.stats()["messages_indexed"] == 4
    for message_id in ids:
        data = get(client, sb, f"/v2/emails/{message_id}").json()["data"]
        assert (data["message_id"], data["to"], data["subject"]) == (
            message_id,
            ["ann@recipients.org"],
            "Hello",
        )
    assert get(client, sb, "/v2/emails").json()["total"] == 4


def test_batch_messages_are_found_and_spam_is_not(client, sandbox) -> None:
    emails = [{**EMAIL, "message_hash": "b0"}, {**EMAIL, "to": [{"email": "x@mailinator.com"}]}]
    assert post(client, sandbox, {"emails": emails}, path="/v2/emails/batch").status_code == 207
    assert get(client, sandbox, "/v2/emails/b0").status_code == 200
    assert get(client, sandbox, "/v2/emails").json()["total"] == 1


def test_list_is_newest_first_filtered_and_paged(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(domains=("example.com", "b.test"), clock=clock)
    for i in range(5):
        sender = "news@example.com" if i % 2 == 0 else "hi@b.test"
        post(
            client,
            sb,
            {**EMAIL, "from": {"email": sender}, "subject": f"s{i}", "message_hash": f"m{i}"},
        )
        clock.t += 86400
    page = get(client, sb, "/v2/emails", per_page=2).json()
    assert [e["message_id"] for e in page["data"]] == ["m4", "m3"]
    assert (page["total"], page["page"], page["per_page"]) == (5, 1, 2)
    last = get(client, sb, "/v2/emails", per_page=2, page=3).json()
    assert [e["message_id"] for e in last["data"]] == ["m0"]

    def ids(**params: Any) -> list[str]:
        r = get(client, sb, "/v2/emails", **params)
        assert r.status_code == 200, r.text
        return [e["message_id"] for e in r.json()["data"]]

    assert ids(domain="b.test") == ["m3", "m1"]
    assert ids(domain="2") == ["m3", "m1"]  # a domain id, as /v2/info numbers them
    assert ids(search="S2") == ["m2"]
    assert ids(search="hi@b.test") == ["m3", "m1"]
    assert ids(status="sent") == ["m4", "m3", "m2", "m1", "m0"]
    assert ids(status="bounced") == []
    assert ids(**{"from": "2023-11-15", "to": "2023-11-16"}) == ["m2", "m1"]
    assert ids(**{"from": "2023-11-16T00:00:00Z"}) == ["m4", "m3", "m2"]
    assert get(client, sb, "/v2/emails", per_page=101).status_code == 422
    assert get(client, sb, "/v2/emails", **{"from": "yesterday"}).status_code == 422


def test_list_does_not_show_v1_messages(client, sandbox) -> None:
    post(client, sandbox, V1, path="/api/v1/send", headers={"X-API-Key": "sk-test"})
    assert get(client, sandbox, "/v2/emails").json()["total"] == 0


@pytest.mark.parametrize("path", ["/v2/emails", "/v2/emails/m1"])
def test_a_sending_key_cannot_use_the_admin_api(client, sandbox, path) -> None:
    r = get(client, sandbox, path, headers=SENDING)
    assert r.status_code == 403
    assert r.json() == {
        "status_code": 403,
        "message": "This API key does not have the required scope: emails:read.",
        "errors": {"code": "insufficient_scope", "required_scope": "emails:read"},
    }
    assert get(client, sandbox, path, headers={}).status_code == 401
    wrong = get(client, sandbox, path, headers={"Authorization": "Bearer tsend_admin_nope"})
    assert wrong.status_code == 403 and wrong.json()["error_type"] == "forbidden"


@pytest.mark.parametrize("path", ["/v2/emails", "/v2/emails/batch"])
def test_an_admin_key_sends_only_with_emails_send(client, make_sandbox, path) -> None:
    sb = make_sandbox(
        admin_keys=("tsend_admin_read", "tsend_admin_send"),
        admin_scopes={"tsend_admin_send": ["emails:send", "emails:read"]},
    )
    body = {"emails": [EMAIL]} if path.endswith("batch") else EMAIL
    r = post(client, sb, body, path=path, headers={"Authorization": "Bearer tsend_admin_read"})
    assert r.status_code == 403
    assert r.json()["errors"] == {"code": "insufficient_scope", "required_scope": "emails:send"}
    assert sb.messages() == []
    ok = post(client, sb, body, path=path, headers={"Authorization": "Bearer tsend_admin_send"})
    assert ok.status_code == 200 and len(sb.messages()) == 1


def test_an_admin_key_without_emails_read_is_refused(client, make_sandbox) -> None:
    sb = make_sandbox(admin_keys=("tsend_admin_x",), admin_scopes={"tsend_admin_x": []})
    r = get(client, sb, "/v2/emails", headers={"Authorization": "Bearer tsend_admin_x"})
    assert r.status_code == 403 and r.json()["errors"]["code"] == "insufficient_scope"


def test_the_official_admin_sdk_reads_the_log(client, sandbox) -> None:
    post(client, sandbox, {**EMAIL, "message_hash": "sdk-1"})
    admin = ToSendAdmin(ADMIN_KEY, base_url=sandbox.base_url, timeout=5)
    assert admin.get_email("sdk-1")["to"] == ["ann@recipients.org"]
    page = admin.list_emails(per_page=10, search="sdk")
    assert (page["total"], page["page"], page["per_page"]) == (1, 1, 10)
    with pytest.raises(ToSendError) as caught:
        admin.get_email("missing")
    assert caught.value.status_code == 404
    with pytest.raises(ToSendError) as caught:
        ToSendAdmin("tsend_admin_nope", base_url=sandbox.base_url).list_emails()
    assert caught.value.status_code == 403


# v1 Events API --------------------------------------------------------------------------------


def v1_send(client, sb, **changes: Any) -> dict[str, Any]:
    r = post(client, sb, {**V1, **changes}, path="/api/v1/send", headers={"X-API-Key": "sk-test"})
    assert r.status_code == 200, r.text
    return r.json()


def test_every_accepted_message_has_queued_and_sent_events(client, make_sandbox) -> None:
    sb = make_sandbox(clock=FakeClock(T0))
    sent = v1_send(client, sb)
    r = get(client, sb, "/api/v1/events", headers=SENDING)
    assert r.status_code == 200
    body = r.json()
    data = {
        "message_id": sent["message_id"],
        "tag": "spring",
        "metadata": {"batchsend_id": "row-1", "campaign": "spring"},
        "subject": "Hello",
    }
    common = {
        "email_id": sent["email_id"],
        "customer_id": 1,
        "recipient": "ann@recipients.org",
        "from": "noreply@example.com",
        "event_data": data,
    }
    assert body == {
        "events": [
            {
                "id": 1,
                **common,
                "event_type": "queued",
                "status": "queued",
                "timestamp": "2023-11-14T22:13:20.000Z",
                "created_at": "2023-11-14T22:13:20.000Z",
            },
            {
                "id": 2,
                **common,
                "event_type": "sent",
                "status": "sent",
                "timestamp": "2023-11-14T22:13:20.001Z",
                "created_at": "2023-11-14T22:13:20.001Z",
            },
        ],
        "pagination": {"page": 1, "limit": 50, "total": 2, "pages": 1},
    }
    one = get(client, sb, f"/api/v1/emails/{sent['email_id']}/events", headers=SENDING).json()
    assert one == body


def test_events_filters_and_pages(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(clock=clock)
    first = v1_send(client, sb, metadata={"batchsend_id": "a"})
    clock.t += 60
    second = v1_send(client, sb, to="bob@recipients.org", metadata={"batchsend_id": "b"})

    def events(**params: Any) -> list[tuple[str, str]]:
        r = get(client, sb, "/api/v1/events", headers=SENDING, **params)
        assert r.status_code == 200, r.text
        return [
            (e["event_data"]["metadata"]["batchsend_id"], e["event_type"])
            for e in r.json()["events"]
        ]

    assert events(email_id=second["email_id"]) == [("b", "queued"), ("b", "sent")]
    # a's delivery came event_delay_s after it; b's has not happened yet on this clock
    assert events(email_id=first["email_id"]) == [
        ("a", "queued"),
        ("a", "sent"),
        ("a", "delivered"),
    ]
    assert events(type="sent") == [("a", "sent"), ("b", "sent")]
    assert events(type="email.sent", recipient="BOB@recipients.org") == [("b", "sent")]
    assert events(from_timestamp=str(T0 + 30)) == [("b", "queued"), ("b", "sent")]
    assert events(to_timestamp="2023-11-14T22:13:20.000Z") == [("a", "queued")]
    assert events(limit=3, page=2) == [("b", "queued"), ("b", "sent")]
    page = get(client, sb, "/api/v1/events", headers=SENDING, limit=3).json()["pagination"]
    assert page == {"page": 1, "limit": 3, "total": 5, "pages": 2}
    assert events(email_id="no-such") == []
    assert first["email_id"] != second["email_id"]
    for bad in ({"type": "nope"}, {"limit": 0}, {"page": "x"}, {"from_timestamp": "soon"}):
        r = get(client, sb, "/api/v1/events", headers=SENDING, **bad)
        assert r.status_code == 400 and r.json()["error"] == "validation_error"


def test_events_outlive_the_messages_memory(client, make_sandbox) -> None:
    sb = make_sandbox(keep_messages=0)
    sent = v1_send(client, sb)
    assert sb.messages() == []
    (queued, *_later) = get(
        client, sb, f"/api/v1/emails/{sent['email_id']}/events", headers=SENDING
    ).json()["events"]
    assert queued["event_data"]["metadata"]["batchsend_id"] == "row-1"
    assert queued["event_data"]["tag"] == "spring"


def test_events_of_an_unknown_email_is_404(client, sandbox) -> None:
    r = get(client, sandbox, "/api/v1/emails/nope/events", headers=SENDING)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_events_need_a_bearer_key(client, sandbox) -> None:
    assert (
        get(client, sandbox, "/api/v1/events", headers={"X-API-Key": "sk-test"}).status_code == 403
    )
    r = get(client, sandbox, "/api/v1/events", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["reason"] == "invalid_api_key"


def test_events_api_can_be_off(client, make_sandbox) -> None:
    sb = make_sandbox(events_api=False)
    v1_send(client, sb)
    for path in ("/api/v1/events", "/api/v1/emails/x/events"):
        r = get(client, sb, path, headers=SENDING)
        assert r.status_code == 403
        assert r.json() == {
            "error": "event_api_disabled",
            "message": "The Events API is not enabled for this account.",
            "reason": "event_api_disabled",
        }
    sb.configure(events_api=True)
    r = get(client, sb, "/api/v1/events", headers=SENDING, type="queued")
    assert r.json()["pagination"]["total"] == 1
