"""``batchsend runs`` and ``batchsend report``: thin click layers over
:mod:`batchsend.history` and :mod:`batchsend.report`."""

from __future__ import annotations

from pathlib import Path

import click

from batchsend import dblocation
from batchsend.cli.options import db_option
from batchsend.history import RunListing, dumps_listings, list_runs
from batchsend.next_steps import describe_counts
from batchsend.report import EXTENSIONS, FORMATS, format_for, write_report
from batchsend.states import RecipientState

_db_option = db_option()


def _describe(item: RunListing) -> str:
    run = item.run
    counts = describe_counts(run.counts, is_test=run.is_test, test_to=run.test_to)
    flags = "".join(
        f" [{word}]"
        for word, on in (
            (f"test run: proof copies to {run.test_to}", run.is_test),
            ("dry run", run.dry_run),
            ("sandbox: no one was emailed", bool(run.settings.get("sandbox"))),
        )
        if on
    )
    lines = [
        f"{run.id}  {item.label}{flags}  {run.campaign_name or run.campaign_path}",
        f"  started {run.started_at}  ended {run.ended_at or '-'}  provider {run.provider}",
        f"  {counts}",
    ]
    if run.fatal_error:
        lines.append(f"  fatal error: {run.fatal_error}")
    if item.db_hint is None:  # found without --db: say where it is
        lines.append(f"  database: {item.db_path}")
    if run.report_path:
        lines.append(f"  report: {run.report_path}")
    if item.resume:
        lines.append(f"  resume: {item.resume}")
    steps = item.next_steps
    if steps:
        lines.append("  next:")
        lines += [f"    {step.describe()}" for step in steps]
    return "\n".join(lines)


@click.command()
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
def runs(db_path: str | None, as_json: bool) -> None:
    """List every run in the database, newest first.

    Without --db (or $BATCHSEND_DB): the runs of ./batchsend.db if there is one, else
    those of every database batchsend recorded a run in, each with its database.

    Shows each run's campaign, start and end times, state (running, interrupted,
    finished, "finished with N failed / M unknown", or fatal: stopped on an error that
    concerns the whole run), how many rows are in each state, the command that resumes
    it when it is unfinished, and what to do about its failed and unknown rows: the
    command that sends retryable failures again, the one that sends unknown rows again
    (with its risk: they may have been delivered already), and the report for permanent
    failures. A run recorded as running whose process is gone is shown as interrupted.

    \b
    Example:
      batchsend runs
      batchsend runs --db campaigns.db --json
    """
    found = dblocation.for_listing(db_path)
    listings = [
        listing for where in found for listing in list_runs(where.path, chosen=where.chosen)
    ]
    listings.sort(key=lambda item: (item.run.started_at, item.run.id), reverse=True)
    if as_json:
        click.echo(dumps_listings(listings))
    elif not listings:
        where = ", ".join(str(w.path) for w in found) or "no database batchsend knows of"
        click.echo(f"no runs in {where}", err=True)
    else:
        click.echo("\n\n".join(_describe(item) for item in listings))


@click.command()
@click.argument("run_id")
@_db_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The file to write (default: reports/<run id>.<format>). Its extension sets "
    f"the format: {', '.join(EXTENSIONS)}; any other is refused unless --format says.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="csv, xlsx (Excel workbook), parquet, json (one array), jsonl (JSON lines) or "
    "html (one-page summary); default: from --out's extension, else csv.",
)
@click.option(
    "--bom",
    is_flag=True,
    help="CSV only: start the file with a UTF-8 byte-order mark, so Excel shows accents "
    "and non-Latin names right when the file is double-clicked (default: no mark, as "
    "programs expect). For Excel, --out report.xlsx is better still.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in RecipientState]),
    help="Keep only rows in this state (repeatable).",
)
@click.option(
    "--no-input-columns",
    is_flag=True,
    help="Leave out the recipient file's other columns (template variables, cc...).",
)
def report(
    run_id: str,
    db_path: str | None,
    out: str | None,
    fmt: str | None,
    states: tuple[str, ...],
    no_input_columns: bool,
    bom: bool,
) -> None:
    """Write what happened to every row of a run: one line per input row, in input order.

    Each line has the row number, address, name, state, reason (error type, HTTP
    status and provider message for failed, skipped and unknown rows), attempts,
    provider ids, timestamps, idempotency key, tag and the campaign's metadata columns,
    followed by the recipient file's other columns when that file is unchanged. Prints
    the path written.

    For people, write .xlsx: an Excel workbook whose cells are typed, so a phone number
    or an address reads exactly as written. CSV cells that a spreadsheet would run as a
    formula (=..., @..., +1+cmd|...) get a leading quote; a number-like cell such as
    +44 20 7946 0958 or -12 is left as it is. CSV is written without a byte-order mark
    unless --bom. In a test run (--test-to) the rows whose proof copy went out read
    proof_sent, not sent: the copy went to the test address, not to them.

    Do not feed a report of failed or unknown rows back in as a new campaign: those
    rows would go out again under new keys, and one whose answer was lost would be
    emailed twice. Retryable failures: `batchsend resume RUN_ID --db DB --retry-failed`.
    Unknown rows may already have been delivered: `batchsend resume RUN_ID --db DB
    --resend-unknown` sends them again only if you accept that those people may get
    the message twice. Permanent failures will never be accepted as they are.
    `batchsend runs` prints these commands for each run.

    \b
    Example:
      batchsend report 20261121T103455-ab12cd --out report.xlsx
      batchsend report 20261121T103455-ab12cd --out report.csv --bom
      batchsend report 20261121T103455-ab12cd --state failed --out failed.csv
      batchsend report 20261121T103455-ab12cd --format html --out summary.html
    """
    fmt = format_for(out, fmt)
    target = Path(out) if out else Path("reports") / f"{run_id}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    written = write_report(
        dblocation.for_run(run_id, db_path).path,
        run_id,
        target,
        format=fmt,
        states=states or None,
        with_input=not no_input_columns,
        bom=bom,
    )
    click.echo(str(written))
