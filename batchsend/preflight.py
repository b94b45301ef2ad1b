"""Preflight: read and render every row, send nothing, and say what is wrong.

:func:`iter_rows` is the one pass over a campaign's recipients that everything else
builds on: it streams the file in batches, validates and normalises each address,
skips duplicates and suppressed addresses, renders the message and checks it against
the provider's limits. Each input row yields exactly one :class:`RowResult`, in file
order. :func:`preflight` runs that pass to the end and sums it up in a
:class:`PreflightReport`. File-level problems (the file, a template) raise
:class:`~batchsend.errors.InputError` subclasses at once; row-level problems are
recorded on the row and the pass goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import mimetypes
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import jinja2.meta
import polars as pl

from batchsend.addresses import AddressBook, InvalidAddress, split_list
from batchsend.campaign import Campaign, TemplateRef
from batchsend.errors import AttachmentError, SourceError, TemplateError
from batchsend.message import Address, Attachment, Message, content_digest
from batchsend.render import Renderer, RowRenderError, read_template
from batchsend.source import iter_batches, open_regular, read_columns

MB = 1024 * 1024
BATCH_ROWS = 10_000  # small batches keep the per-batch Python objects small
MERGE_EVERY = 200_000  # dedup hashes kept in a set before joining the sorted array
MAX_KEPT_PROBLEMS = 10_000

#: Provider attachment limits: (per file, total, whether the HTML counts in the total).
ATTACHMENT_LIMITS: dict[str, tuple[int | None, int, bool]] = {
    "v1": (10 * MB, 25 * MB, True),
    "tosend": (None, 10 * MB, False),
}
_PERCENT_ESCAPE = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)
_HEADER_BREAK = re.compile(r"[\r\n\0]")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one row (``row`` None: the whole campaign)."""

    row: int | None
    column: str | None
    message: str
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class RowResult:
    """What became of one input row in preflight.

    ``message`` is set when the row is sendable; ``skip_reason`` is ``"invalid"``,
    ``"duplicate"`` or ``"suppressed"`` otherwise, with ``problems`` for invalid rows.
    """

    row: int
    email: str
    name: str | None
    message: Message | None
    skip_reason: str | None
    problems: tuple[Problem, ...] = ()
    tag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    group: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)  # the row as read


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """The sum of a preflight pass. ``problems`` keeps the first 10,000 of ``problem_count``."""

    rows: int
    sendable: int
    skipped_by_reason: dict[str, int]
    problems: list[Problem]
    estimated_requests: int
    problem_count: int = 0
    notes: tuple[str, ...] = ()  # how the campaign will travel, where that is not obvious

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


class _Seen:
    """Dedup keys of the rows accepted so far, in little memory.

    Keys are kept as 64-bit hashes in a sorted polars Series (8 bytes a row, a small
    fraction of what a Python set of the address strings would hold), plus a set of the
    most recent ones, joined into the sorted array every ``MERGE_EVERY`` keys so the
    re-sort stays rare. Two different addresses share a 64-bit hash with probability about
    n^2 / 2^65 (3e-8 at one million rows).
    """

    def __init__(self) -> None:
        self.sorted = pl.Series("h", [], dtype=pl.Int64)
        self.batch: set[int] = set()

    def seen_before_batch(self, hashes: list[int | None]) -> list[bool]:
        n = self.sorted.len()
        if n == 0 or not hashes:
            return [False] * len(hashes)
        probe = pl.Series("h", [h if h is not None else 0 for h in hashes], dtype=pl.Int64)
        idx = self.sorted.search_sorted(probe, side="left").clip(0, n - 1)
        found = (self.sorted.gather(idx) == probe).to_list()
        return [bool(f) and h is not None for f, h in zip(found, hashes, strict=True)]

    def end_batch(self) -> None:
        if len(self.batch) >= MERGE_EVERY:
            new = pl.Series("h", list(self.batch), dtype=pl.Int64)
            self.sorted = pl.concat([self.sorted, new]).sort()
            self.batch = set()


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def load_suppression(campaign: Campaign, book: AddressBook) -> set[str]:
    """Dedup keys of every address on the campaign's suppression lists.

    A list is a CSV file; the column named ``suppression.column`` (default ``email``)
    holds the addresses, or the first column when no header has that name. Lines that
    are not addresses (a header, blanks) are ignored.
    """
    keys: set[str] = set()
    for path in campaign.suppression_files:
        try:
            with path.open(encoding="utf-8-sig", newline="") as fh:
                reader = csv.reader(fh)
                first = next(reader, [])
                lowered = [c.strip().lower() for c in first]
                col = campaign.suppression_column.lower()
                index = lowered.index(col) if col in lowered else 0
                rows = reader if col in lowered else [first, *reader]
                for line in rows:
                    if len(line) > index and line[index].strip():
                        try:
                            keys.add(book.normalise(line[index].strip()).key)
                        except InvalidAddress:
                            continue
        except OSError as exc:
            raise SourceError(
                f"cannot read the suppression list: {exc.strerror}",
                file=str(path),
                fix="check [suppression] files in the campaign file",
            ) from None
        except UnicodeDecodeError:
            raise SourceError("the suppression list is not UTF-8", file=str(path)) from None
    return keys


