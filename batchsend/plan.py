"""Packing rendered messages into requests (send units).

The types here are the contract between the planner, the providers, the engine and
the store. A :class:`PlannedMessage` is one email as the provider will receive it,
covering one row or, when merging, several rows with identical content. A
:class:`SendUnit` is one HTTP request: one message on the single-send endpoints, up to
100 on ToSend's batch endpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from batchsend.message import Message, content_digest, message_key, pickled_by_fields


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class PlannedMessage:
    """One email as sent: ``message`` already carries every recipient of ``rows``.

    ``wire``, when set, is the email already encoded by the provider (its exact bytes in
    a request, see ``Provider.encode_message``): a run encodes each row once, in
    preflight, and the send pass joins those bytes into requests without rebuilding
    anything. Such a message may travel without ``message``; ``recipients`` then says
    how many addresses it delivers to.
    """

    key: str  # stable id: ToSend message_hash; the idempotency key of a single send
    rows: tuple[int, ...]
    message: Message | None
    wire: bytes | None = None
    recipients: int = 0

    @property
    def recipient_count(self) -> int:
        """Addresses this email delivers to (to + cc + bcc)."""
        m = self.message
        if m is None:
            return self.recipients
        return len(m.to) + len(m.cc) + len(m.bcc)


@dataclass(frozen=True, slots=True)
class SendUnit:
    """One HTTP request. ``key`` is its Idempotency-Key, stable across retries and resumes.

    ``prior`` is set on a request a resume rebuilt from the record (``"failed"`` for
    ``--retry-failed``, ``"unknown"`` for ``--resend-unknown``): the state its rows keep
    when this attempt ends without an answer that settles them.
    """

    key: str
    messages: tuple[PlannedMessage, ...]
    batch: bool  # True: ToSend's /v2/emails/batch; False: a single-send endpoint
    prior: str | None = None

    def subset(self, messages: Sequence[PlannedMessage]) -> SendUnit:
        """A new request carrying only ``messages`` (a key of their own, same endpoint)."""
        if len(messages) == len(self.messages):
            return self
        keys = [pm.key for pm in messages]
        key = unit_key(keys, batch=True) if self.batch else keys[0]
        return SendUnit(key, tuple(messages), self.batch, self.prior)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(r for m in self.messages for r in m.rows)


# --- planning ---------------------------------------------------------------------------
#
# The planner is a streaming generator: it holds at most one batch of planned messages,
# plus, when merging, a bounded window of rows waiting for identical companions. Memory
# therefore stays flat however long the recipient file is.
#
# Merging (opt-in) gathers rows whose messages are identical apart from the recipient
# (same ``content_digest``) and, when the campaign names a group column, share its value
# too. A merge group leaves as soon as it is full (the provider's per-field limit), or,
# when the window holds ``merge_window`` rows, the oldest group leaves as it is: rows
# identical to it that come later start a new group. So a broadcast in any order merges
# fully as long as the file has fewer than ``merge_window`` distinct messages in flight;
# a file sorted by group merges fully whatever its size.
#
# Only rows with exactly one ``to`` address and no cc/bcc of their own are merged: a
# row's cc is meant to be seen by that row's recipient, which a shared message cannot
# honour.
#
# Placement: ``bcc`` (default, private): every row's address goes to ``bcc``, and the
# visible ``to`` is the sender itself (the usual "undisclosed recipients" practice; the
# sender receives one copy per merged message). ``to`` (opt-in, visible): the rows'
# addresses share the ``to`` field. On v1, ``to`` holds one address, so ``to`` placement
# merges nothing there.

DEFAULT_MERGE_WINDOW = 10_000
PLACEMENTS = ("bcc", "to")


def unit_key(keys: Sequence[str], *, batch: bool) -> str:
    """The Idempotency-Key of a request: its message's key, or a digest of its keys.

    Equal compositions give equal keys, so a resume that rebuilds the same request
    sends the same key.
    """
    if not batch:
        if len(keys) != 1:
            raise ValueError("a single-send unit carries exactly one message")
        return keys[0]
    h = hashlib.sha256(b"batch\0")
    h.update("\n".join(keys).encode())
    return h.hexdigest()[:40]


def merge_messages(messages: Sequence[Message], *, placement: str = "bcc") -> Message:
    """One message carrying the recipients of ``messages`` (identical content assumed).

    One message is returned unchanged. The content is the first message's; its ``row``
    is the first row. Deterministic: the same messages in the same order give the same
    merged message, which is what a resume relies on.
    """
    if not messages:
        raise ValueError("nothing to merge")
    first = messages[0]
    if len(messages) == 1:
        return first
    recipients = tuple(m.to[0] for m in messages)
    if placement == "bcc":
        return replace(first, to=(first.sender,), bcc=recipients)
    if placement == "to":
        return replace(first, to=recipients)
    raise ValueError(f"merge placement must be one of {PLACEMENTS}, not {placement!r}")


def _mergeable(message: Message) -> bool:
    return len(message.to) == 1 and not message.cc and not message.bcc


def _split(item: Any) -> tuple[str | None, Message]:
    # A PlannedMessage never gets here: plan_messages passes those through untouched.
    if isinstance(item, Message):
        return None, item
    if isinstance(item, tuple):
        group, message = item
        return group, message
    return getattr(item, "group", None), item.message


def plan_messages(
    items: Iterable[Any],
    *,
    run_id: str,
    merge: bool = False,
    placement: str = "bcc",
    max_per_message: int = 50,
    merge_window: int = DEFAULT_MERGE_WINDOW,
) -> Iterator[PlannedMessage]:
    """Stream planned messages, merging identical ones when ``merge`` is on.

    ``items`` are messages, ``(group, message)`` pairs, or rows with ``.message`` and
    ``.group`` (preflight's RowResult); or, without merging, messages planned (and
    encoded) already, which pass through as they are. ``max_per_message`` caps the
    recipients of a merged message (the provider's per-field limit of the placement
    field).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"merge placement must be one of {PLACEMENTS}, not {placement!r}")
    if not merge or max_per_message < 2:
        for item in items:
            if type(item) is PlannedMessage:
                yield item
                continue
            _, m = _split(item)
            yield PlannedMessage(message_key(run_id, m), (m.row,), m)
        return

    def planned(group: list[Message]) -> PlannedMessage:
        merged = merge_messages(group, placement=placement)
        return PlannedMessage(message_key(run_id, merged), tuple(m.row for m in group), merged)

    waiting: dict[tuple[str | None, str], list[Message]] = {}
    buffered = 0
    for item in items:
        if type(item) is PlannedMessage:
            raise TypeError("merging needs the rendered messages, not planned ones")
        group_value, m = _split(item)
        if not _mergeable(m):
            yield PlannedMessage(message_key(run_id, m), (m.row,), m)
            continue
        key = (group_value, content_digest(m))
        bucket = waiting.get(key)
        if bucket is None:
            bucket = waiting[key] = []
        bucket.append(m)
        buffered += 1
        if len(bucket) >= max_per_message:
            del waiting[key]
            buffered -= len(bucket)
            yield planned(bucket)
        elif buffered > merge_window:
            oldest = next(iter(waiting))
            bucket = waiting.pop(oldest)
            buffered -= len(bucket)
            yield planned(bucket)
    for bucket in waiting.values():
        yield planned(bucket)


