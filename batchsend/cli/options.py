"""Options several commands share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from batchsend import dblocation
from batchsend.workers import default_workers

#: What ``--help`` says of the default, every command alike (README, "Where the
#: database lives"; batchsend.dblocation).
DB_DEFAULT = (
    "Default: $BATCHSEND_DB, else batchsend.db in the campaign's folder for a command on a"
    " campaign; a command on a run finds the database the run was recorded in."
)


STORE_DEFAULT = "Default: $BATCHSEND_DB, else batchsend.db in the current folder."


def db_option(
    help: str = "The SQLite file that records runs.", *, of_store: bool = False
) -> Callable[[Any], Any]:
    """``--db FILE``, passed to the command as ``db_path``: None when not given, for the
    command to find its database by the rule of :mod:`batchsend.dblocation`; with
    ``of_store`` (a command on neither a campaign nor a run) the path that rule gives."""

    def resolve(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
        return str(dblocation.for_store(value).path)

    return click.option(
        "--db",
        "db_path",
        default=None,
        type=click.Path(dir_okay=False),
        callback=resolve if of_store else None,
        help=f"{help} {STORE_DEFAULT if of_store else DB_DEFAULT}",
    )


def campaign_option(help: str) -> Callable[[Any], Any]:
    """``--campaign FILE`` (required), passed as ``campaign_path``: whose provider,
    base_url and key settings a command that is not a send uses."""
    return click.option(
        "--campaign",
        "campaign_path",
        required=True,
        type=click.Path(dir_okay=False),
        help=help,
    )


WORKERS = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Processes that check and render the rows (default: this machine's cores,"
    f" {default_workers()}); the results are the same with any N.",
)