class AttachmentLoader:
    """Resolves and reads attachment paths safely: the campaign folder, or allowed paths."""

    def __init__(self, campaign: Campaign) -> None:
        self.folder = campaign.folder.resolve()
        self.confinement = campaign.confinement
        self.per_file, self.total, self.html_counts = ATTACHMENT_LIMITS[campaign.provider]

    def resolve(self, raw: str) -> Path:
        """The file ``raw`` names, or :class:`AttachmentError` if it may not be read."""
        fix = "use a path relative to the campaign folder, inside it"
        if "\0" in raw:
            raise AttachmentError(f"path {raw!r} contains NUL", fix=fix)
        if _PERCENT_ESCAPE.search(raw):
            raise AttachmentError(f"path {raw!r} contains percent-encoded separators", fix=fix)
        if "\\" in raw:
            raise AttachmentError(f"path {raw!r} contains a backslash", fix="use / in paths")
        pure = PurePosixPath(raw)
        # An absolute path only into what the user allowed with --allow-outside.
        if (pure.is_absolute() and not self.confinement.allowed) or raw.startswith("~"):
            raise AttachmentError(f"absolute path {raw!r} is not allowed", fix=fix)
        if ".." in pure.parts:
            raise AttachmentError(f"path {raw!r} leaves the campaign folder", fix=fix)
        if not self.confinement.contains(self.folder / pure):
            raise AttachmentError(
                f"path {raw!r} leads outside the campaign folder",
                fix=self.confinement.fix(self.folder / pure),
            )
        resolved = (self.folder / pure).resolve()
        if not resolved.is_file():
            raise AttachmentError(f"attachment {raw!r} not found", fix="check the file name")
        return resolved

    def load(
        self, raw: str, filename: str | None = None, content_type: str | None = None, cid=None
    ) -> Attachment:
        path = self.resolve(raw)
        size = path.stat().st_size
        limit = self.per_file or self.total
        if size > limit:
            raise AttachmentError(
                f"attachment {raw!r} is {size / MB:.1f} MB, over the provider's"
                f" {limit // MB} MB limit",
                fix="send a link instead, or compress the file",
            )
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise AttachmentError(f"cannot read attachment {raw!r}: {exc.strerror}") from None
        name = filename or path.name
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Attachment(name, ctype, content, cid)


