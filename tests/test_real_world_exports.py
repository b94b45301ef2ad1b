"""Recipient files as CRMs and spreadsheets export them: headers with spaces, BOMs, `;`,
blank lines and rows, unnamed trailing columns, ragged rows, .xlsx, empty values."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.campaigns import campaign_folder, recipients_in
from support.processes import run_batchsend
from support.xlsx import write_xlsx

from batchsend import source
from batchsend.campaign import load_campaign
from batchsend.cli import main
from batchsend.errors import SourceError
from batchsend.preflight import iter_rows, preflight
from batchsend.sandbox import Sandbox
from batchsend.variables import Variables, alias, writable

HAS_FASTEXCEL = importlib.util.find_spec("fastexcel") is not None
needs_fastexcel = pytest.mark.skipif(
    not HAS_FASTEXCEL,
    reason="fastexcel is not installed (a core dependency in pyproject.toml: pip install"
    " fastexcel); polars reads .xlsx through it",
)

CAMPAIGN = """\
provider = "tosend"
[source]
path = "{path}"
{source}
[columns]
email = "{email}"
{columns}
[sender]
email = "news@example.com"
[message]
subject = {subject}
text = "Hello"
"""


def make(
    tmp_path: Path,
    rows: str | bytes,
    subject: str = "Hi",
    *,
    email: str = "Email",
    columns: str = "",
    source_toml: str = "",
    path: str = "r.csv",
):
    toml = CAMPAIGN.format(
        path=path,
        source=source_toml,
        email=email,
        columns=columns,
        subject=json.dumps(subject),
    )
    files = {path: rows} if path.endswith(".csv") else {}
    return campaign_folder(tmp_path, toml, files)


def check(campaign: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", str(campaign), "--db", str(campaign.parent / "db")])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# -- every column reachable ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("First Name", "first_name"),
        ("E-mail Address", "e_mail_address"),
        ("  Company Name ", "company_name"),
        ("Email", "email"),
        ("FirstName", "firstname"),
        ("2024 Spend (€)", "col_2024_spend"),
        ("Prénom", "prenom"),
        ("if", "if_"),
        ("Self", "self_"),
        ("#", "col_3"),
    ],
)
def test_the_alias_of_a_column_name(name: str, expected: str) -> None:
    assert alias(name, 3) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True))
def test_every_column_can_be_written_in_a_template(names: list[str]) -> None:
    variables = Variables.of(names)
    values = {name: f"value {i}" for i, name in enumerate(names)}
    scope = variables.scope(values)
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    for name in names:
        written = [f"row[{name!r}]"] if "row" not in names else []
        written += [a for a, column in variables.aliases.items() if column == name]
        written += [name] if writable(name) else []
        assert written, name
        for variable in written:
            assert env.from_string(f"{{{{ {variable} }}}}").render(scope) == values[name]


def test_every_column_is_reachable_by_its_alias_and_by_row(tmp_path: Path) -> None:
    rows = "Email,First Name,Company Name,id\nann@example.org,Ann,Northwind,7\n"
    subject = '{{ first_name }} / {{ row["Company Name"] }} / {{ Email }} / {{ email }} / {{ id }}'
    (r,) = iter_rows(load_campaign(make(tmp_path, rows, subject)))
    assert r.message is not None
    assert r.message.subject == "Ann / Northwind / ann@example.org / ann@example.org / 7"
    assert list(r.values) == ["Email", "First Name", "Company Name", "id"]  # the row as read


def test_a_column_named_like_an_alias_keeps_its_own_name(tmp_path: Path) -> None:
    rows = "Email,email_status,Email Status\nann@example.org,own,other\n"
    subject = '{{ email_status }} {{ row["Email Status"] }}'
    campaign = load_campaign(make(tmp_path, rows, subject))
    (r,) = iter_rows(campaign)
    assert r.message is not None and r.message.subject == "own other"
    note = (
        "note: columns 'email_status' and 'Email Status' share the alias 'email_status';"
        " 'email_status' is the column of that name (use row[...] for the other)"
    )
    assert note in preflight(campaign).notes


def test_an_alias_two_columns_share_is_named_in_the_note_and_the_problem(tmp_path: Path) -> None:
    rows = "Email,First Name,first-name\nann@example.org,Ann,Anne\n"
    campaign = load_campaign(make(tmp_path, rows, "{{ first_name }}"))
    report = preflight(campaign)
    (problem,) = report.problems
    assert "'First Name' and 'first-name'" in problem.message
    assert "row['First Name']" in problem.message
    assert any("share the alias 'first_name', so neither has it" in n for n in report.notes)


def test_columns_rename_gives_a_column_the_name_everything_uses(tmp_path: Path) -> None:
    rows = "E-mail Address,Vorname,Plan\nann@example.org,Ann,pro\n"
    columns = (
        'metadata = ["first"]\n[columns.rename]\n"E-mail Address" = "email"\nVorname = "first"'
    )
    campaign = load_campaign(
        make(tmp_path, rows, "{{ first }} {{ plan }}", email="email", columns=columns)
    )
    (r,) = iter_rows(campaign)
    assert r.email == "ann@example.org" and r.metadata == {"first": "Ann"}
    assert r.message is not None and r.message.subject == "Ann pro"


def test_a_rename_of_a_column_the_file_lacks_suggests_the_nearest(tmp_path: Path) -> None:
    rows = "Email,First Name\nann@example.org,Ann\n"
    campaign = make(tmp_path, rows, columns='[columns.rename]\n"FirstName" = "first"')
    code, out = check(campaign)
    assert code == 2
    assert "names a column 'FirstName' the file does not have (did you mean 'First Name'?)" in out


def test_a_mailchimp_address_column_is_suggested_for_the_default_email(tmp_path: Path) -> None:
    rows = '"Email Address","First Name"\n"ann@example.org","Ann"\n'
    code, out = check(make(tmp_path, rows, email="email"))
    assert code == 2
    assert "no column 'email' (did you mean 'Email Address'?)" in out
    assert 'fix: set columns.email = "Email Address" in the campaign' in out


def test_two_renames_to_one_name_are_refused(tmp_path: Path) -> None:
    columns = '[columns.rename]\n"First Name" = "first"\n"Vorname" = "first"'
    code, out = check(make(tmp_path, "Email\na@example.org\n", columns=columns))
    assert code == 2 and "'first' is the new name of more than one column" in out


@pytest.mark.parametrize(
    ("subject", "hint"),
    [
        ("{{ frist_name }}", "did you mean 'first_name'?"),
        ("{{ FirstName }}", "did you mean 'first_name'?"),
        ("{{ company }}", "did you mean 'company_name'?"),
        (
            '{{ row["Frist Name"] }}',
            "no column 'Frist Name' in row[...]; did you mean row['First Name']?",
        ),
    ],
)
def test_a_missing_variable_suggests_the_close_columns(
    tmp_path: Path, subject: str, hint: str
) -> None:
    rows = "Email,First Name,Company Name\nann@example.org,Ann,Northwind\n"
    code, out = check(make(tmp_path, rows, subject))
    assert code == 2
    assert hint in out


# -- what spreadsheets leave behind ----------------------------------------------------


@pytest.mark.parametrize("piece_bytes", [source.CHUNK_BYTES, 16])  # one piece; many
def test_blank_lines_empty_rows_and_unnamed_columns_are_counted_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece_bytes: int
) -> None:
    monkeypatch.setattr(source, "CHUNK_BYTES", piece_bytes)
    rows = (
        "Email,Name,,\r\n"
        "ann@example.org,Ann,,\r\n"
        ",,,\r\n"
        "bo@example.org,Bo\r\n"  # leaves out the unnamed columns: fine
        "  ,\t,,\r\n"
        "cy@example.org,Cy,,\r\n"
        "\r\n\r\n\r\n"
    )
    campaign = make(tmp_path, rows)
    assert [r.row for r in iter_rows(load_campaign(campaign))] == [1, 3, 5]  # numbers kept
    code, out = check(campaign)
    assert code == 0, out
    assert "rows 3, sendable 3" in out
    assert "note: 2 unnamed column(s) at the end of the header ignored (empty in every row)" in out
    assert (
        "note: 5 empty row(s) ignored (blank lines or only empty fields): rows 2, 4, 6, 7, 8" in out
    )


def test_preview_of_an_empty_row_says_it_is_ignored(tmp_path: Path) -> None:
    campaign = make(tmp_path, "Email,Name\na@example.org,A\n,\nb@example.org,B\n")
    result = CliRunner().invoke(main, ["preview", str(campaign), "--row", "2"])
    assert result.exit_code == 2
    assert (
        "row 2: this row is empty (a blank line or only empty fields): it is ignored"
        in result.output
    )
    assert "fix: choose another row, e.g. 3" in result.output


def test_a_file_of_only_empty_rows_has_no_recipients(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, "Email,Name\n,\n\n"))
    assert code == 2 and "the file has a header but no recipient rows" in out


def test_a_value_under_an_unnamed_column_is_refused_with_its_row(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, "Email,Name,\na@example.org,A,\nb@example.org,B,oops\n"))
    assert code == 2
    assert "r.csv, row 2: column 3 has no header name, but this row has a value in it" in out
    assert "fix: give the column a name in the header row, or delete the value" in out


def test_an_empty_row_with_more_separators_than_the_header_is_named(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, "Email,Name,\na@example.org,A,\n,,,,\nb@example.org,B,\n"))
    assert code == 2 and "truncate_ragged_lines" not in out
    assert "r.csv, row 2: this row is empty but has 5 fields, the header has 3" in out
    assert "fix: delete the row" in out


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ("c@example.org,Cy,Smith,Jr.", "row 3: this row has 4 fields, the header has 3"),
        ("c@example.org,Cy", "row 3: this row has 2 fields, the header has 3"),
    ],
)
def test_a_row_with_the_wrong_number_of_fields_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str, said: str, quoted: bool
) -> None:
    lines = ["Email,Name,City", "a@example.org,Ann,Leeds", "b@example.org,Bo,York", bad]
    lines += [f"x{i}@example.org,X,Hull" for i in range(50)]
    if quoted:
        lines = [",".join(f'"{v}"' for v in line.split(",")) for line in lines]
    code, out = check(make(tmp_path, "\n".join(lines) + "\n"))
    assert code == 2
    assert f"r.csv, {said}" in out
    assert "fix: " in out and "truncate_ragged_lines" not in out
    # the same row found in a later piece of a file read in pieces
    monkeypatch.setattr(source, "CHUNK_BYTES", 64)
    code, again = check(make(tmp_path / "pieces", "\n".join(lines) + "\n"))
    assert (code, again) == (2, out.replace(str(tmp_path), str(tmp_path / "pieces")))


def test_a_quoted_field_over_the_csv_modules_limit_is_read(tmp_path: Path) -> None:
    bio = "x" * 300_000  # the csv module's own limit is 128 KB a field
    rows = f'"Email","Bio"\n"a@example.org","{bio}"\n"b@example.org","y"\n'
    results = list(iter_rows(load_campaign(make(tmp_path, rows, "{{ bio | length }}"))))
    assert [r.message and r.message.subject for r in results] == ["300000", "1"]
    assert csv.field_size_limit() == 131072  # left as it was


def test_a_header_of_semicolons_with_a_bom_reads_as_columns(tmp_path: Path) -> None:
    rows = '\ufeff"Email";"First Name"\r\n"ann@example.org";"Ann"\r\n'.encode()
    campaign = make(tmp_path, rows, "{{ first_name }}", source_toml='delimiter = ";"')
    (r,) = iter_rows(load_campaign(campaign))
    assert r.message is not None and r.message.subject == "Ann"


# -- Excel ---------------------------------------------------------------------------------


SHEET = [
    ["Email", "First Name", "Zip", "Score", None, ""],
    ["ann@example.org", "Ann", "00123", 42],
    [None],
    ["bo@example.org", "Bo", "4000", 3.5],
]


@needs_fastexcel
def test_an_xlsx_sheet_is_a_recipient_source(tmp_path: Path) -> None:
    write_xlsx(
        tmp_path / "people.xlsx", SHEET, Other=[["Email", "Plan"], ["cy@example.org", "pro"]]
    )
    subject = "{{ first_name }} {{ zip }} {{ score }}"
    campaign = make(tmp_path, b"", subject, path="people.xlsx")
    results = list(iter_rows(load_campaign(campaign)))
    assert [(r.row, r.message and r.message.subject) for r in results] == [
        (1, "Ann 00123 42"),
        (3, "Bo 4000 3.5"),
    ]
    code, out = check(campaign)
    assert code == 0, out
    assert "note: 1 empty row(s) ignored (blank lines or only empty fields): rows 2" in out
    other = make(
        tmp_path / "other", b"", "{{ plan }}", path="people.xlsx", source_toml='sheet = "Other"'
    )
    (tmp_path / "other" / "people.xlsx").write_bytes((tmp_path / "people.xlsx").read_bytes())
    (r,) = iter_rows(load_campaign(other))
    assert r.message is not None and r.message.subject == "pro"


@needs_fastexcel
def test_an_unknown_sheet_names_the_setting(tmp_path: Path) -> None:
    write_xlsx(tmp_path / "people.xlsx", SHEET)
    code, out = check(make(tmp_path, b"", path="people.xlsx", source_toml='sheet = "Leads"'))
    assert code == 2 and "the workbook has no sheet 'Leads'" in out


@needs_fastexcel
@pytest.mark.parametrize(
    ("sheet", "said"),
    [([], "the sheet is empty"), ([["Email"]], "the file has a header but no recipient rows")],
)
def test_an_empty_sheet_is_refused(tmp_path: Path, sheet: list, said: str) -> None:
    write_xlsx(tmp_path / "people.xlsx", sheet)
    code, out = check(make(tmp_path, b"", path="people.xlsx"))
    assert code == 2 and said in out


def test_without_fastexcel_an_xlsx_file_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastexcel", None)  # as if it were not installed
    write_xlsx(tmp_path / "people.xlsx", SHEET)
    code, out = check(make(tmp_path, b"", path="people.xlsx"))
    assert code == 2
    assert "reading .xlsx files needs the fastexcel package, which is not installed" in out
    assert "fix: pip install fastexcel" in out


def test_an_xlsx_file_read_as_csv_says_how_to_read_it(tmp_path: Path) -> None:
    write_xlsx(tmp_path / "people.csv", SHEET)
    campaign = make(tmp_path, b"", path="people.txt")
    (tmp_path / "people.txt").write_bytes((tmp_path / "people.csv").read_bytes())
    code, out = check(campaign)
    assert code == 2
    assert "this is a zip archive (an Excel .xlsx file?), not CSV" in out
    assert 'set [source] format = "xlsx"' in out


def test_a_workbook_that_unpacks_too_big_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "MAX_XLSX_UNPACKED", 1000)
    write_xlsx(tmp_path / "people.xlsx", [["Email"], *([f"u{i}@example.org"] for i in range(50))])
    code, out = check(make(tmp_path, b"", path="people.xlsx"))
    assert code == 2
    assert "the workbook unpacks to" in out and "over the 1,000 bytes an .xlsx source may" in out
    assert "fix: save the sheet as CSV" in out


def test_a_truncated_workbook_is_unreadable(tmp_path: Path) -> None:
    write_xlsx(tmp_path / "people.xlsx", SHEET)
    data = (tmp_path / "people.xlsx").read_bytes()
    (tmp_path / "people.xlsx").write_bytes(data[: len(data) // 2])
    code, out = check(make(tmp_path, b"", path="people.xlsx"))
    assert code == 2 and "unreadable Excel file" in out


def test_a_csv_file_named_xlsx_is_refused(tmp_path: Path) -> None:
    campaign = make(tmp_path, b"", path="people.xlsx")
    (tmp_path / "people.xlsx").write_text("Email\na@example.org\n")
    code, out = check(campaign)
    assert code == 2 and "this is not an Excel .xlsx file (it is not a zip archive)" in out


def test_a_sheet_setting_needs_an_xlsx_file(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, "Email\na@example.org\n", source_toml='sheet = "x"'))
    assert code == 2 and "source.sheet: only an .xlsx file has sheets" in out


# -- empty values --------------------------------------------------------------------------


EMPTY_NAMES = (
    "Email,First Name,City\n"
    "a@example.org,Ann,Leeds\n"
    "b@example.org,,York\n"
    "c@example.org,Cy,\n"
    "d@example.org,,Hull\n"
)


def test_check_warns_of_empty_values_a_template_uses(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, EMPTY_NAMES, "{{ first_name }} from {{ city }}"))
    assert code == 0, out
    assert (
        "warning: first_name is empty in 2 sendable rows (2, 4), used in the subject"
        ' (for a fallback: {{ first_name or "..." }})'
    ) in out
    assert "warning: city is empty in 1 sendable row (3), used in the subject" in out


@pytest.mark.parametrize(
    "subject",
    [
        '{{ first_name or "there" }}',
        '{{ first_name | default("there", true) }}',
        "Hi{% if first_name %} {{ first_name }}{% endif %}",
        '{{ first_name if first_name else "there" }}',
    ],
)
def test_a_fallback_silences_the_warning(tmp_path: Path, subject: str) -> None:
    code, out = check(make(tmp_path, EMPTY_NAMES, subject))
    assert code == 0 and "warning" not in out, out


def test_the_fallback_idiom_renders_for_empty_values(tmp_path: Path) -> None:
    campaign = load_campaign(make(tmp_path, EMPTY_NAMES, 'Hi {{ first_name or "there" }}'))
    assert [r.message and r.message.subject for r in iter_rows(campaign)] == [
        "Hi Ann",
        "Hi there",
        "Hi Cy",
        "Hi there",
    ]


def test_required_columns_make_rows_with_empty_values_invalid(tmp_path: Path) -> None:
    columns = 'required = ["first_name", "City"]'
    code, out = check(make(tmp_path, EMPTY_NAMES, "{{ first_name }}", columns=columns))
    assert code == 2
    assert "column 'First Name': 'First Name' is empty, and [columns] required lists it" in out
    assert "rows 2, 4" in out and "rows 3" in out
    assert "fix: fill it in, or remove the column from columns.required" in out


def test_a_required_column_the_file_lacks_is_named(tmp_path: Path) -> None:
    code, out = check(make(tmp_path, EMPTY_NAMES, columns='required = ["frist_name"]'))
    assert code == 2
    assert (
        "columns.required names 'frist_name', which is no column; did you mean 'first_name'?" in out
    )


# -- the newcomer path: a CRM export as it comes -------------------------------------------

EXPORT = (
    "\ufeff"
    '"First Name";"Last Name";"Email";"Company Name";"Lifecycle Stage";"";""\r\n'
    '"Ann";"Lee";"ann@example.org";"Northwind";"customer";"";""\r\n'
    '"";"Okafor";"bo@example.org";"Contoso; Ltd";"lead";"";""\r\n'
    '"Cé";"Dubois";"ce@example.org";"Fabrikam";"customer";"";""\r\n'
    "\r\n\r\n"
)
NEWCOMER = """\
provider = "tosend"
base_url = "{base_url}"
[source]
path = "{path}"
delimiter = ";"
[columns]
email = "Email"
[sender]
email = "news@example.com"
[message]
subject = '{{{{ first_name or "there" }}}}, news for {{{{ row["Company Name"] }}}}'
text = "Dear {{{{ first_name or 'customer' }}}} {{{{ last_name }}}} ({{{{ lifecycle_stage }}}})"
[send]
batch_size = 10
"""


def _newcomer(tmp_path: Path, sandbox: Sandbox, path: str) -> tuple[str, float]:
    campaign = campaign_folder(
        tmp_path, NEWCOMER.format(base_url=sandbox.base_url, path=path), {"export.csv": EXPORT}
    )
    if path.endswith(".xlsx"):
        table = csv.reader(io.StringIO(EXPORT.lstrip("\ufeff"), newline=""), delimiter=";")
        write_xlsx(tmp_path / path, [[v or None for v in row] for row in table])
    started = time.monotonic()
    checked = run_batchsend("check", str(campaign), "--db", str(tmp_path / "b.db"))
    ran = run_batchsend("run", str(campaign), "--db", str(tmp_path / "b.db"), "--json")
    seconds = time.monotonic() - started
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return checked.stdout, seconds


def _delivered(sandbox: Sandbox) -> dict[str, str]:
    return {recipients_in([m])[0]: m["body"]["subject"] for m in sandbox.messages()}


def test_a_crm_export_runs_without_editing_it(tmp_path: Path, sandbox: Sandbox) -> None:
    out, _ = _newcomer(tmp_path, sandbox, "export.csv")
    assert "rows 3, sendable 3" in out
    assert "note: 2 unnamed column(s) at the end of the header ignored" in out
    assert "note: 2 empty row(s) ignored (blank lines or only empty fields): rows 4, 5" in out
    assert _delivered(sandbox) == {
        "ann@example.org": "Ann, news for Northwind",
        "bo@example.org": "there, news for Contoso; Ltd",
        "ce@example.org": "Cé, news for Fabrikam",
    }


@needs_fastexcel
def test_the_xlsx_copy_of_a_crm_export_runs_too(tmp_path: Path, sandbox: Sandbox) -> None:
    _newcomer(tmp_path, sandbox, "export.xlsx")
    assert _delivered(sandbox) == {
        "ann@example.org": "Ann, news for Northwind",
        "bo@example.org": "there, news for Contoso; Ltd",
        "ce@example.org": "Cé, news for Fabrikam",
    }


def test_variables_of_a_file_without_odd_names_add_only_row() -> None:
    variables = Variables.of(["email", "first_name", "n"])
    assert variables.aliases == {} and variables.clashes == {}
    scope = variables.scope({"email": "a@x", "first_name": "A", "n": "1"})
    assert scope["row"] == {"email": "a@x", "first_name": "A", "n": "1"}


def test_a_column_named_row_stays_that_column() -> None:
    scope = Variables.of(["email", "row"]).scope({"email": "a@x", "row": "7"})
    assert scope["row"] == "7"


def test_source_error_for_ragged_rows_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("email,name\na@x,A,B\n")
    with pytest.raises(SourceError) as err:
        list(source.iter_batches(source.SourceSpec(tmp_path / "r.csv")))
    assert err.value.location.row == 1 and err.value.exit_code == 2
