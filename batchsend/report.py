"""Reports: what happened to every recipient of a run, from the store.

Two things live here:

* :func:`iter_report` -- the report's rows, streamed from SQLite as polars DataFrames
  of at most ``chunk_rows`` rows, in input order. Memory stays flat whatever the size
  of the run.
* :func:`write_report` -- those rows written as an Excel workbook, CSV, Parquet, JSON,
  JSON lines, or the one-page HTML summary of :mod:`batchsend.report_html`. The file's
  extension picks the format (:func:`format_for`); one that names no format is refused,
  never written as CSV under another name.

The report's columns, in order::

    row, <address column>, <name column>, state, reason, error_type, http_status,
    error_message, attempts, retryable, provider_message_id, provider_email_id, sent_at,
    updated_at, idempotency_key, message_key, tag, <metadata columns...>,
    <the recipient file's other columns...>

The address and name columns carry the names the campaign maps them from (``email``
and ``name`` when unknown), and the metadata columns their own names, so a report
reads like the recipient file it came from. When the run's recipient file is still
there and unchanged, its other columns (template variables, cc, attachments...) follow,
read from the file itself and joined by row number. A report is for reading, never an
input to send again: failed rows fed back in as a new campaign would go out under new
keys, and a row whose answer was lost would be emailed twice (``resume --retry-failed``
sends retryable failures; see :mod:`batchsend.next_steps`). Input column names always win:
a report column whose name is taken by an input column is renamed ``batchsend_<name>``
(a recipient file with a ``state`` column gets ``batchsend_state``).

A test run's rows whose proof copy the provider accepted are ``sent`` in the store (a
message went) but read ``proof_sent`` here, reason ``test_run``: the copy went to the test
address, and a report never lists a recipient as sent who was not emailed.

Spreadsheet safety. The ``.xlsx`` workbook needs none: its cells are typed, and text is
written as text that Excel never evaluates (nor turns into a link). CSV, the one text
format a spreadsheet parses, does: every text cell that begins with ``=``, ``+``, ``-``,
``@``, a tab, a carriage return or a line feed is written with a single quote in front,
as OWASP recommends against formula injection -- every column, addresses included:
``-x@example.com`` is a valid address but also a formula to a spreadsheet. One narrow
exception, so that phone numbers do not show a stray quote: a sign followed only by
digits, spaces and ``( ) . - /`` (``+44 20 7946 0958``, ``-12``, ``-``) is left as it
is. With no letter, quote, ``|``, ``!``, ``:``, ``$`` or ``[`` it can name no function,
cell, sheet or program: evaluated, it is arithmetic on constants at most (``+1+cmd|...``
has letters and keeps its quote). Header names get the same treatment (a recipient file
may name a column ``=HYPERLINK(...)``), and so do values that are text in all but type:
Parquet Categorical and Enum cells, and nested values (lists, structs), which CSV cannot
hold and are written as their JSON text. Numbers, dates and booleans are left as they
are. A program reading the CSV back gets such a cell with its quote;
:func:`unneutralise` undoes the prefix, and the Parquet and JSON exports, which no
spreadsheet evaluates, carry every value untouched (use ``--format parquet`` for
byte-exact values).

The store owns the schema and every query: this module asks it for the run and for
the recipient rows in chunks (:mod:`batchsend.store.reports`), and turns them into the
report.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import queue
import re
import sqlite3
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import polars as pl

from batchsend.campaign import load_campaign
from batchsend.errors import BatchsendError, InputError, StoreError
from batchsend.fingerprints import fingerprints
from batchsend.history import find_run, open_db
from batchsend.next_steps import PROOF_SENT
from batchsend.report_html import render_html
from batchsend.source import iter_batches, read_columns
from batchsend.states import RecipientState
from batchsend.store import RunInfo, reports
from batchsend.store.events import OUTCOME_COLUMNS, run_has_events, run_outcomes
from batchsend.summary import read_summary

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "FORMULA_PREFIXES",
    "ReportColumns",
    "check_report_path",
    "format_for",
    "iter_report",
    "neutralise",
    "report_columns",
    "require_format",
    "unneutralise",
    "write_report",
]

Format = Literal["csv", "xlsx", "parquet", "json", "jsonl", "html"]
FORMATS: tuple[str, ...] = ("csv", "xlsx", "parquet", "json", "jsonl", "html")
_SUFFIX_FORMATS = {"ndjson": "jsonl", "htm": "html", "pq": "parquet"}
#: Every extension :func:`format_for` knows, as a user types them.
EXTENSIONS: tuple[str, ...] = tuple(
    f".{s}" for s in sorted({*FORMATS, *_SUFFIX_FORMATS}, key=lambda s: (s not in FORMATS, s))
)


def format_for(path: str | Path | None, format: str | None = None) -> Format:
    """The report format for ``path``: ``format`` when given, else its extension's.

    No path and no format is CSV. An extension that names no format is bad input, never
    a CSV under another name (a ``report.txt`` or ``report.xls`` that Excel would refuse
    or misread): the message lists the extensions there are, and ``--format`` decides
    for any name.

    >>> format_for("r.ndjson"), format_for("r.txt", "csv"), format_for(None)
    ('jsonl', 'csv', 'csv')
    """
    if format is not None:
        if format not in FORMATS:
            raise InputError(
                f"unknown report format {format!r}", fix=f"one of: {', '.join(FORMATS)}"
            )
        return cast(Format, format)
    if path is None:
        return "csv"
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = _SUFFIX_FORMATS.get(suffix, suffix)
    if fmt not in FORMATS:
        what = f"extension .{suffix}" if suffix else "no extension"
        raise InputError(
            f"a report file name has {what}, which names no report format",
            file=str(path),
            fix=f"end it with one of {', '.join(EXTENSIONS)} (or give --format)",
        )
    return cast(Format, fmt)


#: A CSV cell starting with one of these is a formula (or may become one) in a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
# ...except a sign followed by digits, spaces and ( ) . - / only: a phone number
# (+44 20 7946 0958), a negative amount, a lone "-". Such a cell can at most be
# arithmetic on constants: with no letter, no quote, no | ! : $ [ it names no function,
# no cell, no sheet, no program.
_NUMBER_LIKE = r"[+\-][0-9 ().\-/]*"
_NUMBER_LIKE_RE = re.compile(_NUMBER_LIKE)

CHUNK_ROWS = 50_000

# (store column, report column) for the store's own columns, in report order; the
# address, name and metadata columns are placed by :func:`report_columns`.
_FIXED = (
    ("state", "state"),
    ("reason", "reason"),
    ("error_type", "error_type"),
    ("http_status", "http_status"),
    ("error_message", "error_message"),
    ("attempts", "attempts"),
    ("retryable", "retryable"),
    ("provider_message_id", "provider_message_id"),
    ("provider_email_id", "provider_email_id"),
    ("sent_at", "sent_at"),
    ("updated_at", "updated_at"),
    ("unit_key", "idempotency_key"),
    ("message_key", "message_key"),
    ("tag", "tag"),
)
_INT_COLUMNS = {"row", "http_status", "attempts"}
_BOOL_COLUMNS = {"retryable"}


# -- spreadsheet safety --------------------------------------------------------------


def _is_formula(value: str) -> bool:
    bare = value.lstrip("'")
    return bare.startswith(FORMULA_PREFIXES) and not _NUMBER_LIKE_RE.fullmatch(bare)


def neutralise(value: str) -> str:
    """``value`` made inert for a spreadsheet: a leading quote before a formula start.

    Quotes already in front of a formula start are counted in, so the change can always
    be undone exactly (:func:`unneutralise`): ``'=x`` becomes ``''=x``.

    >>> neutralise("=1+2"), neutralise("+1+cmd|x"), neutralise("+44 20 7946 0958")
    ("'=1+2", "'+1+cmd|x", '+44 20 7946 0958')
    """
    return "'" + value if _is_formula(value) else value


def unneutralise(value: str) -> str:
    """Undo :func:`neutralise`: ``unneutralise(neutralise(s)) == s`` for every string."""
    return value[1:] if value.startswith("'") and _is_formula(value) else value


def _neutralise_expr(name: str) -> pl.Expr:
    col = pl.col(name)
    risky = col.str.contains(r"^'*[=+\-@\t\r\n]") & ~col.str.contains(f"^'*{_NUMBER_LIKE}$")
    return pl.when(risky).then(pl.lit("'") + col).otherwise(col).alias(name)


# -- runs ----------------------------------------------------------------------------


# -- the report's shape --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportColumns:
    """Where each report column comes from, and its name in the report."""

    email: str  # the campaign's address column name
    name: str  # the campaign's name column name, or "name"
    metadata: tuple[str, ...]  # expanded from recipients.metadata
    input_extra: tuple[str, ...]  # joined from the recipient file
    renamed: dict[str, str] = field(default_factory=dict)  # report column -> name used

    def names(self) -> list[str]:
        """Every column of the report, in order."""
        own = ["row", self.email, self.name, *(r for _, r in _FIXED)]
        own = [self.renamed.get(c, c) for c in own]
        return [*own, *self.metadata, *self.input_extra]


@dataclass(frozen=True, slots=True)
class _InputFile:
    """The run's recipient file, when it is still there and unchanged."""

    spec: Any  # batchsend.source.SourceSpec
    columns: tuple[str, ...]