class _RowChecker:
    """Turns one row's values into a :class:`RowResult` (rendering included)."""

    def __init__(self, campaign: Campaign, *, derive_text: bool) -> None:
        self.campaign = campaign
        self.derive_text = derive_text
        self.book = AddressBook()
        self.renderer = Renderer(campaign)
        self.suppressed = load_suppression(campaign, self.book)
        self.attachments = AttachmentLoader(campaign)
        self.static = tuple(
            self._static(a.path, a.filename, a.content_type, a.content_id)
            for a in campaign.attachments
        )
        c = campaign.columns
        self.col_email, self.col_name = c.email, c.name
        self.col_cc, self.col_bcc, self.col_att = c.cc, c.bcc, c.attachments
        self.col_group = campaign.merge.group_column
        self.metadata = c.metadata
        self.separators = c.list_separators
        self.max_field = campaign.send.max_recipients_per_field
        m = campaign.message
        self.sender, self.reply_to = m.sender, m.reply_to
        self.message_settings = m

    def _static(self, path: str, filename: str, ctype: str | None, cid: str | None) -> Attachment:
        try:
            return self.attachments.load(path, filename, ctype, cid)
        except AttachmentError as exc:
            raise AttachmentError(
                exc.detail, file=str(self.campaign.path), column="attachments", fix=exc.fix
            ) from None

    def check(
        self,
        row: int,
        values: dict[str, Any],
        normalised: Any,
        duplicate: bool,
        *,
        render: bool = True,
    ) -> tuple[RowResult, str | None]:
        """The row's result, and its dedup key if it is sendable.

        ``render=False``: stop after the address checks; a row that passes them counts as
        sendable (for duplicates) and comes back without a message.
        """
        raw_email = values.get(self.col_email)
        email = "" if raw_email is None else str(raw_email).strip()
        name = values.get(self.col_name) if self.col_name else None
        name = str(name).strip() if name is not None and str(name).strip() else None
        group = values.get(self.col_group) if self.col_group else None
        group = None if group is None else str(group)
        metadata = {k: "" if values.get(k) is None else str(values[k]) for k in self.metadata}

        def result(skip: str | None, problems=(), message=None, tag=None) -> RowResult:
            return RowResult(
                row, email, name, message, skip, tuple(problems), tag, metadata, group, values
            )

        if isinstance(normalised, InvalidAddress):
            problem = Problem(
                row, self.col_email, f"invalid address {email!r}: {normalised}", "correct it"
            )
            return result("invalid", [problem]), None
        if normalised.key in self.suppressed:
            return result("suppressed"), None
        if duplicate:
            return result("duplicate"), None
        if not render:
            return result(None), normalised.key
        email = normalised.email
        problems: list[Problem] = []
        if name is not None and _HEADER_BREAK.search(name):
            problems.append(
                Problem(
                    row,
                    self.col_name,
                    "the name contains a line break or NUL (header injection)",
                    "remove CR, LF and NUL from the name",
                )
            )
        cc = self._address_list(row, self.col_cc, values, problems)
        bcc = self._address_list(row, self.col_bcc, values, problems)
        attachments = self._row_attachments(row, values, problems)
        try:
            rendered = self.renderer.render(values, derive_text=self.derive_text)
        except RowRenderError as exc:
            problems.append(Problem(row, exc.column, exc.message, exc.fix))
            rendered = None
        except TemplateError as exc:  # the template itself: stop, naming the row it met
            raise type(exc)(
                f"{exc.detail} (rendering row {row} of {self.campaign.source.name})",
                file=exc.location.file,
                fix=exc.fix,
            ) from None
        if rendered is not None and attachments is not None:
            self._check_size(row, rendered.html, attachments, problems)
        if problems or rendered is None:
            return result("invalid", problems), None
        message = Message(
            row=row,
            sender=self.sender,
            to=(Address(email, name),),
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            cc=cc,
            bcc=bcc,
            reply_to=self.reply_to,
            headers=rendered.headers,
            tag=rendered.tag,
            tags=rendered.tags,
            metadata=metadata,
            attachments=attachments or (),
            ical=rendered.ical,
            track_opens=self.message_settings.track_opens,
            track_clicks=self.message_settings.track_clicks,
            stream_type=self.message_settings.stream_type,
            domain=self.message_settings.domain,
        )
        return result(None, message=message, tag=rendered.tag), normalised.key

    def _address_list(
        self, row: int, column: str | None, values: dict[str, Any], problems: list[Problem]
    ) -> tuple[Address, ...]:
        if column is None:
            return ()
        cell = values.get(column)
        out = []
        for raw in split_list(None if cell is None else str(cell), self.separators):
            try:
                out.append(Address(self.book.normalise(raw).email))
            except InvalidAddress as exc:
                problems.append(Problem(row, column, f"invalid address {raw!r}: {exc}"))
        if len(out) > self.max_field:
            problems.append(
                Problem(
                    row,
                    column,
                    f"{len(out)} addresses, over the limit of {self.max_field} per field",
                    "split the row, or raise send.max_recipients_per_field if the provider allows",
                )
            )
        return tuple(out)

    def _row_attachments(
        self, row: int, values: dict[str, Any], problems: list[Problem]
    ) -> tuple[Attachment, ...] | None:
        if self.col_att is None:
            return self.static
        cell = values.get(self.col_att)
        out = list(self.static)
        ok = True
        # Only ";" separates paths: commas are common in file names.
        for raw in split_list(None if cell is None else str(cell), ";"):
            try:
                out.append(self.attachments.load(raw))
            except AttachmentError as exc:
                problems.append(Problem(row, self.col_att, exc.detail, exc.fix))
                ok = False
        return tuple(out) if ok else None

    def _check_size(
        self,
        row: int,
        html: str | None,
        attachments: tuple[Attachment, ...],
        problems: list[Problem],
    ) -> None:
        loader = self.attachments
        total = sum(len(a.content) for a in attachments)
        if loader.html_counts and html:
            total += len(html.encode())
        if total > loader.total:
            what = "attachments and HTML" if loader.html_counts else "attachments"
            problems.append(
                Problem(
                    row,
                    self.col_att or "attachments",
                    f"{what} total {total / MB:.1f} MB, over the provider's"
                    f" {loader.total // MB} MB limit",
                    "attach fewer or smaller files",
                )
            )


