"""The ``batchsend`` command line: a thin click layer over the library.

Commands live in modules of this package and are imported only when used, so that
``batchsend sandbox`` does not pay for polars and ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from batchsend.apikeys import redact
from batchsend.cli import lean
from batchsend.errors import BatchsendError
from batchsend.version import __version__

# command name -> "module:attribute", in the order --help lists them
COMMANDS: dict[str, str] = {
    "init": "batchsend.cli.campaign_cmds:init",
    "check": "batchsend.cli.campaign_cmds:check",
    "preview": "batchsend.cli.campaign_cmds:preview",
    "run": "batchsend.cli.run_cmds:run",
    "resume": "batchsend.cli.run_cmds:resume",
    "reconcile": "batchsend.cli.run_cmds:reconcile",
    "runs": "batchsend.cli.report_cmds:runs",
    "report": "batchsend.cli.report_cmds:report",
    "events": "batchsend.cli.events_cmds:events",
    "suppressions": "batchsend.cli.events_cmds:suppressions_group",
    "sandbox": "batchsend.cli.sandbox_cmd:sandbox",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Exactly the table: a command whose module fails to import is an error here,
        # not a command that silently drops out of --help.
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


class BatchsendGroup(LazyGroup):
    """Turns batchsend's own errors into one clear message and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        lean.load_sqlite_utils()  # before a command's module loads the store
        try:
            return super().invoke(ctx)
        except BatchsendError as exc:
            # Redacted again here as a last line of defence: no key reaches a terminal.
            click.echo(f"error: {redact(str(exc))}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=BatchsendGroup)
@click.version_option(__version__, prog_name="batchsend")
def main() -> None:
    """Send personalised email campaigns that survive crashes without emailing anyone twice.

    \b
    Typical use:
      batchsend init mycampaign          # write an example campaign to edit
      batchsend check mycampaign/campaign.toml
      batchsend preview mycampaign/campaign.toml --row 1
      batchsend run mycampaign/campaign.toml
      batchsend reconcile RUN_ID              # settle rows whose answer was lost
      batchsend report RUN_ID --out report.csv
    """
