"""Hostile and broken input: a clear message, exit 2, nothing sent, the store unchanged.

Every case runs the real ``batchsend run`` command (in-process, ``CliRunner``) against a
sandbox on 127.0.0.1, then checks: exit code 2; the message names the file, and the
row and column where there is one; the sandbox saw no request at all; the database
holds no run. Cases that are not errors by design (duplicates, IDN domains, a big body)
say so and check what does happen. Decisions are recorded in docs/gauntlet.md.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from batchsend.cli import main
from batchsend.sandbox import Sandbox

KEY = "sk-gauntlet-input-7f3a9c"
HEADER = b"email,first\n"
ONE_ROW = HEADER + b"ann@example.org,Ann\n"


@dataclass
class Outcome:
    exit_code: int
    output: str
    requests: int
    runs: int | None  # None: no database file at all
    messages: list[dict]


@pytest.fixture
def send(tmp_path: Path, make_sandbox) -> Iterator[Callable[..., Outcome]]:
    """Build a campaign from pieces and ``batchsend run`` it against a fresh sandbox."""

    def run(
        recipients: bytes | Callable[[Path], object] = ONE_ROW,
        *,
        source: str = "recipients.csv",
        subject: str = '"News for {{ first }}"',
        extra_toml: str = "",
        toml: Callable[[str], str] | None = None,
        files: dict[str, bytes] | None = None,
        args: tuple[str, ...] = (),
    ) -> Outcome:
        sandbox: Sandbox = make_sandbox(api_keys=(KEY,))
        folder = tmp_path / "campaign"
        folder.mkdir(exist_ok=True)
        if callable(recipients):  # makes the file itself: a FIFO, a symlink, a sparse file
            recipients(folder / source)
        else:
            (folder / source).write_bytes(recipients)
        for name, data in (files or {}).items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        text = f"""name = "hostile"
provider = "tosend"
base_url = "{sandbox.base_url}"

[source]
path = "{source}"

[sender]
email = "news@example.com"

[message]
subject = {subject}
text = "Hello {{{{ first }}}}."
{extra_toml}
[send]
concurrency = 2
batch_size = 10
"""
        (folder / "campaign.toml").write_text(toml(text) if toml else text, encoding="utf-8")
        db = tmp_path / "store.db"
        result = CliRunner().invoke(
            main,
            ["run", str(folder / "campaign.toml"), "--db", str(db), "--json", *args,
             "--report", str(tmp_path / "report.csv")],
            env={"BATCHSEND_API_KEY": KEY},
        )  # fmt: skip
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is a bug in batchsend
        runs = None
        if db.exists():
            with sqlite3.connect(db) as conn:
                runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        return Outcome(
            result.exit_code, result.output, sandbox.stats()["requests"], runs, sandbox.messages()
        )

    yield run


def refused(outcome: Outcome, *needles: str) -> None:
    """Exit 2, every needle in the message, nothing sent, no run recorded."""
    assert outcome.exit_code == 2, outcome.output
    for needle in needles:
        assert needle in outcome.output, (needle, outcome.output)
    assert "Traceback" not in outcome.output
    assert outcome.requests == 0
    assert outcome.runs in (None, 0)


# --- the recipient file ---------------------------------------------------------------------


def test_binary_garbage(send) -> None:
    rng = random.Random(6)
    garbage = bytes(rng.randrange(256) for _ in range(5000))
    refused(send(garbage), "recipients.csv", "line 1", "not valid utf-8")


def test_a_200_kb_field_in_the_subject_is_refused_at_preflight(send) -> None:
    """Flaw found: it passed preflight and every such row failed at the provider."""
    outcome = send(HEADER + b"ann@example.org," + b"x" * 200_000 + b"\n")
    refused(outcome, "recipients.csv", "row 1", "column 'subject'", "998")


def test_a_200_kb_field_in_the_body_is_a_big_message_not_an_error(send) -> None:
    outcome = send(HEADER + b"ann@example.org," + b"x" * 200_000 + b"\n", subject='"Hi"')
    assert outcome.exit_code == 0, outcome.output
    [message] = outcome.messages
    assert len(message["body"]["text"]) > 200_000


def test_unbalanced_quotes_name_the_row_and_column(send) -> None:
    """Flaw found: polars' parser error (a page of advice about dtypes) was passed on."""
    data = HEADER + b'ann@example.org,Ann\nbob@example.org,"Bob\ncid@example.org,Cid\n'
    outcome = send(data)
    refused(outcome, "recipients.csv", "row 2", "column 'first'", "quote", "never closed")
    assert "infer_schema" not in outcome.output


