"""Preview: row N's rendered parts and the exact provider request body, nothing sent."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from batchsend.campaign import load_campaign
from batchsend.cli import main
from batchsend.errors import InputError, PreflightError
from batchsend.preview import abbreviate, preview, request_for


def test_preview_writes_html_text_and_json(tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        ["preview", "samples/newsletter/campaign.toml", "--row", "3", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "Alan Turing <Alan.Turing@example.com>" in result.output
    assert "subject: Alan, your April garden notes from Wilmslow" in result.output
    html = (tmp_path / "row-3.html").read_text()
    text = (tmp_path / "row-3.txt").read_text()
    body = json.loads((tmp_path / "row-3.json").read_text())
    assert "Hello Alan," in html and text.startswith("Hello Alan,")
    (email,) = body["emails"]  # ToSend batch endpoint: the body wraps the email
    assert email["html"] == html and email["text"] == text
    assert email["to"] == [{"email": "Alan.Turing@example.com", "name": "Alan Turing"}]
    assert email["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_preview_body_is_the_provider_body() -> None:
    campaign = load_campaign("samples/event-invite")
    p = preview(campaign, 2)
    _, body = request_for(campaign, p.result)
    assert p.body == abbreviate(body)
    assert body["to"] == "joao.pereira@example.com"  # v1: one address
    assert body["icalEvent"].startswith("BEGIN:VCALENDAR\r\n")
    assert p.url.endswith("/api/v1/send")


def test_attachment_contents_are_abbreviated(tmp_path) -> None:
    campaign = load_campaign("samples/invoices")
    p = preview(campaign, 1, tmp_path)
    written = json.loads((tmp_path / "row-1.json").read_text())
    names = [a["name"] for a in written["attachments"]]
    assert names == ["Northwind-terms-of-sale.pdf", "INV-2026-0412.pdf"]
    content = written["attachments"][1]["content"]
    assert content.endswith("base64 characters)") and len(content) < 140
    pdf = (campaign.folder / "files" / "INV-2026-0412.pdf").read_bytes()
    assert base64.b64decode(content.split("...")[0] + "==")[:8] == pdf[:8]
    assert "attachments" in p.headline


@pytest.mark.parametrize(
    ("row", "error", "words"),
    [
        (0, InputError, "1 or more"),
        (99, InputError, "the file has 10 data rows"),
        (7, InputError, "skipped as duplicate"),
        (8, InputError, "skipped as suppressed"),
    ],
)
def test_rows_that_cannot_be_previewed(row, error, words) -> None:
    with pytest.raises(error, match=words):
        preview(load_campaign("samples/newsletter"), row)


def test_invalid_row_lists_its_problems(tmp_path) -> None:
    (tmp_path / "r.csv").write_text("email\nnot-an-address\n")
    (tmp_path / "campaign.toml").write_text(
        'provider = "v1"\n[source]\npath = "r.csv"\n[sender]\nemail = "a@example.com"\n'
        '[message]\nsubject = "s"\ntext = "t"\n'
    )
    with pytest.raises(PreflightError, match="row 1 is invalid: invalid address"):
        preview(load_campaign(tmp_path), 1)
