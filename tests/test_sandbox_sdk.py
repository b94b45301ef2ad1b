"""The provider's official Python SDK (``tosend``), written by others, against the sandbox."""

from __future__ import annotations

import pytest
from tosend import Address, Attachment, ToSend, ToSendError


def sdk(sandbox, key: str = "sk-test") -> ToSend:
    return ToSend(key, base_url=sandbox.base_url, timeout=5)


def test_send(sandbox) -> None:
    result = sdk(sandbox).send(
        from_address=Address(email="hello@example.com", name="Acme"),
        to=[Address(email="jane@recipients.org"), {"email": "john@recipients.org"}],
        cc=[Address(email="boss@recipients.org")],
        reply_to=Address(email="support@example.com", name="Support"),
        subject="Welcome",
        html="<p>Hi</p>",
        headers={"X-Campaign": "spring"},
        attachments=[Attachment(type="text/plain", name="a.txt", content="aGVsbG8=").to_dict()],
    )
    (entry,) = sandbox.messages()
    assert result.message_id == entry["message_id"]
    assert entry["to"] == ["jane@recipients.org", "john@recipients.org"]
    assert entry["cc"] == ["boss@recipients.org"]
    assert entry["body"]["attachments"] == [
        {"type": "text/plain", "name": "a.txt", "content_bytes": 5}
    ]


def test_batch_mixed_results(sandbox) -> None:
    emails = [
        {
            "from": {"email": "a@example.com"},
            "to": [{"email": "x@r.org"}],
            "subject": "1",
            "text": "t",
        },
        {
            "from": {"email": "a@example.com"},
            "to": [{"email": "y@r.org"}],
            "subject": "",
            "text": "t",
        },
        {
            "from_address": Address(email="a@example.com"),
            "to": [Address(email="z@r.org")],
            "subject": "3",
            "html": "<b>h</b>",
        },
    ]
    response = sdk(sandbox).batch(emails)  # a 207 is a 2xx: the SDK returns the results
    statuses = [r.status for r in response.results]
    assert statuses == ["success", "error", "success"]
    assert response.results[1].errors == {"subject": {"required": "Subject is required."}}
    assert [r.message_id for r in response.results if r.message_id] == [
        m["message_id"] for m in sandbox.messages()
    ]


def test_account_info(make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("news.example.com",), credits=42, tosend_emails_per_second=9)
    info = sdk(sb).get_account_info()
    assert info.account.credit_balance == 42
    assert info.account.limit_per_second == 9
    assert info.account.status == "active"
    assert [(d.domain_name, d.verification_status, d.is_default) for d in info.domains] == [
        ("example.com", "verified", True),
        ("news.example.com", "pending", False),
    ]


def test_invalid_key_maps_to_an_authentication_error(sandbox) -> None:
    with pytest.raises(ToSendError) as caught:
        sdk(sandbox, "sk-wrong").get_account_info()
    err = caught.value
    assert err.status_code == 403
    assert err.error_type == "forbidden"
    assert err.is_authentication_error
    assert err.errors == {"api_key": {"invalid": "The provided API key is invalid."}}


def test_unverified_domain_maps_to_a_validation_error(make_sandbox) -> None:
    sb = make_sandbox(pending_domains=("news.example.com",))
    with pytest.raises(ToSendError) as caught:
        sdk(sb).send(
            from_address={"email": "a@news.example.com"},
            to=[{"email": "x@r.org"}],
            subject="s",
            text="t",
        )
    assert caught.value.status_code == 422
    assert caught.value.is_validation_error
    assert caught.value.message == "The from email domain is not verified."


def test_rate_limit_maps_to_a_rate_limit_error(make_sandbox) -> None:
    sb = make_sandbox(
        tosend_emails_per_second=1, clock=lambda: 1_700_000_000.0
    )  # time stands still
    client = sdk(sb)
    message = {"from_address": {"email": "a@example.com"}, "to": [{"email": "x@r.org"}]}
    client.send(**message, subject="s", text="t")
    with pytest.raises(ToSendError) as caught:
        client.send(**message, subject="s", text="t")
    assert caught.value.status_code == 429
    assert caught.value.is_rate_limit_error


def test_insufficient_credits(make_sandbox) -> None:
    sb = make_sandbox(credits=0)
    with pytest.raises(ToSendError) as caught:
        sdk(sb).send(
            from_address={"email": "a@example.com"},
            to=[{"email": "x@r.org"}],
            subject="s",
            text="t",
        )
    assert caught.value.status_code == 403
    assert caught.value.errors["account"]["insufficient_balance"].startswith("Insufficient")


def test_server_fault_maps_to_an_error_with_its_status(make_sandbox) -> None:
    sb = make_sandbox(fail_rate=1.0, seed=2)
    with pytest.raises(ToSendError) as caught:
        sdk(sb).send(
            from_address={"email": "a@example.com"},
            to=[{"email": "x@r.org"}],
            subject="s",
            text="t",
        )
    assert caught.value.status_code in (500, 502, 503)
    assert sb.messages() == []
