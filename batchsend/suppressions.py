"""Suppressions: the addresses a campaign never sends to.

Today they come from the CSV files the campaign names under ``[suppression]``;
:func:`load_suppression` reads them into dedup keys (see
:meth:`~batchsend.addresses.AddressBook.normalise`), which the row pass compares each
recipient against.
"""

from __future__ import annotations

import csv

from batchsend.addresses import AddressBook, InvalidAddress
from batchsend.campaign import Campaign
from batchsend.errors import SourceError


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