def _campaign_columns(run: RunInfo) -> tuple[str, str | None, _InputFile | None]:
    """(address column, name column, the unchanged recipient file or None)."""
    try:
        campaign = load_campaign(run.campaign_path)
    except (BatchsendError, OSError):
        return "email", None, None
    email, name = campaign.columns.email, campaign.columns.name
    return email, name, _unchanged_input(run, campaign)


def _unchanged_input(run: RunInfo, campaign: Any) -> _InputFile | None:
    if not run.input_fingerprint or not campaign.source.is_file():
        return None
    if run.input_path and Path(run.input_path).resolve() != campaign.source.resolve():
        return None
    try:
        if fingerprints(campaign)[0] != run.input_fingerprint:
            return None  # rows may have moved: joining by row number would lie
    except (BatchsendError, OSError):
        return None
    spec = campaign.source_settings
    try:
        return _InputFile(spec, tuple(read_columns(spec)))
    except BatchsendError:
        return None


def report_columns(
    run: RunInfo, *, with_input: bool = True
) -> tuple[ReportColumns, _InputFile | None]:
    """The report's columns for ``run`` (and the recipient file to join, if any)."""
    email, name, source = _campaign_columns(run)
    if not with_input:
        source = None
    metadata = tuple(c for c in run.metadata_columns if c not in (email, name))
    taken = {email, *(m for m in metadata)}
    if name:
        taken.add(name)
    extra: tuple[str, ...] = ()
    if source is not None:
        extra = tuple(c for c in source.columns if c not in taken)
        taken.update(extra)
    renamed: dict[str, str] = {}
    own = ["row", *(r for _, r in _FIXED), *OUTCOME_COLUMNS] + ([] if name else ["name"])
    for column in own:
        if column in taken:
            new = "batchsend_" + column
            while new in taken:
                new = "batchsend_" + new
            renamed[column] = new
    cols = ReportColumns(
        email=email, name=name or "name", metadata=metadata, input_extra=extra, renamed=renamed
    )
    return cols, source


