"""Reports: one line per input row, in order, that round-trip through polars and stay
inert in a spreadsheet. Runs are recorded through the store's own API
(``tests/support/runs.py``); one test reads a real run made against the sandbox."""

from __future__ import annotations

import csv
import io
import json
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.campaigns import write_campaign
from support.clock import SteppingClock
from support.runs import TRICKY, Person, build_run
from support.sandboxes import TEST_KEY

from batchsend import report as report_module
from batchsend.cli import main
from batchsend.errors import InputError, StoreError
from batchsend.report import (
    FORMULA_PREFIXES,
    _csv_safe,
    format_for,
    iter_report,
    neutralise,
    unneutralise,
    write_report,
)
from batchsend.run import run_campaign
from batchsend.states import RunState
from batchsend.store import Store

# report column -> store column, for the columns both have
SAME = {
    "row": "row",
    "email": "email",
    "name": "name",
    "state": "state",
    "reason": "reason",
    "error_type": "error_type",
    "http_status": "http_status",
    "error_message": "error_message",
    "attempts": "attempts",
    "provider_message_id": "provider_message_id",
    "provider_email_id": "provider_email_id",
    "sent_at": "sent_at",
    "updated_at": "updated_at",
    "idempotency_key": "unit_key",
    "message_key": "message_key",
    "tag": "tag",
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "b.db"


@pytest.fixture
def tricky_run(db: Path) -> str:
    with Store(db, now=SteppingClock()) as store:
        return build_run(store, TRICKY)


def store_rows(db: Path, run_id: str) -> list[dict[str, Any]]:
    with Store(db) as store:
        rows = list(store.recipients(run_id))
    for r in rows:
        r["customer_id"] = json.loads(r["metadata"] or "{}").get("customer_id")
        r["retryable"] = None if r["retryable"] is None else bool(r["retryable"])
    return rows


def expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {**SAME, "customer_id": "customer_id", "retryable": "retryable"}
    return [{rep: r[src] for rep, src in keys.items()} for r in rows]


def as_records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    keys = [*SAME, "customer_id", "retryable"]
    return frame.select(keys).to_dicts()


def test_csv_round_trips_through_polars(db: Path, tricky_run: str, tmp_path: Path) -> None:
    out = write_report(db, tricky_run, tmp_path / "r.csv")
    back = pl.read_csv(out, infer_schema=False)
    # the CSV holds text; undo the spreadsheet prefix and restore the number columns
    back = back.with_columns(
        pl.col(pl.String).map_elements(unneutralise, return_dtype=pl.String),
    ).with_columns(
        pl.col("row", "http_status", "attempts").cast(pl.Int64),
        pl.col("retryable").replace_strict({"true": True, "false": False}, default=None),
    )
    assert as_records(back) == expected(store_rows(db, tricky_run))
    assert back["row"].to_list() == list(range(1, len(TRICKY) + 1))  # input order
    assert back["state"].to_list() == [
        "sent", "sent", "failed", "skipped", "failed", "unknown", "skipped", "sent"
    ]  # fmt: skip


def test_parquet_and_json_round_trip_exactly(db: Path, tricky_run: str, tmp_path: Path) -> None:
    want = expected(store_rows(db, tricky_run))
    parquet = pl.read_parquet(
        write_report(db, tricky_run, tmp_path / "r.parquet", format="parquet")
    )
    assert as_records(parquet) == want
    lines = write_report(db, tricky_run, tmp_path / "r.jsonl", format="jsonl").read_text("utf-8")
    records = [json.loads(line) for line in lines.splitlines()]
    assert [{k: r[k] for k in want[0]} for r in records] == want


def test_json_is_one_array_that_json_load_reads(db: Path, tricky_run: str, tmp_path: Path) -> None:
    want = expected(store_rows(db, tricky_run))
    # chunk_rows=3 makes the array span several chunks, which is where joining can go wrong
    out = write_report(db, tricky_run, tmp_path / "r.json", format="json", chunk_rows=3)
    records = json.loads(out.read_text("utf-8"))
    assert isinstance(records, list)
    assert [{k: r[k] for k in want[0]} for r in records] == want


def test_json_of_no_rows_is_an_empty_array(db: Path, tricky_run: str, tmp_path: Path) -> None:
    out = write_report(db, tricky_run, tmp_path / "r.json", format="json", states=["sending"])
    assert json.loads(out.read_text("utf-8")) == []


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.csv", "csv"),
        ("r.JSON", "json"),
        ("r.jsonl", "jsonl"),
        ("r.ndjson", "jsonl"),
        ("r.parquet", "parquet"),
        ("r.htm", "html"),
        ("r.XLSX", "xlsx"),
        (None, "csv"),
    ],
)
def test_format_follows_the_file_extension(name: str | None, fmt: str) -> None:
    assert format_for(name) == fmt


