"""v1 ("Send a single email", seed 000) as the sandbox serves it, over real HTTP."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from batchsend.sandbox import Sandbox

KEY = {"X-API-Key": "sk-test"}
MB = 1024 * 1024
EMAIL: dict[str, Any] = {
    "to": "user@recipients.org",
    "subject": "Welcome to our platform!",
    "html": "<p>Welcome!</p>",
    "text": "Welcome! Thanks for signing up.",
}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def send(client: httpx.Client, sb: Sandbox, body: Any, headers: dict | None = None):
    return client.post(
        f"{sb.base_url}/api/v1/send", json=body, headers=KEY if headers is None else headers
    )


def email(**changes: Any) -> dict[str, Any]:
    out = dict(EMAIL)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def b64(n: int) -> str:
    return base64.b64encode(bytes(n)).decode()


def test_accepted_response_has_the_documented_shape(client, sandbox) -> None:
    r = send(client, sandbox, EMAIL)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"to", "submitted_at", "message_id", "email_id", "status", "message"}
    assert body["to"] == "user@recipients.org"
    assert body["status"] == "queued"
    assert str(uuid.UUID(body["email_id"])) == body["email_id"]
    assert body["message_id"] == f"<{body['email_id']}@example.com>"
    assert datetime.fromisoformat(body["submitted_at"]).tzinfo is not None
    (entry,) = sandbox.messages()
    assert entry["provider"] == "v1"
    assert entry["endpoint"] == "/api/v1/send"
    assert (entry["message_id"], entry["email_id"]) == (body["message_id"], body["email_id"])
    assert entry["to"] == ["user@recipients.org"]
    assert entry["body"] == EMAIL


@pytest.mark.parametrize("headers", [{"X-API-Key": "sk-test"}, {"Authorization": "Bearer sk-test"}])
def test_both_auth_headers_are_accepted(client, sandbox, headers) -> None:
    assert send(client, sandbox, EMAIL, headers).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_api_key"),
        ({"X-API-Key": ""}, "missing_api_key"),
        ({"X-API-Key": "sk-wrong"}, "invalid_api_key"),
        ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
    ],
)
def test_bad_or_missing_key_is_403_with_reason(client, sandbox, headers, reason) -> None:
    r = send(client, sandbox, EMAIL, headers)
    assert r.status_code == 403
    body = r.json()
    assert set(body) == {"error", "message", "reason"}
    assert body["reason"] == reason
    assert "sk-wrong" not in r.text


def test_domain_is_auto_selected_as_the_first_verified(client, make_sandbox) -> None:
    sb = make_sandbox(domains=("mail.first.com", "second.com"), pending_domains=("p.com",))
    body = send(client, sb, EMAIL).json()
    assert body["message_id"].endswith("@mail.first.com>")
    explicit = send(client, sb, email(domain="second.com")).json()
    assert explicit["message_id"].endswith("@second.com>")


def test_unknown_domain_is_404(client, sandbox) -> None:
    r = send(client, sandbox, email(domain="nowhere.org"))
    assert r.status_code == 404
    assert set(r.json()) == {"error", "message"}
    assert "nowhere.org" in r.json()["message"]


def test_pending_domain_is_403_not_verified(client, make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("news.example.com",))
    r = send(client, sb, email(domain="news.example.com"))
    assert r.status_code == 403
    assert r.json()["reason"] == "domain_not_verified"


def test_no_verified_domain_at_all_is_403(client, make_sandbox) -> None:
    sb = make_sandbox(domains=(), pending_domains=("p.com",))
    r = send(client, sb, EMAIL)
    assert r.status_code == 403
    assert r.json()["reason"] == "domain_not_verified"


def test_domain_not_allowed_for_key(client, make_sandbox) -> None:
    sb = make_sandbox(domains=("example.com", "b.com"), key_domains={"sk-test": ("b.com",)})
    r = send(client, sb, EMAIL)  # auto-selects example.com, which the key may not use
    assert r.status_code == 403
    assert r.json()["reason"] == "domain_not_allowed"
    assert send(client, sb, email(domain="b.com")).status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"to": None},
        {"to": ["a@b.org"]},
        {"to": "a@b.org, c@d.org"},
        {"to": "not-an-address"},
        {"subject": None},
        {"subject": ""},
        {"html": None, "text": None},
        {"html": 3},
        {"cc": "a@b.org"},
        {"bcc": ["nope"]},
        {"reply_to": "nope"},
        {"from": "hello@other.org"},
        {"from": "nope"},
        {"track_opens": "yes"},
        {"headers": {"X-A": 1}},
        {"metadata": "x"},
        {"tag": 1},
        {"stream_type": "bulk"},
        {"attachments": [{"filename": "a.pdf", "content": "aGk="}]},
        {"attachments": [{"filename": "a", "content": "a", "contentType": "text/plain"}]},
        {
            "attachments": [
                {"filename": "a", "content": "aGk=", "contentType": "t/p", "encoding": "7bit"}
            ]
        },
    ],
)
def test_validation_errors_are_400(client, sandbox, changes) -> None:
    r = send(client, sandbox, email(**changes))
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "validation_error" and body["message"]
    assert sandbox.messages() == []


@pytest.mark.parametrize(
    "changes",
    [
        {"html": None},
        {"text": None},
        {"from": "hello@example.com"},
        {"from": "hello@mail.example.com"},
        {"cc": ["m@recipients.org"], "bcc": ["a@example.com"], "reply_to": "s@example.com"},
        {"stream_type": "transactional"},
        {"stream_type": "broadcast"},
        {"stream_type": "shared"},
        {"track_opens": True, "track_clicks": False, "tag": "welcome"},
        {"headers": {"X-Order-ID": "1"}, "metadata": {"user_id": 12345, "nested": {"a": 1}}},
        {"icalEvent": "BEGIN:VCALENDAR\nEND:VCALENDAR\n"},
    ],
)
def test_optional_fields_accepted(client, sandbox, changes) -> None:
    r = send(client, sandbox, email(**changes))
    assert r.status_code == 200, r.text
    assert sandbox.messages()[0]["body"] == email(**changes)


def test_malformed_json_is_400_bad_request(client, sandbox) -> None:
    r = client.post(f"{sandbox.base_url}/api/v1/send", content=b"{oops", headers=KEY)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"


def test_attachment_per_file_limit_is_10_mb_decoded(client, sandbox) -> None:
    att = {"filename": "a.bin", "content": b64(10 * MB), "contentType": "application/pdf"}
    assert send(client, sandbox, email(attachments=[att])).status_code == 200
    assert sandbox.messages()[0]["body"]["attachments"] == [
        {"filename": "a.bin", "contentType": "application/pdf", "content_bytes": 10 * MB}
    ]
    att["content"] = b64(10 * MB + 1)
    r = send(client, sandbox, email(attachments=[att]))
    assert r.status_code == 400
    assert "10 MB" in r.json()["message"]


def test_total_limit_is_25_mb_including_html(client, sandbox) -> None:
    files = [
        {"filename": f"{i}.bin", "content": b64(8 * MB), "contentType": "x/y"} for i in range(3)
    ]
    html = "x" * (MB - 10)
    assert send(client, sandbox, email(attachments=files, html=html)).status_code == 200
    r = send(client, sandbox, email(attachments=files, html="x" * (MB + 1)))
    assert r.status_code == 400
    assert "25 MB" in r.json()["message"]


def test_credits_count_each_recipient(client, make_sandbox) -> None:
    sb = make_sandbox(credits=3)
    assert send(client, sb, email(cc=["c@recipients.org"])).status_code == 200
    assert send(client, sb, email(bcc=["b@r.org", "c@r.org"])).status_code == 403
    r = send(client, sb, EMAIL)
    assert r.status_code == 200
    r = send(client, sb, EMAIL)
    assert r.status_code == 403
    assert r.json()["reason"] == "insufficient_balance"
    assert sb.stats()["credits"] == 0


def test_v1_message_ids_are_unique(client, sandbox) -> None:
    ids = {send(client, sandbox, EMAIL).json()["email_id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)


@pytest.mark.parametrize(("content", "ok"), [("!!!", False), ("a b!c=", False), ("aG\nk=", True)])
def test_attachment_content_must_be_base64(client, sandbox, content, ok) -> None:
    """Characters outside the alphabet are an error, not silently skipped; line breaks pass."""
    att = {"filename": "a.txt", "content": content, "contentType": "text/plain"}
    r = send(client, sandbox, email(attachments=[att]))
    assert r.status_code == (200 if ok else 400)
    if not ok:
        assert r.json() == {
            "error": "validation_error",
            "message": "Attachment 'a.txt': content is not valid base64.",
        }


# the message as delivered ---------------------------------------------------------------------

ICS = "BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nUID:m-1\nEND:VEVENT\nEND:VCALENDAR\n"


def test_messages_show_the_effective_sender_and_auto_picked_domain(client, make_sandbox) -> None:
    sb = make_sandbox(domains=("mail.acme.test", "other.test"))
    send(client, sb, EMAIL)  # neither from nor domain: noreply@ the first verified domain
    send(client, sb, email(domain="other.test"))
    send(client, sb, email(domain="other.test", **{"from": "hello@other.test"}))
    shown = [(m["delivered_from"], m["sending_domain"]) for m in sb.messages()]
    assert shown == [
        ("noreply@mail.acme.test", "mail.acme.test"),
        ("noreply@other.test", "other.test"),
        ("hello@other.test", "other.test"),
    ]
    assert "from" not in sb.messages()[0]["body"]  # the request itself is shown as sent


def test_a_calendar_invite_travels_as_invite_ics(client, sandbox) -> None:
    att = {"filename": "agenda.pdf", "content": b64(3), "contentType": "application/pdf"}
    send(client, sandbox, email(icalEvent=ICS, attachments=[att]))
    send(client, sandbox, EMAIL)
    with_invite, plain = sandbox.messages()
    assert with_invite["delivered_attachments"] == ["agenda.pdf", "invite.ics"]
    assert with_invite["calendar_invite"] is True
    assert (plain["delivered_attachments"], plain["calendar_invite"]) == ([], False)
    assert with_invite["body"]["icalEvent"] == ICS
