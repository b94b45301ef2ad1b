"""The planner: stable keys, batching, bounded-window merging, rebuilding a unit."""

from __future__ import annotations

import pytest

from batchsend.message import Address, Message, message_key
from batchsend.plan import (
    merge_messages,
    pack_units,
    plan_messages,
    plan_units,
    rebuild_unit,
    unit_key,
)
from batchsend.providers import get_provider

SENDER = Address("news@example.com", "News")


def msg(row: int, *, text: str = "same for all", cc: tuple[Address, ...] = ()) -> Message:
    return Message(
        row=row,
        sender=SENDER,
        to=(Address(f"u{row}@dest.test"),),
        subject="Hello",
        text=text,
        cc=cc,
    )


def personalised(n: int) -> list[Message]:
    return [msg(i, text=f"Dear {i}") for i in range(1, n + 1)]


def test_each_message_key_is_message_key_of_its_message():
    planned = list(plan_messages(personalised(3), run_id="run-1"))
    assert [pm.rows for pm in planned] == [(1,), (2,), (3,)]
    assert [pm.key for pm in planned] == [message_key("run-1", m) for m in personalised(3)]


def test_planning_twice_gives_the_same_units_and_another_run_other_keys():
    tosend = get_provider("tosend", base_url="http://127.0.0.1:1", api_key="k", batch_size=2)
    first = list(plan_units(personalised(5), run_id="run-1", provider=tosend))
    again = list(plan_units(personalised(5), run_id="run-1", provider=tosend))
    other = list(plan_units(personalised(5), run_id="run-2", provider=tosend))
    assert first == again
    assert {u.key for u in first}.isdisjoint({u.key for u in other})


@pytest.mark.parametrize(
    ("provider", "options", "sizes", "batch"),
    [
        ("tosend", {}, [100, 100, 50], True),
        ("tosend", {"batch_size": 30}, [30] * 8 + [10], True),
        ("tosend", {"batch_size": 1}, [1] * 250, False),
        ("v1", {}, [1] * 250, False),
    ],
)
def test_units_follow_the_providers_batch_mode(provider, options, sizes, batch):
    p = get_provider(provider, base_url="http://127.0.0.1:1", api_key="k", **options)
    units = list(plan_units(personalised(250), run_id="r", provider=p))
    assert [len(u.messages) for u in units] == sizes
    assert all(u.batch is batch for u in units)
    assert [r for u in units for r in u.rows] == list(range(1, 251))


def test_single_unit_key_is_the_message_key_and_batch_key_digests_the_composition():
    units = list(pack_units(plan_messages(personalised(4), run_id="r"), batch=False))
    assert [u.key for u in units] == [u.messages[0].key for u in units]
    planned = list(plan_messages(personalised(4), run_id="r"))
    keys = [pm.key for pm in planned]
    assert unit_key(keys, batch=True) == unit_key(list(keys), batch=True)
    assert unit_key(keys, batch=True) != unit_key(keys[::-1], batch=True)
    assert unit_key(keys, batch=True) != unit_key(keys[:3], batch=True)


def test_merging_a_broadcast_fills_messages_up_to_the_limit_in_bcc():
    tosend = get_provider("tosend", base_url="http://127.0.0.1:1", api_key="k")
    units = list(
        plan_units([msg(i) for i in range(1, 121)], run_id="r", provider=tosend, merge=True)
    )
    messages = [pm for u in units for pm in u.messages]
    assert [len(pm.rows) for pm in messages] == [50, 50, 20]
    first = messages[0].message
    assert first.to == (SENDER,)  # private: the sender is the visible recipient
    assert [a.email for a in first.bcc] == [f"u{i}@dest.test" for i in range(1, 51)]
    assert sorted(r for pm in messages for r in pm.rows) == list(range(1, 121))


