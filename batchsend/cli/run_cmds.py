"""``batchsend run``, ``batchsend resume`` and ``batchsend reconcile``: thin click layers over
:mod:`batchsend.run`, :mod:`batchsend.resume` and :mod:`batchsend.reconcile`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from batchsend.cli.campaign_cmds import ALLOW_OUTSIDE
from batchsend.cli.options import WORKERS, db_option
from batchsend.errors import DiskFullError, is_disk_full
from batchsend.reconcile import ADMIN_KEY_ENV, ReconcileResult, parse_grace, reconcile_run
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sending import EXIT_INTERRUPTED, RunResult


def _send_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``run`` and ``resume``."""
    options = [
        db_option(),
        click.option(
            "--base-url",
            default=None,
            help="The provider's base URL. Needed to send to a host that is not loopback:"
            " a campaign file alone cannot send your key to another machine.",
        ),
        ALLOW_OUTSIDE,
        click.option(
            "--concurrency", type=click.IntRange(min=1), default=None, help="Requests in flight."
        ),
        click.option(
            "--rate", type=click.FloatRange(min=0.001), default=None, help="Requests per second."
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Send only the next N sendable rows; the rest stays pending for a resume.",
        ),
        click.option(
            "--sandbox",
            "sandbox",
            is_flag=True,
            help="Send to an embedded loopback sandbox (sender domain verified, key provided).",
        ),
        WORKERS,
        click.option(
            "--http-client",
            type=click.Choice(["aiohttp", "httpx"]),
            default="aiohttp",
            show_default=True,
            help="The HTTP client under the send engine.",
        ),
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False),
            default=None,
            help="Read the API key from this file (instead of the environment).",
        ),
        click.option("--api-key-stdin", is_flag=True, help="Read the API key from standard input."),
        click.option(
            "--accept-lost-record",
            is_flag=True,
            help="Go on although the database lost part of its record of sends (its -wal "
            "file is missing, or it is an older copy): people it shows pending may have been "
            "sent already and get a second email.",
        ),
        click.option(
            "--report",
            "report_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Where to write the report (default: reports/<run id>.csv beside the "
            "database); its extension sets the format (.xlsx for Excel, .csv, .parquet, "
            ".json, .jsonl, .html), and "
            "any other is refused before sending.",
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print a JSON summary object on stdout."
        ),
        click.option(
            "--quiet",
            "-q",
            is_flag=True,
            help="Show no progress on stderr (the live line on a terminal, else a line every"
            " 10 s); warnings, errors and the final summary still show.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class Duration(click.ParamType):
    """A duration such as ``10m``, ``90s``, ``1h`` or ``0`` (seconds without a unit)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_grace(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _reconcile_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of ``reconcile`` that ``resume --reconcile`` shares."""
    options = [
        click.option(
            "--grace",
            type=Duration(),
            default="10m",
            show_default=True,
            help="A message not in the provider's log this long after its last request was "
            "never accepted (its rows go back to pending); a younger one stays unknown.",
        ),
        click.option(
            "--admin-key-file",
            type=click.Path(dir_okay=False),
            default=None,
            help="ToSend: read the admin key (tsend_admin_...) from this file (instead of "
            f"the campaign's admin_key_file or ${ADMIN_KEY_ENV}).",
        ),
        click.option(
            "--admin-key-stdin",
            is_flag=True,
            help="ToSend: read the admin key from standard input.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _call(fn: Callable[..., RunResult], *args: Any, **kwargs: Any) -> RunResult:
    # None: the live line on a terminal, a log line every few seconds elsewhere.
    kwargs["progress"] = False if kwargs.pop("quiet") else None
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        # Ctrl-C before sending began (preflight): the run's transaction was rolled back.
        click.echo("\nbatchsend: interrupted before sending; nothing was sent", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        # Once sending began the send pass says it (with the resume command); a full disk
        # before that is here: the command's transaction was rolled back.
        if not is_disk_full(exc):
            raise
        raise DiskFullError(
            f"the disk is full ({exc}): nothing was sent, and the database"
            f"{' ' + str(kwargs['db_path']) if kwargs.get('db_path') else ''} is as it was"
            " before this command"
            "\n  fix: free some space, then run the same command again"
        ) from None


def _finish(summary: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(summary.describe(), err=True)
    sys.exit(summary.exit_code)


@click.command()
@click.argument("campaign", type=click.Path(exists=True))
@click.option(
    "--provider",
    type=click.Choice(["v1", "tosend"]),
    default=None,
    help="Override the campaign's provider.",
)
@click.option(
    "--test-to",
    default=None,
    metavar="ADDRESS",
    help="Send the first rows' messages (1, or --limit) to ADDRESS only; recorded as a test run.",
)
@click.option("--dry-run", is_flag=True, help="Do everything except the HTTP requests.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Send the good rows and record bad ones as skipped (default: refuse).",
)
@click.option(
    "--new-run",
    is_flag=True,
    help="Start a new run although the campaign's last run is unfinished (instead of "
    "resuming it); its rows are sent again, under new keys. Not for a finished campaign: "
    "see --again.",
)
@click.option(
    "--again",
    is_flag=True,
    help="Send the campaign to everyone again, as a new run, although an earlier run "
    "finished (or is unfinished: --again includes --new-run).",
)
@click.option(
    "--skip-sent",
    is_flag=True,
    help="A new run that sends only to addresses no earlier run of this campaign sent to "
    "(a list that grew); the others are recorded skipped (already_sent, or maybe_sent "
    "for an unknown outcome).",
)
@_send_options
def run(campaign: str, **options: Any) -> None:
    """Send a campaign: preflight every row, then send, recording each row in the database.

    Nothing is sent unless every row passes preflight (or --skip-invalid). If the
    campaign's last run is unfinished, batchsend says so and prints the resume command
    (--new-run starts over instead); if it finished, batchsend refuses to send it again
    unless --again (everyone) or --skip-sent (only addresses not sent yet). A proof copy
    (--test-to) and --dry-run are never refused for earlier runs. Two commands sending
    one campaign at once are refused: exactly one proceeds. Ctrl-C (or SIGTERM) once
    stops cleanly (resumable); twice stops at once. The summary ends with the exact
    command for what is left: resume, retry the retryable failures, or (accepting that
    those people may get it twice) send the unknown rows again.

    \b
    Exit codes:
      0    done: every row sent or skipped (or the rest left pending by --limit)
      1    the run stopped on a fatal provider error (key, credits, domain)
      2    bad input, or a refusal (nothing was sent)
      3    finished, but some rows failed or are unknown (see the summary's "next:")
      130  interrupted (Ctrl-C, SIGTERM)

    \b
    Example:
      export BATCHSEND_API_KEY=...
      batchsend run mycampaign/campaign.toml --limit 10
      batchsend run mycampaign/campaign.toml --sandbox --json
      batchsend run mycampaign/campaign.toml --test-to me@example.com
      batchsend run mycampaign/campaign.toml --skip-sent   # the list grew since
    """
    as_json = options.pop("as_json")
    summary = _call(run_campaign, campaign, **options)
    _finish(summary, as_json)


@click.command()
@click.argument("run_id")
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the input file or templates changed since the run began. Rows "
    "are matched to the file by address: a moved row keeps its record, a new address is "
    "sent, an address already sent (or unknown) is never sent again.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Send again the rows that failed with a retryable error."
)
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Send again the rows whose outcome is unknown, as the very same request "
    "(same Idempotency-Key). The provider may already have delivered them: those people "
    "may get the message twice. Said on stderr before sending.",
)
@click.option(
    "--reconcile",
    is_flag=True,
    help="First ask the provider about the unknown rows, as `batchsend reconcile` does; "
    "the ones it never accepted are then sent by this resume.",
)
@_reconcile_options
@_send_options
def resume(run_id: str, **options: Any) -> None:
    """Continue a run: rows in flight at a crash become unknown, pending rows are sent.

    Refuses if the input file or the templates changed since the run began (--force to
    override). Unknown rows are not sent again unless --resend-unknown; --reconcile asks
    the provider about them first (see `batchsend reconcile`); retryable failures are
    sent again only with --retry-failed. Exit codes as for `batchsend run`:
    0 done, 1 fatal provider error, 2 bad input or refused, 3 finished but some rows
    failed or are unknown (the run's, not only this resume's), 130 interrupted.

    \b
    Example:
      batchsend resume 20261121T103455-ab12cd
      batchsend resume 20261121T103455-ab12cd --reconcile
      batchsend resume 20261121T103455-ab12cd --retry-failed --resend-unknown --json
    """
    as_json = options.pop("as_json")
    summary = _call(resume_run, run_id, **options)
    _finish(summary, as_json)


@click.command()
@click.argument("run_id")
@db_option()
@_reconcile_options
@click.option(
    "--base-url",
    default=None,
    help="The provider's base URL (default: the one the run sent to).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Lookups in flight (8)."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Lookups per second (default: ToSend 20, v1 9, under its 600 requests/minute).",
)
@click.option(
    "--http-client",
    type=click.Choice(["aiohttp", "httpx"]),
    default="aiohttp",
    show_default=True,
    help="The HTTP client for the lookups.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="v1: read the account's API key from this file (the Events API takes it).",
)
@click.option("--api-key-stdin", is_flag=True, help="v1: read the API key from standard input.")
@ALLOW_OUTSIDE
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary object on stdout.")
def reconcile(run_id: str, **options: Any) -> None:
    """Settle a run's unknown rows by asking the provider what it accepted.

    A row is unknown when its request may have reached the provider but no answer said
    so (a timeout, a lost connection, a 5xx, a crash). Each unknown message is looked up:
    on ToSend by its message id with an admin key (tsend_admin_..., from --admin-key-file,
    --admin-key-stdin, the campaign's admin_key_file or $BATCHSEND_ADMIN_KEY); on v1 in the
    Events API,
    by recipient, time and the batchsend_id batchsend put in its metadata, with the
    account's own key. Found: the rows are sent. Not found and older than --grace: the
    provider never accepted them, so they go back to pending and `batchsend resume`
    sends them. Younger ones stay unknown (the summary says when to try again), and so
    do rows whose lookup failed. Nothing is ever sent by this command.

    \b
    Exit codes:
      0    every unknown row is settled (run `batchsend resume` for the pending ones)
      2    the provider cannot be asked (no or wrong admin key, a missing scope, no
           Events API on the account): nothing was changed
      3    some rows are still unknown (too recent, or their lookup failed)
      130  interrupted (what was settled is kept)

    \b
    Example:
      export BATCHSEND_ADMIN_KEY=...        # ToSend: an admin key with emails:read
      batchsend reconcile 20261121T103455-ab12cd
      batchsend reconcile 20261121T103455-ab12cd --grace 30m --json
      batchsend resume 20261121T103455-ab12cd
    """
    as_json = options.pop("as_json")
    try:
        result: ReconcileResult = reconcile_run(run_id, **options)
    except KeyboardInterrupt:
        click.echo("\nbatchsend: interrupted; the rows settled so far are recorded", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.describe(), err=True)
    sys.exit(result.exit_code)