@pytest.mark.parametrize("name", ["r.txt", "r.xls", "report", "r.csv.bak"])
def test_an_extension_that_names_no_format_is_refused(name: str) -> None:
    with pytest.raises(InputError) as info:
        format_for(name)
    assert info.value.exit_code == 2 and info.value.location.file == name
    assert (
        ".csv" in str(info.value) and ".xlsx" in str(info.value) and "--format" in str(info.value)
    )
    assert format_for(name, "csv") == "csv"  # --format decides for any name


def test_reasons_say_why(db: Path, tricky_run: str) -> None:
    frame = pl.concat(list(iter_report(db, tricky_run)))
    by_row = {r["row"]: r for r in frame.to_dicts()}
    assert by_row[3]["reason"] == "validation_error" and by_row[3]["http_status"] == 422
    assert "not verified" in by_row[3]["error_message"]
    assert by_row[4]["reason"] == "invalid" and by_row[7]["reason"] == "duplicate"
    assert by_row[5]["reason"] == "internal_error" and by_row[5]["retryable"] is True
    assert by_row[5]["attempts"] == 3 and by_row[2]["attempts"] == 3  # retried, then sent
    assert by_row[6]["state"] == "unknown" and by_row[6]["reason"] == "in_flight_at_crash"
    assert by_row[1]["provider_message_id"] == "<1@example.com>"
    assert by_row[1]["provider_email_id"] == "e-000001" and by_row[1]["sent_at"]


@pytest.mark.parametrize(
    ("states", "rows"),
    [
        (["failed"], [3, 5]),
        (["skipped", "unknown"], [4, 6, 7]),
        (["sent"], [1, 2, 8]),
        (["pending"], []),
    ],
)
def test_state_filter(db: Path, tricky_run: str, tmp_path: Path, states, rows) -> None:
    out = write_report(db, tricky_run, tmp_path / "f.parquet", format="parquet", states=states)
    back = pl.read_parquet(out)
    assert back["row"].to_list() == rows
    assert "customer_id" in back.columns  # an empty report still has every column
    csv_out = write_report(db, tricky_run, tmp_path / "f.csv", states=states)
    assert csv_out.read_text("utf-8").splitlines()[0].startswith("row,email,name,state,")


def test_chunks_give_the_same_report(db: Path, tricky_run: str, tmp_path: Path) -> None:
    whole = write_report(db, tricky_run, tmp_path / "a.csv").read_bytes()
    chunked = write_report(db, tricky_run, tmp_path / "b.csv", chunk_rows=3).read_bytes()
    assert whole == chunked
    frames = list(iter_report(db, tricky_run, chunk_rows=3))
    assert [f.height for f in frames] == [3, 3, 2]


def test_metadata_columns_expand_whatever_the_keys(db: Path, tmp_path: Path) -> None:
    keys = ("customer id", 'we"ird.key', "ünï", "state")  # "state" collides with ours
    people = [
        Person("a@example.com", "A", metadata={k: f"{k}-1" for k in keys}),
        Person("b@example.com", "B", metadata={"customer id": "only one"}),
    ]
    with Store(db, now=SteppingClock()) as store:
        run_id = build_run(store, people, metadata_columns=keys)
        store.conn.execute(  # a value polars cannot read as text: kept as its JSON
            "UPDATE recipients SET metadata = ? WHERE run_id = ? AND row = 2",
            (json.dumps({"customer id": {"nested": [1, 2]}, "ünï": 7}), run_id),
        )
    frame = pl.read_parquet(write_report(db, run_id, tmp_path / "m.parquet", format="parquet"))
    assert frame["customer id"].to_list() == ["customer id-1", '{"nested": [1, 2]}']
    assert frame['we"ird.key'].to_list() == ['we"ird.key-1', None]
    assert frame["ünï"].to_list() == ["ünï-1", "7"]
    # the input's own column keeps its name; the report's state moves aside
    assert frame["state"].to_list() == ["state-1", None]
    assert frame["batchsend_state"].to_list() == ["sent", "sent"]


