"""Recipient files: CSV or Parquet, read through polars in batches.

A file of ten million rows never has to fit in memory: :func:`iter_batches` streams it
as DataFrames of ``batch_size`` rows (polars' streaming engine, ``collect_batches``).
CSV columns are all read as text, so ``00123`` stays ``00123``. File-level problems
(unreadable, wrong encoding, empty, duplicate or missing header names, a Parquet file
that is really CSV or the reverse) raise :class:`SourceError` at once, naming the file,
the row or column, and the fix.

Limits, so that a hostile or broken file cannot hang a run or exhaust memory: the
recipient file must be a regular file (a FIFO, a device such as ``/dev/zero``, a socket
or a directory is refused before it is read); the header row may take at most
:data:`MAX_HEADER_BYTES` (1 MB) and one record at most :data:`MAX_RECORD_BYTES` (64 MB).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import polars as pl

from batchsend.errors import SourceError

PARQUET_MAGIC = b"PAR1"
_UTF8 = {"utf-8", "utf8", "utf-8-sig", "utf_8", "utf_8_sig"}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """How to read one recipient file (``[source]`` of a campaign, as ``source_settings``)."""

    path: Path
    format: Literal["csv", "parquet"] = "csv"
    delimiter: str = ","
    quote_char: str = '"'
    encoding: str = "utf-8"


def _shown(path: Path) -> str:
    return str(path)


MAX_HEADER_BYTES = 1 << 20

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
    """The file's column names, checked: not empty, none blank, none repeated."""
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
            names = list(pl.read_parquet_schema(spec.path))
        except Exception as exc:
            raise SourceError(f"unreadable Parquet file: {exc}", file=shown) from None
    else:
        if head.startswith(PARQUET_MAGIC):
            raise SourceError(
                "this is a Parquet file, not CSV",
                file=shown,
                fix='rename it to .parquet or set [source] format = "parquet"',
            )
        names = _csv_header(spec)
    _check_names(names, shown)
    return names


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
    names: list[str] | None = None
    # The header as the csv module reads it (read_columns, templates, the report): polars
    # keeps a doubled quote in a header name (``"x""y"`` stays ``x""y``).
    header = _csv_header(spec)
    for piece in _csv_chunks(path, spec.quote_char.encode(), CHUNK_BYTES):
        if names is None and piece.startswith(b"\xef\xbb\xbf"):
            piece = piece[3:]
        frame = pl.read_csv(
            piece,
            has_header=names is None,
            new_columns=names or header,
            separator=spec.delimiter,
            quote_char=spec.quote_char,
            infer_schema=False,
            empty_string_is_null=False,
            raise_if_empty=False,
        )
        if names is None:
            names = frame.columns
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
