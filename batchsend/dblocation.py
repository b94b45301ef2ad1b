"""Which database a command uses when ``--db`` is not given, and when a hint must say it.

The rule, for every command (README, "Where the database lives"):

1. ``--db FILE`` always wins; then ``$BATCHSEND_DB``.
2. A command that names a campaign (``run``, ``check``, ``events pull --campaign``) uses
   ``batchsend.db`` in the campaign's folder, so a campaign's runs are found wherever the
   command was typed. One exception keeps older runs together: a ``batchsend.db`` in the
   current folder that already holds runs of this campaign file (the default before) is
   used as it is.
3. A command that names a run (``resume``, ``report``) uses ``./batchsend.db`` if that
   holds the run, else the database the user's index of runs records for it
   (:func:`batchsend.ledger.index_run`, written when the run was created): a run is found
   from any folder.
4. ``runs`` lists ``./batchsend.db`` when there is one, else the runs of every database in
   the index.
5. The others (``events serve``/``list``, ``suppressions``) use ``./batchsend.db``.

A command printed for the user to type (``resume with: ...``) names the database
(``--db``) unless the database was found by this rule, not chosen, and the index records
the run in it: then ``batchsend resume RUN_ID`` finds it from any folder
(:func:`hint_db`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from batchsend import ledger
from batchsend.errors import InputError
from batchsend.store import DEFAULT_DB, holds

__all__ = [
    "ENV_VAR",
    "Located",
    "for_campaign",
    "for_listing",
    "for_run",
    "for_store",
    "hint_db",
]

#: The environment variable that names the database when ``--db`` is not given.
ENV_VAR = "BATCHSEND_DB"


@dataclass(frozen=True, slots=True)
class Located:
    """A database file, and whether the user named it (``--db``, ``$BATCHSEND_DB``)."""

    path: Path
    chosen: bool


def _chosen(db: str | Path | None) -> Located | None:
    if db is not None and str(db) != "":
        return Located(Path(db), True)
    env = os.environ.get(ENV_VAR)
    if env:
        return Located(Path(env), True)
    return None


def campaign_folder(campaign: str | Path) -> Path:
    """The folder of the campaign at ``campaign`` (its ``campaign.toml``, or the folder)."""
    path = Path(campaign)
    return (path if path.is_dir() else path.parent).resolve()


def for_campaign(campaign: str | Path, db: str | Path | None = None) -> Located:
    """The database of a command on the campaign at ``campaign`` (rule 2).

    Example::

        for_campaign("samples/newsletter/campaign.toml").path  # .../newsletter/batchsend.db
    """
    chosen = _chosen(db)
    if chosen is not None:
        return chosen
    path = Path(campaign)
    toml = path / "campaign.toml" if path.is_dir() else path
    here = Path(DEFAULT_DB)
    if holds(here, campaign=str(toml.resolve())):
        return Located(here.resolve(), False)
    return Located(campaign_folder(campaign) / DEFAULT_DB, False)


def for_run(run_id: str, db: str | Path | None = None) -> Located:
    """The database that holds run ``run_id`` (rule 3); :class:`InputError` (exit 2)
    when none is known to."""
    chosen = _chosen(db)
    if chosen is not None:
        return chosen
    here = Path(DEFAULT_DB)
    if holds(here, run_id=run_id):
        return Located(here.resolve(), False)
    indexed = ledger.indexed_db(run_id)
    if indexed is not None and holds(indexed, run_id=run_id):
        return Located(indexed, False)
    where = f"it was recorded in {indexed}, which no longer holds it" if indexed else (
        f"neither ./{DEFAULT_DB} nor the index of runs ({ledger.index_path()}) knows it"
    )  # fmt: skip
    raise InputError(
        f"no run {run_id!r} found: {where}",
        fix="pass --db with the database file the run was recorded in "
        "(batchsend runs lists the runs batchsend knows)",
    )


def for_listing(db: str | Path | None = None) -> list[Located]:
    """The databases ``runs`` lists (rule 4): one, or every one the index names that
    still exists."""
    chosen = _chosen(db)
    if chosen is not None:
        return [chosen]
    here = Path(DEFAULT_DB)
    if here.is_file():
        return [Located(here.resolve(), False)]
    return [Located(path, False) for path in ledger.indexed_dbs() if path.is_file()]


def for_store(db: str | Path | None = None) -> Located:
    """The database of a command that names neither a campaign nor a run (rule 5)."""
    return _chosen(db) or Located(Path(DEFAULT_DB), False)


def hint_db(run_id: str, located: Located) -> str | None:
    """The ``--db`` a printed command for run ``run_id`` needs: None when
    ``batchsend resume RUN_ID`` finds the database without it, from any folder.

    A database the user named is named back as they gave it; one found by the rule but
    missing from the index (it could not be written) by its absolute path.
    """
    if located.chosen:
        return str(located.path)
    path = located.path.resolve()
    indexed = ledger.indexed_db(run_id)
    if indexed is not None and indexed == path:
        return None
    return str(path)
