"""``batchsend init``, ``check`` and ``preview``: describe a campaign, check it, look at it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchsend import dblocation
from batchsend.apikeys import redact
from batchsend.campaign import load_campaign
from batchsend.cli.options import WORKERS, db_option
from batchsend.errors import InputError
from batchsend.suppressions import database_suppressions

#: ``--allow-outside PATH``: the user, never the campaign file, lets it read elsewhere.
ALLOW_OUTSIDE = click.option(
    "--allow-outside",
    "allow_outside",
    multiple=True,
    metavar="PATH",
    type=click.Path(exists=True, path_type=Path),
    help="Let the campaign read files under PATH (a folder or one file) although it is"
    " outside the campaign folder. Repeatable. Without it every file the campaign names"
    " must be inside its folder, symlinks resolved.",
)


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(folder: Path, force: bool) -> None:
    """Write an example campaign into FOLDER: campaign.toml, recipients.csv, templates.

    It passes `batchsend check` untouched; edit it from there.

    \b
    Example:
      batchsend init mycampaign
      batchsend check mycampaign/campaign.toml
    """
    from batchsend.scaffold import write_example

    for path in write_example(folder, force=force):
        click.echo(f"wrote {path}")
    click.echo(f"next: batchsend check {folder / 'campaign.toml'}")


@click.command()
@click.argument("campaign_file", metavar="CAMPAIGN", type=click.Path(path_type=Path))
@click.option(
    "--errors",
    "errors_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every bad row with its reasons to this CSV file.",
)
@ALLOW_OUTSIDE
@db_option("The database whose suppression list is consulted (read only; none if absent).")
@WORKERS
def check(
    campaign_file: Path,
    errors_file: Path | None,
    allow_outside: tuple[Path, ...],
    db_path: str | None,
    workers: int | None,
) -> None:
    """Read and render every row of CAMPAIGN, send nothing, and report every problem.

    Problems are grouped by cause with their row numbers and column; the last lines
    count rows, sendable rows, skipped rows by reason and the requests a run would
    make. Exit status 2 when anything is wrong.

    \b
    Example:
      batchsend check samples/newsletter/campaign.toml
      batchsend check campaign.toml --errors bad-rows.csv
    """
    from batchsend.check_report import format_report
    from batchsend.preflight import preflight

    campaign = load_campaign(campaign_file, allow_outside=allow_outside)
    listed = database_suppressions(dblocation.for_campaign(campaign.path, db_path).path)
    if errors_file is None:
        report = preflight(campaign, suppressed=listed, workers=workers)
    else:
        try:
            fh = errors_file.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(
                f"cannot write the errors file: {exc.strerror}",
                file=str(errors_file),
                fix="give --errors a file path inside an existing folder you can write to",
            ) from None
        with fh:
            report = preflight(campaign, errors=fh, suppressed=listed, workers=workers)
    click.echo(redact(format_report(report)))
    if errors_file is not None and not report.ok:
        click.echo(f"bad rows written to {errors_file}")
    if not report.ok:
        sys.exit(2)


@click.command()
@click.argument("campaign_file", metavar="CAMPAIGN", type=click.Path(path_type=Path))
@click.option("--row", "row", type=int, default=1, show_default=True, help="Data row (from 1).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write row-N.html, row-N.txt, row-N.json (and row-N.ics) here.",
)
@ALLOW_OUTSIDE
def preview(
    campaign_file: Path, row: int, out_dir: Path | None, allow_outside: tuple[Path, ...]
) -> None:
    """Show what row N of CAMPAIGN produces; with --out, write it to files.

    The JSON file is the exact request body the provider will receive (attachment
    contents abbreviated). Nothing is sent.

    \b
    Example:
      batchsend preview samples/invoices/campaign.toml --row 2 --out preview/
    """
    from batchsend.preview import preview as make_preview

    result = make_preview(load_campaign(campaign_file, allow_outside=allow_outside), row, out_dir)
    for key, value in result.headline.items():
        click.echo(f"{key:>16}: {value}")
    for path in result.files:
        click.echo(f"wrote {path}")
