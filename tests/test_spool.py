"""The spool keeps preflight's rendered messages for the send pass: exact, bounded, disposable."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchsend.message import Address, Attachment, Message, message_key
from batchsend.plan import PlannedMessage
from batchsend.spool import MessageSpool


def full_message(row: int) -> Message:
    return Message(
        row=row,
        sender=Address("news@example.com", "Example News"),
        to=(Address(f"user{row}@example.org", "Zoë"),),
        subject=f"Hello {row} ✓",
        html=f"<p>Hi {row}</p>",
        text=f"Hi {row}",
        cc=(Address("cc@example.org"),),
        bcc=(Address("bcc@example.org"), Address("b2@example.org")),
        reply_to=Address("reply@example.com", "Desk"),
        headers={"List-Unsubscribe": "<https://example.com/u>"},
        tag="spring",
        tags={"campaign": "spring"},
        metadata={"customer": str(row)},
        attachments=(Attachment("a.pdf", "application/pdf", b"%PDF\x00\xff" * 3, "cid1"),),
        ical="BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        track_opens=True,
        track_clicks=False,
        stream_type="broadcast",
        domain="example.com",
    )


def test_messages_come_back_equal_with_the_same_keys(tmp_path: Path) -> None:
    messages = [full_message(r) for r in range(1, 51)] + [
        Message(
            row=51,
            sender=Address("a@example.com"),
            to=(Address("b@example.org"),),
            subject="s",
            html=None,
            text="t",
        )
    ]
    with MessageSpool(tmp_path) as spool:
        for i, m in enumerate(messages):
            spool.add("g" if i % 2 else None, m)
        back = list(spool)
    assert [m for _, m in back] == messages
    assert [g for g, _ in back] == ["g" if i % 2 else None for i in range(len(messages))]
    assert [message_key("r", m) for _, m in back] == [message_key("r", m) for m in messages]


def test_the_file_is_never_visible_in_the_folder(tmp_path: Path) -> None:
    with MessageSpool(tmp_path) as spool:
        spool.add(None, full_message(1))
        assert list(tmp_path.iterdir()) == []  # unlinked at creation: a kill leaves nothing


def test_at_its_cap_the_spool_keeps_what_it_holds_and_takes_no_more(tmp_path: Path) -> None:
    with MessageSpool(tmp_path, max_bytes=2_000) as spool:
        stored = [spool.add(None, full_message(r)) for r in range(1, 100)]
        assert spool.usable and spool.full and spool.size <= 2_000
        kept = stored.index(False)
        assert kept > 0 and stored == [True] * kept + [False] * (99 - kept)
        assert [m.row for _, m in spool] == list(range(1, kept + 1))


def test_a_value_marshal_cannot_store_drops_the_spool(tmp_path: Path) -> None:
    spool = MessageSpool(tmp_path)
    spool.add(
        None,
        Message(
            row=1,
            sender=Address("a@example.com"),
            to=(Address("b@x.org"),),
            subject="s",
            metadata={"when": object()},
        ),
    )  # type: ignore[dict-item]
    assert not spool.usable


def test_planned_messages_come_back_as_stored(tmp_path: Path) -> None:
    planned = [
        PlannedMessage(f"key{r}", (r,), None, f'{{"n":{r},"s":"Zoë ✓"}}'.encode(), r % 3 + 1)
        for r in range(1, 41)
    ]
    with MessageSpool(tmp_path) as spool:
        for pm in planned:
            spool.add_planned(pm)
        assert spool.form == "planned" and spool.count == 40
        assert list(spool.planned()) == planned
        assert list(spool.planned()) == planned  # read again from the start


def test_one_spool_holds_one_form(tmp_path: Path) -> None:
    with MessageSpool(tmp_path) as spool:
        spool.add(None, full_message(1))
        with pytest.raises(ValueError, match="holds messages"):
            spool.add_planned(PlannedMessage("k", (2,), None, b"{}", 1))
        with pytest.raises(RuntimeError, match="holds messages"):
            list(spool.planned())
    with MessageSpool(tmp_path) as spool, pytest.raises(ValueError, match="encoded"):
        spool.add_planned(PlannedMessage("k", (1,), full_message(1)))  # no wire: refused
