"""``batchsend sandbox`` on the command line: help, refusals, and a real served process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import httpx
from click.testing import CliRunner
from support.processes import batchsend_command

from batchsend.cli import main

OPTIONS = [
    "--host", "--port", "--api-key", "--domain", "--pending-domain", "--key-domain",
    "--credits", "--tosend-emails-per-second", "--v1-requests-per-minute", "--fail-rate",
    "--latency", "--drop-rate", "--fail-after-accept-rate", "--slow-rate", "--slow-ms",
    "--seed", "--record", "--keep-messages", "--bounce-rate", "--complaint-rate",
    "--open-rate", "--click-rate", "--event-delay", "--keep-events", "--webhook-url",
    "--tosend-webhook-url", "--v1-webhook-url", "--webhook-secret", "--webhook-shape",
    "--webhook-dup-rate", "--webhook-max-attempts", "--webhook-backoff", "--webhook-timeout",
    "--webhook-concurrency",
]  # fmt: skip
# documented options that need no example line (a flag or a choice shown in --help)
NO_EXAMPLE = ["--idempotency-keys", "--info-shape", "--admin-key", "--events-api"]


SET = {
    "tosend_emails_per_second": 14, "v1_requests_per_minute": 600, "idempotency_keys": True,
    "info_shape": "older", "admin_keys": 1, "events_api": False,
    "fail_after_accept_rate": 0.001, "slow_rate": 0.001, "slow_ms": 900, "seed": 3,
    "bounce_rate": 0.25, "webhook_url": "http://127.0.0.1:9/hooks", "webhook_secret": True,
    "webhook_shape": "flat",
}  # fmt: skip


def test_help_explains_every_option_with_an_example() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--help"])
    assert result.exit_code == 0
    for option in OPTIONS + NO_EXAMPLE:
        assert option in result.output, option
    assert "--rate-limit" not in result.output  # replaced by the two per-provider units
    examples = result.output.split("Example:")[1].split("Options:")[0]
    for option in OPTIONS:
        assert option in examples, f"{option} has no example"


def test_refuses_a_non_loopback_host() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_refuses_a_webhook_url_off_this_machine() -> None:
    for option in ("--webhook-url", "--tosend-webhook-url", "--v1-webhook-url"):
        result = CliRunner().invoke(main, ["sandbox", option, "https://hooks.example.com/x"])
        assert result.exit_code == 2
        assert "loopback only" in result.output
        assert "Traceback" not in result.output


def test_bad_key_domain_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--key-domain", "nodomain"])
    assert result.exit_code == 2
    assert "KEY=DOMAIN" in result.output


def test_serves_prints_url_and_keys_and_stops_on_ctrl_c(tmp_path) -> None:
    record = tmp_path / "sent.jsonl"
    args = batchsend_command(
        "sandbox", "--port", "0", "--api-key", "k-one", "--api-key", "k-two",
        "--domain", "acme.test", "--record", str(record),
        "--tosend-emails-per-second", "14", "--v1-requests-per-minute", "600",
        "--idempotency-keys", "--info-shape", "older", "--admin-key", "tsend_admin_x",
        "--events-api", "off", "--fail-after-accept-rate", "0.001", "--slow-rate", "0.001",
        "--slow-ms", "900", "--seed", "3", "--bounce-rate", "0.25",
        "--webhook-url", "http://127.0.0.1:9/hooks", "--webhook-shape", "flat",
    )  # fmt: skip
    env = {**os.environ, "BATCHSEND_SANDBOX_WEBHOOK_SECRET": "whsec-from-env"}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:\d+", first)
            assert match, first
            url = match.group(0)
            lines = [proc.stdout.readline() for _ in range(6)]
            assert any("k-one, k-two" in line for line in lines), lines
            r = httpx.post(
                f"{url}/api/v1/send",
                json={"to": "a@r.org", "subject": "s", "text": "t"},
                headers={"X-API-Key": "k-two"},
            )
            assert r.status_code == 200
            assert r.json()["message_id"].endswith("@acme.test>")
            assert httpx.get(f"{url}/_sandbox/stats").json()["accepted"] == 1
            config = httpx.get(f"{url}/_sandbox/config").json()
            assert {k: config[k] for k in SET} == SET
            assert "whsec-from-env" not in json.dumps(config)
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    (line,) = record.read_text().splitlines()
    assert json.loads(line)["to"] == ["a@r.org"]


def test_a_sending_key_as_admin_key_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--admin-key", "sk-test"])
    assert result.exit_code == 2
    assert "tsend_admin_" in result.output


def test_port_in_use_is_a_clear_error(sandbox) -> None:
    result = CliRunner().invoke(main, ["sandbox", "--port", str(sandbox.port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{sandbox.port}" in result.output