def _check_columns(campaign: Campaign, names: list[str]) -> None:
    import difflib

    c = campaign.columns
    wanted: list[tuple[str, str | None]] = [("columns.email", c.email)]
    wanted += [(f"columns.{k}", getattr(c, k)) for k in ("name", "cc", "bcc", "attachments")]
    wanted += [("columns.metadata", m) for m in c.metadata]
    wanted += [("merge.group_column", campaign.merge.group_column)]
    for key, column in wanted:
        if column and column not in names:
            near = difflib.get_close_matches(column, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fix = f"rename the column in the file, or set {key} in the campaign"
            other = _other_delimiter(names, campaign.source_settings.delimiter)
            if other is not None:
                shown = json.dumps(other)  # TOML basic string syntax: "\t", ";"
                fix = f"the header looks {shown}-separated: set [source] delimiter = {shown}"
            raise SourceError(
                f"no column {column!r}{hint}; the file has: {', '.join(names)}",
                file=str(campaign.source),
                row=0,
                column=column,
                fix=fix,
            )


def _other_delimiter(names: list[str], delimiter: str) -> str | None:
    """The separator a one-column header is really split by, when it is not ``delimiter``."""
    if len(names) != 1:
        return None
    for candidate in (";", "\t", "|", ","):
        if candidate != delimiter and candidate in names[0]:
            return candidate
    return None


def iter_rows(
    campaign: Campaign,
    *,
    derive_text: bool = True,
    only: Callable[[int], bool] | None = None,
) -> Iterator[RowResult]:
    """Yield one :class:`RowResult` per input row, in order, rendering every good row.

    File-level problems raise at the first ``next()``. ``derive_text=False`` leaves out
    the text part generated from HTML (when the campaign has no text template); preflight
    uses it because that conversion cannot fail and is the slowest step.

    ``only``: render just the rows it accepts (a resume rebuilding a few rows of a
    large file). The other rows still have their addresses checked, so duplicates are
    judged as in a full pass, but they are assumed to render and come back with no
    message (``skip_reason`` None, ``message`` None).

    Example::

        for r in iter_rows(load_campaign("samples/newsletter")):
            print(r.row, r.email, r.skip_reason)
    """
    spec = campaign.source_settings
    _check_columns(campaign, read_columns(spec))
    checker = _RowChecker(campaign, derive_text=derive_text)
    book = checker.book
    col_email = campaign.columns.email
    seen = _Seen()
    row = 0
    for batch in iter_batches(spec, BATCH_ROWS):
        records = batch.to_dicts()
        normalised: list[Any] = []
        hashes: list[int | None] = []
        for values in records:
            raw = values.get(col_email)
            try:
                n = book.normalise("" if raw is None else str(raw))
                normalised.append(n)
                hashes.append(_hash(n.key))
            except InvalidAddress as exc:
                normalised.append(exc)
                hashes.append(None)
        earlier = seen.seen_before_batch(hashes)
        for values, n, h, before in zip(records, normalised, hashes, earlier, strict=True):
            row += 1
            duplicate = before or (h is not None and h in seen.batch)
            result, key = checker.check(row, values, n, duplicate, render=only is None or only(row))
            if key is not None and h is not None:
                seen.batch.add(h)
            yield result
        seen.end_batch()
    if row == 0:
        raise SourceError(
            "the file has a header but no recipient rows",
            file=str(campaign.source),
            fix="add recipients below the header row",
        )


def estimate_requests(campaign: Campaign, sendable: int, merged: int | None = None) -> int:
    """How many HTTP requests ``sendable`` messages need (``merged``: after merging)."""
    messages = sendable if merged is None else merged
    if campaign.provider == "tosend" and campaign.send.batch_size > 1:
        return math.ceil(messages / campaign.send.batch_size)
    return messages


def preflight(
    campaign: Campaign, *, errors: TextIO | None = None, derive_text: bool = False
) -> PreflightReport:
    """Read and render every row, send nothing, and report.

    ``errors``, when given, receives a CSV of every invalid row: row, column, problem,
    fix, then the row's own values.

    Example::

        report = preflight(load_campaign("samples/newsletter"))
        assert report.ok, report.problems
    """
    rows = sendable = problem_count = 0
    skipped: Counter[str] = Counter()
    problems: list[Problem] = []
    writer = None
    merging = campaign.merge.enabled
    merged: Counter[tuple[str | None, str]] = Counter()
    for r in iter_rows(campaign, derive_text=derive_text):
        rows += 1
        if r.skip_reason is None:
            sendable += 1
            if merging and r.message is not None:
                merged[(r.group, content_digest(r.message))] += 1
            continue
        skipped[r.skip_reason] += 1
        if not r.problems:
            continue
        problem_count += len(r.problems)
        room = MAX_KEPT_PROBLEMS - len(problems)
        if room > 0:
            problems.extend(r.problems[:room])
        if errors is not None:
            if writer is None:
                writer = csv.writer(errors)
                writer.writerow(["row", "column", "problem", "fix", *r.values])
            for p in r.problems:
                cells = ["" if v is None else str(v) for v in r.values.values()]
                writer.writerow([p.row, p.column or "", p.message, p.fix or "", *cells])
    per_field = campaign.send.max_recipients_per_field
    merged_count = sum(math.ceil(k / per_field) for k in merged.values()) if merging else None
    return PreflightReport(
        rows=rows,
        sendable=sendable,
        skipped_by_reason=dict(sorted(skipped.items())),
        problems=problems,
        estimated_requests=estimate_requests(campaign, sendable, merged_count),
        problem_count=problem_count,
        notes=delivery_notes(campaign),
    )


def delivery_notes(campaign: Campaign) -> tuple[str, ...]:
    """What ``check`` tells about how the messages will travel with this provider."""
    notes = []
    if campaign.message.ical is not None and campaign.provider == "tosend":
        notes.append(
            "note: ToSend has no calendar field: each invite travels as an attachment "
            "named invite.ics (text/calendar; method=REQUEST)"
        )
    return tuple(notes)


def format_report(report: PreflightReport, *, max_rows_listed: int = 20) -> str:
    """The report as ``batchsend check`` prints it: problems grouped, then the counts."""
    lines: list[str] = []
    groups: dict[tuple[str | None, str], list[int]] = {}
    fixes: dict[tuple[str | None, str], str | None] = {}
    first: dict[tuple[str | None, str], str] = {}
    for p in report.problems:
        # Group on the message without the row's own value, so equal causes gather; the
        # first row's own message is shown, so the value that is wrong can be seen.
        key = (p.column, re.sub(r"'[^']*'", "'…'", p.message, count=1))
        groups.setdefault(key, []).append(p.row or 0)
        fixes.setdefault(key, p.fix)
        first.setdefault(key, p.message)
    for (column, message), rows in groups.items():
        shown = ", ".join(str(r) for r in rows[:max_rows_listed])
        more = f" and {len(rows) - max_rows_listed} more" if len(rows) > max_rows_listed else ""
        where = f"column {column!r}" if column else "row"
        example = first[(column, message)]
        if len(rows) > 1 and example != message:
            example += f" (row {rows[0]}; the others alike)"
        lines.append(f"{where}: {example}")
        lines.append(f"  rows {shown}{more}")
        if fixes[(column, message)]:
            lines.append(f"  fix: {fixes[(column, message)]}")
    if report.problem_count > len(report.problems):
        lines.append(
            f"... {report.problem_count - len(report.problems)} more problems not listed"
            " (use --errors FILE for all)"
        )
    skipped = ", ".join(f"{k} {v}" for k, v in report.skipped_by_reason.items()) or "none"
    lines.append(
        f"rows {report.rows}, sendable {report.sendable}, skipped: {skipped},"
        f" estimated requests {report.estimated_requests}"
    )
    lines.extend(report.notes)
    lines.append("ok: nothing wrong" if report.ok else f"{report.problem_count} problem(s)")
    return "\n".join(lines)


def fingerprints(campaign: Campaign) -> tuple[str, str]:
    """(sha256 of the recipient file, sha256 of the campaign file and everything it uses).

    The second covers the campaign file, every template file and the templates they
    include, static attachments and suppression lists: a resume refuses to continue
    when either changed.
    """
    return _sha256_files([campaign.source]), _sha256_files(_campaign_files(campaign))


def _campaign_files(campaign: Campaign) -> list[Path]:
    files = [campaign.path]
    # Parsing needs no sandbox, loader or compiled templates: a plain environment will do.
    env = jinja2.Environment()
    confinement = campaign.confinement
    pending = [r for r in campaign.templates()]
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref.name in seen:
            continue
        seen.add(ref.name)
        if ref.file is not None:
            files.append(ref.file)
            source = read_template(ref)
        else:
            source = ref.inline or ""
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template syntax error at line {exc.lineno}: {exc.message}", file=ref.name
            ) from None
        for name in jinja2.meta.find_referenced_templates(tree):
            if not name:
                continue
            target = (campaign.folder / name).resolve()
            # an include outside the folder is the renderer's to refuse; never read it here
            if confinement.contains(target) and target.is_file():
                pending.append(TemplateRef(name, file=target))
    # Resolved (and refused if escaping the folder) before anything reads them: hashing
    # is reading, and a path like ../secret.txt must never be opened.
    loader = AttachmentLoader(campaign)
    for attachment in campaign.attachments:
        try:
            files.append(loader.resolve(attachment.path))
        except AttachmentError as exc:
            raise AttachmentError(
                exc.detail, file=str(campaign.path), column="attachments", fix=exc.fix
            ) from None
    files += list(campaign.suppression_files)
    return files


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.name).encode() + b"\0")
        try:
            # Never a FIFO or a device: hashing one would wait, or read, for ever. The
            # reader that comes next refuses it with the message that says why.
            with open_regular(path, str(path)) as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            h.update(b"<missing>")
        except SourceError:
            h.update(b"<not a regular file>")
        h.update(b"\0")
    return h.hexdigest()
