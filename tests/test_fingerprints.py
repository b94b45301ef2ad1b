"""Fingerprints: a change to the recipients, or to anything else the campaign reads, shows."""

from __future__ import annotations

import shutil

import pytest

from batchsend.campaign import load_campaign
from batchsend.errors import TemplateError
from batchsend.fingerprints import fingerprints


def test_fingerprints_change_with_inputs(tmp_path) -> None:
    shutil.copytree("samples/newsletter", tmp_path / "n")
    campaign = load_campaign(tmp_path / "n")
    data, templates = fingerprints(campaign)
    assert fingerprints(campaign) == (data, templates)
    with (tmp_path / "n" / "templates" / "newsletter.txt.j2").open("a") as fh:
        fh.write("P.S.\n")
    assert fingerprints(campaign) == (data, fingerprints(campaign)[1])
    assert fingerprints(campaign)[1] != templates
    with (tmp_path / "n" / "recipients.csv").open("a") as fh:
        fh.write("C-2000,new@example.com,New,New,Rome,no,,0\n")
    assert fingerprints(campaign)[0] != data


def test_fingerprints_follow_includes_and_name_a_broken_one(tmp_path) -> None:
    shutil.copytree("samples/newsletter", tmp_path / "n")
    body = tmp_path / "n" / "templates" / "newsletter.html.j2"
    body.write_text(body.read_text() + '{% include "templates/footer.j2" %}\n')
    footer = tmp_path / "n" / "templates" / "footer.j2"
    footer.write_text("bye\n")
    campaign = load_campaign(tmp_path / "n")
    before = fingerprints(campaign)[1]
    footer.write_text("bye now\n")
    assert fingerprints(campaign)[1] != before  # an included file counts as a template
    footer.write_text("bye {{ oops }\n")
    with pytest.raises(TemplateError, match="line 1") as info:
        fingerprints(campaign)
    assert info.value.location.file == "templates/footer.j2"
