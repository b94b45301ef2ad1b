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
import dataclasses
import hashlib
import json
import marshal
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import polars as pl

from batchsend.addresses import AddressBook, InvalidAddress, split_list
from batchsend.attachments import MB, AttachmentLoader
from batchsend.campaign import Campaign
from batchsend.crashpoints import crashpoint
from batchsend.errors import AttachmentError, SourceError, TemplateError
from batchsend.message import Address, Attachment, Message, content_digest, pickled_by_fields
from batchsend.plan import PlannedMessage
from batchsend.render import Renderer, RowRenderError, html_to_text
from batchsend.source import ignored_columns, iter_batches, read_columns
from batchsend.suppressions import load_suppression
from batchsend.variables import Variables, alias, writable
from batchsend.version import __version__
from batchsend.workers import Ready, default_workers, ordered_map

if TYPE_CHECKING:  # the workers never open it: only the main process writes the store
    from batchsend.store.checkpoint import Checkpoint

BATCH_ROWS = 10_000  # small batches keep the per-batch Python objects small
# The rows a worker checks at a time: small, so memory stays bounded. The test-only
# variable makes chunks small enough for a test to span several with a few rows.
CHUNK_ROWS = int(os.environ.get("BATCHSEND_TEST_ONLY_CHUNK_ROWS") or 2_000)
MERGE_EVERY = 200_000  # dedup hashes kept in a set before joining the sorted array
MAX_KEPT_PROBLEMS = 10_000
ROWS_SHOWN = 5  # sample row numbers in a note or warning
_HEADER_BREAK = re.compile(r"[\r\n\0]")


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one row (``row`` None: the whole campaign)."""

    row: int | None
    column: str | None
    message: str
    fix: str | None = None


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class RowResult:
    """What became of one input row in preflight.

    ``message`` is set when the row is sendable; ``skip_reason`` is ``"invalid"``,
    ``"duplicate"`` or ``"suppressed"`` otherwise, with ``problems`` for invalid rows.
    ``skip_detail`` says why an address on the database's suppression list is there
    (``hard bounce on 2026-12-03``); the row is recorded with the reason
    :attr:`stored_reason` (``suppressed: hard bounce on 2026-12-03``). A pass given an
    encoder (a run's intake) returns a sendable row's message encoded, in ``planned``,
    and no ``message``: the worker that rendered it encoded it too.
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
    skip_detail: str | None = None
    planned: PlannedMessage | None = None  # the message, encoded (then ``message`` is None)
    recipients: int = 0  # a kept row's addresses (to, cc, bcc): see iter_rows' checkpoint

    @property
    def stored_reason(self) -> str | None:
        """The reason the store records for a skipped row."""
        if self.skip_detail and self.skip_reason:
            return f"{self.skip_reason}: {self.skip_detail}"
        return self.skip_reason


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """The sum of a preflight pass. ``problems`` keeps the first 10,000 of ``problem_count``."""

    rows: int
    sendable: int
    skipped_by_reason: dict[str, int]
    problems: list[Problem]
    estimated_requests: int
    problem_count: int = 0
    notes: tuple[str, ...] = ()  # how the campaign will travel, what was left out of the file
    warnings: tuple[str, ...] = ()  # what may read badly: empty values the templates use

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@dataclass
class PassNotes:
    """What a row pass noticed about the file as a whole, filled in as it goes.

    ``empty_rows`` counts the rows skipped because every value is empty (blank lines,
    ``,,,``), ``empty_sample`` holds the first row numbers; ``uses`` is which column the
    templates use where (:meth:`batchsend.render.Renderer.uses`).
    """

    empty_rows: int = 0
    empty_sample: list[int] = field(default_factory=list)
    kept_rows: int = 0  # rows a checkpoint had checked already (see iter_rows)
    ignored_columns: int = 0
    variables: Variables = field(default_factory=lambda: Variables(()))
    uses: dict[str, list[str]] = field(default_factory=dict)

    def skipped_empty(self, rows: Iterable[int]) -> None:
        """Count the empty rows ``rows`` (numbers) the pass skipped."""
        for row in rows:
            self.empty_rows += 1
            if len(self.empty_sample) < ROWS_SHOWN:
                self.empty_sample.append(row)

    def lines(self) -> list[str]:
        """The notes ``check`` prints."""
        out = []
        if self.ignored_columns:
            out.append(
                f"note: {self.ignored_columns} unnamed column(s) at the end of the header"
                " ignored (empty in every row)"
            )
        if self.empty_rows:
            out.append(
                f"note: {self.empty_rows} empty row(s) ignored (blank lines or only empty"
                f" fields): rows {_rows_shown(self.empty_sample, self.empty_rows)}"
            )
        return out + self.variables.notes()


def _rows_shown(sample: list[int], count: int) -> str:
    more = ", ..." if count > len(sample) else ""
    return ", ".join(str(r) for r in sample) + more


class _Seen:
    """Dedup keys of the rows accepted so far, in little memory.

    Keys are kept as 64-bit hashes in sorted polars Series (8 bytes a row, a small
    fraction of what a Python set of the address strings would hold), plus a set of the
    most recent ones, joined into the sorted arrays every ``MERGE_EVERY`` keys so the
    re-sort stays rare. The hashes are split by their top bits into :data:`_SEEN_PARTS`
    arrays, each merged on its own: a merge copies one part, not all of them (at ten
    million rows a single array is 80 MB, and its merge briefly held three copies). Two
    different addresses share a 64-bit hash with probability about n^2 / 2^65 (3e-8 at
    one million rows).
    """

    def __init__(self) -> None:
        self.parts = [pl.Series("h", [], dtype=pl.Int64) for _ in range(_SEEN_PARTS)]
        self.kept = 0  # hashes in the sorted parts
        self.batch: set[int] = set()

    def seen_before_batch(self, hashes: list[int | None]) -> list[bool]:
        found = [False] * len(hashes)
        if self.kept == 0 or not hashes:
            return found
        where: list[list[int]] = [[] for _ in range(_SEEN_PARTS)]
        for i, h in enumerate(hashes):
            if h is not None:
                where[_part(h)].append(i)
        for part, places in zip(self.parts, where, strict=True):
            n = part.len()
            if n == 0 or not places:
                continue
            probe = pl.Series("h", [hashes[i] for i in places], dtype=pl.Int64)
            idx = part.search_sorted(probe, side="left").clip(0, n - 1)
            for i, hit in zip(places, (part.gather(idx) == probe).to_list(), strict=True):
                found[i] = bool(hit)
        return found

    def end_batch(self) -> None:
        if len(self.batch) >= MERGE_EVERY:
            new: list[list[int]] = [[] for _ in range(_SEEN_PARTS)]
            for h in self.batch:
                new[_part(h)].append(h)
            self.batch = set()
            for p, hashes in enumerate(new):
                if hashes:
                    added = pl.Series("h", hashes, dtype=pl.Int64)
                    self.parts[p] = pl.concat([self.parts[p], added]).sort()
                    self.kept += len(hashes)


# Each part costs every chunk's probe a search (about 0.4 µs a row); fewer, larger parts
# leave more of each merge's garbage to polars' allocator. Measured at 10M hashes merged
# 200,000 at a time: peak 323 MB with one part, 271 with 4, 233 with 16; the probe 1.0,
# 2.2 and 6.9 µs a row.
_SEEN_BITS = 2
_SEEN_PARTS = 1 << _SEEN_BITS  # a hash's part is its top bits


def _part(h: int) -> int:
    return (h >> (64 - _SEEN_BITS)) & (_SEEN_PARTS - 1)  # of a signed 64-bit hash


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class _RowChecker:
    """Turns one row's values into a :class:`RowResult` (rendering included)."""

    def __init__(
        self,
        campaign: Campaign,
        *,
        derive_text: bool,
        listed: Mapping[str, str] | None = None,
        variables: Variables | None = None,
    ) -> None:
        self.campaign = campaign
        self.listed = listed or {}
        self.derive_text = derive_text
        self.book = AddressBook()
        self.renderer = Renderer(campaign, variables)
        self.required = tuple(
            (variables.column(r) if variables else None) or r for r in campaign.columns.required
        )
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
        keep_values: bool = True,
    ) -> tuple[RowResult, str | None]:
        """The row's result, and its dedup key if it is sendable.

        ``render=False``: stop after the address checks; a row that passes them counts as
        sendable (for duplicates) and comes back without a message. ``keep_values=False``:
        the result's ``values`` is left empty (a run does not need them).
        """
        raw_email = values.get(self.col_email)
        email = "" if raw_email is None else str(raw_email).strip()
        name = values.get(self.col_name) if self.col_name else None
        name = str(name).strip() if name is not None and str(name).strip() else None
        group = values.get(self.col_group) if self.col_group else None
        group = None if group is None else str(group)
        metadata = {k: "" if values.get(k) is None else str(values[k]) for k in self.metadata}

        def result(skip: str | None, problems=(), message=None, tag=None, detail=None) -> RowResult:
            return RowResult(
                row,
                email,
                name,
                message,
                skip,
                tuple(problems),
                tag,
                metadata,
                group,
                values if keep_values else {},
                detail,
            )

        if isinstance(normalised, InvalidAddress):
            problem = Problem(
                row, self.col_email, f"invalid address {email!r}: {normalised}", "correct it"
            )
            return result("invalid", [problem]), None
        if not self.reaches_dedup(normalised):  # the campaign's own lists, then the database's
            listed = None if normalised.key in self.suppressed else self.listed[normalised.key]
            return result("suppressed", detail=listed), None
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
        for column in self.required:
            value = values.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                problems.append(
                    Problem(
                        row,
                        column,
                        f"{column!r} is empty, and [columns] required lists it",
                        "fill it in, or remove the column from columns.required",
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

    def reaches_dedup(self, normalised: Any) -> bool:
        """Whether a row with this (valid) address is judged for duplicates: not suppressed."""
        return normalised.key not in self.suppressed and normalised.key not in self.listed

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
    variables = Variables.of(names)
    for required in c.required:
        if variables.column(required) is None:
            hint = variables.suggest(required)
            raise SourceError(
                f"columns.required names {required!r}, which is no column"
                + (f"; {hint}" if hint else f"; the file has: {', '.join(names)}"),
                file=str(campaign.source),
                row=0,
                column=required,
                fix="name a column of the file (or its alias) in columns.required",
            )
    wanted: list[tuple[str, str | None]] = [("columns.email", c.email)]
    wanted += [(f"columns.{k}", getattr(c, k)) for k in ("name", "cc", "bcc", "attachments")]
    wanted += [("columns.metadata", m) for m in c.metadata]
    wanted += [("merge.group_column", campaign.merge.group_column)]
    for key, column in wanted:
        if column and column not in names:
            # "email" for Mailchimp's "Email Address": close in spelling, or in its alias
            near = (
                difflib.get_close_matches(column, names, n=1)
                or [n for n in names if alias(column) in alias(n).split("_")][:1]
            )
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            fix = f"rename the column in the file, or set {key} in the campaign"
            if near:
                fix = f"set {key} = {json.dumps(near[0])} in the campaign"
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
    suppressed: Mapping[str, str] | None = None,
    notes: PassNotes | None = None,
    workers: int | None = 1,
    encoder: Callable[[Message], PlannedMessage] | None = None,
    keep_values: bool = True,
    checkpoint: Checkpoint | None = None,
    others: bool = True,
) -> Iterator[RowResult]:
    """Yield one :class:`RowResult` per input row, in order, rendering every good row.

    A row whose values are all empty (a blank line, ``,,,``) yields nothing: it keeps its
    number (the next row's is one more) and is counted in ``notes``, when given.

    File-level problems raise at the first ``next()``. ``derive_text=False`` leaves out
    the text part generated from HTML (when the campaign has no text template); preflight
    uses it because that conversion cannot fail and is the slowest step.

    ``only``: render just the rows it accepts (a resume rebuilding a few rows of a
    large file). The other rows still have their addresses checked, so duplicates are
    judged as in a full pass, but they are assumed to render and come back with no
    message (``skip_reason`` None, ``message`` None). The rows it accepts are the ones
    a full pass found sendable (the store's pending rows): they are not judged as
    duplicates again, since a row assumed to render may be one a full pass refused (an
    earlier row with the same address whose template failed).

    ``suppressed``: the database's suppression list (comparison key -> why, from
    :func:`batchsend.store.events.suppression_details`); those rows are skipped as
    ``suppressed`` like the campaign's own lists' addresses.

    ``workers``: the processes that check and render the rows (None: the machine's
    cores, :func:`batchsend.workers.default_workers`); chunks of :data:`CHUNK_ROWS`
    rows go to them and come back in file order, and the results are the same, byte for
    byte, with any number (duplicates are judged here, in order, on what the workers
    found). ``encoder`` (a run's intake): a picklable callable that turns a sendable
    row's message, its text part derived from its HTML, into its
    :class:`~batchsend.plan.PlannedMessage`, in the worker that rendered it; such rows
    come back with ``planned`` and no ``message``. ``keep_values=False`` leaves every
    result's ``values`` empty, so less crosses between processes.

    ``others=False`` (with ``only``): yield the rows ``only`` accepts, and none of the
    others. Since the rows it accepts are not judged as duplicates, the others are not
    even read: a resume of a half-sent file skips its first half at the speed of reading.

    ``checkpoint`` (a run's intake, with ``keep_values=False`` and no ``only``): each
    chunk checked is kept there as it comes back, and a chunk found there (an earlier
    pass over the same inputs was killed) is not checked again. Its sendable rows come
    back without ``message`` or ``planned`` (``recipients`` says how many addresses);
    ``notes.kept_rows`` counts them. Use :func:`checkpoint_key` for its key.

    Example::

        for r in iter_rows(load_campaign("samples/newsletter")):
            print(r.row, r.email, r.skip_reason)
    """
    spec = campaign.source_settings
    names = read_columns(spec)
    _check_columns(campaign, names)
    variables = Variables.of(names)
    lean = only is not None and not others
    setup = (campaign, derive_text, dict(suppressed or {}), names, encoder, keep_values, lean)
    state = _PassState(*setup)  # this process's: the file-level errors are raised here
    checker = state.checker
    notes = notes if notes is not None else PassNotes()
    notes.variables = variables
    notes.ignored_columns = ignored_columns(spec)
    notes.uses = checker.renderer.uses()
    if checkpoint is not None and (only is not None or keep_values):
        raise ValueError("a checkpoint keeps a whole pass without values")

    def items() -> Iterator[_Chunk | Ready]:
        for chunk in _chunks(spec, only):
            index, first, frame, render = chunk
            if lean and not render:  # nothing asked for in this chunk: nothing to do
                yield Ready((index, first, frame.height, [], []))
                continue
            kept = checkpoint.get(index, first, frame.height) if checkpoint else None
            yield chunk if kept is None else Ready((index, first, frame.height, [], kept))

    checked = ordered_map(
        _check_chunk,
        items(),
        workers=default_workers() if workers is None else workers,
        setup=_PassState,
        setup_args=setup,
        state=state,
    )
    seen = _Seen()
    yielded = 0
    for index, first, height, empty, rows in checked:
        if isinstance(rows, bytes):  # checked by an earlier pass
            empty, rows = _unpack_chunk(rows)
            notes.kept_rows += len(rows)
        elif checkpoint is not None and all(c.error is None for c in rows):
            checkpoint.put(index, first, height, _pack_chunk(empty, rows))
            crashpoint("checkpoint")  # test-only: kill -9 with this chunk kept
        notes.skipped_empty(empty)
        earlier = seen.seen_before_batch([c.hash for c in rows])
        for c, before in zip(rows, earlier, strict=True):
            yielded += 1
            result, key = c.result, c.key
            if c.judged and (before or c.hash in seen.batch) and not c.asked:
                result, key = c.duplicate(), None
            elif c.error is not None:  # the template failed on this row: stop, as serially
                kind, detail, file, fix = c.error
                raise kind(detail, file=file, fix=fix)
            if key is not None and c.hash is not None:
                seen.batch.add(c.hash)
            yield result
        seen.end_batch()
    if yielded == 0:
        raise SourceError(
            "the file has a header but no recipient rows",
            file=str(campaign.source),
            fix="add recipients below the header row",
        )


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class _Checked:
    """One row as a worker checked it, before duplicates are judged (in file order).

    ``judged``: the row's address is valid and not suppressed, so it is a duplicate if an
    earlier sendable row has its ``hash`` (unless ``asked``: a pass with ``only`` renders
    the rows its caller has decided to send, never judged again); ``result`` is then what
    the row is if it is not. ``error``: rendering raised a template error (its class,
    detail, file and fix), which stops the pass unless the row is a duplicate; ``result``
    is then the row as a duplicate.
    """

    row: int
    result: RowResult
    key: str | None
    hash: int | None
    judged: bool
    raw_email: str
    error: tuple[type[TemplateError], str, str | None, str | None] | None = None
    asked: bool = False

    def duplicate(self) -> RowResult:
        r = self.result
        return RowResult(
            r.row,
            self.raw_email,
            r.name,
            None,
            "duplicate",
            (),
            None,
            r.metadata,
            r.group,
            r.values,
        )


class _PassState:
    """What a worker (or this process) needs to check chunks: one :class:`_RowChecker`."""

    def __init__(
        self,
        campaign: Campaign,
        derive_text: bool,
        listed: dict[str, str],
        names: list[str],
        encoder: Callable[[Message], PlannedMessage] | None,
        keep_values: bool,
        lean: bool = False,
    ) -> None:
        self.lean = lean  # rows not asked for come back as their address's verdict only
        self.checker = _RowChecker(
            campaign, derive_text=derive_text, listed=listed, variables=Variables.of(names)
        )
        self.col_email = campaign.columns.email
        self.encoder = encoder
        self.keep_values = keep_values


_Chunk = tuple[int, int, pl.DataFrame, frozenset[int] | None]
_ChunkResult = tuple[int, int, int, list[int], list[_Checked]]


def _chunks(spec: Any, only: Callable[[int], bool] | None) -> Iterator[_Chunk]:
    """The file in chunks of :data:`CHUNK_ROWS` rows: (index, first row number, rows, the
    rows to render, None for all). Read batches are cut, never joined, so a chunk's
    bounds are the same in every pass over the same file."""
    row = index = 0
    for batch in iter_batches(spec, BATCH_ROWS):
        for offset in range(0, batch.height, CHUNK_ROWS):
            frame = batch.slice(offset, CHUNK_ROWS)
            first = row + 1
            row += frame.height
            render = None
            if only is not None:
                render = frozenset(n for n in range(first, row + 1) if only(n))
            yield index, first, frame, render
            index += 1


def checkpoint_key(
    campaign: Campaign, fingerprints: tuple[str, str], suppressed: Mapping[str, str] | None
) -> str | None:
    """The key of a run's row pass in a :class:`~batchsend.store.checkpoint.Checkpoint`
    (None: this campaign's pass is not kept, since its rows name attachment files, whose
    content no fingerprint covers)."""
    if campaign.columns.attachments is not None:
        return None
    listed = sorted(f"{k}\t{v}" for k, v in (suppressed or {}).items())
    sizes = f"{__version__}/{BATCH_ROWS}/{CHUNK_ROWS}/{_PACK_VERSION}"
    h = hashlib.sha256()
    for part in (*fingerprints, repr(campaign), "\n".join(listed), sizes):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


_PACK_VERSION = 1


def _pack_chunk(empty: list[int], rows: list[_Checked]) -> bytes:
    """A checked chunk without its messages, for the checkpoint (marshal, then zlib)."""
    packed = []
    for c in rows:
        r = c.result
        m, p = r.message, r.planned
        recipients = p.recipient_count if p is not None else 0
        if m is not None:
            recipients = len(m.to) + len(m.cc) + len(m.bcc)
        problems = tuple((q.row, q.column, q.message, q.fix) for q in r.problems)
        packed.append(
            (r.row, r.email, r.name, r.skip_reason, problems, r.tag, dict(r.metadata), r.group,
             r.skip_detail, recipients, c.key, c.hash, c.judged, c.raw_email)
        )  # fmt: skip
    return zlib.compress(marshal.dumps((empty, packed)), 1)


def _unpack_chunk(data: bytes) -> tuple[list[int], list[_Checked]]:
    empty, packed = marshal.loads(zlib.decompress(data))
    rows = []
    for (row, email, name, skip, problems, tag, metadata, group, detail, recipients, key, h,
         judged, raw) in packed:  # fmt: skip
        result = RowResult(
            row, email, name, None, skip, tuple(Problem(*q) for q in problems), tag, metadata,
            group, {}, detail, None, recipients,
        )  # fmt: skip
        rows.append(_Checked(row, result, key, h, judged, raw))
    return empty, rows


def _check_chunk(state: _PassState, chunk: _Chunk) -> _ChunkResult:
    """Check and render one chunk's rows (in a worker): its empty rows, and each other row."""
    index, first, frame, render = chunk
    checker, keep, encoder = state.checker, state.keep_values, state.encoder
    height = frame.height
    numbers: Sequence[int] = range(first, first + frame.height)
    if state.lean:  # only the rows asked for (see iter_rows' others)
        assert render is not None
        offsets = [n - first for n in sorted(render)]
        frame = frame[offsets]
        numbers = sorted(render)
    records = frame.to_dicts()
    empty = _empty_rows(frame)
    if empty:
        skipped = set(empty)
        kept = [i for i in range(frame.height) if i not in skipped]
        empty = [numbers[i] for i in empty]
        numbers = [numbers[i] for i in kept]
        records = [records[i] for i in kept]
    out = []
    sendable: set[int | None] = set()
    book, col_email = checker.book, state.col_email
    for number, values in zip(numbers, records, strict=True):
        raw = values.get(col_email)
        raw_email = "" if raw is None else str(raw).strip()
        h = None
        n: Any
        try:
            n = book.normalise("" if raw is None else str(raw))
            h = _hash(n.key)
        except InvalidAddress as exc:
            n = exc
        judged = h is not None and checker.reaches_dedup(n)
        # A duplicate of a sendable row of this chunk is one whatever came before: not
        # rendered. One of a row in an earlier chunk is rendered, then judged in order.
        asked = render is not None and number in render  # see _Checked
        duplicate = judged and h in sendable and not asked
        draw = render is None or asked
        try:
            result, key = checker.check(number, values, n, duplicate, render=draw, keep_values=keep)
        except TemplateError as exc:
            # Raised in the main process if the row is no duplicate (whose result is this)
            result, _ = checker.check(number, values, n, True, keep_values=keep)
            error = (type(exc), exc.detail, exc.location.file, exc.fix)
            out.append(_Checked(number, result, None, h, judged, raw_email, error, asked))
            continue
        if key is not None and h is not None:
            sendable.add(h)
        m = result.message
        if encoder is not None and m is not None and result.skip_reason is None:
            if m.text is None and m.html is not None:
                m = dataclasses.replace(m, text=html_to_text(m.html))
            try:
                planned = encoder(m)
            except (TypeError, ValueError):
                pass  # the intake meets the error again, where it always did
            else:
                r = result  # a constructor call: dataclasses.replace costs more a row
                result = RowResult(
                    r.row, r.email, r.name, None, None, r.problems, r.tag, r.metadata,
                    r.group, r.values, r.skip_detail, planned,
                )  # fmt: skip
        out.append(_Checked(number, result, key, h, judged, raw_email, None, asked))
    return index, first, height, empty, out


def _empty_rows(batch: pl.DataFrame) -> list[int]:
    """Indexes of the batch's rows whose every value is null or blank text."""
    blank = [
        pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")
        if dtype == pl.String
        else pl.col(c).is_null()
        for c, dtype in batch.schema.items()
    ]
    found = batch.select(pl.arg_where(pl.all_horizontal(blank))).to_series()
    return found.to_list() if found.len() else []


def estimate_requests(campaign: Campaign, sendable: int, merged: int | None = None) -> int:
    """How many HTTP requests ``sendable`` messages need (``merged``: after merging)."""
    messages = sendable if merged is None else merged
    if campaign.provider == "tosend" and campaign.send.batch_size > 1:
        return math.ceil(messages / campaign.send.batch_size)
    return messages


def preflight(
    campaign: Campaign,
    *,
    errors: TextIO | None = None,
    derive_text: bool = False,
    suppressed: Mapping[str, str] | None = None,
    workers: int | None = 1,
) -> PreflightReport:
    """Read and render every row, send nothing, and report.

    ``errors``, when given, receives a CSV of every invalid row: row, column, problem,
    fix, then the row's own values. The report's ``warnings`` name each column a template
    uses that is empty in sendable rows (how many, which, where it is used); its
    ``notes`` what was left out of the file (empty rows, unnamed columns) and alias clashes.
    ``workers``: as for :func:`iter_rows` (the report is the same with any number).

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
    notes = PassNotes()
    blanks = _Blanks(notes)
    rows_passed = iter_rows(
        campaign, derive_text=derive_text, suppressed=suppressed, notes=notes, workers=workers
    )
    for r in rows_passed:
        rows += 1
        if r.skip_reason is None:
            sendable += 1
            blanks.add(r)
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
        notes=(*delivery_notes(campaign), *notes.lines()),
        warnings=tuple(blanks.lines()),
    )


class _Blanks:
    """Counts, per column a template uses, the sendable rows where it is empty."""

    def __init__(self, notes: PassNotes) -> None:
        self.notes = notes
        self.columns: dict[str, tuple[str, list[str]]] = {}  # column -> (name used, parts)
        self.count: Counter[str] = Counter()
        self.sample: dict[str, list[int]] = {}

    def add(self, r: RowResult) -> None:
        if not self.columns and self.notes.uses:
            aliases = {c: a for a, c in self.notes.variables.aliases.items()}
            for column, parts in self.notes.uses.items():
                name = aliases.get(column, column)
                if not writable(name):
                    name = f"row[{column!r}]"
                self.columns[column] = (name, parts)
        values = r.values
        for column in self.columns:
            value = values.get(column)
            if value is None or (type(value) is str and not value.strip()):
                self.count[column] += 1
                shown = self.sample.setdefault(column, [])
                if len(shown) < ROWS_SHOWN:
                    shown.append(r.row)

    def lines(self) -> list[str]:
        out = []
        for column, count in self.count.items():
            name, parts = self.columns[column]
            where = ", ".join(parts)
            rows = _rows_shown(self.sample[column], count)
            plural = "row" if count == 1 else "rows"
            out.append(
                f"warning: {name} is empty in {count} sendable {plural} ({rows}), used in"
                f' {where} (for a fallback: {{{{ {name} or "..." }}}})'
            )
        return out


def delivery_notes(campaign: Campaign) -> tuple[str, ...]:
    """What ``check`` tells about how the messages will travel with this provider."""
    notes = []
    if campaign.message.ical is not None and campaign.provider == "tosend":
        notes.append(
            "note: ToSend has no calendar field: each invite travels as an attachment "
            "named invite.ics (text/calendar; method=REQUEST)"
        )
    return tuple(notes)
