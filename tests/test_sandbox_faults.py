"""Idempotency, rate limits and injected faults, over real HTTP (clock injected, no sleeps)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

T0 = 1_700_000_000.0
AUTH = {"Authorization": "Bearer sk-test"}
EMAIL: dict[str, Any] = {
    "from": {"email": "news@example.com"},
    "to": [{"email": "ann@recipients.org"}],
    "subject": "Hello",
    "text": "Hi",
}
V1 = {"to": "ann@recipients.org", "subject": "Hello", "text": "Hi"}


class Clock:
    """A settable epoch clock the sandbox reads instead of time.time."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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
def test_same_key_same_body_replays_without_a_second_message(client, sandbox, send) -> None:
    first = send(client, sandbox, key="k-1")
    again = send(client, sandbox, key="k-1")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert len(sandbox.messages()) == 1
    assert sandbox.messages()[0]["idempotency_key"] == "k-1"
    assert sandbox.stats()["duplicates"] == 1
    assert sandbox.stats()["accepted"] == 1


def test_same_key_different_body_is_409(client, sandbox) -> None:
    tosend(client, sandbox, key="k-1")
    r = tosend(client, sandbox, body={**EMAIL, "subject": "Changed"}, key="k-1")
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
    r1 = v1(client, sandbox, key="v-1")
    assert r1.status_code == 200
    r2 = v1(client, sandbox, body={**V1, "subject": "Changed"}, key="v-1")
    assert r2.status_code == 409
    assert r2.json()["error"] == "conflict"
    assert len(sandbox.messages()) == 2
    assert sandbox.stats()["rejections"] == {"409": 2}


def test_different_keys_are_different_messages(client, sandbox) -> None:
    a = tosend(client, sandbox, key="a").json()
    b = tosend(client, sandbox, key="b").json()
    c = tosend(client, sandbox).json()  # no key: never deduplicated
    d = tosend(client, sandbox).json()
    assert len({a["message_id"], b["message_id"], c["message_id"], d["message_id"]}) == 4
    assert len(sandbox.messages()) == 4


def test_keys_are_scoped_to_the_endpoint(client, sandbox) -> None:
    tosend(client, sandbox, key="k")
    r = tosend(client, sandbox, body=[EMAIL], key="k", path="/v2/emails/batch")
    assert r.status_code == 200
    assert len(sandbox.messages()) == 2


def test_refused_requests_are_not_stored(client, make_sandbox) -> None:
    sb = make_sandbox(credits=0)
    assert tosend(client, sb, key="k").status_code == 403
    sb.configure(credits=5)
    assert tosend(client, sb, key="k").status_code == 200  # evaluated afresh
    assert len(sb.messages()) == 1


def test_batch_replay_returns_the_207(client, sandbox) -> None:
    payload = {"emails": [EMAIL, {**EMAIL, "subject": ""}]}
    first = tosend(client, sandbox, body=payload, key="b-1", path="/v2/emails/batch")
    again = tosend(client, sandbox, body=payload, key="b-1", path="/v2/emails/batch")
    assert first.status_code == again.status_code == 207
    assert first.content == again.content
    assert len(sandbox.messages()) == 1


def test_keys_are_kept_24_hours(client, make_sandbox) -> None:
    clock = Clock()
    sb = make_sandbox(clock=clock)
    first = tosend(client, sb, key="k").json()
    clock.now += 24 * 3600 - 1
    assert tosend(client, sb, key="k").json() == first
    clock.now += 2
    assert tosend(client, sb, key="k").json() != first
    assert len(sb.messages()) == 2


# rate limit ---------------------------------------------------------------------------------


def test_rate_limit_answers_429_beyond_n_per_second(client, make_sandbox) -> None:
    clock = Clock(T0 + 0.25)
    sb = make_sandbox(rate_limit=3, clock=clock)
    statuses = [tosend(client, sb).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = tosend(client, sb)
    assert r.headers["Retry-After"] == "1"
    assert r.json() == {
        "status_code": 429,
        "error_type": "rate_limit_exceeded",
        "message": "Too many requests. Please slow down.",
        "errors": {"rate_limit": {"exceeded": "Rate limit of 3 requests per second exceeded."}},
    }
    clock.now += 1
    assert tosend(client, sb).status_code == 200
    stats = sb.stats()
    assert stats["faults"] == {"429": 3}
    assert stats["accepted"] == 4
    assert stats["requests_per_second"] == {str(int(T0)): 6, str(int(T0) + 1): 1}
    assert stats["max_requests_per_second"] == 6


def test_v1_rate_limit_headers(client, make_sandbox) -> None:
    clock = Clock(T0)
    sb = make_sandbox(rate_limit=2, clock=clock)
    first = v1(client, sb)
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert first.headers["X-RateLimit-Reset"] == str(int(T0) + 1)
    assert v1(client, sb).headers["X-RateLimit-Remaining"] == "0"
    limited = v1(client, sb)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.json()["error"] == "rate_limit_exceeded"


def test_rate_limit_counts_info_but_not_bad_keys(client, make_sandbox) -> None:
    sb = make_sandbox(rate_limit=1, clock=Clock())
    bad = client.post(sb.base_url + "/v2/emails", json=EMAIL, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 403
    assert client.get(sb.base_url + "/v2/info", headers=AUTH).status_code == 200
    assert tosend(client, sb).status_code == 429


def test_rate_limit_changes_live(client, make_sandbox) -> None:
    sb = make_sandbox(clock=Clock())
    assert [tosend(client, sb).status_code for _ in range(3)] == [200] * 3
    sb.configure(rate_limit=1)
    assert [tosend(client, sb).status_code for _ in range(2)] == [200, 429]
    info = client.get(sb.base_url + "/v2/info", headers=AUTH)
    assert info.status_code == 429  # info counts too
    sb.configure(rate_limit=None)
    assert tosend(client, sb).status_code == 200


def test_refuse_next_is_a_storm_of_exactly_n_429s(client, make_sandbox) -> None:
    sb = make_sandbox(clock=Clock())
    sb.configure(refuse_next=2, retry_after=False)
    bad = client.post(sb.base_url + "/v2/emails", json=EMAIL, headers={"Authorization": "Bearer x"})
    assert bad.status_code == 403  # a refused key does not use up the storm
    answers = [tosend(client, sb) for _ in range(2)] + [v1(client, sb), tosend(client, sb)]
    assert [a.status_code for a in answers] == [429, 429, 200, 200]
    assert "Retry-After" not in answers[0].headers
    assert answers[0].json()["error_type"]
    assert sb.stats()["faults"] == {"429": 2}


def test_a_schedule_changes_settings_at_a_request_count(client, make_sandbox) -> None:
    sb = make_sandbox(clock=Clock(), seed=1)
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
    retry = tosend(client, sb, key="k")
    assert retry.status_code == 200
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
