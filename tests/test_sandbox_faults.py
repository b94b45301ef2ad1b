"""Idempotency, rate limits and injected faults, over real HTTP (clock injected, no sleeps)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.clock import FakeClock

T0 = 1_700_000_000.0
AUTH = {"Authorization": "Bearer sk-test"}
EMAIL: dict[str, Any] = {
    "from": {"email": "news@example.com"},
    "to": [{"email": "ann@recipients.org"}],
    "subject": "Hello",
    "text": "Hi",
}
V1 = {"to": "ann@recipients.org", "subject": "Hello", "text": "Hi"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def tosend(client, sb, body=EMAIL, key=None, path="/v2/emails"):
    headers = dict(AUTH)
    if key:
        headers["Idempotency-Key"] = key
    return client.post(sb.base_url + path, json=body, headers=headers)


def v1(client, sb, body=V1, key=None):
    headers = {"X-API-Key": "sk-test"}
    if key:
        headers["Idempotency-Key"] = key
    return client.post(sb.base_url + "/api/v1/send", json=body, headers=headers)


# idempotency --------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [tosend, v1])
def test_by_default_the_same_request_twice_is_two_messages(client, sandbox, send) -> None:
    """Neither provider documents idempotency: a resend delivers again."""
    first = send(client, sandbox, key="k-1")
    again = send(client, sandbox, key="k-1")
    assert first.status_code == again.status_code == 200
    assert len(sandbox.messages()) == 2
    assert [m["idempotency_key"] for m in sandbox.messages()] == ["k-1", "k-1"]
    stats = sandbox.stats()
    assert (stats["duplicates"], stats["accepted"], stats["idempotency_keys"]) == (0, 2, 0)
    # a different body under the same key is simply another message, not a 409
    changed = {**(EMAIL if send is tosend else V1), "subject": "Changed"}
    assert send(client, sandbox, body=changed, key="k-1").status_code == 200
    assert len(sandbox.messages()) == 3


def test_by_default_the_same_message_hash_twice_is_two_messages(client, sandbox) -> None:
    body = {**EMAIL, "message_hash": "m-1"}
    assert tosend(client, sandbox, body=body).json() == {"message_id": "m-1"}
    assert tosend(client, sandbox, body=body).json() == {"message_id": "m-1"}
    assert [m["message_id"] for m in sandbox.messages()] == ["m-1", "m-1"]


@pytest.fixture
def idem(make_sandbox):
    """A sandbox modelling a provider that honours Idempotency-Key."""
    return make_sandbox(idempotency_keys=True)


@pytest.mark.parametrize("send", [tosend, v1])
def test_same_key_same_body_replays_without_a_second_message(client, idem, send) -> None:
    first = send(client, idem, key="k-1")
    again = send(client, idem, key="k-1")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert len(idem.messages()) == 1
    assert idem.messages()[0]["idempotency_key"] == "k-1"
    assert idem.stats()["duplicates"] == 1
    assert idem.stats()["accepted"] == 1


def test_same_key_different_body_is_409(client, idem) -> None:
    tosend(client, idem, key="k-1")
    r = tosend(client, idem, body={**EMAIL, "subject": "Changed"}, key="k-1")
    assert r.status_code == 409
    assert r.json() == {
        "status_code": 409,
        "error_type": "conflict",
        "message": "This Idempotency-Key was already used with a different request body.",
        "errors": {
            "idempotency_key": {
                "mismatch": "This Idempotency-Key was already used with a different request body."
            }
        },
    }
    r1 = v1(client, idem, key="v-1")
    assert r1.status_code == 200
    r2 = v1(client, idem, body={**V1, "subject": "Changed"}, key="v-1")
    assert r2.status_code == 409
    assert r2.json()["error"] == "conflict"
    assert len(idem.messages()) == 2
    assert idem.stats()["rejections"] == {"409": 2}


def test_different_keys_are_different_messages(client, idem) -> None:
    a = tosend(client, idem, key="a").json()
    b = tosend(client, idem, key="b").json()
    c = tosend(client, idem).json()  # no key: never deduplicated
    d = tosend(client, idem).json()
    assert len({a["message_id"], b["message_id"], c["message_id"], d["message_id"]}) == 4
    assert len(idem.messages()) == 4


def test_keys_are_scoped_to_the_endpoint(client, idem) -> None:
    tosend(client, idem, key="k")
    r = tosend(client, idem, body=[EMAIL], key="k", path="/v2/emails/batch")
    assert r.status_code == 200
    assert len(idem.messages()) == 2


def test_refused_requests_are_not_stored(client, make_sandbox) -> None:
    sb = make_sandbox(credits=0, idempotency_keys=True)
    assert tosend(client, sb, key="k").status_code == 403
    sb.configure(credits=5)
    assert tosend(client, sb, key="k").status_code == 200  # evaluated afresh
    assert len(sb.messages()) == 1


def test_batch_replay_returns_the_207(client, idem) -> None:
    payload = {"emails": [EMAIL, {**EMAIL, "subject": ""}]}
    first = tosend(client, idem, body=payload, key="b-1", path="/v2/emails/batch")
    again = tosend(client, idem, body=payload, key="b-1", path="/v2/emails/batch")
    assert first.status_code == again.status_code == 207
    assert first.content == again.content
    assert len(idem.messages()) == 1


def test_keys_are_kept_24_hours(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(clock=clock, idempotency_keys=True)
    first = tosend(client, sb, key="k").json()
    clock.t += 24 * 3600 - 1
    assert tosend(client, sb, key="k").json() == first
    clock.t += 2
    assert tosend(client, sb, key="k").json() != first
    assert len(sb.messages()) == 2


def test_idempotency_can_be_switched_on_live(client, sandbox) -> None:
    tosend(client, sandbox, key="k")
    sandbox.configure(idempotency_keys=True)
    tosend(client, sandbox, key="k")  # nothing was stored while it was off
    tosend(client, sandbox, key="k")
    assert len(sandbox.messages()) == 2 and sandbox.stats()["duplicates"] == 1


# rate limits --------------------------------------------------------------------------------


def rcpts(n: int) -> list[dict[str, str]]:
    return [{"email": f"r{i}@recipients.org"} for i in range(n)]


def test_tosend_counts_emails_not_requests(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(tosend_emails_per_second=5, clock=clock)
    # 3 to + 1 cc + 1 bcc = 5 emails: the whole second's worth in one request
    big = {**EMAIL, "to": rcpts(3), "cc": [{"email": "c@r.org"}], "bcc": [{"email": "b@r.org"}]}
    assert tosend(client, sb, body=big).status_code == 200
    r = tosend(client, sb)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert r.json() == {
        "status_code": 429,
        "error_type": "rate_limit_exceeded",
        "message": "Too many requests. Please slow down.",
        "errors": {"rate_limit": {"exceeded": "Rate limit of 5 emails per second exceeded."}},
    }
    clock.t += 0.2  # refilled continuously: one email's worth
    assert tosend(client, sb).status_code == 200
    assert tosend(client, sb).status_code == 429
    stats = sb.stats()
    assert stats["faults"] == {"429": 2} and stats["accepted"] == 2


def test_tosend_a_batch_bigger_than_the_bucket_is_admitted_then_the_next_waits(
    client, make_sandbox
) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(tosend_emails_per_second=50, clock=clock)
    batch = {"emails": [{**EMAIL, "to": rcpts(1)} for _ in range(100)]}
    r = tosend(client, sb, body=batch, path="/v2/emails/batch")
    assert r.status_code == 200 and len(sb.messages()) == 100
    limited = tosend(client, sb)
    assert limited.status_code == 429
    # the level is -50: one more email needs 51/50 s
    assert limited.headers["Retry-After"] == "2"
    clock.t += 1.0
    assert tosend(client, sb).status_code == 429  # -50 + 50 = 0 < 1
    clock.t += 0.03
    assert tosend(client, sb).status_code == 200


def test_tosend_bucket_holds_at_most_one_second(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(tosend_emails_per_second=2, clock=clock)
    clock.t += 3600  # an idle hour does not bank 7200 emails
    statuses = [tosend(client, sb).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_tosend_rate_is_reported_by_info_and_not_counted_there(client, make_sandbox) -> None:
    sb = make_sandbox(tosend_emails_per_second=1, clock=FakeClock(T0))
    bad = client.post(sb.base_url + "/v2/emails", json=EMAIL, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 403  # a refused key takes nothing
    for _ in range(3):
        info = client.get(sb.base_url + "/v2/info", headers=AUTH)
        assert info.status_code == 200
        assert info.json()["account"]["limit_per_second"] == 1
    assert tosend(client, sb).status_code == 200
    assert tosend(client, sb).status_code == 429


def test_v1_counts_requests_in_a_sliding_minute(client, make_sandbox) -> None:
    clock = FakeClock(T0)
    sb = make_sandbox(v1_requests_per_minute=2, clock=clock)
    first = v1(client, sb)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert first.headers["X-RateLimit-Reset"] == str(int(T0) + 60)
    clock.t += 30
    second = v1(client, sb)
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert second.headers["X-RateLimit-Reset"] == str(int(T0) + 60)  # the oldest leaves then
    clock.t += 10
    limited = v1(client, sb)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "20"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.json() == {
        "error": "rate_limit_exceeded",
        "message": "Rate limit of 2 requests per minute exceeded.",
    }
    clock.t += 20  # T0 + 60: the first request left the window
    again = v1(client, sb)
    assert again.status_code == 200
    assert again.headers["X-RateLimit-Reset"] == str(int(T0) + 90)


def test_v1_headers_ride_on_errors_and_events(client, make_sandbox) -> None:
    sb = make_sandbox(v1_requests_per_minute=600, clock=FakeClock(T0))
    bad = v1(client, sb, body={"to": "nobody", "subject": "s", "text": "t"})
    assert bad.status_code == 400 and bad.headers["X-RateLimit-Remaining"] == "599"
    events = client.get(sb.base_url + "/api/v1/events", headers=AUTH)
    assert events.status_code == 200 and events.headers["X-RateLimit-Remaining"] == "598"


def test_v1_and_tosend_limits_are_separate(client, make_sandbox) -> None:
    sb = make_sandbox(v1_requests_per_minute=1, tosend_emails_per_second=1, clock=FakeClock(T0))
    assert [v1(client, sb).status_code, tosend(client, sb).status_code] == [200, 200]
    assert [v1(client, sb).status_code, tosend(client, sb).status_code] == [429, 429]
    assert "X-RateLimit-Limit" not in tosend(client, sb).headers


def test_rate_limits_change_live(client, make_sandbox) -> None:
    sb = make_sandbox(clock=FakeClock(T0))
    assert [tosend(client, sb).status_code for _ in range(3)] == [200] * 3
    assert "X-RateLimit-Limit" not in v1(client, sb).headers  # unlimited: no headers
    sb.configure(tosend_emails_per_second=1)
    assert [tosend(client, sb).status_code for _ in range(2)] == [200, 429]
    sb.configure(tosend_emails_per_second=None)
    assert tosend(client, sb).status_code == 200


def test_retry_after_can_be_left_out(client, make_sandbox) -> None:
    sb = make_sandbox(tosend_emails_per_second=1, v1_requests_per_minute=1, clock=FakeClock(T0))
    sb.configure(retry_after=False)
    tosend(client, sb), v1(client, sb)
    for r in (tosend(client, sb), v1(client, sb)):
        assert r.status_code == 429 and "Retry-After" not in r.headers


def test_the_old_rate_limit_setting_names_its_replacements(client, sandbox) -> None:
    r = client.post(sandbox.base_url + "/_sandbox/config", json={"rate_limit": 5})
    assert r.status_code == 400
    assert "tosend_emails_per_second" in r.json()["message"]
    assert "v1_requests_per_minute" in r.json()["message"]
    from batchsend.sandbox import Sandbox

    with pytest.raises(TypeError, match="tosend_emails_per_second"):
        Sandbox(rate_limit=5)


def test_refuse_next_is_a_storm_of_exactly_n_429s(client, make_sandbox) -> None:
    sb = make_sandbox(clock=FakeClock(T0))
    sb.configure(refuse_next=2, retry_after=False)
    bad = client.post(sb.base_url + "/v2/emails", json=EMAIL, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 403  # a refused key does not use up the storm
    answers = [tosend(client, sb) for _ in range(2)] + [v1(client, sb), tosend(client, sb)]
    assert [a.status_code for a in answers] == [429, 429, 200, 200]
    assert "Retry-After" not in answers[0].headers
    assert answers[0].json()["error_type"]
    assert sb.stats()["faults"] == {"429": 2}


def test_a_schedule_changes_settings_at_a_request_count(client, make_sandbox) -> None:
    sb = make_sandbox(clock=FakeClock(T0), seed=1)
    sb.configure(schedule=[[3, {"fail_rate": 1.0}], [5, {"fail_rate": 0.0, "refuse_next": 1}]])
    statuses = [tosend(client, sb).status_code for _ in range(7)]
    # requests 3 and 4 are faulted, 5 is refused, then back to normal
    assert statuses[:2] == [200, 200] and statuses[2] in (500, 502, 503)
    assert statuses[3] in (500, 502, 503) and statuses[4:] == [429, 200, 200]
    assert client.get(sb.base_url + "/_sandbox/config").json()["schedule"][0] == [
        3, {"fail_rate": 1.0}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "schedule",
    [[[0, {"fail_rate": 1.0}]], [[2, {"no_such": 1}]], [[2, {"schedule": []}]], [[2]]],
)
def test_a_bad_schedule_is_refused(client, make_sandbox, schedule) -> None:
    sb = make_sandbox()
    r = client.post(sb.base_url + "/_sandbox/config", json={"schedule": schedule})
    assert r.status_code == 400 and "schedule" in r.json()["message"]


# fail rate ----------------------------------------------------------------------------------


def _statuses(client, sb, n: int) -> list[int]:
    return [tosend(client, sb).status_code for _ in range(n)]


def test_fail_rate_is_reproducible_with_a_seed(client, make_sandbox) -> None:
    a = _statuses(client, make_sandbox(fail_rate=0.5, seed=7), 40)
    b = _statuses(client, make_sandbox(fail_rate=0.5, seed=7), 40)
    c = _statuses(client, make_sandbox(fail_rate=0.5, seed=8), 40)
    assert a == b
    assert a != c
    assert set(a) == {200, 500, 502, 503}


def test_injected_faults_accept_nothing_and_are_counted(client, make_sandbox) -> None:
    sb = make_sandbox(fail_rate=1.0, seed=1)
    r = tosend(client, sb, key="k")
    assert r.status_code in (500, 502, 503)
    body = r.json()
    assert body["status_code"] == r.status_code and body["error_type"]
    v = v1(client, sb)
    assert v.status_code in (500, 502, 503) and set(v.json()) == {"error", "message"}
    assert sb.messages() == []
    assert sum(sb.stats()["faults"].values()) == 2
    sb.configure(fail_rate=0.0)
    assert tosend(client, sb, key="k").status_code == 200  # the retry goes through


def test_auth_comes_before_faults(client, make_sandbox) -> None:
    sb = make_sandbox(fail_rate=1.0, seed=1)
    r = client.post(sb.base_url + "/v2/emails", json=EMAIL)
    assert r.status_code == 401
    assert sb.stats()["faults"] == {}


def test_info_is_never_faulted(client, make_sandbox) -> None:
    sb = make_sandbox(fail_rate=1.0, drop_rate=1.0)
    assert client.get(sb.base_url + "/v2/info", headers=AUTH).status_code == 200


# drop ---------------------------------------------------------------------------------------


def test_drop_accepts_then_closes_without_answer(client, make_sandbox) -> None:
    sb = make_sandbox(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        tosend(client, sb, key="k")
    (entry,) = sb.messages()  # it WAS accepted
    assert sb.stats()["faults"] == {"dropped": 1}
    sb.configure(drop_rate=0.0)
    retry = tosend(client, sb, key="k")  # as at the real providers: a second message
    assert retry.status_code == 200
    assert retry.json() != {"message_id": entry["message_id"]}
    assert len(sb.messages()) == 2
    assert sb.stats()["duplicates"] == 0


def test_drop_with_idempotency_replays_on_retry(client, make_sandbox) -> None:
    sb = make_sandbox(drop_rate=1.0, idempotency_keys=True)
    with pytest.raises(httpx.RemoteProtocolError):
        tosend(client, sb, key="k")
    (entry,) = sb.messages()
    sb.configure(drop_rate=0.0)
    retry = tosend(client, sb, key="k")
    assert retry.json() == {"message_id": entry["message_id"]}
    assert len(sb.messages()) == 1
    assert sb.stats()["duplicates"] == 1


def test_drop_never_hits_refusals(client, make_sandbox) -> None:
    sb = make_sandbox(drop_rate=1.0)
    assert tosend(client, sb, body={**EMAIL, "subject": ""}).status_code == 422
    v = client.post(sb.base_url + "/api/v1/send", json=V1, headers={"X-API-Key": "x"})
    assert v.status_code == 403


def test_drop_rate_is_reproducible(client, make_sandbox) -> None:
    def run(seed: int) -> list[str]:
        sb = make_sandbox(drop_rate=0.5, seed=seed)
        out = []
        for _ in range(30):
            try:
                out.append(str(tosend(client, sb).status_code))
            except httpx.RemoteProtocolError:
                out.append("dropped")
        assert len(sb.messages()) == 30  # dropped or not, every one was accepted
        return out

    first = run(3)
    assert first == run(3)
    assert {"200", "dropped"} == set(first)


# latency ------------------------------------------------------------------------------------


def test_latency_delays_answers(client, make_sandbox) -> None:
    sb = make_sandbox(latency_ms=60)
    started = time.perf_counter()
    assert tosend(client, sb).status_code == 200
    assert time.perf_counter() - started >= 0.06


# faults after acceptance ----------------------------------------------------------------------


@pytest.mark.parametrize("send", [tosend, v1])
def test_fail_after_accept_logs_then_answers_500(client, make_sandbox, send) -> None:
    sb = make_sandbox(fail_after_accept_rate=1.0)
    r = send(client, sb)
    assert r.status_code == 500
    assert len(sb.messages()) == 1  # delivered, though the answer says it failed
    assert sb.stats()["faults"] == {"failed_after_accept": 1}
    assert sb.stats()["accepted"] == 1


def test_fail_after_accept_never_hits_refusals(client, make_sandbox) -> None:
    sb = make_sandbox(fail_after_accept_rate=1.0, slow_rate=1.0, slow_ms=5000)
    assert tosend(client, sb, body={**EMAIL, "subject": ""}).status_code == 422
    assert sb.stats()["faults"] == {}


def test_slow_answer_comes_late_but_the_message_is_delivered(make_sandbox) -> None:
    sb = make_sandbox(slow_rate=1.0, slow_ms=400)
    with httpx.Client(timeout=0.1) as impatient, pytest.raises(httpx.ReadTimeout):
        tosend(impatient, sb)
    assert len(sb.messages()) == 1
    assert sb.stats()["faults"] == {"slow": 1}
    started = time.perf_counter()
    with httpx.Client(timeout=5) as patient:
        assert tosend(patient, sb).status_code == 200
    assert time.perf_counter() - started >= 0.4


def test_each_fault_is_counted_under_its_own_name(client, make_sandbox) -> None:
    sb = make_sandbox(seed=5, fail_rate=0.2, drop_rate=0.2, fail_after_accept_rate=0.25)
    seen = []
    for _ in range(60):
        try:
            seen.append(tosend(client, sb).status_code)
        except httpx.RemoteProtocolError:
            seen.append("dropped")
    faults = sb.stats()["faults"]
    before = sum(faults.get(k, 0) for k in ("500", "502", "503"))
    assert faults["dropped"] == seen.count("dropped") > 0
    assert faults["failed_after_accept"] > 0 and before > 0
    # every answer but a refusal before processing accepted its message
    assert len(sb.messages()) == 60 - before
    assert (
        seen.count(500) + seen.count(502) + seen.count(503)
        == before + faults["failed_after_accept"]
    )


def test_after_accept_faults_are_reproducible_with_a_seed(client, make_sandbox) -> None:
    def run(seed: int) -> list[str]:
        sb = make_sandbox(seed=seed, drop_rate=0.3, fail_after_accept_rate=0.3)
        out = []
        for _ in range(30):
            try:
                out.append(str(tosend(client, sb).status_code))
            except httpx.RemoteProtocolError:
                out.append("dropped")
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)