def test_an_unclosed_quote_after_a_multiline_field_names_its_own_row_and_line(send) -> None:
    data = (
        b"first,email\nAnn,ann@example.org\n"
        b'"Bob ""the"" multi\nline",bob@example.org\n'
        b'Cid,cid@example.org\nDan,"dan@example.org\nEve,eve@example.org\n'
    )
    outcome = send(data)
    refused(outcome, "row 4", "column 'email'", "line 6", "never closed")


def test_mixed_encodings(send) -> None:
    data = HEADER + "ann@example.org,José\n".encode() + "bob@example.org,José\n".encode("latin-1")
    refused(send(data), "recipients.csv", "line 3", "not valid utf-8", "encoding")


def test_ten_thousand_duplicates_are_skipped_and_said_so(send) -> None:
    """Not an error by design (README): one message, the rest reported skipped.

    Flaw found: with --json the reason (duplicate) was missing, only a skipped count.
    """
    outcome = send(HEADER + b"ann@example.org,Ann\n" * 10_000 + b"ANN@Example.ORG,Ann\n")
    assert outcome.exit_code == 0, outcome.output
    assert "10,000 duplicate" in outcome.output
    assert len(outcome.messages) == 1 and outcome.runs == 1
    assert '"skipped": 10000' in outcome.output and '"sent": 1' in outcome.output


def test_a_header_only_file(send) -> None:
    refused(send(HEADER), "recipients.csv", "header but no recipient rows")


def test_parquet_named_csv(send) -> None:
    buffer = io.BytesIO()
    pl.DataFrame({"email": ["ann@example.org"], "first": ["Ann"]}).write_parquet(buffer)
    refused(send(buffer.getvalue()), "recipients.csv", "Parquet file, not CSV", ".parquet")


def test_csv_named_parquet(send) -> None:
    refused(send(ONE_ROW, source="r.parquet"), "r.parquet", "not a Parquet file")


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [b'"Ann\r\nBcc: evil@x.com"', b'"Ann\nX-Injected: 1"', b"Ann\x00Bcc", b'"Ann\rBcc"'],
)
def test_line_breaks_and_nul_in_the_subject(send, cell: bytes) -> None:
    refused(send(HEADER + b"ann@example.org," + cell + b"\n"), "row 1", "column 'subject'")


def test_line_breaks_in_a_display_name(send) -> None:
    data = b'email,first,name\nann@example.org,Ann,"Ann\r\nBcc: evil@x.com"\n'
    outcome = send(data, extra_toml='[columns]\nname = "name"\n')
    refused(outcome, "row 1", "column 'name'", "line break")


@pytest.mark.parametrize(
    "address",
    [
        b'"""ann@example.org"" <evil@x.com>"',  # the CSV cell: "ann@example.org" <evil@x.com>
        b"Ann <evil@x.com>",
        b'"ann@example.org,evil@x.com"',
        b'"ann@example.org;evil@x.com"',
        b"ann@example.org evil@x.com",
        b"a" * 300 + b"@example.org",
        b"ann@" + b"b" * 64 + b".org",
        b"ann@" + b".".join([b"d" * 60] * 5) + b".org",
    ],
)
def test_address_tricks_and_very_long_addresses(send, address: bytes) -> None:
    refused(send(HEADER + address + b",Ann\n"), "row 1", "column 'email'", "invalid address")


def test_an_idn_domain_is_valid_and_sent_in_ascii(send) -> None:
    outcome = send(HEADER + "ann@bücher.de,Ann\n".encode())
    assert outcome.exit_code == 0, outcome.output
    assert outcome.messages[0]["to"] == ["ann@xn--bcher-kva.de"]


@pytest.mark.parametrize(
    "domain",
    [
        "exаmple.com",  # Cyrillic а among Latin letters
        "pаypal.com",
        "gοogle.com",  # Greek omicron
    ],
)
def test_a_mixed_script_homoglyph_domain_is_refused(send, domain: str) -> None:
    """Flaw found: ``ann@exаmple.com`` (Cyrillic а) was sent to as a different domain."""
    outcome = send(HEADER + f"ann@{domain},Ann\n".encode())
    refused(outcome, "row 1", "column 'email'", "mixes scripts")


