"""``batchsend sandbox`` on the command line: help, refusals, and a real served process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
from click.testing import CliRunner

from batchsend.cli import main

OPTIONS = [
    "--host", "--port", "--api-key", "--domain", "--pending-domain", "--key-domain",
    "--credits", "--rate-limit", "--fail-rate", "--latency", "--drop-rate", "--seed",
    "--record",
]  # fmt: skip


def test_help_explains_every_option_with_an_example() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--help"])
    assert result.exit_code == 0
    for option in OPTIONS:
        assert option in result.output, option
    examples = result.output.split("Example:")[1].split("Options:")[0]
    for option in OPTIONS:
        assert option in examples, f"{option} has no example"


def test_refuses_a_non_loopback_host() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_bad_key_domain_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--key-domain", "nodomain"])
    assert result.exit_code == 2
    assert "KEY=DOMAIN" in result.output


def test_serves_prints_url_and_keys_and_stops_on_ctrl_c(tmp_path) -> None:
    record = tmp_path / "sent.jsonl"
    args = [sys.executable, "-m", "batchsend", "sandbox", "--port", "0", "--api-key", "k-one",
            "--api-key", "k-two", "--domain", "acme.test", "--record", str(record)]  # fmt: skip
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:\d+", first)
            assert match, first
            url = match.group(0)
            lines = [proc.stdout.readline() for _ in range(4)]
            assert any("k-one, k-two" in line for line in lines), lines
            r = httpx.post(
                f"{url}/api/v1/send",
                json={"to": "a@r.org", "subject": "s", "text": "t"},
                headers={"X-API-Key": "k-two"},
            )
            assert r.status_code == 200
            assert r.json()["message_id"].endswith("@acme.test>")
            assert httpx.get(f"{url}/_sandbox/stats").json()["accepted"] == 1
        finally:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    (line,) = record.read_text().splitlines()
    assert json.loads(line)["to"] == ["a@r.org"]


def test_port_in_use_is_a_clear_error(sandbox) -> None:
    result = CliRunner().invoke(main, ["sandbox", "--port", str(sandbox.port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{sandbox.port}" in result.output