# -- streaming the rows --------------------------------------------------------------


def _state_values(states: Iterable[str] | None) -> list[str] | None:
    if states is None:
        return None
    values = []
    for s in states:
        try:
            values.append(RecipientState(s).value)
        except ValueError:
            valid = ", ".join(x.value for x in RecipientState)
            raise StoreError(f"unknown recipient state {s!r} (one of: {valid})") from None
    return values


_META = "__metadata"


def _select(cols: ReportColumns) -> tuple[list[str], dict[str, pl.DataType]]:
    """The store columns that yield the report's store-side columns, and their schema.

    The metadata JSON comes out whole (as ``__metadata``) and is expanded by polars
    outside the GIL: pulling each key out in SQL costs more than the rest of the row.
    """
    columns: list[str] = ["row", "email", "name", *(store_col for store_col, _ in _FIXED)]
    names = cols.names()[: 3 + len(_FIXED)]
    schema: dict[str, pl.DataType] = {}
    for name, store_name in zip(
        names, ["row", "email", "name", *(s for s, _ in _FIXED)], strict=True
    ):
        if store_name in _INT_COLUMNS:
            schema[name] = pl.Int64()
        elif store_name in _BOOL_COLUMNS:
            schema[name] = pl.Boolean()
        else:
            schema[name] = pl.String()
    if cols.metadata:
        schema[_META] = pl.String()
    return columns, schema


