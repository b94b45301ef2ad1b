"""Suppressions: the addresses a campaign never sends to.

Two sources, both compared with each recipient's key (see
:meth:`~batchsend.addresses.AddressBook.normalise`) by the row pass:

- the CSV files the campaign names under ``[suppression]`` (:func:`load_suppression`);
- the suppression lists in batchsend's databases, fed by provider events, ``batchsend
  suppressions`` and sync (:func:`database_suppressions`): the campaign's own database
  and every other one this user's batchsend knows (the per-user index of runs and event
  receivers), so a bounce received for one campaign bars the address from all of them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from batchsend import ledger
from batchsend.addresses import AddressBook, InvalidAddress
from batchsend.campaign import Campaign
from batchsend.errors import SourceError

if TYPE_CHECKING:
    from batchsend.store import Store


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


def database_suppressions(own: Store | str | Path | None) -> dict[str, str]:
    """Every address on a database suppression list this user has, key -> why
    (``hard bounce on 2026-12-03``): ``own`` first (the campaign's database, open or by
    path), then every other database in the per-user index; an address keeps the first
    reason found. Read only: a database that is gone or unreadable adds nothing."""
    # Imported here: the row pass's workers load the campaign's own lists (above) and
    # never open a database, and the store's libraries cost them memory and time.
    from batchsend.store import Store
    from batchsend.store.events import read_suppression_details, suppression_details

    listed: dict[str, str] = {}
    own_path: Path | None = None
    if isinstance(own, Store):
        listed.update(suppression_details(own.conn))
        own_path = own.path.resolve()
    elif own is not None:
        own_path = Path(own).resolve()
        listed.update(read_suppression_details(own_path))
    for db in ledger.indexed_dbs():
        if own_path is not None and db.resolve() == own_path:
            continue
        for key, why in read_suppression_details(db).items():
            listed.setdefault(key, why)
    return listed