def test_missing_run_or_database_is_a_clear_error(db: Path, tricky_run: str, tmp_path) -> None:
    # A mistyped run id is bad input (exit 2) and the message says how to find the id.
    with pytest.raises(InputError, match="no run 'nope'") as info:
        write_report(db, "nope", tmp_path / "x.csv")
    assert info.value.exit_code == 2
    assert f"the latest is {tricky_run}" in str(info.value)
    assert "batchsend runs --db" in str(info.value)
    with pytest.raises(InputError, match="no batchsend database") as missing:
        write_report(tmp_path / "missing.db", tricky_run, tmp_path / "x.csv")
    assert missing.value.exit_code == 2 and missing.value.location.file.endswith("missing.db")
    assert not (tmp_path / "missing.db").exists()  # looking did not create one
    with pytest.raises(StoreError, match="unknown recipient state 'lost'"):
        write_report(db, tricky_run, tmp_path / "x.csv", states=["lost"])
    assert not (tmp_path / "x.csv").exists()


# -- spreadsheet safety --------------------------------------------------------------

risky_text = st.one_of(
    st.text(),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from([*FORMULA_PREFIXES, "'", "''", "'=", " ="]),
        st.text(),
    ),
    # phone numbers and amounts, and the same with something dangerous after them
    st.from_regex(r"'{0,2}[+\-][0-9 ().\-/]{0,12}", fullmatch=True),
    st.builds(
        lambda number, rest: number + rest,
        st.from_regex(r"[+\-][0-9 ]{0,6}", fullmatch=True),
        st.sampled_from(["+cmd|' /C calc'!A0", "\n=1", "A1", ":1", "!", '"x"', "e5", "$"]),
    ),
)

# What a spreadsheet can evaluate in a cell that starts with a sign but holds only
# these: arithmetic on constants. No function, cell, sheet, string or program.
INERT = set("+-0123456789 ()./")


def is_inert(cell: str) -> bool:
    return not cell.startswith(FORMULA_PREFIXES) or set(cell) <= INERT


@settings(max_examples=300, deadline=None)
@given(st.lists(risky_text, min_size=1, max_size=40))
def test_no_csv_cell_can_start_a_formula(values: list[str]) -> None:
    frame = pl.DataFrame({"a": values, "b": list(reversed(values))})
    buffer = io.BytesIO()
    _csv_safe(frame).write_csv(buffer)
    cells = list(csv.reader(io.StringIO(buffer.getvalue().decode("utf-8"), newline="")))
    assert cells[0] == ["a", "b"]
    read_back = [c for row in cells[1:] for c in row]
    originals = [v for pair in zip(values, reversed(values), strict=True) for v in pair]
    for cell, original in zip(read_back, originals, strict=True):
        assert is_inert(cell), cell
        assert cell == neutralise(original)
        assert unneutralise(cell) == original  # nothing is lost


@given(risky_text)
def test_neutralise_is_exactly_undone(value: str) -> None:
    assert unneutralise(neutralise(value)) == value
    assert is_inert(neutralise(value))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("+44 20 7946 0958", "+44 20 7946 0958"),  # a phone number shows as written
        ("+447946000000", "+447946000000"),
        ("+1 (555) 010-9999", "+1 (555) 010-9999"),
        ("-12", "-12"),
        ("-", "-"),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),  # DDE behind a number: quoted
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("+44 20\n=HYPERLINK(1)", "'+44 20\n=HYPERLINK(1)"),
        ("-A1", "'-A1"),
        ("+1:1", "'+1:1"),
        ("=1+2", "'=1+2"),
        ("@SUM(1)", "'@SUM(1)"),
    ],
)
def test_only_cells_a_spreadsheet_would_run_get_the_quote(value: str, written: str) -> None:
    assert neutralise(value) == written
    frame = _csv_safe(pl.DataFrame({"phone": [value]}))
    assert frame["phone"].to_list() == [written]  # the column path agrees with neutralise


def test_every_column_of_a_report_is_neutralised(db: Path, tricky_run: str, tmp_path) -> None:
    text = write_report(db, tricky_run, tmp_path / "r.csv").read_text("utf-8")
    cells = [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]
    assert all(is_inert(c) for c in cells)
    for risky in ("'=SUM(A1:A2)", "'@cmd", "'@mallory", "'\tTabby"):
        assert risky in cells
    assert "+33 1 23" in cells and "-12" in cells  # number-like: left as written
    assert "'-frank@example.com" in cells  # addresses too; see report.py's docstring