@pytest.mark.parametrize("domain", ["пример.рф", "例え.jp", "bücher.de", "ελλάδα.gr"])
def test_single_script_idn_domains_are_fine(send, domain: str) -> None:
    outcome = send(HEADER + f"ann@{domain},Ann\n".encode())
    assert outcome.exit_code == 0, outcome.output


# --- templates ------------------------------------------------------------------------------

ESCAPES = [
    "{{ first.__class__ }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ first|attr('__class__') }}",
    "{{ '{0.__class__}'.format(first) }}",
    "{% set f = '{0.__class__.__mro__}'.format %}{{ f(first) }}",
    "{{ '{a.__class__}'.format_map({'a': first}) }}",
    "{{ '%s' % first.__class__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ first.format.__self__.__class__ }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_are_a_security_error(send, template: str) -> None:
    outcome = send(
        subject='"Hi"',
        extra_toml="",
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": template.encode()},
    )
    refused(outcome, "t/body.txt.j2", "Python internals")


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{{ first * 100 }}{% endfor %}",  # streamed
        "{{ first * 10000000000 }}",  # one multiplication of 30 GB
        "{{ [first] * 10000000000 }}",
        "{{ 7 ** 100000000 }}",
        "{{ first.center(10000000000) }}",
    ],
)
def test_a_template_rendering_megabytes_per_row_is_stopped(send, template: str) -> None:
    """Flaw found: ``first * 10**10`` or ``center(10**10)`` died with MemoryError."""
    outcome = send(
        subject='"Hi"',
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": template.encode()},
    )
    refused(outcome, "row 1", "t/body.txt.j2", "more than")


def test_a_template_error_from_a_method_call_is_a_row_problem(send) -> None:
    """Flaw found: ``'{0}'.format_map([])`` raised IndexError through the CLI (a traceback)."""
    outcome = send(
        subject='"Hi"',
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": b"{{ '{0}'.format_map([]) }}{{ {}['x'] }}"},
    )
    refused(outcome, "row 1", "t/body.txt.j2")


