"""Preflight: every row accounted for, bad rows named with row and column, nothing sent."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.campaigns import campaign_folder

from batchsend.campaign import load_campaign
from batchsend.cli import main
from batchsend.preflight import iter_rows, preflight

DATA = Path(__file__).parent / "data"

BASE = """\
provider = "{provider}"
[source]
path = "r.csv"
[columns]
name = "name"
{columns}
[sender]
email = "news@example.com"
[message]
subject = "Hello {{{{ first_name }}}}"
html = "<p>Hi {{{{ first_name }}}}</p>"
{extra}
"""


def make(tmp_path: Path, rows: str, columns: str = "", extra: str = "", provider="tosend"):
    toml = BASE.format(provider=provider, columns=columns, extra=extra)
    return load_campaign(campaign_folder(tmp_path, toml, {"r.csv": rows}))


def from_data(tmp_path: Path, data_file: str, columns: str = "", extra: str = ""):
    rows = (DATA / data_file).read_text(encoding="utf-8")
    return make(tmp_path, rows, columns, extra)


def test_invalid_addresses_are_invalid_rows_with_column(tmp_path) -> None:
    campaign = from_data(tmp_path, "invalid_addresses.csv")
    results = list(iter_rows(campaign))
    assert [r.skip_reason for r in results] == [
        None,
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        None,
    ]
    for r in results[1:5]:
        (problem,) = r.problems
        assert problem.row == r.row and problem.column == "email"
        assert "invalid address" in problem.message
        assert r.message is None
    report = preflight(campaign)
    assert (report.rows, report.sendable, report.problem_count) == (6, 2, 4)
    assert report.skipped_by_reason == {"invalid": 4}
    assert not report.ok


def test_crlf_in_name_is_header_injection(tmp_path) -> None:
    campaign = from_data(tmp_path, "crlf_in_name.csv")
    first, second = iter_rows(campaign)
    assert first.skip_reason == "invalid"
    assert first.problems[0].column == "name" and "header injection" in first.problems[0].message
    assert second.message is not None and second.message.to[0].name == "Bob Ray"


@pytest.mark.parametrize(
    ("raw", "sent_as"),
    [
        ("Ann@Example.COM", "Ann@example.com"),
        (" ann@example.com ", "ann@example.com"),
        ("jose@bücher.example", "jose@xn--bcher-kva.example"),
        ('"quoted local"@example.com', None),  # the library refuses quoted local parts
        ("ann@localhost", None),
        ("ann@example", None),
        ("a" * 65 + "@example.com", "a" * 65 + "@example.com"),  # the library allows it
        ("ann@-example.com", None),
        ("ann.@example.com", None),
        ("ann+tag@example.co.uk", "ann+tag@example.co.uk"),
    ],
)
def test_address_normalisation(tmp_path, raw, sent_as) -> None:
    campaign = make(tmp_path, f'email,name,first_name\n"{raw}",N,F\n'.replace('""', '"'))
    if raw.startswith('"'):
        campaign = make(tmp_path, 'email,name,first_name\n"""quoted local""@example.com",N,F\n')
    (r,) = iter_rows(campaign)
    if sent_as is None:
        assert r.skip_reason == "invalid"
    else:
        assert r.message is not None and r.message.to[0].email == sent_as


def test_fast_path_agrees_with_the_library() -> None:
    from email_validator import EmailNotValidError, validate_email

    from batchsend.addresses import AddressBook, InvalidAddress

    book = AddressBook()
    cases = [
        "a@example.com", "A.B-c_d+e@sub.example.org", "x@xn--bcher-kva.example",
        "a..b@example.com", ".a@example.com", "a@example..com", "a@exa_mple.com",
        "a!#$%&'*+/=?^_`{|}~@example.com", "a@123.com", "a@[127.0.0.1]", "a@ex ample.com",
        "ü@example.com", "a@" + "b" * 64 + ".com", "a@" + ".".join(["b" * 60] * 5) + ".com",
    ]  # fmt: skip
    for raw in cases:
        try:
            expected = validate_email(raw, check_deliverability=False)
            expected_email = expected.ascii_email or expected.normalized
        except EmailNotValidError:
            expected_email = None
        try:
            got = book.normalise(raw).email
        except InvalidAddress:
            got = None
        assert got == expected_email, raw