# -- a real run against the sandbox ------------------------------------------------------


def test_failures_file_of_a_real_run_lists_the_failed_rows_with_their_input(
    tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tosend refuses disposable addresses per message: those rows fail, the rest go.

    The failures file is for reading: it is no longer offered as a recipient file to
    send again (a rerun goes out under new keys; see batchsend.next_steps).
    """
    monkeypatch.chdir(tmp_path)
    campaign_path = write_campaign(tmp_path / "c", rows=12, bad_rows=(4,))
    source = tmp_path / "c" / "recipients.csv"
    lines = source.read_text("utf-8").splitlines()
    for n in (3, 8):  # rows 3 and 8: disposable domains, refused by the provider
        lines[n] = lines[n].replace("@example.org", "@mailinator.com")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = run_campaign(
        campaign_path,
        db_path="b.db",
        base_url=sandbox.base_url,
        api_key="sk-test",
        skip_invalid=True,
        progress=False,
    )
    assert summary.state is RunState.FINISHED and summary.exit_code == 3
    assert summary.counts["failed"] == 2 and summary.counts["skipped"] == 1
    # the report the run wrote lists every row, in order
    report = pl.read_csv(summary.report_path, infer_schema=False)
    assert report["row"].to_list() == [str(n) for n in range(1, 13)]

    failed = write_report("b.db", summary.run_id, tmp_path / "failed.csv", states=["failed"])
    frame = pl.read_csv(failed, infer_schema=False)
    assert frame["row"].to_list() == ["3", "8"]
    assert frame["email"].to_list() == ["user3@mailinator.com", "user8@mailinator.com"]
    assert frame["first"].to_list() == ["First3", "First8"]  # template variables kept
    # ToSend's batch answers a spam result inside its 207, without a status of its own
    assert frame["http_status"].to_list() == ["207", "207"]
    assert frame["reason"].to_list() == ["disposable", "disposable"]
    assert all("disposable" in m for m in frame["error_message"].to_list())

    # Once the recipient file changes, its rows may have moved: no join by row number.
    source.write_text(source.read_text("utf-8") + "late@example.org,Late,13\n", "utf-8")
    again = pl.read_csv(write_report("b.db", summary.run_id, tmp_path / "again.csv"))
    assert "first" not in again.columns and again.height == 12


# -- through the CLI: formats a marketing team opens --------------------------------------


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"BATCHSEND_API_KEY": TEST_KEY})


@pytest.fixture
def phone_run(tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run of 4 rows over real HTTP whose recipient file has phone numbers and a
    formula in a template column; its id."""
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(tmp_path / "c", rows=4)
    source = tmp_path / "c" / "recipients.csv"
    with source.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    with source.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(
            [*row, cell] for row, cell in zip(rows, ["phone", *PHONES], strict=True)
        )
    result = cli("run", str(campaign), "--db", "b.db", "--base-url", sandbox.base_url, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run_id"]


PHONES = ["+44 20 7946 0958", "+447946000000", '=HYPERLINK("http://x","y")', "Zoë"]


def xlsx_sheets(path: Path) -> dict[str, list[list[tuple[str, str]]]]:
    """Each sheet of an .xlsx file by name: its rows of ``(cell type, value)``, read
    from the file's XML (``s`` shared text, ``n`` number, ``b`` boolean, ``f`` formula)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    rel = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
    with zipfile.ZipFile(path) as z:
        shared = [
            "".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
            for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", ns)
        ] if "xl/sharedStrings.xml" in z.namelist() else []  # fmt: skip
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target") for r in rels}
        sheets = {}
        for sheet in ET.fromstring(z.read("xl/workbook.xml")).iter(f"{{{ns['m']}}}sheet"):
            xml = ET.fromstring(z.read("xl/" + targets[sheet.get(rel)].lstrip("/")))
            rows = []
            for row in xml.iter(f"{{{ns['m']}}}row"):
                cells = []
                for c in row.findall("m:c", ns):
                    if c.find("m:f", ns) is not None:
                        cells.append(("f", c.find("m:f", ns).text or ""))
                        continue
                    v = c.find("m:v", ns)
                    kind = c.get("t", "n")
                    text = "" if v is None else v.text or ""
                    cells.append((kind, shared[int(text)] if kind == "s" else text))
                rows.append(cells)
            sheets[sheet.get("name")] = rows
    return sheets


def test_xlsx_report_has_typed_cells_and_shows_phone_numbers_as_written(
    phone_run: str, tmp_path: Path
) -> None:
    result = cli("report", phone_run, "--db", "b.db", "--out", "r.xlsx")
    assert result.exit_code == 0, result.output
    sheets = xlsx_sheets(tmp_path / "r.xlsx")
    assert list(sheets) == ["report"]
    header, *rows = sheets["report"]
    names = [value for _, value in header]
    assert names[:4] == ["row", "email", "name", "state"] and "phone" in names
    assert len(rows) == 4
    at = names.index
    assert [r[at("row")] for r in rows] == [("n", str(n)) for n in range(1, 5)]  # numbers
    assert [r[at("state")] for r in rows] == [("s", "sent")] * 4
    # text is text, exactly as written: no quote, no formula, no number
    assert [r[at("phone")] for r in rows] == [("s", p) for p in PHONES]
    assert not [c for row in sheets["report"] for c in row if c[0] == "f"]


def test_run_writes_its_report_as_xlsx_when_asked(
    tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(tmp_path / "c", rows=3)
    result = cli(
        "run", str(campaign), "--db", "b.db", "--base-url", sandbox.base_url,
        "--report", "out/run.xlsx", "--test-to", "me@example.com",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sheets = xlsx_sheets(tmp_path / "out" / "run.xlsx")
    assert list(sheets) == ["test run (proof copies)"]  # the sheet says what it is
    header, *rows = sheets["test run (proof copies)"]
    state = [value for _, value in header].index("state")
    assert [r[state] for r in rows] == [("s", "proof_sent"), ("s", "skipped"), ("s", "skipped")]


def test_xlsx_refuses_more_rows_than_a_sheet_holds(
    phone_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "EXCEL_MAX_ROWS", 3)  # a sheet's limit, made small
    result = cli("report", phone_run, "--db", "b.db", "--out", "r.xlsx")
    assert result.exit_code == 2 and "more than 3 rows" in result.output
    assert "--format csv" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("r.xlsx*"))  # no half workbook left behind


def test_xlsx_without_xlsxwriter_is_refused_before_sending(
    tmp_path: Path, sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "xlsxwriter", None)  # an install that lacks it
    campaign = write_campaign(tmp_path / "c", rows=3)
    result = cli(
        "run", str(campaign), "--db", "b.db", "--base-url", sandbox.base_url,
        "--report", "r.xlsx",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "xlsxwriter" in result.output and "--format csv" in result.output
    assert "Traceback" not in result.output
    assert sandbox.stats()["requests"] == 0  # nothing was sent


def test_an_unknown_extension_is_refused_and_format_overrides(
    phone_run: str, tmp_path: Path, sandbox
) -> None:
    refused = cli("report", phone_run, "--db", "b.db", "--out", "report.txt")
    assert refused.exit_code == 2
    assert "report.txt" in refused.output and ".csv" in refused.output
    assert ".xlsx" in refused.output and "--format" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "report.txt").exists()
    forced = cli("report", phone_run, "--db", "b.db", "--out", "report.txt", "--format", "csv")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "report.txt").read_text("utf-8").startswith("row,email,")
    # a run asked for such a report is refused before it sends anything
    before = sandbox.stats()["requests"]
    campaign = write_campaign(tmp_path / "d", rows=2)
    run = cli(
        "run", str(campaign), "--db", "b.db", "--base-url", sandbox.base_url,
        "--report", "run.xls",
    )  # fmt: skip
    assert run.exit_code == 2 and "run.xls" in run.output
    assert sandbox.stats()["requests"] == before


def test_csv_byte_order_mark_only_when_asked(phone_run: str, tmp_path: Path) -> None:
    assert cli("report", phone_run, "--db", "b.db", "--out", "plain.csv").exit_code == 0
    assert cli("report", phone_run, "--db", "b.db", "--out", "excel.csv", "--bom").exit_code == 0
    plain, excel = (tmp_path / "plain.csv").read_bytes(), (tmp_path / "excel.csv").read_bytes()
    assert not plain.startswith(b"\xef\xbb\xbf")
    assert excel == b"\xef\xbb\xbf" + plain
    frame = pl.read_csv(tmp_path / "excel.csv", infer_schema=False)
    assert frame.columns[0] == "row"  # readers that know UTF-8 skip the mark
    # phone numbers read as written; the formula is quoted
    assert frame["phone"].to_list() == [*PHONES[:2], "'" + PHONES[2], PHONES[3]]