def test_a_syntax_error_names_the_template_file_and_line(send) -> None:
    outcome = send(
        subject='"Hi"',
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": b"line one\nline two {{ first }\nline three\n"},
    )
    refused(outcome, "t/body.txt.j2", "line 2", "syntax")


# --- attachments ----------------------------------------------------------------------------


@pytest.fixture
def secret_outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return secret


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Every path this process opens while the test runs (a Python audit hook)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            seen.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one switches itself off
    yield seen
    active[0] = False


def _attachment_cases(secret: Path) -> list[str]:
    return [
        "../secret.txt",
        "files/../../secret.txt",
        str(secret),
        "%2e%2e%2fsecret.txt",
        "%2E%2E/secret.txt",
        "..%2fsecret.txt",
        "link.txt",  # a symlink to ../secret.txt
        "files/inner/../../../secret.txt",
        "ok.txt\x00../secret.txt",
        "..\\secret.txt",
        "~/secret.txt",
    ]


@pytest.mark.parametrize("index", range(11))
def test_per_row_attachment_escapes_are_never_read(
    send, secret_outside: Path, opened: list[str], tmp_path: Path, index: int
) -> None:
    raw = _attachment_cases(secret_outside)[index]
    folder = tmp_path / "campaign"
    folder.mkdir(exist_ok=True)
    (folder / "link.txt").symlink_to(secret_outside)
    (folder / "ok.txt").write_text("fine")
    cell = raw.replace('"', '""').encode()
    data = b"email,first,files\n" + b'ann@example.org,Ann,"' + cell + b'"\n'
    outcome = send(data, extra_toml='[columns]\nattachments = "files"\n')
    refused(outcome, "row 1", "column 'files'")
    assert not [p for p in opened if Path(p).name == "secret.txt"], opened


@pytest.mark.parametrize("index", [0, 2, 3, 6, 8])
def test_static_attachment_escapes_are_never_read(
    send, secret_outside: Path, opened: list[str], tmp_path: Path, index: int
) -> None:
    raw = _attachment_cases(secret_outside)[index]
    folder = tmp_path / "campaign"
    folder.mkdir(exist_ok=True)
    (folder / "link.txt").symlink_to(secret_outside)
    escaped = raw.replace("\\", "\\\\").replace("\x00", "\\u0000")
    outcome = send(extra_toml=f'[[attachments]]\npath = "{escaped}"\n')
    refused(outcome, "campaign.toml")
    assert not [p for p in opened if Path(p).name == "secret.txt"], opened


# --- campaign files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (lambda t: t.replace("[sender]", "colour = 1\n[sender]"), ("colour", "unknown")),
        (lambda t: t.replace("concurrency = 2", "concurency = 2"), ("concurency", "concurrency")),
        (lambda t: t.replace("concurrency = 2", 'concurrency = "two"'), ("send.concurrency",)),
        (lambda t: t.replace("batch_size = 10", "batch_size = 10.5"), ("send.batch_size",)),
        (lambda t: t.replace('[sender]\nemail = "news@example.com"\n', ""), ("sender",)),
        (lambda t: t.replace('email = "news@example.com"', "email = 5"), ("sender.email",)),
        (lambda t: t.replace('provider = "tosend"', 'provider = "mailgun"'), ("mailgun",)),
        (lambda t: t.replace('provider = "tosend"\n', ""), ("provider",)),
        (lambda t: t + '\napi_key = "sk-live-123"\n', ("api_key",)),
        (lambda t: t.replace('base_url = "', 'base_url = "http://[::1:99999" #'), ("base_url",)),
    ],
)
def test_bad_campaign_files(send, change: Callable[[str], str], needles: tuple[str, ...]) -> None:
    outcome = send(toml=change)
    refused(outcome, "campaign.toml", *needles)
    assert outcome.runs is None  # the store was not even opened


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "ftp://127.0.0.1:8025", "127.0.0.1:8025", "http://[::1"]
)
def test_a_bad_base_url_override(send, url: str) -> None:
    """Flaw found: a port out of range was a ValueError traceback from inside the engine."""
    refused(send(args=("--base-url", url)), "--base-url", url)


# --- files that are not files, and files too big to be a list ----------------------------


def _fifo_feeder(path: Path, stop: threading.Event) -> threading.Thread:
    """Feed the FIFO if anyone blocks reading it, so a regression fails instead of hanging."""

    def feed() -> None:
        stop.wait(3)
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader
            except OSError:
                stop.wait(0.05)
                continue
            with contextlib.suppress(OSError):
                os.write(fd, ONE_ROW)
            os.close(fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def test_a_fifo_as_the_recipient_file_is_refused_not_waited_on(send, tmp_path: Path) -> None:
    """Flaw found: fingerprinting opened the FIFO and waited for a writer for ever."""
    stop = threading.Event()
    fifo = tmp_path / "campaign" / "recipients.csv"
    feeder = _fifo_feeder(fifo, stop)
    try:
        outcome = send(os.mkfifo)
    finally:
        stop.set()
        feeder.join()
    refused(outcome, "recipients.csv", "not a regular file", "a FIFO", "fix:")


def test_a_device_as_the_recipient_file_is_refused(send) -> None:
    """Flaw found: ``/dev/zero`` was hashed, then read, for ever (and grew past 4 GB).

    A link to it is now refused first as a path outside the campaign folder; the FIFO
    test above covers the non-regular-file check inside the folder.
    """
    outcome = send(lambda path: path.symlink_to("/dev/zero"))
    refused(outcome, "recipients.csv", "/dev/zero", "--allow-outside")


def test_a_256_mb_header_line_is_refused_after_reading_one_megabyte(send) -> None:
    """Flaw found: the header line was read whole (a 1 GB line grew past 4 GB of memory).

    The file is sparse: 256 MB long, a few KB on disk; the reader stops at the 1 MB limit
    (only the fingerprint's hash, 1 MB at a time, goes through it all).
    """

    def sparse(path: Path) -> None:
        with path.open("wb") as fh:
            fh.write(b"email,first,")
            fh.seek(1 << 28)
            fh.write(b"\nann@example.org,Ann\n")

    refused(send(sparse), "recipients.csv", "header row", "longer than 1 MB")


def test_a_header_of_many_columns_over_the_limit_is_refused(send) -> None:
    header = b"email,first," + b",".join(b"c%d" % i for i in range(200_000)) + b"\n"
    assert len(header) > 1 << 20
    refused(send(header + b"ann@example.org,Ann\n"), "recipients.csv", "longer than 1 MB")


def test_a_record_over_the_limit_names_its_line_and_the_limit(send, monkeypatch) -> None:
    """Flaw found: a long unquoted record was blamed on a quote, and the error path read the
    whole file (and its longest line) into memory to find one."""
    monkeypatch.setattr("batchsend.source.MAX_RECORD_BYTES", 1 << 20)
    monkeypatch.setattr("batchsend.source.CHUNK_BYTES", 1 << 18)
    data = ONE_ROW + b"bob@example.org," + b"x" * (3 << 20) + b"\ncid@example.org,Cid\n"
    outcome = send(data)
    refused(outcome, "recipients.csv", "line 3", "longer than 1 MB", "one record")


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["rot13", "base64", "hex", "bz2"])
def test_an_encoding_that_is_not_a_text_codec_is_a_campaign_error(send, codec: str) -> None:
    """Flaw found: ``encoding = "rot13"`` passed the campaign check, then a LookupError
    traceback."""
    outcome = send(toml=lambda t: t.replace('path = "', f'encoding = "{codec}"\npath = "'))
    refused(outcome, "campaign.toml", "source.encoding", codec, "not a text encoding", "fix:")


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_utf16_without_a_byte_order_mark_names_the_setting(send, codec: str) -> None:
    """Flaw found: a UnicodeError traceback ("UTF-16 stream does not start with BOM")."""
    data = ONE_ROW.decode().encode(f"{codec}-le")  # no BOM
    outcome = send(data, toml=lambda t: t.replace('path = "', f'encoding = "{codec}"\npath = "'))
    refused(outcome, "recipients.csv", "byte order mark", f"{codec}-le")