def test_duplicates_after_normalisation_and_suppression(tmp_path) -> None:
    (tmp_path / "unsub.csv").write_text("email,when\nCAROL@example.com,2026-01-01\n")
    campaign = make(
        tmp_path,
        "email,name,first_name\nann@example.com,A,Ann\nANN@EXAMPLE.COM,A,Ann\n"
        "carol@Example.com,C,Carol\nbob@example.com,B,Bob\nann@example.com,A,Ann\n",
        extra='[suppression]\nfiles = ["unsub.csv"]',
    )
    reasons = [r.skip_reason for r in iter_rows(campaign)]
    assert reasons == [None, "duplicate", "suppressed", None, "duplicate"]
    report = preflight(campaign)
    assert report.ok  # skipping is not a problem
    assert report.skipped_by_reason == {"duplicate": 2, "suppressed": 1}


def test_duplicates_across_batches(tmp_path, monkeypatch) -> None:
    import batchsend.preflight as pf

    monkeypatch.setattr(pf, "BATCH_ROWS", 7)  # many small batches
    monkeypatch.setattr(pf, "MERGE_EVERY", 3)  # and many joins into the sorted array
    lines = [f"u{i % 10}@example.com,N,F" for i in range(30)]
    campaign = make(tmp_path, "email,name,first_name\n" + "\n".join(lines) + "\n")
    reasons = [r.skip_reason for r in iter_rows(campaign)]
    assert reasons == [None] * 10 + ["duplicate"] * 20


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.none(), max_size=30),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=8),
)
def test_the_seen_hashes_answer_as_a_set_would(batches, merge_every) -> None:
    # Every part of the split array (top bits of the hash, negative hashes included),
    # merged often: a hash is found exactly when an earlier batch added it.
    import batchsend.preflight as pf

    old, pf.MERGE_EVERY = pf.MERGE_EVERY, merge_every
    try:
        seen, merged, waiting = pf._Seen(), set(), set()  # the model: what was merged
        for hashes in batches:
            found = seen.seen_before_batch(hashes)
            assert found == [h is not None and h in merged for h in hashes]
            for h in hashes:
                if h is not None:
                    seen.batch.add(h)
                    waiting.add(h)
            seen.end_batch()
            if not seen.batch:  # joined into the sorted parts
                merged |= waiting
                waiting = set()
    finally:
        pf.MERGE_EVERY = old


def test_an_invalid_first_occurrence_does_not_hide_a_good_one(tmp_path) -> None:
    # Row 1 is invalid (a line break in the name), so row 2 is not its duplicate.
    campaign = make(
        tmp_path, 'email,name,first_name\nann@example.com,"A\nB",Ann\nann@example.com,A,Ann\n'
    )
    assert [r.skip_reason for r in iter_rows(campaign)] == ["invalid", None]


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("../secret.txt", "leaves the campaign folder"),
        ("/etc/passwd", "absolute path"),
        ("%2e%2e%2fsecret.txt", "percent-encoded"),
        ("files\\..\\..\\secret.txt", "backslash"),
        ("escape/secret.txt", "outside the campaign folder"),  # a symlink out
        ("files/missing.pdf", "not found"),
        ("~/secret.txt", "absolute path"),
    ],
)
def test_attachment_paths_that_escape_are_never_read(tmp_path, cell, words) -> None:
    folder = tmp_path / "campaign"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    (folder / "files").mkdir()
    os.symlink(tmp_path, folder / "escape")
    campaign = make(
        folder,
        f'email,name,first_name,file\nann@example.com,A,Ann,"{cell}"\n',
        columns='attachments = "file"',
    )
    (r,) = iter_rows(campaign)
    assert r.skip_reason == "invalid"
    assert r.problems[0].column == "file" and words in r.problems[0].message


