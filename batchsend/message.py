"""The provider-neutral email: what rendering produces and providers consume.

A :class:`Message` is one input row's email, fully rendered. Providers turn it into
their JSON; the planner may merge identical messages of several rows into one (see
``batchsend.plan``). Values are frozen so a message can be hashed into a stable key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

_C = TypeVar("_C", bound=type)


def pickled_by_fields(cls: _C) -> _C:
    """Pickle a (frozen, slotted) dataclass as its class and its fields' values.

    The row pass ships rendered rows between processes; the dataclasses' own pickling
    (a state dict, then ``object.__setattr__`` per field) costs more than rendering the
    message in the first place. This is a plain constructor call with positional values.
    """
    get = operator.attrgetter(*(f.name for f in dataclasses.fields(cls)))

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        return cls, get(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Address:
    """An email address with an optional display name."""

    email: str
    name: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name} if self.name else {"email": self.email}


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach. ``content`` is the raw bytes; providers encode them."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None  # ToSend inline image, referenced as cid:<content_id>


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Message:
    """One rendered email for one input row (or, after merging, for several).

    ``row`` is the 1-based data row number in the recipient file (the header is not
    counted). ``to`` holds the row's own recipient; ``cc`` and ``bcc`` come from the
    row's cc/bcc columns.
    """

    row: int
    sender: Address
    to: tuple[Address, ...]
    subject: str
    html: str | None = None
    text: str | None = None
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: Address | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tag: str | None = None  # v1 analytics tag
    tags: Mapping[str, str] = field(default_factory=dict)  # ToSend analytics tags
    metadata: Mapping[str, str] = field(default_factory=dict)  # v1: stored, never sent
    attachments: tuple[Attachment, ...] = ()
    ical: str | None = None  # RFC 5545 text (v1 icalEvent)
    track_opens: bool | None = None
    track_clicks: bool | None = None
    stream_type: str | None = None  # v1: transactional | broadcast | shared
    domain: str | None = None  # v1 sending domain; None lets the provider choose


def _address(a: Address | None) -> list[str | None] | None:
    return None if a is None else [a.email, a.name]


def _content_fields(message: Message) -> list[Any]:
    # Everything but the recipients, in a FIXED order (mappings as sorted pairs), so that
    # orjson's encoding of this list is canonical without a key sort. JSON is
    # self-delimiting: no two different lists encode to the same bytes.
    m = message
    return [
        _address(m.sender),
        m.subject,
        m.html,
        m.text,
        _address(m.reply_to),
        sorted(m.headers.items()) if m.headers else (),
        m.tag,
        sorted(m.tags.items()) if m.tags else (),
        sorted(m.metadata.items()) if m.metadata else (),
        [
            [a.filename, a.content_type, hashlib.sha256(a.content).hexdigest(), a.content_id]
            for a in m.attachments
        ],
        m.ical,
        m.track_opens,
        m.track_clicks,
        m.stream_type,
        m.domain,
    ]


def content_digest(message: Message) -> str:
    """A hex digest of the message's content (recipients excluded).

    Equal for two messages exactly when everything but their recipients is equal,
    which is what merging groups by.
    """
    return hashlib.sha256(orjson.dumps(_content_fields(message))).hexdigest()


def message_key(run_id: str, message: Message) -> str:
    """The stable id of a message within a run: same run, same row, same email => same key.

    It salts with the run id so that a deliberate second run of a campaign is not
    swallowed by the provider's idempotency window, while a resume of the same run
    reproduces every key exactly. It hashes the fields in a fixed order (orjson, no key
    sorting): every message is keyed, so the key must cost little beside rendering, and
    a fixed field order is as stable as sorted keys without the sorting.
    """
    m = message
    head = orjson.dumps(
        [
            run_id,
            [[a.email, a.name] for a in m.to],
            [[a.email, a.name] for a in m.cc],
            [[a.email, a.name] for a in m.bcc],
        ]
    )
    h = hashlib.sha256(head)
    h.update(b"\0")
    h.update(content_digest(m).encode())
    return h.hexdigest()[:40]