def pack_units(
    planned: Iterable[PlannedMessage], *, batch: bool, batch_size: int = 100
) -> Iterator[SendUnit]:
    """Group planned messages into requests: ``batch_size`` per batch, else one each."""
    if not batch:
        for pm in planned:
            yield SendUnit(pm.key, (pm,), False)
        return
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    chunk: list[PlannedMessage] = []
    for pm in planned:
        chunk.append(pm)
        if len(chunk) == batch_size:
            yield SendUnit(unit_key([p.key for p in chunk], batch=True), tuple(chunk), True)
            chunk = []
    if chunk:
        yield SendUnit(unit_key([p.key for p in chunk], batch=True), tuple(chunk), True)


class Shape(Protocol):
    """What planning needs of a provider (every :class:`~batchsend.providers.base.Provider`
    has it): whether it takes batches, how many, and its per-field recipient limits."""

    @property
    def is_batch(self) -> bool: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def limits(self) -> Any: ...  # RecipientLimits: to, cc, bcc


def plan_units(
    items: Iterable[Any],
    *,
    run_id: str,
    provider: Shape | None = None,
    batch: bool | None = None,
    batch_size: int | None = None,
    merge: bool = False,
    placement: str = "bcc",
    max_recipients_per_field: int | None = None,
    merge_window: int = DEFAULT_MERGE_WINDOW,
) -> Iterator[SendUnit]:
    """Stream the send units (requests) for ``items``; see the module notes on merging.

    With a ``provider``, its batch mode, batch size and recipient limits apply unless
    given here. ``max_recipients_per_field`` caps merged messages further.

    Example::

        units = plan_units(rows, run_id=run_id, provider=provider, merge=True)
    """
    if provider is not None:
        batch = provider.is_batch if batch is None else batch
        batch_size = provider.batch_size if batch_size is None else batch_size
        field_limit = getattr(provider.limits, placement, 50)
    else:
        field_limit = 50
    if max_recipients_per_field is not None:
        field_limit = min(field_limit, max_recipients_per_field)
    messages = plan_messages(
        items,
        run_id=run_id,
        merge=merge,
        placement=placement,
        max_per_message=field_limit,
        merge_window=merge_window,
    )
    return pack_units(messages, batch=bool(batch), batch_size=batch_size or 1)


def rebuild_unit(
    composition: Sequence[Sequence[int]],
    messages: Mapping[int, Message],
    *,
    run_id: str,
    batch: bool,
    placement: str = "bcc",
) -> SendUnit:
    """The unit a run planned, rebuilt from its recorded composition.

    ``composition`` lists, per planned message and in request order, the rows it
    carried (``PlannedMessage.rows``); ``messages`` maps row numbers to the rows'
    re-rendered messages. Rendering is deterministic, so the rebuilt unit has the same
    body and key as the original: compare ``unit.key`` with the recorded key to detect
    an input that changed anyway.
    """
    planned = []
    for rows in composition:
        group = [messages[r] for r in rows]
        merged = merge_messages(group, placement=placement)
        planned.append(PlannedMessage(message_key(run_id, merged), tuple(rows), merged))
    key = unit_key([pm.key for pm in planned], batch=batch)
    return SendUnit(key, tuple(planned), batch)