def test_utf16_with_a_byte_order_mark_reads(send) -> None:
    outcome = send(
        ONE_ROW.decode().encode("utf-16"),
        toml=lambda t: t.replace('path = "', 'encoding = "utf-16"\npath = "'),
    )
    assert outcome.exit_code == 0, outcome.output


# --- duplicates compared as the mail system compares them ----------------------------------


def test_sharp_s_and_ss_are_two_people(send) -> None:
    """Flaw found: ``ß@x`` and ``ss@x`` were one key (Unicode case folding): one got nothing."""
    outcome = send(HEADER + "ß@example.org,A\nss@example.org,B\nSS@example.org,C\n".encode())
    assert outcome.exit_code == 0, outcome.output
    sent = sorted(m["to"][0] for m in outcome.messages)
    assert sent == ["ss@example.org", "ß@example.org"]  # SS@ is ss@ (ASCII case)
    assert "1 duplicate" in outcome.output


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("Ann@Example.ORG", "ann@example.org", True),  # ASCII case: one mailbox in practice
        ("ann@BÜCHER.de", "ann@bücher.de", True),  # domains: IDNA, case-insensitive
        ("ann@bücher.de", "ann@xn--bcher-kva.de", True),
        ("Ärger@example.org", "ärger@example.org", False),  # non-ASCII case: kept apart
        ("ﬁ@example.org", "fi@example.org", False),  # NFKC would fold the ligature
        ("straße@example.org", "strasse@example.org", False),
    ],
)
def test_duplicates_compare_like_the_mail_system(send, first: str, second: str, same: bool) -> None:
    outcome = send(HEADER + f"{first},A\n{second},B\n".encode())
    assert outcome.exit_code == 0, outcome.output
    assert len(outcome.messages) == (1 if same else 2), outcome.messages


# --- reports: spreadsheet-safe and always written -------------------------------------------


