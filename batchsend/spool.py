"""The preflight's rendered messages, kept for the send pass (a spool file).

A run renders every row in preflight (nothing may leave before the whole input has
passed), then sends. Rendering again at send time would double the run's largest cost,
so preflight appends each row it is about to send to an anonymous temporary file next
to the database, and the send pass streams them back in row order. Two forms:

* planned (a run without merging or proof copies): the message's key, rows, recipient
  count and its provider-encoded JSON (``PlannedMessage.wire``). The send pass joins
  those bytes into requests and never rebuilds a message: reading bytes back is much
  cheaper than rebuilding a message from the form below, then keying and encoding it;
* messages: the rendered :class:`Message` as a plain tuple, for the planner to merge or
  proof-copy.

Records go through :mod:`marshal`, the cheapest of Python's own serialisers for plain
tuples of str, bytes and ints (pickle costs more a message). They are not compressed:
the file is short-lived and next to the database, and compressing every message would
cost more CPU than the disk space saved is worth.

The spool is a cache, never a record:

* the file is unlinked as it is created: nothing is left behind, even after kill -9;
* a resume renders again (rendering is deterministic: docs/design.md, invariant 4);
* when it would outgrow its cap (:data:`MAX_BYTES`, or a quarter of the free disk
  space) it is *full*: it keeps what it holds and takes no more, and the send pass
  renders the rows it refused (``add`` says False; the intake lists them);
* when a value cannot be stored or the disk fails, it is dropped and the send pass
  renders every row again.
"""

from __future__ import annotations

import marshal
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from batchsend.message import Address, Attachment, Message
from batchsend.plan import PlannedMessage

__all__ = ["MAX_BYTES", "MessageSpool"]

MAX_BYTES = 8 * 1024**3
_BUFFER = 1 << 20


def _addr(a: Address) -> tuple[str, str | None]:
    return (a.email, a.name)


def _pack(group: str | None, m: Message) -> tuple[Any, ...]:
    return (
        group,
        m.row,
        _addr(m.sender),
        tuple(map(_addr, m.to)),
        m.subject,
        m.html,
        m.text,
        tuple(map(_addr, m.cc)),
        tuple(map(_addr, m.bcc)),
        _addr(m.reply_to) if m.reply_to is not None else None,
        dict(m.headers),
        m.tag,
        dict(m.tags),
        dict(m.metadata),
        tuple((a.filename, a.content_type, a.content, a.content_id) for a in m.attachments),
        m.ical,
        m.track_opens,
        m.track_clicks,
        m.stream_type,
        m.domain,
    )


def _unpack(t: tuple[Any, ...]) -> tuple[str | None, Message]:
    (group, row, sender, to, subject, html, text, cc, bcc, reply_to, headers, tag, tags,
     metadata, attachments, ical, opens, clicks, stream, domain) = t  # fmt: skip
    return group, Message(
        row,
        Address(*sender),
        tuple([Address(*a) for a in to]),
        subject,
        html,
        text,
        tuple([Address(*a) for a in cc]) if cc else (),
        tuple([Address(*a) for a in bcc]) if bcc else (),
        Address(*reply_to) if reply_to is not None else None,
        headers,
        tag,
        tags,
        metadata,
        tuple([Attachment(*a) for a in attachments]) if attachments else (),
        ical,
        opens,
        clicks,
        stream,
        domain,
    )


class MessageSpool:
    """Rendered messages written once (preflight) and read back once (the send pass).

    Example::

        with MessageSpool(db_path.parent) as spool:
            for r in rows:
                spool.add(r.group, r.message)
            if spool.usable:
                for group, message in spool:
                    ...
    """

    def __init__(self, directory: str | Path, *, max_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.count = 0  # messages stored
        self.size = 0  # bytes written
        self.dropped = False
        self.drop_reason: str | None = None
        self.full = False  # at its cap: what it holds stays usable, it takes no more
        self.form: str | None = None  # "messages" or "planned", set by the first add
        self._file: IO[bytes] | None = None

    def __enter__(self) -> MessageSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def usable(self) -> bool:
        """True while every message added is still in the spool."""
        return not self.dropped

    def add(self, group: str | None, message: Message) -> bool:
        """Append one message (with its merge group); whether it was stored (not when the
        spool is full or dropped)."""
        if self.dropped or self.full:
            return False
        try:
            blob = marshal.dumps(_pack(group, message))
        except ValueError:  # a value marshal cannot store: render again at send time
            self.drop("a value could not be stored")
            return False
        return self._append(blob, "messages")

    def add_planned(self, planned: PlannedMessage) -> bool:
        """Append one planned, encoded message (``planned.wire`` set); whether it was
        stored (not when the spool is full or dropped)."""
        if self.dropped or self.full:
            return False
        if planned.wire is None:
            raise ValueError("only encoded messages are spooled as planned")
        if planned.recipient_count < 1:  # the rate limiter counts these
            raise ValueError(f"message {planned.key} delivers to nobody")
        record = (planned.key, planned.rows, planned.wire, planned.recipient_count)
        return self._append(marshal.dumps(record), "planned")

    def _append(self, blob: bytes, form: str) -> bool:
        if self.form is None:
            self.form = form
        elif form != self.form:
            raise ValueError(f"this spool holds {self.form}, not {form}")
        if self._file is None:
            try:
                free = shutil.disk_usage(self.directory).free
                self.max_bytes = min(self.max_bytes, free // 4)
                # lives as long as the spool; close() deletes it
                self._file = tempfile.TemporaryFile(dir=self.directory, buffering=_BUFFER)  # noqa: SIM115
            except OSError as exc:
                self.drop(f"no temporary file: {exc}")
                return False
        if self.size + 4 + len(blob) > self.max_bytes:
            self.full = True  # the rows from here on are rendered when sent
            return False
        try:
            self._file.write(len(blob).to_bytes(4, "little") + blob)
        except OSError as exc:  # a full disk: render again rather than fail the run
            self.drop(f"write failed: {exc}")
            return False
        self.size += 4 + len(blob)
        self.count += 1
        return True

    def _records(self, form: str) -> Iterator[Any]:
        if self.dropped:
            raise RuntimeError("the spool was dropped; render the messages again")
        f = self._file
        if f is None:
            return
        if form != self.form:
            raise RuntimeError(f"this spool holds {self.form}, not {form}")
        f.flush()
        f.seek(0)
        read = f.read
        loads = marshal.loads
        for _ in range(self.count):
            n = int.from_bytes(read(4), "little")
            yield loads(read(n))

    def __iter__(self) -> Iterator[tuple[str | None, Message]]:
        """Every stored ``(group, message)``, in the order added."""
        for record in self._records("messages"):
            yield _unpack(record)

    def planned(self) -> Iterator[PlannedMessage]:
        """Every stored planned message, in the order added (``message`` is None)."""
        for key, rows, wire, recipients in self._records("planned"):
            yield PlannedMessage(key, rows, None, wire, recipients)

    def drop(self, reason: str) -> None:
        """Give up the spool (the send pass renders again); frees the disk space now."""
        self.dropped = True
        self.drop_reason = reason
        self.close()

    def close(self) -> None:
        """Delete the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
