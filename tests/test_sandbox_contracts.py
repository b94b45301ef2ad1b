"""The providers' own example answers, as fixtures: the sandbox must answer them field for field.

``tests/data/contracts/*.json`` hold the example bodies of ToSend's documentation (the
send page is seed 003; the batch and account pages are in tosend/docs-site). Each case
here builds the request the example describes and compares the whole answer, so a
drifted word in the sandbox fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchsend.sandbox import Sandbox

CONTRACTS = Path(__file__).parent / "data" / "contracts"
AUTH = {"Authorization": "Bearer sk-test"}


def examples(name: str) -> dict[str, Any]:
    return json.loads((CONTRACTS / f"{name}.json").read_text())["examples"]


SEND = examples("tosend_send_errors")
BATCH = examples("tosend_batch")
INFO = examples("tosend_info")


def email(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "from": {"name": "Acme Inc", "email": "hello@acme.com"},
        "to": [{"email": "jane@example.org"}],
        "subject": "Welcome to Acme!",
        "html": "<h1>Welcome!</h1>",
    }
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def acme(make_sandbox: Callable[..., Sandbox]) -> Callable[..., Sandbox]:
    """A sandbox for the docs' account: acme.com verified, mail.acme.com pending."""

    def make(**options: Any) -> Sandbox:
        options.setdefault("domains", ("acme.com",))
        options.setdefault("pending_domains", ("mail.acme.com",))
        return make_sandbox(**options)

    return make


# (sandbox options, headers, body) for each example of the send page
SEND_CASES: dict[str, tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = {
    "missing_api_key": ({}, {}, email()),
    "invalid_api_key": ({}, {"Authorization": "Bearer your_api_key"}, email()),
    "domain_not_verified": ({}, AUTH, email(**{"from": {"email": "news@mail.acme.com"}})),
    "domain_not_allowed": (
        {
            "api_keys": ("sk-test", "sk-other"),
            "domains": ("acme.com", "other.com"),
            "key_domains": {"sk-test": ("other.com",)},
        },
        AUTH,
        email(),
    ),
    "insufficient_credits": ({"credits": 1}, AUTH, email(cc=[{"email": "c@example.org"}])),
    "missing_content": ({}, AUTH, email(subject=None, html=None)),
    "too_many_recipients": (
        {},
        AUTH,
        email(to=[{"email": f"r{i}@example.org"} for i in range(51)]),
    ),
}


def test_every_send_example_has_a_case() -> None:
    assert set(SEND_CASES) == set(SEND)


@pytest.mark.parametrize("name", sorted(SEND))
def test_send_error_examples(client, acme, name) -> None:
    options, headers, body = SEND_CASES[name]
    sb = acme(**options)
    r = client.post(sb.base_url + "/v2/emails", json=body, headers=headers)
    assert (r.status_code, r.json()) == (SEND[name]["status"], SEND[name]["body"])
    assert sb.messages() == []


def test_batch_success_example(client, acme) -> None:
    sb = acme()
    expected = BATCH["success"]
    emails = [
        email(message_hash=result["message_id"], to=[{"email": f"user{i}@example.org"}])
        for i, result in enumerate(expected["body"]["results"], start=1)
    ]
    r = client.post(sb.base_url + "/v2/emails/batch", json={"emails": emails}, headers=AUTH)
    assert (r.status_code, r.json()) == (expected["status"], expected["body"])


def test_batch_partial_success_example_with_spam(client, acme) -> None:
    sb = acme()
    expected = BATCH["partial_success"]
    emails = [
        email(message_hash="a1b2c3d4e5f6789..."),
        email(**{"from": {"email": "hello@not-on-the-account.com"}}),
        email(to=[{"email": "someone@mailinator.com"}]),
    ]
    r = client.post(sb.base_url + "/v2/emails/batch", json={"emails": emails}, headers=AUTH)
    assert (r.status_code, r.json()) == (expected["status"], expected["body"])
    assert "status_code" not in r.json()["results"][2]  # spam: never sent, nothing to retry
    assert [m["message_id"] for m in sb.messages()] == ["a1b2c3d4e5f6789..."]


@pytest.mark.parametrize(
    ("name", "options", "payload"),
    [
        ("empty_emails", {}, {"emails": []}),
        ("batch_size_exceeded", {}, {"emails": [email()] * 101}),
        ("insufficient_credits", {"credits": 2}, {"emails": [email(), email(), email()]}),
    ],
)
def test_batch_error_examples(client, acme, name, options, payload) -> None:
    sb = acme(**options)
    r = client.post(sb.base_url + "/v2/emails/batch", json=payload, headers=AUTH)
    assert (r.status_code, r.json()) == (BATCH[name]["status"], BATCH[name]["body"])
    assert sb.messages() == []


def _shape(value: Any) -> Any:
    """The keys and JSON types of a body (numbers as one type, null as any)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "null"


def test_info_older_example_shape(client, acme) -> None:
    sb = acme(info_shape="older")
    got = client.get(sb.base_url + "/v2/info", headers=AUTH).json()
    expected = INFO["older"]["body"]
    assert _shape(got) == _shape(expected)
    assert [(d["domain_name"], d["verification_status"]) for d in got["domains"]] == [
        (d["domain_name"], d["verification_status"]) for d in expected["domains"]
    ]


def test_info_current_example_fields(client, acme) -> None:
    sb = acme(credits=100, tosend_emails_per_second=14)
    got = client.get(sb.base_url + "/v2/info", headers=AUTH).json()
    expected = INFO["current"]["body"]
    for key, value in expected["account"].items():
        assert _shape(got["account"][key]) == _shape(value) or value is None, key
    account = {k: got["account"][k] for k in ("status", "credit_balance", "limit_per_second")}
    assert account == {"status": "active", "credit_balance": 100, "limit_per_second": 14}
    for mine, theirs in zip(got["domains"], expected["domains"], strict=True):
        assert {k: mine[k] for k in theirs} == theirs