def _report(tmp_path: Path) -> list[list[str]]:
    with (tmp_path / "report.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _unsafe(cells: list[str]) -> list[str]:
    """Cells a spreadsheet would evaluate: a formula start, unless the cell is a number or
    number-like (+44 20 7946 0958: arithmetic on constants at most, no name, no link)."""
    risky = ("=", "+", "-", "@", "\t", "\r", "\n")
    inert = set("+-0123456789 ()./")
    return [c for c in cells if c[:1] in risky and not (_is_number(c) or set(c) <= inert)]


def test_formula_column_names_and_odd_headers_reach_the_report_inert(send, tmp_path) -> None:
    """Flaws found: header names reached the CSV report raw; a header ``"x""y"`` crashed the
    report (polars read it as ``x""y``) after the emails went out."""
    data = (
        b'email,first,"=HYPERLINK(""http://evil.example"",""y"")",@x,"x""y",+1,-2\n'
        b"ann@example.org,Ann,1,2,3,=1+1,@SUM(A1)\n"
    )
    outcome = send(data)
    assert outcome.exit_code == 0, outcome.output
    header, row = _report(tmp_path)
    assert not _unsafe(header) and not _unsafe(row), (header, row)
    assert '\'=HYPERLINK("http://evil.example","y")' in header and 'x"y' in header
    # a number-like header ("+1") is left as written; the formula under it is not
    assert row[header.index('x"y')] == "3" and row[header.index("+1")] == "'=1+1"


def test_parquet_categorical_enum_and_nested_cells_reach_the_report(send, tmp_path) -> None:
    """Flaws found: Categorical and Enum cells reached the CSV raw (``=1+1``); a List column
    crashed the report ("CSV format does not support nested data") after sending."""
    frame = pl.DataFrame(
        {
            "email": ["ann@example.org", "bob@example.org"],
            "first": ["Ann", "Bob"],
            "cat": pl.Series(["=1+1", "ok"], dtype=pl.Categorical),
            "enum": pl.Series(["@x", "-y"], dtype=pl.Enum(["@x", "-y"])),
            "tags": [["=a", "b"], []],
            "point": [{"x": 1, "y": "=z"}, None],
            "=when": [1, -2],
        }
    )
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    outcome = send(buffer.getvalue(), source="r.parquet")
    assert outcome.exit_code == 0, outcome.output
    assert len(outcome.messages) == 2
    header, *rows = _report(tmp_path)
    assert not _unsafe(header), header
    for row in rows:
        assert not _unsafe(row), row
    ann = dict(zip(header, rows[0], strict=True))
    assert ann["cat"] == "'=1+1" and ann["enum"] == "'@x" and ann["'=when"] == "1"
    assert json.loads(ann["tags"]) == ["=a", "b"]  # nested values: JSON text
    assert json.loads(ann["point"]) == {"x": 1, "y": "=z"}
    assert dict(zip(header, rows[1], strict=True))["'=when"] == "-2"  # a number, not a formula


# --- key files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        KEY.encode() + b"\nsk-second-line-9d2e\n",
        KEY.encode() + b"\r\nsk-second-line-9d2e",
        b"# my key\n" + KEY.encode() + b"\n",
        b"\xff\xfe" + KEY.encode("utf-16-le") + b"\x00\xff",
    ],
)
def test_a_key_file_with_a_second_line_is_refused_without_echoing_it(
    send, tmp_path: Path, content: bytes
) -> None:
    """Flaw found: the two lines became one key (sent with a line break in a header: a
    traceback from the HTTP client)."""
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(content)
    outcome = send(args=("--api-key-file", str(key_file)))
    refused(outcome, "key.txt", "fix:")
    for secret in (KEY, "sk-second-line", "my key"):
        assert secret not in outcome.output


# --- a full disk ----------------------------------------------------------------------------