def test_merging_into_to_on_tosend_and_never_on_v1():
    tosend = get_provider("tosend", base_url="http://127.0.0.1:1", api_key="k")
    planned = [
        pm
        for u in plan_units(
            [msg(i) for i in range(1, 6)], run_id="r", provider=tosend, merge=True, placement="to"
        )
        for pm in u.messages
    ]
    assert len(planned) == 1
    assert [a.email for a in planned[0].message.to] == [f"u{i}@dest.test" for i in range(1, 6)]
    assert planned[0].message.bcc == ()
    v1 = get_provider("v1", base_url="http://127.0.0.1:1", api_key="k")
    units = list(
        plan_units(
            [msg(i) for i in range(1, 6)], run_id="r", provider=v1, merge=True, placement="to"
        )
    )
    assert len(units) == 5  # v1's to holds one address


def test_merging_respects_a_smaller_configured_limit_and_groups():
    items = [("a" if i % 2 else "b", msg(i)) for i in range(1, 11)]
    (unit,) = plan_units(
        items, run_id="r", batch=True, batch_size=100, merge=True, max_recipients_per_field=3
    )
    planned = unit.messages
    groups = sorted(pm.rows for pm in planned)
    assert groups == [(1, 3, 5), (2, 4, 6), (7, 9), (8, 10)]


def test_personalised_rows_and_rows_with_their_own_cc_are_not_merged():
    items = [msg(1), msg(2), msg(3, text="other"), msg(4, cc=(Address("boss@dest.test"),))]
    planned = list(plan_messages(items, run_id="r", merge=True))
    assert sorted(pm.rows for pm in planned) == [(1, 2), (3,), (4,)]
    lone = next(pm for pm in planned if pm.rows == (4,))
    assert lone.message == items[3]  # untouched


def test_the_merge_window_bounds_what_is_held():
    # Alternating contents with a window of 4 rows: groups leave before they are full.
    items = [msg(i, text=f"variant {i % 3}") for i in range(1, 31)]
    planned = list(plan_messages(items, run_id="r", merge=True, merge_window=4))
    assert all(len(pm.rows) <= 5 for pm in planned)
    assert sorted(r for pm in planned for r in pm.rows) == list(range(1, 31))
    unbounded = list(plan_messages(items, run_id="r", merge=True))
    assert len(unbounded) == 3


def test_plan_accepts_rows_with_message_and_group_attributes():
    class Row:
        def __init__(self, message, group):
            self.message, self.group = message, group

    planned = list(plan_messages([Row(msg(1), "x"), Row(msg(2), "y")], run_id="r", merge=True))
    assert sorted(pm.rows for pm in planned) == [(1,), (2,)]


@pytest.mark.parametrize("merge", [False, True])
def test_rebuild_unit_reproduces_key_and_body(merge):
    tosend = get_provider("tosend", base_url="http://127.0.0.1:1", api_key="k", batch_size=10)
    rows = [msg(i) for i in range(1, 31)] + [msg(i, text=f"Dear {i}") for i in range(31, 37)]
    units = list(
        plan_units(rows, run_id="r", provider=tosend, merge=merge, max_recipients_per_field=7)
    )
    by_row = {m.row: m for m in rows}
    for unit in units:
        composition = [pm.rows for pm in unit.messages]
        again = rebuild_unit(composition, by_row, run_id="r", batch=unit.batch)
        assert again == unit
        assert tosend.build_request(again).body == tosend.build_request(unit).body


def test_rebuild_detects_a_changed_message():
    unit = next(pack_units(plan_messages([msg(1)], run_id="r"), batch=False))
    changed = rebuild_unit([(1,)], {1: msg(1, text="edited")}, run_id="r", batch=False)
    assert changed.key != unit.key


def test_merge_messages_rejects_unknown_placement_and_empty_input():
    with pytest.raises(ValueError, match="placement"):
        merge_messages([msg(1), msg(2)], placement="cc")
    with pytest.raises(ValueError):
        merge_messages([])
