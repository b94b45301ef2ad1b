"""Recipient files: CSV, Parquet or Excel (``.xlsx``), read through polars in batches.

A CSV or Parquet file of ten million rows never has to fit in memory: :func:`iter_batches`
streams it as DataFrames of ``batch_size`` rows (polars' streaming engine,
``collect_batches``). An Excel sheet is read whole (through polars' ``calamine`` engine,
the ``fastexcel`` package), then handed out in the same batches. CSV and Excel columns
are all read as text, so ``00123`` stays ``00123``. File-level problems (unreadable,
wrong encoding, empty, duplicate or missing header names, a row with more or fewer
fields than the header, a Parquet file that is really CSV or the reverse) raise
:class:`SourceError` at once, naming the file, the row or column, and the fix.

What spreadsheet programs leave behind is not an error: columns at the end of the header
with no name (and no value in any row) are dropped (:func:`ignored_columns` counts them),
and blank lines and rows of empty fields (``,,,``) come through as rows of empty values,
which the row pass skips. ``rename`` (``[columns.rename]``) gives columns new names as
they are read: every later step sees only the new names.

Limits, so that a hostile or broken file cannot hang a run or exhaust memory: the
recipient file must be a regular file (a FIFO, a device such as ``/dev/zero``, a socket
or a directory is refused before it is read); the header row may take at most
:data:`MAX_HEADER_BYTES` (1 MB) and one record at most :data:`MAX_RECORD_BYTES` (64 MB);
an ``.xlsx`` workbook may unpack to at most :data:`MAX_XLSX_UNPACKED` (1 GB).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import polars as pl

from batchsend.errors import SourceError

PARQUET_MAGIC = b"PAR1"
ZIP_MAGIC = b"PK\x03\x04"  # an .xlsx file is a zip archive
_UTF8 = {"utf-8", "utf8", "utf-8-sig", "utf_8", "utf_8_sig"}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """How to read one recipient file (``[source]`` of a campaign, as ``source_settings``)."""

    path: Path
    format: Literal["csv", "parquet", "xlsx"] = "csv"
    delimiter: str = ","
    quote_char: str = '"'
    encoding: str = "utf-8"
    sheet: str | None = None  # xlsx: the sheet's name; None: the first sheet
    rename: tuple[tuple[str, str], ...] = ()  # (name in the file, name batchsend uses)


def _shown(path: Path) -> str:
    return str(path)


MAX_HEADER_BYTES = 1 << 20
MAX_XLSX_UNPACKED = 1 << 30  # an .xlsx is read whole: what its zip may unpack to

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def open_regular(path: Path, shown: str, setting: str = "[source] path") -> BinaryIO:
    """Open ``path`` for reading, refusing anything that is not a regular file.

    Opened non-blocking, then checked on the open descriptor: opening a FIFO in the
    usual way waits for a writer for ever, and a device like ``/dev/zero`` never ends.
    Raises :class:`SourceError` naming the file, what it is, and the fix.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise SourceError(
            f"this is not a regular file: it is {kind}",
            file=shown,
            fix=f"point {setting} at a CSV or Parquet file (save a pipe's or a program's"
            " output to a file first)",
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _head(path: Path) -> bytes:
    try:
        with open_regular(path, _shown(path)) as fh:
            return fh.read(4096)
    except OSError as exc:
        raise SourceError(
            f"cannot read the recipient file: {exc.strerror}",
            file=_shown(path),
            fix="check [source] path in the campaign file",
        ) from None


def read_columns(spec: SourceSpec) -> list[str]:
    """The file's column names, checked: not empty, none blank, none repeated.

    Unnamed columns at the end of the header are left out, and ``spec.rename`` applied.
    """
    names = _renamed(spec, _trimmed(_raw_header(spec)))
    _check_names(names, _shown(spec.path))
    return names


def ignored_columns(spec: SourceSpec) -> int:
    """How many unnamed columns at the end of the header :func:`read_columns` leaves out."""
    raw = _raw_header(spec)
    return len(raw) - len(_trimmed(raw))


def _trimmed(names: list[str]) -> list[str]:
    """The header without the unnamed columns at its end (spreadsheets leave them)."""
    end = len(names)
    while end > 1 and not names[end - 1].strip():
        end -= 1
    return names[:end]


def _renamed(spec: SourceSpec, names: list[str]) -> list[str]:
    renames = dict(spec.rename)
    for old in renames:
        if old not in names:
            near = difflib.get_close_matches(old, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise SourceError(
                f"[columns.rename] names a column {old!r} the file does not have{hint};"
                f" the file has: {', '.join(names)}",
                file=_shown(spec.path),
                row=0,
                column=old,
                fix="write the column's name exactly as the header row has it",
            )
    return [renames.get(name, name) for name in names]


def _raw_header(spec: SourceSpec) -> list[str]:
    """The header row as the file has it (unnamed trailing columns included)."""
    head = _head(spec.path)
    shown = _shown(spec.path)
    if not head.strip(b"\xef\xbb\xbf \r\n\t"):
        raise SourceError("the file is empty", file=shown, fix="add a header row and recipients")
    if spec.format == "parquet":
        if not head.startswith(PARQUET_MAGIC):
            raise SourceError(
                "this is not a Parquet file (it does not start with PAR1; it looks like text)",
                file=shown,
                fix='rename it to .csv or set [source] format = "csv"',
            )
        try:
            return list(pl.read_parquet_schema(spec.path))
        except Exception as exc:
            raise SourceError(f"unreadable Parquet file: {exc}", file=shown) from None
    if spec.format == "xlsx":
        if not head.startswith(ZIP_MAGIC):
            raise SourceError(
                "this is not an Excel .xlsx file (it is not a zip archive)",
                file=shown,
                fix='rename it to .csv or set [source] format = "csv"',
            )
        _check_unpacked(spec)
        return _xlsx_header(_read_xlsx(spec, rows=1))
    if head.startswith(PARQUET_MAGIC):
        raise SourceError(
            "this is a Parquet file, not CSV",
            file=shown,
            fix='rename it to .parquet or set [source] format = "parquet"',
        )
    if head.startswith(ZIP_MAGIC):
        raise SourceError(
            "this is a zip archive (an Excel .xlsx file?), not CSV",
            file=shown,
            fix='rename it to .xlsx or set [source] format = "xlsx"',
        )
    return _csv_header(spec)


def _csv_header(spec: SourceSpec) -> list[str]:
    encoding = "utf-8-sig" if spec.encoding.lower() in _UTF8 else spec.encoding
    try:
        with spec.path.open("rb") as raw:
            head = raw.read(MAX_HEADER_BYTES + 1)
        # Decoded from at most the limit's bytes: a 1 GB header line is never read whole.
        text = codecs.getincrementaldecoder(encoding)().decode(head[:MAX_HEADER_BYTES])
        lines = io.StringIO(text, newline="")
        reader = csv.reader(lines, delimiter=spec.delimiter, quotechar=spec.quote_char)
        header = next(reader, None)
    except UnicodeDecodeError:
        raise _encoding_error(spec) from None
    except UnicodeError as exc:  # UTF-16/32 without a byte order mark
        raise _no_bom_error(spec, exc) from None
    except csv.Error as exc:
        if len(head) > MAX_HEADER_BYTES:  # cut at the limit: the likeliest reason
            raise _header_too_long(spec) from None
        raise SourceError(
            f"the header row is not valid CSV: {exc}", file=_shown(spec.path), row=0
        ) from None
    if len(head) > MAX_HEADER_BYTES and lines.tell() >= len(text):
        raise _header_too_long(spec)
    if not header:
        raise SourceError("the file has no header row", file=_shown(spec.path), row=0)
    return header


def _header_too_long(spec: SourceSpec) -> SourceError:
    return SourceError(
        f"the header row is longer than {_size(MAX_HEADER_BYTES)} (the limit for the"
        " header): this does not look like a recipient list",
        file=_shown(spec.path),
        row=0,
        fix="check [source] path and delimiter; the first line holds the column names",
    )


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n:,} bytes"


def _check_names(names: list[str], shown: str) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise SourceError(
                f"column {position} has no header name",
                file=shown,
                row=0,
                fix="give every column a name in the first row",
            )
        if name in seen:
            raise SourceError(
                f"duplicate header name {name!r} (columns {seen[name]} and {position})",
                file=shown,
                row=0,
                column=name,
                fix="rename one of the columns so every header is unique",
            )
        seen[name] = position


def _no_bom_error(spec: SourceSpec, exc: UnicodeError) -> SourceError:
    base = spec.encoding.lower().replace("_", "-")
    return SourceError(
        f"the file does not start with a byte order mark (BOM), which encoding"
        f" {spec.encoding!r} needs to know the byte order ({exc})",
        file=_shown(spec.path),
        fix=f'set [source] encoding = "{base}-le" (or "{base}-be") in the campaign, or save'
        " the file with a BOM",
    )


def _encoding_error(spec: SourceSpec) -> SourceError:
    """Find the first line that does not decode, so the message can point at it."""
    decoder = codecs.getincrementaldecoder(
        "utf-8" if spec.encoding.lower() in _UTF8 else spec.encoding
    )()
    line = 1
    with spec.path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[: exc.start].count(b"\n")
                break
            line += chunk.count(b"\n")
    return SourceError(
        f"line {line} is not valid {spec.encoding}",
        file=_shown(spec.path),
        fix='save the file as UTF-8, or set [source] encoding (e.g. "latin-1") in the campaign',
    )


@contextmanager
def _utf8_path(spec: SourceSpec) -> Iterator[Path]:
    """The file itself if UTF-8, else a temporary UTF-8 copy (polars reads only UTF-8)."""
    if spec.encoding.lower() in _UTF8:
        yield spec.path
        return
    fd, name = tempfile.mkstemp(prefix="batchsend-", suffix=".csv")
    try:
        with (
            os.fdopen(fd, "w", encoding="utf-8", newline="") as out,
            spec.path.open(encoding=spec.encoding, newline="") as src,
        ):
            for chunk in iter(lambda: src.read(1 << 20), ""):
                out.write(chunk)
        yield Path(name)
    except UnicodeDecodeError:
        raise _encoding_error(spec) from None
    finally:
        os.unlink(name)


CHUNK_BYTES = 4 << 20
MAX_RECORD_BYTES = 64 << 20


class _UnclosedQuote(Exception):
    """The file ends (or a record grows past the limit) inside a quoted field."""


class _RecordTooLong(Exception):
    """A record grows past :data:`MAX_RECORD_BYTES`: ``(line it starts on, inside quotes)``."""


def _unclosed_quote(spec: SourceSpec, path: Path, *, too_long: bool = False) -> SourceError:
    """Say where the quote that is never closed opens: row, line and column.

    Only on the error path: a first pass over the lines finds the record that is still
    inside quotes at the end of the file (its row and first line); that record runs to
    the end, so its opening quote is the file's last quote character, and the column is
    the number of delimiters outside quotes before it.
    """
    quote, delimiter = spec.quote_char, spec.delimiter
    inside = False
    row = line = start_line = 0
    start_offset = offset = 0
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for text in fh:
            line += 1
            if not inside:
                start_line, start_offset = line, offset
                row += 1
            if text.count(quote) % 2:
                inside = not inside
            offset += len(text)
        fh.seek(0)
        rest = fh.read()[start_offset:]
    names = _csv_header(spec)
    outside = rest[: rest.rfind(quote)].split(quote)[::2]  # even pieces: outside quotes
    position = sum(piece.count(delimiter) for piece in outside)
    column = names[position] if inside and position < len(names) else None
    if too_long:
        what = (
            f"a record longer than {MAX_RECORD_BYTES >> 20} MB from line {start_line}: a quote"
            " is probably not closed"
        )
    else:
        what = (
            f"a quote opened on line {start_line} is never closed (the rest of the file"
            " would be one field)"
        )
    return SourceError(
        what,
        file=_shown(spec.path),
        row=row - 1 if inside else None,  # the header is row 0
        column=column,
        fix="close the quote, or double a quote that belongs inside a field",
    )


def _csv_chunks(path: Path, quote: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file in pieces that end on record boundaries (header in the first piece).

    A newline ends a record when the quotes before it are balanced (RFC 4180 escapes a
    quote by doubling it, which keeps the count even), so quoted fields with line breaks
    are never cut. Reading pieces ourselves, rather than letting polars map the whole
    file, keeps memory flat however big the file is.
    """
    odd = False  # quote parity at the start of ``pending``
    pending = b""
    line = 1  # the file's line on which ``pending`` starts
    with path.open("rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            data = pending + block
            end = data.rfind(b"\n")
            while end != -1:
                # parity just after ``end``: start parity + quotes in data[:end]
                if (odd + data.count(quote, 0, end)) % 2 == 0:
                    break
                end = data.rfind(b"\n", 0, end)
            if end == -1:
                if len(data) > MAX_RECORD_BYTES:
                    raise _RecordTooLong(line, bool((odd + data.count(quote)) % 2))
                pending = data
                continue
            piece, pending = data[: end + 1], data[end + 1 :]
            odd = bool((odd + piece.count(quote)) % 2)
            line += piece.count(b"\n")
            yield piece
    if pending.strip():
        if (odd + pending.count(quote)) % 2:
            raise _UnclosedQuote
        yield pending


def _read_csv(spec: SourceSpec, path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    try:
        yield from _read_csv_pieces(spec, path, batch_size)
    except _UnclosedQuote as exc:
        raise _unclosed_quote(spec, path, too_long=bool(exc.args)) from None
    except _RecordTooLong as exc:
        # Said from what the reader already knows: finding the quote would mean reading
        # the oversized record (or the rest of the file) whole.
        line, quoted = exc.args
        why = (
            "a quote is probably not closed"
            if quoted
            else "this does not look like a recipient list"
        )
        raise SourceError(
            f"the record starting on line {line} is longer than {_size(MAX_RECORD_BYTES)}"
            f" (the limit for one record): {why}",
            file=_shown(spec.path),
            fix="close the quote, or double a quote that belongs inside a field; check"
            " [source] path and delimiter",
        ) from None


def _read_csv_pieces(spec: SourceSpec, path: Path, batch_size: int) -> Iterator[pl.DataFrame]:
    # The header as the csv module reads it (read_columns, templates, the report): polars
    # keeps a doubled quote in a header name (``"x""y"`` stays ``x""y``).
    header = _csv_header(spec)
    width = len(header)
    names = _read_names(spec, header)
    named = width - sum(n.startswith(_UNNAMED) for n in names)
    first = True
    before = 0  # data rows in the pieces before this one
    # Each later piece is read below a stand-in header, so polars takes the header's
    # width, not that of the piece's first record (which may be short or blank).
    stand_in = (spec.delimiter.join("h" * width) + "\n").encode()
    for piece in _csv_chunks(path, spec.quote_char.encode(), CHUNK_BYTES):
        if first and piece.startswith(b"\xef\xbb\xbf"):
            piece = piece[3:]
        try:
            frame = pl.read_csv(
                piece if first else stand_in + piece,
                has_header=True,
                new_columns=names,
                separator=spec.delimiter,
                quote_char=spec.quote_char,
                infer_schema=False,
                empty_string_is_null=False,
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError:
            error = _wrong_width(spec, piece, first, before, width, named)
            if error is None:
                raise
            raise error from None
        if not _widths_match(spec, piece, frame.height + first, width):
            error = _wrong_width(spec, piece, first, before, width, named)
            if error is not None:
                raise error
        frame = _drop_unnamed(spec, frame, before)
        first = False
        for start in range(0, frame.height, batch_size):
            yield frame.slice(start, batch_size)
        before += frame.height


def _read_names(spec: SourceSpec, header: list[str]) -> list[str]:
    """The names a frame is read with: the columns' own, then placeholders for the unnamed
    columns at the end of the header (dropped once checked empty)."""
    names = read_columns(spec)
    return names + [f"{_UNNAMED}{i}" for i in range(len(names), len(header))]


_UNNAMED = "\0unnamed "


def _drop_unnamed(spec: SourceSpec, frame: pl.DataFrame, before: int) -> pl.DataFrame:
    """``frame`` without the unnamed trailing columns, refused if one of them holds a value."""
    unnamed = [c for c in frame.columns if c.startswith(_UNNAMED)]
    if not unnamed:
        return frame
    filled = pl.any_horizontal(
        pl.col(c).is_not_null() & (pl.col(c).cast(pl.String).str.strip_chars() != "")
        for c in unnamed
    )
    hits = frame.select(pl.arg_where(filled)).to_series()
    if hits.len():
        index = int(hits[0])
        position = next(
            i
            for i, c in enumerate(frame.columns, start=1)
            if c in unnamed and str(frame[c][index] or "").strip()
        )
        raise SourceError(
            f"column {position} has no header name, but this row has a value in it",
            file=_shown(spec.path),
            row=before + index + 1,
            fix="give the column a name in the header row, or delete the value",
        )
    return frame.drop(unnamed)


def _widths_match(spec: SourceSpec, piece: bytes, records: int, width: int) -> bool:
    """True when every record of ``piece`` has ``width`` fields, told without parsing it.

    Only for a piece without quotes, where every delimiter separates fields; polars has
    already refused a record with more fields, so the delimiters add up to
    ``records * (width - 1)`` only if no record has fewer. False means "look closer".
    """
    if spec.quote_char.encode() in piece:
        return False
    return piece.count(spec.delimiter.encode()) == records * (width - 1)


def _wrong_width(
    spec: SourceSpec, piece: bytes, first: bool, before: int, width: int, named: int
) -> SourceError | None:
    """The first record of ``piece`` whose field count is not the header's, as an error.

    Blank lines and records of nothing but empty fields are not errors (the row pass
    skips them), nor a record that leaves out the header's unnamed trailing columns
    (``named`` fields or more). The csv module reads the fields, only for a piece that
    needs it.
    """
    text = piece.decode("utf-8", errors="replace")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=spec.delimiter, quotechar=spec.quote_char
    )
    # The csv module refuses fields over 128 KB unless told otherwise; records up to
    # MAX_RECORD_BYTES are valid here. The limit is the module's, so it is put back.
    limit = csv.field_size_limit(MAX_RECORD_BYTES)
    try:
        return _first_wrong_width(spec, reader, first, before, width, named)
    finally:
        csv.field_size_limit(limit)


def _first_wrong_width(
    spec: SourceSpec,
    reader: Iterator[list[str]],
    first: bool,
    before: int,
    width: int,
    named: int,
) -> SourceError | None:
    for index, fields in enumerate(reader):
        if first and index == 0:
            continue
        empty = not any(f.strip() for f in fields)
        if named <= len(fields) <= width or (empty and len(fields) <= width):
            continue
        row = before + index + (0 if first else 1)
        shown = json.dumps(spec.delimiter)
        if empty:  # nothing but separators, more than the header has: unreadable as a row
            return SourceError(
                f"this row is empty but has {len(fields)} fields, the header has {width}",
                file=_shown(spec.path),
                row=row,
                fix="delete the row (an empty row with no more separators than the header"
                " is ignored)",
            )
        if len(fields) > width:
            return SourceError(
                f"this row has {len(fields)} fields, the header has {width}",
                file=_shown(spec.path),
                row=row,
                fix=f'quote a value that holds a {shown} ("Smith{spec.delimiter} Jr."),'
                " remove the extra fields, or name the extra column in the header row",
            )
        return SourceError(
            f"this row has {len(fields)} field{'s' if len(fields) != 1 else ''}, the header"
            f" has {width}: the values would land in the wrong columns",
            file=_shown(spec.path),
            row=row,
            fix=f"add the missing fields (empty ones too: {shown * (width - 1)}), or check"
            " [source] delimiter and the row's quoting",
        )
    return None


def _check_unpacked(spec: SourceSpec) -> None:
    """Refuse a workbook that unpacks to more than :data:`MAX_XLSX_UNPACKED` bytes.

    A sheet is read whole, and a small zip can unpack to gigabytes; the sizes its
    directory declares are checked before anything is unpacked.
    """
    shown = _shown(spec.path)
    try:
        with zipfile.ZipFile(spec.path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"unreadable Excel file: {exc}", file=shown) from None
    if unpacked > MAX_XLSX_UNPACKED:
        raise SourceError(
            f"the workbook unpacks to {_size(unpacked)}, over the {_size(MAX_XLSX_UNPACKED)}"
            " an .xlsx source may (a sheet is read whole)",
            file=shown,
            fix="save the sheet as CSV: a CSV file is streamed, whatever its size",
        )


def _read_xlsx(spec: SourceSpec, rows: int | None = None) -> pl.DataFrame:
    """The sheet's first ``rows`` rows (all when None), header row included, all text."""
    shown = _shown(spec.path)
    try:
        return pl.read_excel(
            spec.path,
            sheet_name=spec.sheet,
            engine="calamine",
            has_header=False,
            infer_schema_length=0,  # every column as text, as CSV is read
            drop_empty_rows=False,  # row numbers stay the sheet's
            drop_empty_cols=False,
            read_options={"n_rows": rows} if rows is not None else None,
        )
    except ModuleNotFoundError:
        raise SourceError(
            "reading .xlsx files needs the fastexcel package, which is not installed",
            file=shown,
            fix="pip install fastexcel (or save the sheet as CSV)",
        ) from None
    except pl.exceptions.NoDataError:
        raise SourceError(
            "the sheet is empty", file=shown, fix="add a header row and recipients"
        ) from None
    except Exception as exc:
        if spec.sheet is not None and "sheet" in str(exc).lower():
            raise SourceError(
                f"the workbook has no sheet {spec.sheet!r}",
                file=shown,
                fix="set [source] sheet to one of the workbook's sheet names",
            ) from None
        first = str(exc).split("\n")[0]
        raise SourceError(f"unreadable Excel file: {first}", file=shown) from None


def _xlsx_header(frame: pl.DataFrame) -> list[str]:
    if frame.height == 0:
        return []
    return ["" if v is None else str(v) for v in frame.row(0)]


def _read_xlsx_batches(spec: SourceSpec, batch_size: int) -> Iterator[pl.DataFrame]:
    whole = _read_xlsx(spec)
    header = _xlsx_header(whole)
    frame = whole.slice(1)
    frame.columns = _read_names(spec, header)
    frame = _drop_unnamed(spec, frame, 0)
    for start in range(0, frame.height, batch_size):
        yield frame.slice(start, batch_size)


def iter_batches(spec: SourceSpec, batch_size: int = 50_000) -> Iterator[pl.DataFrame]:
    """Yield the file's rows as DataFrames of at most ``batch_size`` rows, in file order.

    Raises :class:`SourceError` for a file that cannot be read as a table.
    """
    read_columns(spec)
    shown = _shown(spec.path)
    with _utf8_path(spec) as path:
        batches: Iterator[pl.DataFrame]
        if spec.format == "parquet":
            batches = iter(pl.scan_parquet(path).collect_batches(chunk_size=batch_size))
            if spec.rename:
                renames = dict(spec.rename)
                batches = (b.rename(renames) for b in batches)
        elif spec.format == "xlsx":
            batches = _read_xlsx_batches(spec, batch_size)
        else:
            batches = _read_csv(spec, path, batch_size)
        try:
            for batch in batches:
                if batch.height:
                    yield batch
        except pl.exceptions.ComputeError as exc:
            if "utf-8" in str(exc).lower():
                raise _encoding_error(spec) from None
            raise SourceError(f"cannot read the file: {exc}", file=shown) from None
        except pl.exceptions.PolarsError as exc:
            # polars' first paragraph says what is wrong; the rest is advice about its
            # own options (dtypes, ignore_errors) that does not apply here.
            first = str(exc).split("\n\n")[0].strip()
            raise SourceError(
                f"cannot read the file: {first}",
                file=shown,
                fix="check the quoting: a quote inside a field is doubled",
            ) from None