def test_a_disk_that_fills_mid_run_is_one_error_and_the_run_resumes(
    send, tmp_path: Path, monkeypatch
) -> None:
    """Flaw found: every worker's ``database or disk is full`` came out as one traceback each.

    The disk fills for real as far as SQLite can tell: once the run and its rows are
    recorded, the store's connection gets ``PRAGMA max_page_count`` a few pages above its
    size, so a later commit fails with SQLITE_FULL, as on a full file system.
    """
    from batchsend.store import RunRecorder, Store

    start = RunRecorder.__init__

    def cramped(self: RunRecorder, store: Store, *args: object, **kwargs: object) -> None:
        (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
        store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        start(self, store, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RunRecorder, "__init__", cramped)
    rows = b"".join(b"user%d@example.org,U%d\n" % (n, n) for n in range(400))
    outcome = send(HEADER + rows)
    assert outcome.exit_code == 1, outcome.output
    assert "Traceback" not in outcome.output and outcome.output.count("error:") == 1
    for needle in ("disk", "full", "store.db", "batchsend resume", "--db"):
        assert needle in outcome.output, (needle, outcome.output)
    assert outcome.runs == 1
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()
    monkeypatch.setattr(RunRecorder, "__init__", start)  # space freed (the rest stays patched)
    result = CliRunner().invoke(
        main, ["resume", run_id, "--db", str(db), "--resend-unknown"],
        env={"BATCHSEND_API_KEY": KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output


# --- confinement and render limits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (lambda t: t.replace('path = "recipients.csv"', 'path = "../secret.txt"'),
         ("source.path", "outside the campaign folder", "--allow-outside")),
        (lambda t: t.replace('path = "recipients.csv"', 'path = "/proc/self/environ"'),
         ("source.path", "outside the campaign folder")),
        (lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "link.txt"'),
         ("message.text_file", "outside the campaign folder")),
        (lambda t: t + '\n[suppression]\nfiles = ["link.txt"]\n',
         ("suppression.files", "outside the campaign folder")),
        (lambda t: t.replace("[source]", 'api_key_file = "link.txt"\n[source]'),
         ("api_key_file", "outside the campaign folder")),
        (lambda t: t.replace("[source]", 'api_key_env = "AWS_SECRET_ACCESS_KEY"\n[source]'),
         ("api_key_env", "BATCHSEND_")),
    ],
)  # fmt: skip
def test_files_outside_the_campaign_folder_are_refused(
    send, secret_outside: Path, opened: list[str], tmp_path: Path, change, needles
) -> None:
    folder = tmp_path / "campaign"
    folder.mkdir(exist_ok=True)
    (folder / "link.txt").symlink_to(secret_outside)
    refused(send(toml=change), "campaign.toml", *needles)
    assert not [p for p in opened if Path(p).name == "secret.txt"], opened


def test_an_include_symlinked_to_outside_is_never_sent(send, secret_outside: Path, tmp_path):
    folder = tmp_path / "campaign"
    folder.mkdir(exist_ok=True)
    (folder / "footer.txt").symlink_to(secret_outside)
    outcome = send(
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": b'Hello.\n{% include "footer.txt" %}'},
    )
    refused(outcome, "footer.txt", "outside the campaign folder")
    assert not any("top secret" in str(m) for m in outcome.messages)


def test_a_remote_base_url_from_the_campaign_file_is_refused(send) -> None:
    outcome = send(
        # .invalid never resolves: even a broken check could not reach another host
        toml=lambda t: t.replace('base_url = "http://127.0.0.1', 'base_url = "http://key.invalid#')
    )
    refused(outcome, "base_url", "key.invalid", "--base-url")


@pytest.mark.parametrize(
    "template",
    [
        "{% set ns = namespace(v=first) %}{% for i in range(40) %}{% set ns.v = ns.v ~ ns.v %}"
        "{% endfor %}{{ ns.v | length }}",
        "{% set ns = namespace(v=[first]) %}{% for i in range(40) %}{% set ns.v = ns.v + ns.v %}"
        "{% endfor %}{{ ns.v | length }}",
        "{% set ns = namespace(v=first) %}{% for i in range(40) %}"
        "{% set ns.v = [ns.v, ns.v] | join %}{% endfor %}{{ ns.v | length }}",
        "{% set ns = namespace(v=first) %}{% for i in range(40) %}"
        "{% set ns.v = ns.v | replace('n', 'nn') %}{% endfor %}{{ ns.v | length }}",
    ],
)
def test_a_value_doubled_forty_times_is_stopped(send, template: str) -> None:
    """Flaw found: each of these passed 4 GB in seconds; the size guard missed them."""
    outcome = send(
        subject='"Hi"',
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": template.encode()},
    )
    refused(outcome, "row 1", "t/body.txt.j2", "more than")


def test_endless_recursion_is_a_row_problem(send) -> None:
    """Flaw found: a recursive macro was a RecursionError traceback."""
    outcome = send(
        subject='"Hi"',
        toml=lambda t: t.replace('text = "Hello {{ first }}."', 'text_file = "t/body.txt.j2"'),
        files={"t/body.txt.j2": b"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"},
    )
    refused(outcome, "row 1", "t/body.txt.j2", "recursion too deep")
