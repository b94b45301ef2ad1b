"""Generated campaigns for the run, resume and crash tests (plain files in tmp_path)."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

KEY = "sk-crash-test"

TOSEND_SEND = {"concurrency": 4, "batch_size": 10, "max_attempts": 2, "max_retry_time": 5}


def write_campaign(
    folder: Path,
    *,
    rows: int = 30,
    provider: str = "tosend",
    base_url: str = "http://127.0.0.1:9",
    sender: str = "news@example.com",
    bad_rows: tuple[int, ...] = (),
    send: dict[str, Any] | None = None,
    merge: bool = False,
    api_key_env: str = "BATCHSEND_API_KEY",
) -> Path:
    """A campaign folder with ``rows`` personalised recipients; returns campaign.toml.

    Row ``n`` (1-based) goes to ``user{n}@example.org``; rows in ``bad_rows`` get an
    invalid address, which preflight rejects.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "recipients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first", "n"])
        for n in range(1, rows + 1):
            email = f"not-an-address-{n}" if n in bad_rows else f"user{n}@example.org"
            writer.writerow([email, f"First{n}", n])
    settings = dict(TOSEND_SEND if provider == "tosend" else {"concurrency": 4})
    settings.update(send or {})
    if provider != "tosend":
        settings.pop("batch_size", None)
    send_lines = "\n".join(f"{k} = {v!r}" for k, v in settings.items())
    body = "{{ first }}, this is message {{ n }}." if not merge else "The same news for everyone."
    text = f"""name = "generated"
provider = "{provider}"
base_url = "{base_url}"
api_key_env = "{api_key_env}"

[source]
path = "recipients.csv"

[sender]
email = "{sender}"
name = "Example News"

[message]
subject = "{"News for {{ first }}" if not merge else "News"}"
text = "{body}"

[send]
{send_lines}
"""
    if merge:
        text += "\n[merge]\nenabled = true\n"
    path = folder / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def recipients_in(messages: list[dict[str, Any]]) -> list[str]:
    """Every address the sandbox delivered to, once per delivery (to + cc + bcc)."""
    out: list[str] = []
    for m in messages:
        for field in ("to", "cc", "bcc"):
            for a in m.get(field) or []:
                out.append(a["email"] if isinstance(a, dict) else a)
    return out


def start_sandbox(record: Path, latency_ms: int) -> tuple[subprocess.Popen, str]:
    """A ``batchsend sandbox`` process accepting :data:`KEY`; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchsend", "sandbox", "--port", "0", "--api-key", KEY,
         "--domain", "example.com", "--latency", str(latency_ms), "--record", str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    """Read the database as an outside observer (a fresh connection per question)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()
