"""Reading recipient files: the hand-made bad files in tests/data, and the good ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from support.campaigns import campaign_folder

from batchsend.campaign import load_campaign
from batchsend.errors import SourceError
from batchsend.preflight import iter_rows, preflight
from batchsend.source import SourceSpec, iter_batches, read_columns

DATA = Path(__file__).parent / "data"

CAMPAIGN = """\
provider = "tosend"
[source]
path = "{source}"
{source_extra}
[columns]
name = "name"
[sender]
email = "news@example.com"
[message]
subject = "Hello {{{{ first_name }}}}"
text = "Hi {{{{ first_name }}}}"
"""


def campaign_for(tmp_path: Path, data_file: str, source_extra: str = ""):
    shutil.copy(DATA / data_file, tmp_path / data_file)
    toml = CAMPAIGN.format(source=data_file, source_extra=source_extra)
    return load_campaign(campaign_folder(tmp_path, toml))


@pytest.mark.parametrize(
    ("data_file", "expected"),
    [
        ("bom.csv", [("ann@example.com", "Ann Lee"), ("bob@example.com", "Bob Ray")]),
        ("crlf.csv", [("ann@example.com", "Ann Lee"), ("bob@example.com", "Bob Ray")]),
        (
            "embedded_newlines.csv",
            [("ann@example.com", "Ann\nLee"), ("bob@example.com", "Ray, Bob")],
        ),
    ],
)
def test_good_files_read_with_their_quirks(tmp_path, data_file, expected) -> None:
    campaign = campaign_for(tmp_path, data_file)
    rows = list(iter_rows(campaign))
    # The name with an embedded newline is a header injection, so that row is invalid;
    # what matters here is that the cell was read whole, on its own row.
    assert [(r.email, r.values["name"]) for r in rows] == expected
    assert [r.row for r in rows] == [1, 2]
    assert "email" in rows[0].values  # the BOM is not part of the first header name


def test_embedded_quotes_reach_the_template(tmp_path) -> None:
    campaign = campaign_for(tmp_path, "embedded_newlines.csv")
    bob = list(iter_rows(campaign))[1]
    assert bob.message is not None
    assert bob.message.subject == 'Hello Bob "the builder"'


@pytest.mark.parametrize(
    ("data_file", "source_extra", "words", "column"),
    [
        ("duplicate_headers.csv", "", ["duplicate header name 'email'", "columns 1 and"], "email"),
        ("latin1.csv", "", ["line 2 is not valid utf-8", "encoding"], None),
        ("missing_email_column.csv", "", ["no column 'email'", "did you mean 'mail'"], "email"),
        ("empty.csv", "", ["the file is empty"], None),
        ("header_only.csv", "", ["no recipient rows"], None),
        ("not_really.parquet", "", ["not a Parquet file", 'format = "csv"'], None),
    ],
)
def test_bad_files_fail_with_file_row_column_and_fix(
    tmp_path, data_file, source_extra, words, column
) -> None:
    campaign = campaign_for(tmp_path, data_file, source_extra)
    with pytest.raises(SourceError) as info:
        preflight(campaign)
    text = str(info.value)
    assert data_file in text
    for word in words:
        assert word in text
    assert info.value.fix
    assert info.value.exit_code == 2
    assert info.value.location.column == column


def test_latin1_reads_when_the_campaign_says_so(tmp_path) -> None:
    campaign = campaign_for(tmp_path, "latin1.csv", 'encoding = "latin-1"')
    rows = list(iter_rows(campaign))
    assert rows[0].name == "Renée Dupré"
    assert rows[0].message is not None and rows[0].message.subject == "Hello Renée"


def test_parquet_file_named_csv_is_refused(tmp_path) -> None:
    pl.DataFrame({"email": ["a@example.com"], "name": ["A"]}).write_parquet(tmp_path / "people.csv")
    with pytest.raises(SourceError, match="Parquet file, not CSV"):
        read_columns(SourceSpec(tmp_path / "people.csv", "csv"))


def test_parquet_keeps_native_types(tmp_path) -> None:
    campaign = load_campaign("samples/event-invite/campaign.toml")
    first = next(iter(iter_rows(campaign)))
    assert first.values["starts_at"].year == 2026  # a datetime, not text
    assert first.message is not None and "DTSTART:20260618T090000Z" in first.message.ical


def test_csv_values_stay_text(tmp_path) -> None:
    (tmp_path / "r.csv").write_text("email,zip\na@example.com,00123\n", encoding="utf-8")
    (batch,) = list(iter_batches(SourceSpec(tmp_path / "r.csv")))
    assert batch.to_dicts() == [{"email": "a@example.com", "zip": "00123"}]


def test_batches_cover_every_row_in_order(tmp_path) -> None:
    lines = ["email"] + [f"u{i}@example.com" for i in range(2500)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    batches = list(iter_batches(SourceSpec(tmp_path / "r.csv"), batch_size=1000))
    assert len(batches) >= 3
    emails = [e for b in batches for e in b["email"].to_list()]
    assert emails == lines[1:]


def test_semicolon_delimiter(tmp_path) -> None:
    (tmp_path / "r.csv").write_text("email;name\na@example.com;A, B\n", encoding="utf-8")
    (batch,) = list(iter_batches(SourceSpec(tmp_path / "r.csv", delimiter=";")))
    assert batch.to_dicts() == [{"email": "a@example.com", "name": "A, B"}]


def test_unreadable_file_names_the_path(tmp_path) -> None:
    with pytest.raises(SourceError, match="cannot read the recipient file"):
        read_columns(SourceSpec(tmp_path / "missing.csv"))


def test_pieces_never_cut_a_quoted_field(tmp_path, monkeypatch) -> None:
    import batchsend.source as source

    lines = ["email,note"]
    for i in range(300):
        note = f'"line one\nline ""two"", {i}\r\nthree"' if i % 3 == 0 else f"plain {i}"
        lines.append(f"u{i}@example.com,{note}")
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(source, "CHUNK_BYTES", 37)  # far smaller than a record
    batches = list(iter_batches(SourceSpec(tmp_path / "r.csv"), batch_size=50))
    rows = [r for b in batches for r in b.rows()]
    assert len(rows) == 300
    assert rows[0] == ("u0@example.com", 'line one\nline "two", 0\r\nthree')
    assert rows[1] == ("u1@example.com", "plain 1")


def test_unclosed_quote_is_reported_not_swallowed(tmp_path, monkeypatch) -> None:
    import batchsend.source as source

    monkeypatch.setattr(source, "MAX_RECORD_BYTES", 1000)
    monkeypatch.setattr(source, "CHUNK_BYTES", 100)
    body = "email,note\n" + 'a@example.com,"never closed\n' + "b@example.com,x\n" * 200
    (tmp_path / "r.csv").write_text(body, encoding="utf-8")
    with pytest.raises(SourceError, match="quote is probably not closed"):
        list(iter_batches(SourceSpec(tmp_path / "r.csv")))
