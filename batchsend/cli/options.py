"""Options several commands share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from batchsend.store import DEFAULT_DB


def db_option(help: str = "The SQLite file that records runs.") -> Callable[[Any], Any]:
    """``--db FILE`` (default ``batchsend.db``), passed to the command as ``db_path``."""
    return click.option(
        "--db",
        "db_path",
        default=DEFAULT_DB,
        show_default=True,
        type=click.Path(dir_okay=False),
        help=help,
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