def test_attachment_data_file_rows(tmp_path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "ok.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("no")
    campaign = from_data(tmp_path, "traversal_attachments.csv", columns='attachments = "file"')
    results = list(iter_rows(campaign))
    assert [r.skip_reason for r in results] == ["invalid", "invalid", "invalid", None]
    good = results[3].message
    assert good is not None
    (attachment,) = good.attachments
    assert (attachment.filename, attachment.content_type, attachment.content) == (
        "ok.txt", "text/plain", b"hello",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "size_mb", "ok"),
    [("v1", 9, True), ("v1", 11, False), ("tosend", 9, True), ("tosend", 11, False)],
)
def test_attachment_size_limits(tmp_path, provider, size_mb, ok) -> None:
    with (tmp_path / "big.bin").open("wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)  # sparse: no real I/O
    campaign = make(
        tmp_path,
        "email,name,first_name,file\nann@example.com,A,Ann,big.bin\n",
        columns='attachments = "file"',
        provider=provider,
    )
    (r,) = iter_rows(campaign)
    assert (r.skip_reason is None) is ok
    if not ok:
        assert "limit" in r.problems[0].message


def test_v1_total_counts_html(tmp_path) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        with (tmp_path / name).open("wb") as fh:
            fh.truncate(9 * 1024 * 1024)
    campaign = make(
        tmp_path,
        "email,name,first_name,file\nann@example.com,A,Ann,a.bin;b.bin;c.bin\n",
        columns='attachments = "file"',
        provider="v1",
    )
    (r,) = iter_rows(campaign)
    assert r.skip_reason == "invalid" and "25 MB" in r.problems[0].message


def test_cc_bcc_lists_and_recipient_limit(tmp_path) -> None:
    many = ";".join(f"c{i}@example.com" for i in range(51))
    campaign = make(
        tmp_path,
        "email,name,first_name,cc,bcc\n"
        'ann@example.com,A,Ann,"x@example.com; y@example.com","z@example.com"\n'
        f'bob@example.com,B,Bob,"{many}",\n'
        "carol@example.com,C,Carol,bad-address,\n",
        columns='cc = "cc"\nbcc = "bcc"',
    )
    ann, bob, carol = iter_rows(campaign)
    assert ann.message is not None
    assert [a.email for a in ann.message.cc] == ["x@example.com", "y@example.com"]
    assert [a.email for a in ann.message.bcc] == ["z@example.com"]
    assert bob.skip_reason == "invalid" and "over the limit of 50" in bob.problems[0].message
    assert carol.skip_reason == "invalid" and carol.problems[0].column == "cc"


def test_missing_template_variable_is_a_row_problem(tmp_path) -> None:
    campaign = make(tmp_path, "email,name\nann@example.com,A\n")
    (r,) = iter_rows(campaign)
    assert r.skip_reason == "invalid"
    assert r.problems[0].column == "first_name"


def test_estimated_requests(tmp_path) -> None:
    lines = "\n".join(f"u{i}@example.com,N,F" for i in range(250))
    rows = "email,name,first_name\n" + lines + "\n"
    assert preflight(make(tmp_path, rows)).estimated_requests == 3  # batches of 100
    assert preflight(make(tmp_path, rows, provider="v1")).estimated_requests == 250
    merged = make(tmp_path, rows, extra="[merge]\nenabled = true")
    assert preflight(merged).estimated_requests == 1  # 250 identical -> 5 merged of 50


def test_every_row_yields_once_in_order(tmp_path) -> None:
    campaign = load_campaign("samples/newsletter")
    results = list(iter_rows(campaign))
    assert [r.row for r in results] == list(range(1, 11))
    good = [r for r in results if r.message is not None]
    assert all(r.message.row == r.row for r in good)
    assert results[0].metadata == {"customer_id": "C-1001"}
    # The text template was given, so text is the rendered template, not derived HTML.
    assert results[0].message.text.startswith("Hello Ada,")


def test_rendering_is_deterministic_across_runs() -> None:
    campaign = load_campaign("samples/invoices")
    first = [r.message for r in iter_rows(campaign)]
    assert first == [r.message for r in iter_rows(campaign)]


def test_check_command_groups_problems_and_exits_2(tmp_path) -> None:
    from_data(tmp_path, "invalid_addresses.csv")
    errors = tmp_path / "bad.csv"
    result = CliRunner().invoke(
        main, ["check", str(tmp_path / "campaign.toml"), "--errors", str(errors)]
    )
    assert result.exit_code == 2, result.output
    assert "column 'email': invalid address" in result.output
    assert "invalid address 'not-an-address'" in result.output  # the value that is wrong
    for row in (2, 3, 4, 5):
        assert f"  rows {row}\n" in result.output
    assert "rows 6, sendable 2, skipped: invalid 4, estimated requests 1" in result.output
    written = list(csv.DictReader(io.StringIO(errors.read_text())))
    assert [w["row"] for w in written] == ["2", "3", "4", "5"]
    assert written[0]["email"] == "not-an-address" and written[0]["column"] == "email"


@pytest.mark.parametrize("sample", ["newsletter", "event-invite", "invoices"])
def test_check_passes_on_samples(sample) -> None:
    result = CliRunner().invoke(main, ["check", f"samples/{sample}/campaign.toml"])
    assert result.exit_code == 0, result.output
    assert "ok: nothing wrong" in result.output


def test_check_file_level_error_exits_2(tmp_path) -> None:
    shutil.copy(DATA / "duplicate_headers.csv", tmp_path / "r.csv")
    (tmp_path / "campaign.toml").write_text(
        BASE.format(provider="tosend", columns="", extra=""), encoding="utf-8"
    )
    result = CliRunner().invoke(main, ["check", str(tmp_path / "campaign.toml")])
    assert result.exit_code == 2
    assert "duplicate header name 'email'" in result.output


@pytest.mark.parametrize(("separator", "shown"), [(";", '";"'), ("\t", '"\\t"')])
def test_a_header_split_by_another_delimiter_names_the_setting(tmp_path, separator, shown) -> None:
    """A ;- or tab-separated export read as CSV: the fix names [source] delimiter."""
    rows = separator.join(["email", "name", "first_name"]) + "\na@example.com;A;A\n"
    make(tmp_path, rows)
    result = CliRunner().invoke(main, ["check", str(tmp_path / "campaign.toml")])
    assert result.exit_code == 2
    assert "r.csv, header row, column 'email'" in result.output
    assert f"set [source] delimiter = {shown}" in result.output


def test_only_renders_the_rows_asked_for_and_judges_duplicates_as_a_full_pass(
    tmp_path, monkeypatch
) -> None:
    """A resume rebuilding a few rows of a big file must not render all of it."""
    from batchsend.render import Renderer

    campaign = make(
        tmp_path,
        "email,name,first_name\nann@example.com,A,Ann\nbob@example.com,B,Bob\n"
        "ANN@example.com,A,Ann\ncarol@example.com,C,Carol\nnot-an-address,D,Dan\n",
    )
    rendered: list[str] = []
    real = Renderer.render

    def counting(self, values, **kw):
        rendered.append(values["first_name"])
        return real(self, values, **kw)

    monkeypatch.setattr(Renderer, "render", counting)
    wanted = {2, 4}
    full = [(r.skip_reason, r.message is not None) for r in iter_rows(campaign)]
    assert rendered == ["Ann", "Bob", "Carol"]
    rendered.clear()
    only = [
        (r.skip_reason, r.message is not None)
        for r in iter_rows(campaign, only=wanted.__contains__)
    ]
    assert rendered == ["Bob", "Carol"]  # rows 2 and 4 only
    # the same verdicts as the full pass; unrendered sendable rows come without a message
    assert [reason for reason, _ in only] == [reason for reason, _ in full]
    assert [only[1][1], only[3][1]] == [True, True]  # rows 2 and 4 carry their message
    assert only[0] == (None, False) and only[2] == ("duplicate", False)
