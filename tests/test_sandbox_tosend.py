"""ToSend's contract as the sandbox serves it, over real HTTP: every rule and error body.

The expected bodies of the seed's examples are written out here from
shared/seeds/003_*.txt, not imported from the sandbox, so a drift fails.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batchsend.sandbox import Sandbox

AUTH = {"Authorization": "Bearer sk-test"}
EMAIL: dict[str, Any] = {
    "from": {"name": "Acme Inc", "email": "hello@example.com"},
    "to": [{"email": "jane@recipients.org"}, {"name": "John Doe", "email": "john@recipients.org"}],
    "subject": "Welcome to Acme!",
    "html": "<h1>Welcome!</h1><p>Thanks for signing up.</p>",
    "text": "Welcome! Thanks for signing up.",
}
TOO_MANY = "Maximum 50 recipient email addresses are allowed."


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def send(client: httpx.Client, sb: Sandbox, body: Any, headers: dict | None = None):
    return client.post(
        f"{sb.base_url}/v2/emails", json=body, headers=AUTH if headers is None else headers
    )


def email(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EMAIL)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def rcpts(n: int, domain: str = "recipients.org") -> list[dict[str, str]]:
    return [{"email": f"r{i}@{domain}"} for i in range(n)]


def test_seed_example_is_accepted(client, sandbox) -> None:
    r = send(client, sandbox, EMAIL)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    (message_id,) = r.json().values()
    assert r.json() == {"message_id": message_id} and message_id
    (entry,) = sandbox.messages()
    assert entry["to"] == ["jane@recipients.org", "john@recipients.org"]
    assert entry["cc"] == [] and entry["bcc"] == []
    assert entry["endpoint"] == "/v2/emails"
    assert entry["idempotency_key"] is None
    assert entry["body"] == EMAIL


def test_missing_key_is_401_as_in_the_seed(client, sandbox) -> None:
    r = send(client, sandbox, EMAIL, headers={})
    assert r.status_code == 401
    assert r.json() == {
        "status_code": 401,
        "error_type": "unauthorized",
        "message": "API Key is missing",
        "errors": {"api_key": {"required": "API key is required."}},
    }


@pytest.mark.parametrize("header", ["Bearer sk-wrong", "Basic sk-test", "sk-test"])
def test_invalid_key_is_403_as_in_the_seed(client, sandbox, header) -> None:
    r = send(client, sandbox, EMAIL, headers={"Authorization": header})
    expected_status = 403 if header.startswith("Bearer") else 401
    assert r.status_code == expected_status
    if expected_status == 403:
        assert r.json() == {
            "status_code": 403,
            "error_type": "forbidden",
            "message": "Invalid API Key",
            "errors": {"api_key": {"invalid": "The provided API key is invalid."}},
        }


def test_domain_not_verified_as_in_the_seed(client, make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("news.example.org",))
    r = send(client, sb, email(**{"from": {"email": "a@news.example.org"}}))
    assert r.status_code == 422
    assert r.json() == {
        "status_code": 422,
        "error_type": "validation_error",
        "message": "The from email domain is not verified.",
        "errors": {"from": {"domain_not_verified": "The from email domain is not verified."}},
    }
    assert sb.messages() == []


def test_domain_not_on_the_account_is_not_found_as_in_the_batch_docs(client, sandbox) -> None:
    r = send(client, sandbox, email(**{"from": {"email": "a@unknown.org"}}))
    assert r.status_code == 422
    assert r.json() == {
        "status_code": 422,
        "error_type": "validation_error",
        "message": "The from email domain is not found.",
        "errors": {
            "from": {"domain_not_found": "The from email domain is not found in your account."}
        },
    }


def test_domain_not_allowed_for_key_as_in_the_seed(client, make_sandbox) -> None:
    sb = make_sandbox(
        api_keys=("sk-test", "sk-other"),
        domains=("example.com", "other.com"),
        key_domains={"sk-other": ("other.com",)},
    )
    r = send(client, sb, EMAIL, headers={"Authorization": "Bearer sk-other"})
    assert r.status_code == 422
    assert r.json() == {
        "status_code": 422,
        "error_type": "validation_error",
        "message": "The from email domain is not allowed for this API key.",
        "errors": {
            "from": {"domain_not_allowed": "The from email domain is not allowed for this API key."}
        },
    }
    ok = send(
        client,
        sb,
        email(**{"from": {"email": "a@other.com"}}),
        {"Authorization": "Bearer sk-other"},
    )
    assert ok.status_code == 200
    assert send(client, sb, EMAIL).status_code == 200  # unrestricted key


def test_insufficient_credits_as_in_the_seed(client, make_sandbox) -> None:
    sb = make_sandbox(credits=3)
    assert send(client, sb, email(cc=[{"email": "c@recipients.org"}])).status_code == 200
    r = send(client, sb, email(to=rcpts(1)))
    assert r.status_code == 403
    assert r.json() == {
        "status_code": 403,
        "error_type": "forbidden",
        "message": "Insufficient credit balance to send emails.",
        "errors": {
            "account": {
                "insufficient_balance": (
                    "Insufficient credit balance to send emails. Please buy more credits."
                )
            }
        },
    }
    info = client.get(f"{sb.base_url}/v2/info", headers=AUTH).json()
    assert info["account"]["credit_balance"] == 0  # one credit per recipient: 2 to + 1 cc
    assert len(sb.messages()) == 1


def test_credits_are_charged_per_recipient(client, make_sandbox) -> None:
    sb = make_sandbox(credits=10)
    send(client, sb, email(to=rcpts(4), bcc=rcpts(2, "b.org")))
    info = client.get(f"{sb.base_url}/v2/info", headers=AUTH).json()
    assert info["account"]["credit_balance"] == 4
    assert send(client, sb, email(to=rcpts(5))).status_code == 403
    assert send(client, sb, email(to=rcpts(4))).status_code == 200


@pytest.mark.parametrize(
    ("drop", "errors"),
    [
        (("subject",), {"subject": {"required": "Subject is required."}}),
        (("html", "text"), {"content": {"required": "Either html or text content is required."}}),
        (
            ("subject", "html", "text"),
            {
                "subject": {"required": "Subject is required."},
                "content": {"required": "Either html or text content is required."},
            },
        ),
    ],
)
def test_missing_subject_or_content_as_in_the_seed(client, sandbox, drop, errors) -> None:
    r = send(client, sandbox, email(**dict.fromkeys(drop)))
    assert r.status_code == 422
    assert r.json() == {
        "status_code": 422,
        "error_type": "validation_error",
        "message": "Subject and either html or text content are required.",
        "errors": errors,
    }


def test_html_alone_or_text_alone_is_enough(client, sandbox) -> None:
    assert send(client, sandbox, email(text=None)).status_code == 200
    assert send(client, sandbox, email(html=None)).status_code == 200


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
def test_fifty_recipients_per_field(client, sandbox, field) -> None:
    assert send(client, sandbox, email(**{field: rcpts(50)})).status_code == 200
    r = send(client, sandbox, email(**{field: rcpts(51)}))
    assert r.status_code == 422
    assert r.json() == {
        "status_code": 422,
        "error_type": "validation_error",
        "message": TOO_MANY,
        "errors": {field: {"max_limit": TOO_MANY}},
    }


def test_fifty_in_each_field_at_once_is_allowed(client, sandbox) -> None:
    body = email(to=rcpts(50), cc=rcpts(50, "c.org"), bcc=rcpts(50, "b.org"))
    assert send(client, sandbox, body).status_code == 200
    (entry,) = sandbox.messages()
    assert len(entry["to"]) == len(entry["cc"]) == len(entry["bcc"]) == 50


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"from": None}, "from", "required"),
        ({"from": {"email": "not-an-address"}}, "from", "email"),
        ({"from": "hello@example.com"}, "from", "email"),
        ({"to": None}, "to", "required"),
        ({"to": []}, "to", "required"),
        ({"to": "jane@recipients.org"}, "to", "array"),
        ({"to": [{"email": "jane@"}]}, "to", "email"),
        ({"cc": [{"name": "no address"}]}, "cc", "email"),
        ({"subject": "x" * 999}, "subject", "max_length"),
        ({"reply_to": {"email": "nope"}}, "reply_to", "email"),
        ({"reply_to": "Support <nope>"}, "reply_to", "email"),
        ({"tags": {"k" * 129: "v"}}, "tags", "max_key_length"),
        ({"tags": {"k": "v" * 257}}, "tags", "max_value_length"),
        ({"tags": {"k": 1}}, "tags", "object"),
        ({"message_hash": "h" * 256}, "message_hash", "max_length"),
        ({"headers": {"X-A": 1}}, "headers", "object"),
        ({"attachments": [{"name": "a.txt", "content": "aGk="}]}, "attachments", "required"),
        (
            {"attachments": [{"type": "text/plain", "name": "a", "content": "a"}]},
            "attachments",
            "base64",
        ),
    ],
)
def test_validation_errors(client, sandbox, changes, field, rule) -> None:
    r = send(client, sandbox, email(**changes))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["status_code"] == 422
    assert body["error_type"] == "validation_error"
    assert list(body["errors"]) == [field]
    assert list(body["errors"][field]) == [rule]
    assert body["message"]
    assert sandbox.messages() == []
    assert sandbox.stats()["rejections"] == {"422": 1}


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "x" * 998},
        {"reply_to": {"name": "Support", "email": "support@example.com"}},
        {"reply_to": "Support Team <support@example.com>"},
        {"reply_to": "support@example.com"},
        {"tags": {"k" * 128: "v" * 256, "campaign": "spring"}},
        {"headers": {"X-Campaign": "spring"}},
    ],
)
def test_limits_are_inclusive_and_forms_accepted(client, sandbox, changes) -> None:
    r = send(client, sandbox, email(**changes))
    assert r.status_code == 200, r.text


def test_message_hash_is_returned_as_message_id(client, sandbox) -> None:
    key = "h" * 255
    r = send(client, sandbox, email(message_hash=key))
    assert r.json() == {"message_id": key}
    assert sandbox.messages()[0]["message_id"] == key


def test_attachments_up_to_10_mb_decoded_in_total(client, sandbox) -> None:
    half = base64.b64encode(bytes(5 * 1024 * 1024)).decode()
    att = {"type": "application/octet-stream", "name": "a.bin", "content": half}
    ok = send(client, sandbox, email(attachments=[att, {**att, "name": "b.bin"}]))
    assert ok.status_code == 200, ok.text
    body = sandbox.messages()[0]["body"]
    assert body["attachments"][0] == {
        "type": "application/octet-stream",
        "name": "a.bin",
        "content_bytes": 5 * 1024 * 1024,
    }  # contents are not kept
    too_big = email(
        attachments=[att, {**att, "content": base64.b64encode(bytes(5 * 1024 * 1024 + 1)).decode()}]
    )
    r = send(client, sandbox, too_big)
    assert r.status_code == 422
    assert r.json()["errors"] == {
        "attachments": {"max_size": "Attachments may not exceed 10 MB in total (decoded)."}
    }


def test_disposable_recipients_are_dropped(client, sandbox) -> None:
    body = email(
        to=[{"email": "real@recipients.org"}, {"email": "junk@mailinator.com"}],
        bcc=[{"email": "x@yopmail.com"}],
    )
    assert send(client, sandbox, body).status_code == 200
    (entry,) = sandbox.messages()
    assert entry["to"] == ["real@recipients.org"] and entry["bcc"] == []
    assert sandbox.stats()["disposable_dropped"] == 2


SPAM = "All recipient email addresses are marked as spam / disposable."


def test_all_disposable_sends_nothing(client, sandbox) -> None:
    r = send(client, sandbox, email(to=[{"email": "junk@mailinator.com"}]))
    assert r.status_code == 403
    assert r.json() == {
        "status_code": 403,
        "error_type": "forbidden",
        "message": SPAM,
        "errors": {"to": {"spam": SPAM}},
    }
    assert sandbox.messages() == []


def test_api_key_in_the_body_is_accepted_and_never_logged(client, sandbox) -> None:
    r = send(client, sandbox, {**EMAIL, "api_key": "sk-test"}, headers={})
    assert r.status_code == 200
    (entry,) = sandbox.messages()
    assert "api_key" not in entry["body"] and entry["body"] == EMAIL
    wrong = send(client, sandbox, {**EMAIL, "api_key": "sk-wrong"}, headers={})
    assert wrong.status_code == 403 and wrong.json()["errors"] == {
        "api_key": {"invalid": "The provided API key is invalid."}
    }
    r = batch(client, sandbox, {"emails": [EMAIL, EMAIL], "api_key": "sk-test"}, headers={})
    assert r.status_code == 200 and len(sandbox.messages()) == 3
    assert batch(client, sandbox, [EMAIL], headers={}).status_code == 401  # bare array: no key


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_body_is_400_bad_request(client, sandbox, raw) -> None:
    r = client.post(
        f"{sandbox.base_url}/v2/emails",
        content=raw,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["status_code"] == 400 and body["error_type"] == "bad_request"
    assert body["errors"] == {
        "body": {"invalid_json": "The request body must be a valid JSON object."}
    }


def test_unknown_path_is_a_json_404(client, sandbox) -> None:
    r = client.get(f"{sandbox.base_url}/v2/nothing-here", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error_type"] == "not_found"


# batch --------------------------------------------------------------------------------------


def batch(client, sb, payload, headers=None):
    return client.post(
        f"{sb.base_url}/v2/emails/batch", json=payload, headers=AUTH if headers is None else headers
    )


@pytest.mark.parametrize("wrap", [True, False])
def test_batch_all_ok_is_200_in_order(client, sandbox, wrap) -> None:
    emails = [email(to=[{"email": f"r{i}@recipients.org"}], message_hash=f"m{i}") for i in range(5)]
    r = batch(client, sandbox, {"emails": emails} if wrap else emails)
    assert r.status_code == 200
    assert r.json() == {"results": [{"status": "success", "message_id": f"m{i}"} for i in range(5)]}
    entries = sandbox.messages()
    assert [e["to"] for e in entries] == [[f"r{i}@recipients.org"] for i in range(5)]
    assert [e["batch_index"] for e in entries] == list(range(5))
    assert all(e["endpoint"] == "/v2/emails/batch" for e in entries)


def test_batch_partial_is_207_with_each_result(client, make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("news.example.com",))
    emails = [
        email(to=rcpts(1), message_hash="ok-1"),
        email(subject=None),
        email(**{"from": {"email": "x@news.example.com"}}),
        email(to=rcpts(2), message_hash="ok-2"),
        email(to=[{"email": "a@mailinator.com"}], cc=[{"email": "b@yopmail.com"}]),
    ]
    r = batch(client, sb, {"emails": emails})
    assert r.status_code == 207
    results = r.json()["results"]
    assert results[0] == {"status": "success", "message_id": "ok-1"}
    assert results[1] == {
        "status": "error",
        "status_code": 422,
        "error_type": "validation_error",
        "message": "Subject and either html or text content are required.",
        "errors": {"subject": {"required": "Subject is required."}},
    }
    assert results[2]["errors"] == {
        "from": {"domain_not_verified": "The from email domain is not verified."}
    }
    assert results[3] == {"status": "success", "message_id": "ok-2"}
    assert results[4] == {"status": "spam", "message": SPAM, "errors": {"to": {"spam": SPAM}}}
    assert [e["message_id"] for e in sb.messages()] == ["ok-1", "ok-2"]
    assert sb.stats()["rejections"] == {"422": 2, "spam": 1}


def test_batch_credits_are_checked_whole_before_processing(client, make_sandbox) -> None:
    sb = make_sandbox(credits=3)
    emails = [email(to=rcpts(1)), email(to=rcpts(2)), email(to=rcpts(1))]  # 4 recipients
    r = batch(client, sb, {"emails": emails})
    assert r.status_code == 403
    assert r.json() == {
        "status_code": 403,
        "error_type": "forbidden",
        "message": "Insufficient credit balance to send emails.",
        "errors": {
            "account": {
                "insufficient_balance": (
                    "Insufficient credit balance to send emails. Please buy more credits."
                )
            }
        },
    }
    assert sb.messages() == [] and sb.stats()["credits"] == 3  # nothing accepted
    assert batch(client, sb, {"emails": emails[:2]}).status_code == 200
    assert sb.stats()["credits"] == 0


BATCH_REQUIRED = {
    "status_code": 422,
    "error_type": "validation_error",
    "message": "Emails data is required and must be an array",
    "errors": {"emails": {"required": "Emails data is required and must be an array."}},
}
BATCH_MAX = {
    "status_code": 422,
    "error_type": "validation_error",
    "message": "Maximum 100 emails allowed per batch request.",
    "errors": {"emails": {"max_limit": "Maximum 100 emails allowed per batch request."}},
}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"emails": []}, BATCH_REQUIRED),
        ([], BATCH_REQUIRED),
        ({"nope": 1}, BATCH_REQUIRED),
        ({"emails": "x"}, BATCH_REQUIRED),
        ({"emails": [EMAIL] * 101}, BATCH_MAX),
    ],
)
def test_batch_size_limits_as_in_the_docs(client, sandbox, payload, expected) -> None:
    r = batch(client, sandbox, payload)
    assert r.status_code == 422
    assert r.json() == expected
    assert sandbox.messages() == []


def test_batch_of_100_is_allowed(client, sandbox) -> None:
    r = batch(client, sandbox, {"emails": [EMAIL] * 100})
    assert r.status_code == 200
    assert len(sandbox.messages()) == 100


def test_batch_malformed_json_is_400(client, sandbox) -> None:
    r = client.post(f"{sandbox.base_url}/v2/emails/batch", content=b"[{", headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error_type"] == "bad_request"


def test_batch_needs_the_key(client, sandbox) -> None:
    assert batch(client, sandbox, [EMAIL], headers={}).status_code == 401


# info ---------------------------------------------------------------------------------------


def test_info_reports_the_sandbox_account(client, make_sandbox) -> None:
    sb = make_sandbox(
        domains=("example.com", "second.com"),
        pending_domains=("news.example.com",),
        credits=100,
        tosend_emails_per_second=14,
    )
    send(client, sb, EMAIL)
    r = client.get(f"{sb.base_url}/v2/info", headers=AUTH)
    assert r.status_code == 200
    info = r.json()
    assert info["account"] == {
        "id": 1,
        "status": "active",
        "plan_type": "credits",
        "credit_balance": 98,
        "monthly_email_limit": None,
        "limit_per_second": 14,
        "ses_region": "sandbox",
        "bounce_rate": 0.0,
        "complaint_rate": 0.0,
        "ses_status": "active",
    }
    domains = {d["domain_name"]: d for d in info["domains"]}
    assert list(domains) == ["example.com", "second.com", "news.example.com"]
    assert domains["example.com"]["verification_status"] == "verified"
    assert domains["example.com"]["is_default"] == 1
    assert domains["example.com"]["total_sent"] == 1
    assert domains["second.com"]["is_default"] == 0
    assert domains["news.example.com"]["verification_status"] == "pending"
    assert set(domains["second.com"]) == {
        "id",
        "domain_name",
        "verification_status",
        "is_default",
        "total_sent",
        "total_delivered",
        "total_bounced",
        "total_complained",
    }


def test_info_in_the_older_documented_shape(client, make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("mail.example.com",), info_shape="older")
    send(client, sb, email(cc=[{"email": "c@recipients.org"}]))  # 3 recipients
    info = client.get(f"{sb.base_url}/v2/info", headers=AUTH).json()
    assert info["account"] == {
        "title": "batchsend sandbox",
        "plan_type": "unlimited",
        "status": "active",
        "emails_usage_this_month": 3,
        "emails_sent_last_24hrs": 3,
    }
    assert [(d["domain_name"], d["verification_status"]) for d in info["domains"]] == [
        ("example.com", "verified"),
        ("mail.example.com", "pending"),
    ]
    assert all(
        set(d) == {"domain_name", "verification_status", "created_at"} for d in info["domains"]
    )
    assert len(info["domains"][0]["created_at"]) == len("2024-01-15 10:30:00")
    sb.configure(info_shape="current")
    assert "credit_balance" in client.get(f"{sb.base_url}/v2/info", headers=AUTH).json()["account"]


def test_info_shows_a_restricted_key_only_its_domains(client, make_sandbox) -> None:
    sb = make_sandbox(
        api_keys=("sk-test", "sk-b"),
        domains=("example.com", "b.com"),
        key_domains={"sk-b": ["b.com"]},
    )
    info = client.get(f"{sb.base_url}/v2/info", headers={"Authorization": "Bearer sk-b"}).json()
    assert [d["domain_name"] for d in info["domains"]] == ["b.com"]


def test_info_without_credits_is_not_credit_based(client, sandbox) -> None:
    account = client.get(f"{sandbox.base_url}/v2/info", headers=AUTH).json()["account"]
    assert account["credit_balance"] is None
    assert account["limit_per_second"] is None


def test_info_needs_a_valid_key(client, sandbox) -> None:
    assert client.get(f"{sandbox.base_url}/v2/info").status_code == 401
    r = client.get(f"{sandbox.base_url}/v2/info", headers={"Authorization": "Bearer bad"})
    assert r.status_code == 403


@pytest.mark.parametrize("path", ["/v2/emails", "/v2/emails/batch", "/v2/info"])
def test_a_bare_urllib_user_agent_is_refused_as_at_the_edge(client, sandbox, path) -> None:
    """ToSend's edge answers urllib's default agent 403 'error code: 1010' (see its SDK)."""
    agent = {"User-Agent": "Python-urllib/3.11", **AUTH}
    body = {"emails": [EMAIL]} if path.endswith("batch") else EMAIL
    if path == "/v2/info":
        r = client.get(f"{sandbox.base_url}{path}", headers=agent)
    else:
        r = client.post(f"{sandbox.base_url}{path}", json=body, headers=agent)
    assert (r.status_code, r.text) == (403, "error code: 1010")
    assert client.get(f"{sandbox.base_url}/_sandbox/messages").json() == []
    # The official SDK's agent, httpx's and batchsend's own pass.
    for name in ("tosend-python/1.2.0", "python-httpx/0.28", "batchsend/0.1"):
        assert send(client, sandbox, EMAIL, {"User-Agent": name, **AUTH}).status_code == 200


def test_messages_show_sender_domain_and_an_invite_attachment(client, sandbox) -> None:
    invite = {"type": "text/calendar; method=REQUEST", "name": "invite.ics", "content": "QkVHSU4="}
    send(client, sandbox, email(attachments=[invite]))
    send(client, sandbox, EMAIL)
    first, second = sandbox.messages()
    assert (first["delivered_from"], first["sending_domain"]) == (
        "hello@example.com",
        "example.com",
    )
    assert first["delivered_attachments"] == ["invite.ics"] and first["calendar_invite"] is True
    assert second["delivered_attachments"] == [] and second["calendar_invite"] is False
