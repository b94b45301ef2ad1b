"""The embedded sandbox's lifecycle and inspection API, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from batchsend.sandbox import Sandbox

EMAIL = {
    "from": {"email": "news@example.com", "name": "News"},
    "to": [{"email": "ann@recipients.org"}],
    "subject": "Hello",
    "text": "Hi Ann",
}
AUTH = {"Authorization": "Bearer sk-test"}


def test_accepts_and_lists_the_message(sandbox: Sandbox) -> None:
    r = httpx.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH)
    assert r.status_code == 200
    (entry,) = sandbox.messages()
    assert entry["provider"] == "tosend"
    assert entry["message_id"] == r.json()["message_id"]
    assert entry["to"] == ["ann@recipients.org"]
    assert entry["body"]["subject"] == "Hello"
    over_http = httpx.get(f"{sandbox.base_url}/_sandbox/messages").json()
    assert over_http == [entry]
    assert sandbox.stats()["accepted"] == 1


def test_restart_keeps_port_and_state(sandbox: Sandbox) -> None:
    url = sandbox.base_url
    httpx.post(f"{url}/v2/emails", json=EMAIL, headers=AUTH)
    sandbox.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v2/emails", json=EMAIL, headers=AUTH)
    sandbox.start()
    assert sandbox.base_url == url
    assert httpx.post(f"{url}/v2/emails", json=EMAIL, headers=AUTH).status_code == 200
    assert len(sandbox.messages()) == 2


def test_configure_revokes_keys_live(sandbox: Sandbox) -> None:
    sandbox.configure(api_keys=())
    r = httpx.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH)
    assert r.status_code == 403
    assert sandbox.api_keys == ()


def test_configure_over_http(sandbox: Sandbox) -> None:
    r = httpx.post(f"{sandbox.base_url}/_sandbox/config", json={"credits": 0})
    assert r.status_code == 200
    assert r.json()["credits"] == 0
    assert "sk-test" not in r.text  # keys are not echoed
    r = httpx.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH)
    assert r.status_code == 403
    bad = httpx.post(f"{sandbox.base_url}/_sandbox/config", json={"nope": 1})
    assert bad.status_code == 400


def test_record_file_gets_one_line_per_message(make_sandbox, tmp_path) -> None:
    path = tmp_path / "sent.jsonl"
    sb = make_sandbox(record=str(path))
    for _ in range(3):
        httpx.post(f"{sb.base_url}/v2/emails", json=EMAIL, headers=AUTH)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["message_id"] for e in lines] == [e["message_id"] for e in sb.messages()]


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Sandbox(host="0.0.0.0")


def test_messages_since_pages_the_log(sandbox: Sandbox) -> None:
    with httpx.Client() as client:
        for _ in range(3):
            client.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH)
        tail = client.get(f"{sandbox.base_url}/_sandbox/messages", params={"since": 2}).json()
        assert [m["message_id"] for m in tail] == [sandbox.messages()[2]["message_id"]]
        bad = client.get(f"{sandbox.base_url}/_sandbox/messages", params={"since": "x"})
        assert bad.status_code == 400


def test_stats_count_what_happened(sandbox: Sandbox) -> None:
    with httpx.Client() as client:
        client.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH)
        client.post(f"{sandbox.base_url}/v2/emails", json=EMAIL)  # 401
        client.post(
            f"{sandbox.base_url}/api/v1/send", json={"to": "x"}, headers={"X-API-Key": "sk-test"}
        )
        stats = client.get(f"{sandbox.base_url}/_sandbox/stats").json()
    assert stats == sandbox.stats()
    assert stats["requests"] == 3
    assert stats["accepted"] == 1
    assert stats["rejections"] == {"401": 1, "400": 1}
    assert stats["faults"] == {}
    assert sum(stats["requests_per_second"].values()) == 3


def test_only_the_newest_messages_are_kept_in_memory(make_sandbox, tmp_path) -> None:
    # A long rehearsal must not grow the sandbox without bound: the newest N stay for
    # inspection, the rest are counted, and the record file still has every one.
    path = tmp_path / "sent.jsonl"
    sb = make_sandbox(keep_messages=2, record=str(path))
    with httpx.Client() as client:
        ids = [
            client.post(f"{sb.base_url}/v2/emails", json=EMAIL, headers=AUTH).json()["message_id"]
            for _ in range(5)
        ]
        assert [m["message_id"] for m in sb.messages()] == ids[3:]
        stats = sb.stats()
        assert stats["accepted"] == 5
        assert (stats["messages_kept"], stats["messages_forgotten"]) == (2, 3)
        # ?since= counts every accepted message, kept or not
        page = client.get(f"{sb.base_url}/_sandbox/messages", params={"since": 4}).json()
        assert [m["message_id"] for m in page] == ids[4:]
        page = client.get(f"{sb.base_url}/_sandbox/messages", params={"since": 1}).json()
        assert [m["message_id"] for m in page] == ids[3:]
        r = client.get(f"{sb.base_url}/_sandbox/messages", params={"since": -1})
        assert r.status_code == 400
        # lowered live: the oldest kept ones go too
        client.post(f"{sb.base_url}/_sandbox/config", json={"keep_messages": 1})
        assert [m["message_id"] for m in sb.messages()] == ids[4:]
        assert sb.stats()["messages_forgotten"] == 4
    recorded = [json.loads(line)["message_id"] for line in path.read_text().splitlines()]
    assert recorded == ids


@pytest.mark.parametrize("value", [2.5, True, -1, "10"])
def test_a_refused_keep_messages_changes_nothing(sandbox: Sandbox, value) -> None:
    r = httpx.post(
        f"{sandbox.base_url}/_sandbox/config", json={"fail_rate": 1.0, "keep_messages": value}
    )
    assert r.status_code == 400
    config = httpx.get(f"{sandbox.base_url}/_sandbox/config").json()
    assert (
        config["fail_rate"] == 0.0 and config["keep_messages"] == sandbox.state.config.keep_messages
    )
    assert httpx.post(f"{sandbox.base_url}/v2/emails", json=EMAIL, headers=AUTH).status_code == 200
