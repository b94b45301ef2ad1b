"""Preview: exactly what one row produces, written to files, nothing sent.

:func:`preview` renders row N as :func:`~batchsend.preflight.iter_rows` does for a run
and asks the campaign's provider module for the JSON request body it would send, so
the preview cannot drift from the real request. Attachment contents are abbreviated in
the written JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsend.campaign import Campaign
from batchsend.errors import InputError, PreflightError
from batchsend.message import Message, message_key
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.preflight import RowResult, iter_rows

ABBREVIATE_OVER = 80  # characters of base64 kept in the preview


@dataclass(frozen=True, slots=True)
class Preview:
    """Row ``row``'s rendered message, its request body and the files written."""

    result: RowResult
    url: str
    body: Any
    headline: dict[str, str]
    files: tuple[Path, ...] = ()

    @property
    def message(self) -> Message:
        """The rendered message (a preview is only ever made of a sendable row)."""
        assert self.result.message is not None
        return self.result.message

    @property
    def subject(self) -> str:
        return self.message.subject

    @property
    def html(self) -> str | None:
        return self.message.html

    @property
    def text(self) -> str | None:
        return self.message.text


def find_row(campaign: Campaign, row: int) -> RowResult:
    """Row ``row`` (1-based) rendered; :class:`InputError` when it is absent or not sendable."""
    if row < 1:
        raise InputError(f"--row must be 1 or more, got {row}", fix="rows count from 1")
    last = 0
    for r in iter_rows(campaign):
        last = r.row
        if r.row > row:  # passed over: the row pass skips empty rows
            raise InputError(
                "this row is empty (a blank line or only empty fields): it is ignored, and"
                " nothing would be sent",
                file=str(campaign.source),
                row=row,
                fix=f"choose another row, e.g. {r.row}",
            )
        if r.row != row:
            continue
        if r.skip_reason == "invalid":
            text = "; ".join(p.message for p in r.problems)
            raise PreflightError(f"row {row} is invalid: {text}", list(r.problems))
        if r.skip_reason is not None:
            raise InputError(
                f"row {row} ({r.email}) would be skipped as {r.skip_reason}; nothing would be sent",
                file=str(campaign.source),
                row=row,
            )
        return r
    raise InputError(
        f"there is no row {row}: the file has {last} data rows",
        file=str(campaign.source),
        fix=f"choose a row from 1 to {last}",
    )


def request_for(campaign: Campaign, result: RowResult) -> tuple[str, Any]:
    """(URL, JSON body) the provider module builds for this row sent on its own."""
    from batchsend.providers import get_provider

    assert result.message is not None
    provider = get_provider(
        campaign.provider,
        base_url=campaign.base_url or "https://provider.invalid",
        api_key="preview",  # never sent anywhere
        batch_size=campaign.send.batch_size,
    )
    key = message_key("preview", result.message)
    unit = SendUnit(key, (PlannedMessage(key, (result.row,), result.message),), provider.is_batch)
    return provider.url_for(unit), provider.request_body(unit)


def abbreviate(body: Any) -> Any:
    """``body`` with long attachment contents cut to their start and their size."""
    if isinstance(body, list):
        return [abbreviate(v) for v in body]
    if not isinstance(body, dict):
        return body
    out = {}
    for key, value in body.items():
        if key == "content" and isinstance(value, str) and len(value) > ABBREVIATE_OVER:
            value = f"{value[:ABBREVIATE_OVER]}... ({len(value)} base64 characters)"
        out[key] = abbreviate(value)
    return out


def preview(campaign: Campaign, row: int, out_dir: str | Path | None = None) -> Preview:
    """Render row ``row`` and, with ``out_dir``, write ``row-N.html``, ``.txt``, ``.json``.

    Example::

        p = preview(load_campaign("samples/newsletter"), 1, "out/")
        print(p.headline["subject"])
    """
    result = find_row(campaign, row)
    message = result.message
    assert message is not None
    url, body = request_for(campaign, result)
    shown = abbreviate(body)
    headline = {
        "row": str(result.row),
        "from": _address(message.sender.email, message.sender.name),
        "to": ", ".join(_address(a.email, a.name) for a in message.to),
        "subject": message.subject,
        "request": f"POST {url}",
    }
    if message.cc:
        headline["cc"] = ", ".join(a.email for a in message.cc)
    if message.bcc:
        headline["bcc"] = ", ".join(a.email for a in message.bcc)
    if message.attachments:
        headline["attachments"] = ", ".join(
            f"{a.filename} ({len(a.content)} bytes)" for a in message.attachments
        )
    if message.ical:
        headline["calendar invite"] = f"{len(message.ical)} characters"
    files: list[Path] = []
    if out_dir is not None:
        files = _write(Path(out_dir), row, message, shown)
    return Preview(result, url, shown, headline, tuple(files))


def _write(out: Path, row: int, message: Message, shown: Any) -> list[Path]:
    """Write row ``row``'s parts into ``out``; :class:`InputError` when that is impossible."""
    parts = {
        f"row-{row}.html": message.html,
        f"row-{row}.txt": message.text,
        f"row-{row}.ics": message.ical,
        f"row-{row}.json": json.dumps(shown, indent=2, ensure_ascii=False) + "\n",
    }
    files: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in parts.items():
            if text is not None:
                (out / name).write_text(text, encoding="utf-8")
                files.append(out / name)
    except OSError as exc:
        raise InputError(
            f"cannot write the preview: {exc.strerror}",
            file=str(exc.filename or out),
            fix="give --out a folder that can be created and written (not an existing file)",
        ) from None
    return files


def _address(email: str, name: str | None) -> str:
    return f"{name} <{email}>" if name else email