def _frame(rows: list[tuple[Any, ...]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    columns = list(zip(*rows, strict=True))
    data: dict[str, Any] = {}
    for (name, dtype), values in zip(schema.items(), columns, strict=True):
        if isinstance(dtype, pl.Boolean):
            values = tuple(None if v is None else bool(v) for v in values)
        data[name] = pl.Series(name, values, dtype=dtype, strict=False)
    return pl.DataFrame(data)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _expand_metadata(frame: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Replace the ``__metadata`` JSON column by one text column per metadata key."""
    if not keys:
        return frame
    dtype = pl.Struct({k: pl.String for k in keys})
    try:
        expanded = frame[_META].str.json_decode(dtype).struct.unnest()
    except pl.exceptions.PolarsError:
        # A value polars will not read as text (a nested object): decode this chunk in
        # Python, turning any non-text value into its JSON.
        decoded = [json.loads(v) if v else {} for v in frame[_META]]
        expanded = pl.DataFrame(
            {k: [_as_text(d.get(k)) for d in decoded] for k in keys},
            schema={k: pl.String for k in keys},
        )
    return frame.drop(_META).hstack(expanded)


_DONE = object()


def _prefetched(frames: Iterator[pl.DataFrame], depth: int = 2) -> Iterator[pl.DataFrame]:
    """Run ``frames`` in a thread, ``depth`` chunks ahead of the consumer.

    Reading SQLite rows into Python objects holds the GIL; everything polars does next
    (JSON, CSV, Parquet) releases it, so on two cores the two halves overlap.
    """
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="batchsend-report-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                box.get_nowait()
        worker.join()


class _InputJoiner:
    """Adds the recipient file's other columns to report chunks, matching row numbers.

    Both sides come in ascending row order, so one pass over the file serves the whole
    report: batches are read just far enough to cover each chunk's last row.
    """

    def __init__(self, source: _InputFile, columns: Sequence[str], chunk_rows: int) -> None:

        self.columns = list(columns)
        self._batches = iter_batches(source.spec, chunk_rows)
        self._buffer = pl.DataFrame(
            schema={"__row": pl.Int64, **{c: pl.String for c in self.columns}}
        )
        self._next_row = 1
        self._done = False

    def _read(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            self._done = True
            return False
        n = batch.height
        part = batch.select(
            pl.int_range(self._next_row, self._next_row + n, dtype=pl.Int64).alias("__row"),
            *(pl.col(c) for c in self.columns),
        )
        self._next_row += n
        if self._buffer.height == 0:
            self._buffer = part
        else:
            self._buffer = pl.concat([self._buffer, part], how="vertical_relaxed")
        return True

    def join(self, chunk: pl.DataFrame, row_column: str) -> pl.DataFrame:
        if chunk.height == 0:
            return chunk.join(self._buffer.head(0), left_on=row_column, right_on="__row")
        first, last = chunk[row_column][0], chunk[row_column][-1]
        while self._next_row <= last and not self._done:
            self._read()
        window = self._buffer.filter(pl.col("__row").is_between(first, last))
        self._buffer = self._buffer.filter(pl.col("__row") > last)
        return chunk.join(
            window, left_on=row_column, right_on="__row", how="left", maintain_order="left"
        )


def iter_report(
    db_path: str | Path,
    run_id: str,
    *,
    states: Iterable[str] | None = None,
    with_input: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> Generator[pl.DataFrame, None, None]:
    """Yield the report's rows as DataFrames of at most ``chunk_rows`` rows, in row order.

    ``states`` keeps only rows in those recipient states. ``with_input`` joins the
    recipient file's other columns when the file is still there unchanged. At least one
    frame is always yielded (empty, with every column, when no row matches), so a
    writer always knows the columns.

    Example::

        for frame in iter_report("batchsend.db", run_id, states=["failed"]):
            print(frame.select("row", "email", "reason"))
    """
    wanted = _state_values(states)
    with open_db(db_path) as store:
        run = find_run(store, run_id)
        cols, source = report_columns(run, with_input=with_input)
        columns, schema = _select(cols)
        sql, params = reports.report_query(
            store, run_id, columns, metadata=bool(cols.metadata), states=wanted
        )
    joiner = _InputJoiner(source, cols.input_extra, chunk_rows) if source else None
    row_name = cols.renamed.get("row", "row")
    proof = _proof_labels(cols, run.test_to) if run.is_test else None
    # A read-only connection of its own: the report may be read while a run writes
    # (WAL), and polars' Parquet sink pulls the chunks from one of its own threads.
    conn = reports.connect_read_only(db_path)
    try:
        outcomes = run_has_events(conn, run_id)
        chunks = reports.row_chunks(conn, sql, params, chunk_rows)
        for frame in _prefetched(_frame(rows, schema) for rows in chunks):
            frame = _expand_metadata(frame, cols.metadata)
            if proof is not None:
                frame = frame.with_columns(proof)
            if outcomes:
                frame = _join_outcomes(conn, run_id, frame, row_name, cols.renamed)
            if joiner is not None:
                frame = joiner.join(frame, row_name)
            yield frame
    finally:
        conn.close()


def _proof_labels(cols: ReportColumns, test_to: str | None) -> list[pl.Expr]:
    """A test run's rows as the report shows them: a row whose proof copy went out reads
    ``proof_sent`` (reason ``test_run``), never ``sent``, for its own address got nothing."""
    state, reason, message = (cols.renamed.get(c, c) for c in ("state", "reason", "error_message"))
    sent = pl.col(state) == RecipientState.SENT.value
    to = test_to or "the test address"
    why = f"a proof copy of this row's message went to {to}; this address was not emailed"
    return [
        pl.when(sent).then(pl.lit(PROOF_SENT)).otherwise(pl.col(state)).alias(state),
        pl.when(sent).then(pl.lit("test_run")).otherwise(pl.col(reason)).alias(reason),
        pl.when(sent).then(pl.lit(why)).otherwise(pl.col(message)).alias(message),
    ]


_OUTCOME_SCHEMA = {"__row": pl.Int64(), **{c: pl.String() for c in OUTCOME_COLUMNS}}


def _join_outcomes(
    conn: sqlite3.Connection,
    run_id: str,
    frame: pl.DataFrame,
    row_column: str,
    renamed: dict[str, str],
) -> pl.DataFrame:
    """The chunk with what the provider reported after accepting each row's message
    (delivered or bounced, bounce type and reason, complaint, first open and click),
    under the names :func:`report_columns` gave them (``batchsend_delivery`` when the
    recipient file has a ``delivery`` column)."""
    if frame.height:
        rows = frame.get_column(row_column)
        found = run_outcomes(conn, run_id, int(rows.min()), int(rows.max()))  # type: ignore[arg-type]
    else:
        found = []
    events = pl.DataFrame(found, schema=_OUTCOME_SCHEMA, orient="row").rename(
        {c: renamed[c] for c in OUTCOME_COLUMNS if c in renamed}
    )
    return frame.join(
        events, left_on=row_column, right_on="__row", how="left", maintain_order="left"
    )


# -- writing -------------------------------------------------------------------------


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, default=str)


def _as_csv_text(series: pl.Series) -> pl.Series:
    """A column CSV cannot hold, or holds as text without being ``pl.String``, as text."""
    dtype = series.dtype
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return series.cast(pl.String)
    # Lists, arrays, structs, binaries, objects: their JSON text (rare: the Python pass is fine)
    return pl.Series(series.name, [_json_text(v) for v in series.to_list()], dtype=pl.String)


def _csv_safe(frame: pl.DataFrame) -> pl.DataFrame:
    plain = (pl.String, pl.Boolean, pl.Null, pl.Decimal)
    convert = [
        n
        for n, t in frame.schema.items()
        if not (t.is_numeric() or t.is_temporal() or isinstance(t, plain))
    ]
    if convert:
        frame = frame.with_columns(_as_csv_text(frame[n]) for n in convert)
    text = [n for n, t in frame.schema.items() if t == pl.String]
    if text:
        frame = frame.with_columns(_neutralise_expr(n) for n in text)
    # neutralise is one-to-one, so renamed headers stay distinct
    risky = {n: neutralise(n) for n in frame.columns if _is_formula(n)}
    return frame.rename(risky) if risky else frame


def _write_csv(frames: Iterator[pl.DataFrame], out: Path, *, bom: bool = False) -> None:
    with out.open("wb") as fh:
        if bom:  # how Excel knows the file is UTF-8 (without it, "Zoë" opens as "ZoÃ«")
            fh.write("\ufeff".encode())
        first = True
        for frame in frames:
            _csv_safe(frame).write_csv(fh, include_header=first)
            first = False


#: Rows one Excel sheet holds under its header row.
EXCEL_MAX_ROWS = 1_048_575


def require_format(format: str) -> None:
    """Raise :class:`InputError` (exit 2) unless reports in ``format`` can be written
    here: called before a run sends anything, so its report cannot fail at the end."""
    if format == "xlsx":
        _xlsxwriter()


def check_report_path(path: str | Path | None) -> None:
    """Raise :class:`InputError` (exit 2) unless a report can be written as ``path``
    asks (its extension names a format, and that format can be written here)."""
    require_format(format_for(path))


def _xlsxwriter() -> Any:
    try:
        # Only .xlsx reports need xlsxwriter: imported when one is written, so an
        # install without it still runs every other command.
        import xlsxwriter
    except ImportError:
        raise InputError(
            "an .xlsx report needs the xlsxwriter package, which is not installed",
            fix="install it (pip install xlsxwriter; it is one of batchsend's "
            "dependencies), or write the report as CSV: --format csv",
        ) from None
    return xlsxwriter


def _write_xlsx(frames: Iterator[pl.DataFrame], out: Path, *, sheet: str) -> None:
    """One worksheet, one Excel table with a filter on every column, header row frozen.

    Every cell is typed: numbers are numbers, and text is text that Excel never
    evaluates or turns into a link, so no cell needs the CSV's leading quote and a
    phone number reads as written. A sheet holds about a million rows: beyond that the
    report is refused, before the workbook is written, rather than cut short. (A cell
    holds 32,767 characters at most: a longer value is cut there, by Excel's own limit;
    CSV and Parquet carry it whole.)
    """
    xlsxwriter = _xlsxwriter()
    parts: list[pl.DataFrame] = []
    rows = 0
    for frame in frames:
        rows += frame.height
        if rows > EXCEL_MAX_ROWS:
            raise InputError(
                f"the report has more than {EXCEL_MAX_ROWS:,} rows, more than an Excel sheet holds",
                fix="write it as CSV or Parquet (--format csv), or keep fewer rows (--state)",
            )
        parts.append(frame)
    table = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
    options = {"strings_to_formulas": False, "strings_to_urls": False, "nan_inf_to_errors": True}
    with xlsxwriter.Workbook(str(out), options) as workbook:
        table.write_excel(
            workbook,
            sheet,
            dtype_formats={pl.Int64: "0"},  # row numbers and HTTP statuses, not amounts
            autofit=True,
            freeze_panes=(1, 0),
        )


def _sheet_name(db_path: str | Path, run_id: str) -> str:
    with open_db(db_path) as store:
        run = find_run(store, run_id)
    if run.dry_run:
        return "dry run (nothing sent)"
    return "test run (proof copies)" if run.is_test else "report"


def _write_jsonl(frames: Iterator[pl.DataFrame], out: Path) -> None:
    with out.open("wb") as fh:
        for frame in frames:
            if frame.height:
                frame.write_ndjson(fh)


_JSON_SLICE_ROWS = 5_000


def _write_json(frames: Iterator[pl.DataFrame], out: Path) -> None:
    # One JSON array, written a chunk at a time: each chunk's JSON lines become array
    # items, so `json.load` reads the file and memory stays bounded.
    # JSON text never holds a raw line break (it is escaped inside strings), so turning
    # each chunk's line ends into ",\n" makes the items in one pass over the bytes.
    with out.open("wb") as fh:
        fh.write(b"[")
        separator = b"\n"
        for frame in frames:
            # in slices, so the text copies of a chunk stay a few MB
            for piece in frame.iter_slices(_JSON_SLICE_ROWS):
                buffer = io.BytesIO()
                piece.write_ndjson(buffer)
                text = buffer.getvalue()
                fh.write(separator)
                fh.write(text[:-1].replace(b"\n", b",\n"))
                separator = b",\n"
        fh.write(b"\n]\n")


def _write_parquet(frames: Iterator[pl.DataFrame], out: Path) -> None:
    # polars' streaming sink pulls the chunks from a Python source one at a time, so
    # Parquet is written without pyarrow and without holding the whole run.
    from polars.io.plugins import register_io_source

    first = next(frames)
    schema = first.schema

    def source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        for frame in _chain(first, frames):
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            yield frame

    register_io_source(source, schema=schema).sink_parquet(out)


def _chain(first: pl.DataFrame, rest: Iterator[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    yield first
    yield from rest


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of row tuples come and go.

    The rows hold no reference cycles, yet allocating them keeps triggering collections
    that walk every young tuple: about a third of the export's CPU time for nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def write_report(
    db_path: str | Path,
    run_id: str,
    out: str | Path,
    *,
    format: Format = "csv",
    states: Iterable[str] | None = None,
    with_input: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    bom: bool = False,
) -> Path:
    """Write run ``run_id``'s report to ``out`` and return its path.

    ``format`` is ``csv`` (spreadsheet-safe, see the module docstring; ``bom`` starts it
    with a UTF-8 byte-order mark, which Excel needs to read accents right), ``xlsx`` (an
    Excel workbook of typed cells), ``parquet``, ``json`` (one array of row objects),
    ``jsonl`` (JSON lines: one object per line) or ``html`` (the one-page summary).
    ``states`` keeps only rows in those states: ``states=["failed"]`` lists the failed
    rows with their reasons (to read: :mod:`batchsend.next_steps` says how to send
    them again, never as a new campaign).

    Example::

        write_report("batchsend.db", run_id, "failed.csv", states=["failed"])
    """
    if format not in FORMATS:
        raise StoreError(f"unknown report format {format!r} (one of: {', '.join(FORMATS)})")
    out = Path(out)
    if format == "html":
        out.write_text(render_html(read_summary(db_path, run_id)), encoding="utf-8")
        return out
    require_format(format)
    sheet = _sheet_name(db_path, run_id) if format == "xlsx" else ""
    frames = iter_report(
        db_path, run_id, states=states, with_input=with_input, chunk_rows=chunk_rows
    )
    tmp = out.with_name(out.name + ".partial")
    with _gc_paused():
        try:
            if format == "csv":
                _write_csv(frames, tmp, bom=bom)
            elif format == "xlsx":
                _write_xlsx(frames, tmp, sheet=sheet)
            elif format == "json":
                _write_json(frames, tmp)
            elif format == "jsonl":
                _write_jsonl(frames, tmp)
            else:
                _write_parquet(frames, tmp)
            tmp.replace(out)  # a reader never sees half a report under the final name
        except OSError as exc:
            raise StoreError(
                f"{out}: cannot write the report: {exc.strerror or exc}; once that is put"
                f" right: batchsend report {run_id} --db {db_path} --out {out}"
            ) from None
        except pl.exceptions.PolarsError as exc:
            # A bug, but one that must not hide the run's result behind a traceback.
            first = str(exc).split("\n")[0].strip()
            raise StoreError(
                f"{out}: cannot write the report as {format}: {first}; try: batchsend report"
                f" {run_id} --db {db_path} --format parquet --out {out.with_suffix('.parquet')}"
            ) from None
        finally:
            frames.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
    return out


# -- the summary behind the HTML page ------------------------------------------------
