"""Providers: the requests they build, and every outcome class over real HTTP (sandbox)."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from batchsend import USER_AGENT
from batchsend.apikeys import remember
from batchsend.errors import FatalSendError
from batchsend.message import Address, Attachment, Message
from batchsend.outcome import OutcomeKind
from batchsend.plan import PlannedMessage, plan_units
from batchsend.providers import PROVIDERS, AccountInfo, check_account, get_provider
from batchsend.transport import make_transport

KEY = "sk-test"
ACCEPTED, RETRYABLE = OutcomeKind.ACCEPTED, OutcomeKind.RETRYABLE
PERMANENT, FATAL = OutcomeKind.PERMANENT, OutcomeKind.FATAL
UNKNOWN = OutcomeKind.UNKNOWN


def msg(row: int = 1, **changes) -> Message:
    fields = {
        "row": row,
        "sender": Address("news@example.com", "News"),
        "to": (Address(f"user{row}@dest.test", f"User {row}"),),
        "subject": f"Hello {row}",
        "text": f"Dear user {row}",
    }
    fields.update(changes)
    return Message(**fields)


def units(provider, messages, run_id="run"):
    return list(plan_units(messages, run_id=run_id, provider=provider))


def send(provider, unit, transport="aiohttp", timeout=10.0):
    """One attempt of ``unit``: its outcomes, exactly as the engine would get them."""

    async def go():
        async with make_transport(transport, concurrency=2, timeout=timeout) as t:
            request = provider.build_request(unit)
            try:
                response = await t.send(request)
            except Exception as exc:  # the transport's SendError
                return provider.outcomes_for_error(unit, exc)
            return provider.parse_response(unit, response.status, response.headers, response.body)

    return asyncio.run(go())


# --- requests --------------------------------------------------------------------------


def test_v1_body_follows_the_contract():
    p = get_provider("v1", base_url="http://127.0.0.1:9/", api_key=KEY)
    m = msg(
        cc=(Address("cc@dest.test", "C"),),
        bcc=(Address("bcc@dest.test"),),
        reply_to=Address("help@example.com"),
        html="<p>hi</p>",
        headers={"X-Campaign": "c1"},
        tag="june",
        metadata={"order": "42"},
        attachments=(Attachment("a.pdf", "application/pdf", b"%PDF-1"),),
        ical="BEGIN:VCALENDAR\nEND:VCALENDAR\n",
        track_opens=True,
        track_clicks=False,
        stream_type="broadcast",
        domain="example.com",
    )
    (unit,) = units(p, [m])
    request = p.build_request(unit)
    assert request.url == "http://127.0.0.1:9/api/v1/send"
    assert (
        orjson.loads(request.body)
        == p.message_body(unit.messages[0])
        == {
            "to": "user1@dest.test",
            "subject": "Hello 1",
            "domain": "example.com",
            "from": "news@example.com",
            "reply_to": "help@example.com",
            "cc": ["cc@dest.test"],
            "bcc": ["bcc@dest.test"],
            "html": "<p>hi</p>",
            "text": "Dear user 1",
            "track_opens": True,
            "track_clicks": False,
            "headers": {"X-Campaign": "c1"},
            "tag": "june",
            "stream_type": "broadcast",
            "metadata": {"order": "42", "batchsend_id": unit.messages[0].key},
            "attachments": [
                {
                    "filename": "a.pdf",
                    "content": base64.b64encode(b"%PDF-1").decode(),
                    "contentType": "application/pdf",
                }
            ],
            "icalEvent": "BEGIN:VCALENDAR\nEND:VCALENDAR\n",
        }
    )
    assert request.headers["X-API-Key"] == KEY
    assert request.headers["Idempotency-Key"] == unit.key == unit.messages[0].key
    assert request.headers["User-Agent"] == USER_AGENT


def test_v1_can_send_the_key_as_bearer():
    p = get_provider("v1", base_url="http://x", api_key=KEY, auth="bearer")
    headers = p.build_request(units(p, [msg()])[0]).headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert "X-API-Key" not in headers


def test_tosend_batch_body_carries_message_hash_and_the_contracts_shapes():
    p = get_provider("tosend", base_url="http://x", api_key=KEY, batch_size=3)
    m = msg(
        reply_to=Address("help@example.com", "Help"),
        tags={"campaign": "june"},
        attachments=(Attachment("logo.png", "image/png", b"\x89PNG", content_id="logo"),),
    )
    (unit,) = units(p, [m, msg(2), msg(3)])
    request = p.build_request(unit)
    assert request.url == "http://x/v2/emails/batch"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Idempotency-Key"] == unit.key
    emails = orjson.loads(request.body)["emails"]
    assert [e["message_hash"] for e in emails] == [pm.key for pm in unit.messages]
    assert emails[0] == {
        "from": {"email": "news@example.com", "name": "News"},
        "to": [{"email": "user1@dest.test", "name": "User 1"}],
        "subject": "Hello 1",
        "reply_to": {"email": "help@example.com", "name": "Help"},
        "text": "Dear user 1",
        "tags": {"campaign": "june"},
        "attachments": [
            {
                "type": "image/png",
                "name": "logo.png",
                "content": base64.b64encode(b"\x89PNG").decode(),
                "content_id": "logo",
            }
        ],
        "message_hash": unit.messages[0].key,
    }
    assert p.build_request(unit).body == request.body  # same bytes every time


def test_tosend_batch_size_one_uses_the_single_endpoint():
    p = get_provider("tosend", base_url="http://x", api_key=KEY, batch_size=1)
    request = p.build_request(units(p, [msg()])[0])
    assert request.url == "http://x/v2/emails"
    assert "message_hash" in orjson.loads(request.body)


_SIZES = {True: (1, 3), False: (1,)}  # batch sizes worth trying, by batch support


@pytest.mark.parametrize(
    ("provider", "batch_size"),
    [
        (name, size)
        for name, cls in PROVIDERS.items()
        for size in {1, 3 if cls.supports_batch else 1}
    ],
)
def test_encoded_messages_join_into_the_very_bytes_of_the_request(provider, batch_size):
    # A run encodes each message in preflight (PlannedMessage.wire) and the send pass
    # only joins the bytes: they must be the request a rebuild from the rendered
    # messages makes, byte for byte, or a resend would meet the provider's 409.
    p = get_provider(provider, base_url="http://x", api_key=KEY, batch_size=batch_size)
    messages = [
        msg(1, cc=(Address("cc@dest.test"),), html="<p>Zoë ✓ \u2028</p>"),
        msg(2, headers={"X-Campaign": "june"}),
        msg(3, attachments=(Attachment("a.pdf", "application/pdf", b"%PDF\xff"),)),
    ]
    for unit in units(p, messages):
        encoded = [
            PlannedMessage(pm.key, pm.rows, None, p.encode_message(pm), pm.recipient_count)
            for pm in unit.messages
        ]
        (again,) = plan_units(encoded, run_id="run", provider=p)
        assert again.key == unit.key and again.rows == unit.rows
        assert p.build_request(again).body == p.build_request(unit).body
        assert p.build_request(unit).body == orjson.dumps(p.request_body(unit))
        assert [pm.recipient_count for pm in again.messages] == [
            pm.recipient_count for pm in unit.messages
        ]
    with pytest.raises(ValueError, match="encoded only"):
        p.message_body(PlannedMessage("k", (1,), None))


def test_the_key_never_shows_in_reprs():
    remember(KEY)
    p = get_provider("tosend", base_url="http://x", api_key=KEY)
    request = p.build_request(units(p, [msg()])[0])
    assert KEY not in repr(p)
    assert KEY not in repr(request)


def test_unknown_provider_and_bad_batch_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown provider"):
        get_provider("smtp", base_url="http://x", api_key=KEY)
    with pytest.raises(ValueError):
        get_provider("tosend", base_url="http://x", api_key=KEY, batch_size=101)
    assert get_provider("v1", base_url="http://x", api_key=KEY, batch_size=100).batch_size == 1


# --- outcomes over real HTTP ----------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_tosend_batch_accepted_with_message_ids_known_in_advance(sandbox, transport):
    p = get_provider("tosend", base_url=sandbox.base_url, api_key=KEY)
    (unit,) = units(p, [msg(i) for i in range(1, 6)])
    outcomes = send(p, unit, transport)
    assert [o.kind for o in outcomes] == [ACCEPTED] * 5
    assert [o.provider_message_id for o in outcomes] == [pm.key for pm in unit.messages]
    got = sandbox.messages()
    assert [m["to"] for m in got] == [[f"user{i}@dest.test"] for i in range(1, 6)]
    assert {m["idempotency_key"] for m in got} == {unit.key}


def test_tosend_207_fails_only_the_bad_messages(sandbox):
    p = get_provider("tosend", base_url=sandbox.base_url, api_key=KEY)
    batch = [
        msg(1),
        msg(2, subject=""),  # 422 content: permanent
        msg(3),
        msg(4, to=(Address("x@mailinator.com"),)),  # only disposable: permanent 403
        msg(5),
    ]
    (unit,) = units(p, batch)
    outcomes = send(p, unit)
    assert [o.kind for o in outcomes] == [ACCEPTED, PERMANENT, ACCEPTED, PERMANENT, ACCEPTED]
    assert outcomes[1].http_status == 422
    assert outcomes[3].error_type == "disposable"
    assert sorted(m["to"][0] for m in sandbox.messages()) == [
        "user1@dest.test",
        "user3@dest.test",
        "user5@dest.test",
    ]


@pytest.mark.parametrize("batch_size", [1, 100])
@pytest.mark.parametrize(
    ("options", "api_key", "message", "error_type"),
    [
        ({}, "sk-wrong", {}, "api_key_invalid"),
        ({}, "", {}, "api_key_required"),
        ({"credits": 0}, KEY, {}, "insufficient_balance"),
        ({}, KEY, {"sender": Address("news@unknown.test")}, "domain_not_found"),
        (
            {"pending_domains": ("pending.test",)},
            KEY,
            {"sender": Address("news@pending.test")},
            "domain_not_verified",
        ),
        (
            {"domains": ("example.com", "other.com"), "key_domains": {KEY: ("other.com",)}},
            KEY,
            {},
            "domain_not_allowed",
        ),
    ],
)
def test_tosend_fatal_answers(make_sandbox, batch_size, options, api_key, message, error_type):
    sb = make_sandbox(**options)
    p = get_provider("tosend", base_url=sb.base_url, api_key=api_key, batch_size=batch_size)
    (unit,) = units(p, [msg(**message)])
    (outcome,) = send(p, unit)
    assert outcome.kind is FATAL
    assert outcome.error_type == error_type
    assert sb.messages() == []


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_server_faults_are_unknown(make_sandbox, provider):
    # A 5xx may follow a delivery: the client cannot tell, so it never resends on its own.
    sb = make_sandbox(fail_rate=1.0, seed=3)
    p = get_provider(provider, base_url=sb.base_url, api_key=KEY)
    (outcome,) = send(p, units(p, [msg()])[0])
    assert outcome.kind is UNKNOWN
    assert outcome.http_status in (500, 502, 503)


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_429_is_retryable_with_retry_after(make_sandbox, provider):
    sb = make_sandbox(tosend_emails_per_second=1, v1_requests_per_minute=1)
    p = get_provider(provider, base_url=sb.base_url, api_key=KEY, batch_size=1)
    first, second = units(p, [msg(1), msg(2)])

    async def both():
        async with make_transport("aiohttp") as t:
            answers = []
            for unit in (first, second):
                r = await t.send(p.build_request(unit))
                answers.append(p.parse_response(unit, r.status, r.headers, r.body)[0])
            return answers

    ok, limited = asyncio.run(both())
    if ok.kind is RETRYABLE:  # the first request straddled a second boundary: try again
        ok, limited = asyncio.run(both())
    assert limited.kind is RETRYABLE
    assert limited.http_status == 429
    assert limited.retry_after is not None
    # ToSend's bucket refills in a second; v1's window is a minute
    assert 0 < limited.retry_after <= (1.0 if provider == "tosend" else 60.0)


@pytest.mark.parametrize("provider", ["tosend", "v1"])
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_refused_connection_is_retryable_and_a_read_timeout_unknown(
    make_sandbox, provider, transport
):
    sb = make_sandbox()
    url = sb.base_url
    sb.stop()
    p = get_provider(provider, base_url=url, api_key=KEY)
    (outcome,) = send(p, units(p, [msg()])[0], transport)
    assert (outcome.kind, outcome.error_type) == (RETRYABLE, "connection_refused")
    # The request reached the provider, which delivers it after the client gave up.
    slow = make_sandbox(latency_ms=400)
    p = get_provider(provider, base_url=slow.base_url, api_key=KEY)
    (outcome,) = send(p, units(p, [msg()])[0], transport, timeout=0.05)
    assert (outcome.kind, outcome.error_type) == (UNKNOWN, "timeout")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:0", "ftp://127.0.0.1:8025", "http://[::1"],
)
def test_a_bad_provider_url_is_fatal_on_both_transports(transport, base_url):
    # Fatal (the run stops, rows stay resumable) and named as such, never a traceback
    # from deep inside the connect, and never retried as if the provider were down.
    p = get_provider("tosend", base_url=base_url, api_key=KEY)
    (outcome,) = send(p, units(p, [msg()])[0], transport)
    assert (outcome.kind, outcome.error_type) == (FATAL, "bad_url"), outcome
    assert "invalid provider URL" in outcome.error_message


@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_same_key_different_body_is_a_permanent_conflict(sandbox, provider):
    # Only a provider that honours Idempotency-Key (the sandbox's --idempotency-keys;
    # neither documented provider) replays a repeat and refuses a changed body.
    sandbox.configure(idempotency_keys=True)
    p = get_provider(provider, base_url=sandbox.base_url, api_key=KEY, batch_size=1)
    (unit,) = units(p, [msg()])
    assert send(p, unit)[0].kind is ACCEPTED
    assert send(p, unit)[0].kind is ACCEPTED  # the same request again: replayed
    changed = type(unit)(unit.key, (type(unit.messages[0])(unit.key, (1,), msg(text="x")),), False)
    (outcome,) = send(p, changed)
    assert (outcome.kind, outcome.http_status) == (PERMANENT, 409)
    assert len(sandbox.messages()) == 1


def test_v1_accepted_carries_both_ids(sandbox):
    p = get_provider("v1", base_url=sandbox.base_url, api_key=KEY)
    (outcome,) = send(p, units(p, [msg()])[0])
    assert outcome.kind is ACCEPTED
    assert outcome.provider_message_id.startswith("<")
    assert outcome.provider_email_id
    assert sandbox.messages()[0]["email_id"] == outcome.provider_email_id


@pytest.mark.parametrize(
    ("options", "api_key", "message", "kind", "reason"),
    [
        ({}, "sk-wrong", {}, FATAL, "invalid_api_key"),
        ({}, "", {}, FATAL, "missing_api_key"),
        ({"credits": 0}, KEY, {}, FATAL, "insufficient_balance"),
        (
            {"pending_domains": ("new.com",)},
            KEY,
            {"domain": "new.com"},
            FATAL,
            "domain_not_verified",
        ),
        ({}, KEY, {"domain": "nowhere.com"}, FATAL, "not_found"),
        ({}, KEY, {"subject": ""}, PERMANENT, "validation_error"),
        ({}, KEY, {"sender": Address("news@elsewhere.com")}, PERMANENT, "validation_error"),
    ],
)
def test_v1_error_classes(make_sandbox, options, api_key, message, kind, reason):
    sb = make_sandbox(**options)
    p = get_provider("v1", base_url=sb.base_url, api_key=api_key)
    (outcome,) = send(p, units(p, [msg(**message)])[0])
    assert (outcome.kind, outcome.error_type) == (kind, reason)
    assert sb.messages() == []


def test_v1_bearer_auth_is_accepted_by_the_sandbox(sandbox):
    p = get_provider("v1", base_url=sandbox.base_url, api_key=KEY, auth="bearer")
    assert send(p, units(p, [msg()])[0])[0].kind is ACCEPTED


# --- account info ------------------------------------------------------------------------


def test_account_info_reads_the_account(make_sandbox):
    sb = make_sandbox(credits=7, tosend_emails_per_second=12, pending_domains=("new.com",))
    p = get_provider("tosend", base_url=sb.base_url, api_key=KEY)
    info = asyncio.run(p.account_info())
    assert info.status == "active"
    assert info.credit_balance == 7
    assert info.limit_per_second == 12
    assert info.domain_verified("EXAMPLE.com")
    assert not info.domain_verified("new.com")
    assert "new.com" in info.pending_domains


def test_account_info_waits_as_long_as_a_429_asks(make_sandbox):
    """The account check honours Retry-After like a send; it once retried at random."""
    from batchsend.retry import RetryPolicy

    sb = make_sandbox()
    sb.configure(refuse_next=2)  # exactly two 429s, each with Retry-After: 1
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    p = get_provider("tosend", base_url=sb.base_url, api_key=KEY)
    policy = RetryPolicy(max_attempts=5, max_time=60, initial_wait=0.01, sleep=record)
    info = asyncio.run(p.account_info(retry=policy))
    assert info.status == "active"
    assert len(waits) == 2 and all(w >= 1.0 for w in waits), waits


def test_account_info_with_a_bad_key_is_fatal_and_secret_free(sandbox):
    remember("sk-bad-secret")
    p = get_provider("tosend", base_url=sandbox.base_url, api_key="sk-bad-secret")
    with pytest.raises(FatalSendError, match="refused the API key") as caught:
        asyncio.run(p.account_info())
    assert "sk-bad-secret" not in str(caught.value)


GOOD = AccountInfo("active", 100, 10.0, ("example.com",), ("new.com",))


@pytest.mark.parametrize(
    ("info", "domains", "recipients", "match"),
    [
        (AccountInfo("suspended", None, None, ("example.com",)), {"example.com"}, 1, "suspended"),
        (GOOD, {"new.com"}, 1, "'new.com' is not verified.*pending"),
        (GOOD, {"example.com"}, 101, "100 credits but this run needs 101"),
    ],
)
def test_check_account_refuses_what_the_account_cannot_carry(info, domains, recipients, match):
    with pytest.raises(FatalSendError, match=match):
        check_account(info, sender_domains=domains, recipients=recipients)


def test_check_account_passes_a_good_account():
    check_account(GOOD, sender_domains={"example.com"}, recipients=100)
    check_account(
        AccountInfo("active", None, None, ("example.com",)),
        sender_domains={"example.com"},
        recipients=10**9,
    )


def test_tosend_carries_a_calendar_invite_as_an_invite_ics_attachment():
    p = get_provider("tosend", base_url="http://127.0.0.1:9/", api_key=KEY)
    ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    (unit,) = units(p, [msg(ical=ics)])
    (email,) = orjson.loads(p.build_request(unit).body)["emails"]
    (invite,) = email["attachments"]
    assert (invite["name"], invite["type"]) == ("invite.ics", "text/calendar; method=REQUEST")
    assert base64.b64decode(invite["content"]).decode() == ics


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("provider", ["tosend", "v1"])
def test_a_redirect_is_never_followed_with_the_key(provider, transport):
    """A 307 to another address would re-send the key (and the email) there."""
    from aiohttp import web

    hits: list[str] = []

    async def go():
        async def elsewhere(request: web.Request) -> web.Response:
            hits.append(request.headers.get("X-API-Key") or request.headers.get("Authorization"))
            return web.json_response({"message_id": "x"})

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{base}/elsewhere")

        app = web.Application()
        app.router.add_post("/elsewhere", elsewhere)
        app.router.add_route("POST", "/{tail:.*}", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            p = get_provider(provider, base_url=base, api_key=KEY, batch_size=1)
            (unit,) = units(p, [msg()])
            async with make_transport(transport) as t:
                r = await t.send(p.build_request(unit))
            return p.parse_response(unit, r.status, r.headers, r.body)
        finally:
            await runner.cleanup()

    (outcome,) = asyncio.run(go())
    assert hits == []  # the key went nowhere else
    assert outcome.kind is UNKNOWN and outcome.http_status == 307
