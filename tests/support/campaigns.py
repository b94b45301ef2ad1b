"""Generated campaigns (plain files in a test's folder) and what a sandbox delivered for them."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The key a generated campaign's sandbox accepts (in BATCHSEND_API_KEY for the run).
KEY = "sk-generated-test"
DOMAIN = "example.com"

# The generated message's text, for a test that swaps it for something else.
TEXT = "{{ first }}, this is message {{ n }}."
TOSEND_SEND = {"concurrency": 4, "batch_size": 10, "max_attempts": 2, "max_retry_time": 5}


def campaign_folder(
    folder: Path, toml: str, files: Mapping[str, str | bytes] | None = None
) -> Path:
    """``folder`` with ``campaign.toml`` holding ``toml`` and ``files`` beside it; its path.

    ``files`` maps a name relative to the folder (subfolders are made) to its text or bytes.
    """
    for name, content in {**(files or {}), "campaign.toml": toml}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder / "campaign.toml"


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
    extra: str = "",
) -> Path:
    """A campaign folder with ``rows`` personalised recipients; returns campaign.toml.

    Row ``n`` (1-based) goes to ``user{n}@example.org``; rows in ``bad_rows`` get an
    invalid address, which preflight rejects. The key comes from ``BATCHSEND_API_KEY``
    (the default); ``extra`` is more top-level TOML (``api_key_file = ...``). ``send``
    adds to or overrides the ``[send]`` settings; with ``merge`` every row gets the same
    message.
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
    body = TEXT if not merge else "The same news for everyone."
    text = f"""name = "generated"
provider = "{provider}"
base_url = "{base_url}"
{extra}

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


def deliveries(messages: list[dict[str, Any]]) -> Counter[str]:
    """How many messages each address received (to, cc and bcc)."""
    return Counter(recipients_in(messages))
