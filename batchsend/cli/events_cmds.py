"""``batchsend events`` and ``batchsend suppressions``: thin click layers over
:mod:`batchsend.receiver`, :mod:`batchsend.pull` and :mod:`batchsend.store.events`."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import click

from batchsend import dblocation, ledger
from batchsend.addresses import AddressBook, InvalidAddress, suppression_key
from batchsend.apikeys import load_admin_key, load_secret
from batchsend.campaign import Campaign, load_campaign
from batchsend.cli.campaign_cmds import ALLOW_OUTSIDE
from batchsend.cli.options import campaign_option, db_option
from batchsend.errors import CampaignError, DatabaseFileError, SecretError, SuppressionFileError
from batchsend.events.model import EVENT_TYPES
from batchsend.pull import pull_v1_events, sync_suppressions
from batchsend.receiver import MAX_BODY, ReceiverConfig, serve_forever
from batchsend.report import neutralise
from batchsend.session import Session
from batchsend.store import Store
from batchsend.store.events import (
    Suppression,
    add_suppressions,
    event_counts,
    list_events,
    remove_suppressions,
    suppressions,
    unmatched_count,
)

TOSEND_SECRET_ENV = "BATCHSEND_TOSEND_WEBHOOK_SECRET"
#: What a v1 webhook token may be: it is one segment of the URL path.
_URL_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")
V1_TOKEN_ENV = "BATCHSEND_V1_WEBHOOK_TOKEN"

_db_option = db_option(
    "The SQLite file that records runs, events and the suppression list.", of_store=True
)


@click.group()
def events() -> None:
    """Receive and read what the provider says happened after it accepted a message.

    \b
    Example:
      export BATCHSEND_TOSEND_WEBHOOK_SECRET=...   # the webhook's signing secret
      batchsend events serve --port 8088           # POST /webhooks/tosend
      batchsend events pull --campaign c/campaign.toml --since 2026-12-01T00:00:00Z
      batchsend events list --type bounced
    """


@events.command()
@_db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
#: Not the sandbox's 8025: the two run side by side when trying the loop out.
@click.option("--port", type=click.IntRange(0, 65535), default=8088, show_default=True)
@click.option(
    "--tosend-secret-file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"File holding ToSend's webhook signing secret (else ${TOSEND_SECRET_ENV}).",
)
@click.option(
    "--v1-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"File holding the secret token of v1's webhook URL (else ${V1_TOKEN_ENV}).",
)
@click.option(
    "--accept-unsigned",
    is_flag=True,
    help="Take ToSend events without a signature when no secret is set (anyone who can "
    "reach the port could then add addresses to the suppression list).",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1024),
    default=MAX_BODY,
    show_default=True,
    help="Largest request body accepted, in bytes (413 beyond).",
)
def serve(
    db_path: str,
    host: str,
    port: int,
    tosend_secret_file: str | None,
    v1_token_file: str | None,
    accept_unsigned: bool,
    max_body: int,
) -> None:
    """Take provider webhooks and store their events, each once, before answering 200.

    \b
    ToSend:  POST http://HOST:PORT/webhooks/tosend
             signed with X-ToSend-Signature when a secret is set (401 otherwise)
    v1:      POST http://HOST:PORT/webhooks/v1/TOKEN
             TOKEN is the secret token (v1 webhooks carry no signature)

    Hard bounces, complaints and unsubscribes go on the suppression list, which every
    later `check` and `run` consults. Events for messages no run knows are kept too.
    Put the receiver behind your HTTPS proxy: providers post to https URLs.
    """
    secret = load_secret(
        "webhook secret", env_var=TOSEND_SECRET_ENV, secret_file=tosend_secret_file
    )
    token = load_secret("webhook token", env_var=V1_TOKEN_ENV, secret_file=v1_token_file)
    if token is not None and not _URL_TOKEN.fullmatch(token):
        raise SecretError(
            "the v1 webhook token must be at least 16 characters of A-Z, a-z, 0-9, '-' and '_' "
            "(it travels in the URL path; the token is not shown)",
            fix="make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'",
        )
    if secret is None and token is None and not accept_unsigned:
        raise SecretError(
            "nothing to receive: no ToSend signing secret and no v1 webhook token",
            fix=f"set {TOSEND_SECRET_ENV} (the secret ToSend gave when the webhook was made) or "
            f"{V1_TOKEN_ENV}, or pass --accept-unsigned to take unsigned ToSend events",
        )
    config = ReceiverConfig(
        Path(db_path),
        tosend_secret=secret,
        tosend_unsigned=accept_unsigned,
        v1_token=token,
        max_body=max_body,
    )
    where = f"http://{host}:{port}"
    click.echo(f"batchsend events: storing into {db_path}", err=True)
    if secret:
        click.echo(f"  ToSend: {where}/webhooks/tosend (signature checked)", err=True)
    elif accept_unsigned:
        click.echo(
            f"  ToSend: {where}/webhooks/tosend -- UNSIGNED events accepted (--accept-unsigned)",
            err=True,
        )
    else:
        click.echo(f"  ToSend: off (set {TOSEND_SECRET_ENV} or --tosend-secret-file)", err=True)
    if token:
        click.echo(f"  v1:     {where}/webhooks/v1/<token>", err=True)
    else:
        click.echo(f"  v1:     off (set {V1_TOKEN_ENV} or --v1-token-file to enable)", err=True)
    try:
        asyncio.run(serve_forever(config, host, port))
    except KeyboardInterrupt:
        click.echo("batchsend events: stopped", err=True)
    except OSError as exc:
        raise CampaignError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            fix="choose another --port, or stop what is using it",
        ) from None


@events.command()
@campaign_option("A v1 campaign: its base_url and API key settings are used.")
@click.option("--provider", type=click.Choice(["v1"]), default="v1", show_default=True)
@click.option(
    "--since",
    default=None,
    help="ISO 8601 time to start from (default: where the last pull stopped).",
)
@click.option("--base-url", default=None, help="Confirm a base URL that is not loopback.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None)
@click.option("--api-key-stdin", is_flag=True, help="Read the API key from standard input.")
@ALLOW_OUTSIDE
@db_option("The SQLite file that records runs, events and the suppression list.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def pull(
    campaign_path: str,
    provider: str,
    since: str | None,
    base_url: str | None,
    api_key_file: str | None,
    api_key_stdin: bool,
    allow_outside: tuple[str, ...],
    db_path: str | None,
    as_json: bool,
) -> None:
    """Fetch events from MailerLogic's Events API (for accounts that cannot take webhooks).

    Resumable: a pull stopped half-way continues from its last page; without --since it
    starts where the last pull stopped. Events already stored are kept once.
    """
    campaign = load_campaign(campaign_path, allow_outside=allow_outside)
    if campaign.provider != provider:
        raise CampaignError(
            f"the campaign's provider is {campaign.provider!r}; events pull reads v1's Events API",
            file=campaign_path,
            fix="give a v1 campaign (ToSend posts events to `batchsend events serve`)",
        )
    if base_url is not None:
        campaign = _with_base_url(campaign, base_url)
    session = Session(
        campaign, sandbox=False, dry_run=False, base_url_confirmed=base_url is not None
    )
    session.open(api_key=None, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
    assert session.base_url is not None
    with Store(dblocation.for_campaign(campaign.path, db_path).path) as store:
        result = asyncio.run(
            pull_v1_events(
                store,
                base_url=session.base_url,
                api_key=session.api_key,
                since=since,
                on_page=None if as_json else _page_progress,
            )
        )
    summary = {
        "pages": result.pages,
        "events": result.events,
        "new": result.new,
        "duplicates": result.duplicates,
        "since": result.since,
        "until": result.until,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"pulled {result.events:,} events ({result.new:,} new, {result.duplicates:,} already "
            f"stored) from {result.since} to {result.until}",
            err=True,
        )


def _with_base_url(campaign: Campaign, base_url: str) -> Campaign:
    return replace(campaign, base_url=base_url)


def _page_progress(page: int, pages: int) -> None:
    if sys.stderr.isatty():
        click.echo(f"\r  page {page}/{pages}", err=True, nl=page == pages)


@events.command(name="list")
@_db_option
@click.option("--type", "types", multiple=True, type=click.Choice(EVENT_TYPES))
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON lines.")
def list_cmd(db_path: str, types: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """Stored events, oldest first, with the run and row each belongs to."""
    with _existing(db_path) as store:
        rows = list_events(store, types=types, limit=limit)
        counts = event_counts(store)
        unmatched = unmatched_count(store)
    for row in rows:
        if as_json:
            row.pop("raw", None)
            click.echo(json.dumps(row))
            continue
        where = f"run {row['run_id']} row {row['row']}" if row["run_id"] else "unmatched"
        kind = row["type"] + (f" ({row['bounce_type']})" if row["bounce_type"] else "")
        click.echo(f"{row['received_at']}  {kind:<16} {row['recipient'] or '-':<32} {where}")
    total = sum(counts.values())
    by_type = ", ".join(f"{n:,} {t}" for t, n in sorted(counts.items()))
    click.echo(f"{total:,} events ({by_type or 'none'}); {unmatched:,} unmatched", err=True)


# -- suppressions ---------------------------------------------------------------------


@click.group(name="suppressions")
def suppressions_group() -> None:
    """The addresses no campaign sends to: hard bounces, complaints, unsubscribes, yours.

    Every `check` and `run` skips them (state skipped, reason "suppressed: ...").

    \b
    Example:
      batchsend suppressions list
      batchsend suppressions add ann@example.com --reason "asked by phone"
      batchsend suppressions import old-bounces.csv
      batchsend suppressions export --out suppressed.csv
    """


def _list_store(db_path: str) -> Store:
    """The database a suppression command writes to, noted in the user's index so that
    every campaign consults its list (whatever database the campaign itself uses)."""
    store = Store(db_path)
    ledger.index_db(db_path, role="suppressions")
    return store


def _existing(db_path: str) -> Store:
    """The database a command only reads: refused when there is none (never created)."""
    if not Path(db_path).is_file():
        raise DatabaseFileError(
            f"{db_path}: no batchsend database here\n  fix: pass --db with the database "
            "your runs and events are in (or set BATCHSEND_DB)"
        )
    return Store(db_path)


def _keys(addresses: tuple[str, ...]) -> list[tuple[str, str]]:
    book = AddressBook()
    out = []
    for raw in addresses:
        try:
            out.append((book.normalise(raw).key, raw.strip()))
        except InvalidAddress as exc:
            raise SuppressionFileError(
                f"{raw!r} is not an email address: {exc}", fix="give addresses like ann@example.com"
            ) from None
    return out


@suppressions_group.command(name="list")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def suppressions_list(db_path: str, as_json: bool) -> None:
    """Every suppressed address, with why and since when."""
    with _existing(db_path) as store:
        entries = list(suppressions(store))
    for s in entries:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "email": s.email,
                        "address": s.address,
                        "reason": s.reason,
                        "source": s.source,
                        "first_seen": s.first_seen,
                        "note": s.note,
                    }
                )
            )
        else:
            click.echo(f"{s.email:<40} {s.reason:<12} {s.first_seen[:10]}  {s.source}")
    if not as_json:
        click.echo(f"{len(entries):,} suppressed addresses in {db_path}", err=True)


@suppressions_group.command(name="add")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--reason", default="manual", show_default=True)
@_db_option
def suppressions_add(addresses: tuple[str, ...], reason: str, db_path: str) -> None:
    """Put addresses on the list."""
    with _list_store(db_path) as store:
        now = store.now()
        added = add_suppressions(
            store, [Suppression(k, e, reason, "manual", now) for k, e in _keys(addresses)]
        )
    click.echo(f"{added:,} added, {len(addresses) - added:,} already on the list", err=True)


@suppressions_group.command(name="remove")
@click.argument("addresses", nargs=-1, required=True)
@_db_option
def suppressions_remove(addresses: tuple[str, ...], db_path: str) -> None:
    """Take addresses off the list: later campaigns send to them again."""
    with Store(db_path) as store:
        # Any text: an entry a provider listed need not be an address preflight accepts.
        removed = remove_suppressions(store, [suppression_key(a) for a in addresses])
    click.echo(f"{removed:,} removed, {len(addresses) - removed:,} were not on the list", err=True)


@suppressions_group.command(name="import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--column", default="email", show_default=True, help="The column of addresses.")
@click.option("--reason", default="imported", show_default=True)
@_db_option
def suppressions_import(path: str, column: str, reason: str, db_path: str) -> None:
    """Add every address of a CSV file (a header row with COLUMN, or one address a line).

    A value that is not an address is an error naming its row; nothing is added then.
    """
    book = AddressBook()
    entries: list[Suppression] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            first = next(reader, [])
            lowered = [c.strip().lower() for c in first]
            has_header = column.lower() in lowered
            index = lowered.index(column.lower()) if has_header else 0
            lines = enumerate(reader, start=1) if has_header else enumerate([first, *reader], 1)
            for number, line in lines:
                value = line[index].strip() if len(line) > index else ""
                if not value:
                    continue
                try:
                    key = book.normalise(value).key
                except InvalidAddress as exc:
                    raise SuppressionFileError(
                        f"{value!r} is not an email address ({exc})",
                        file=path,
                        row=number,
                        column=column if has_header else None,
                        fix="correct or delete that row, or name the address column with --column",
                    ) from None
                entries.append(Suppression(key, value, reason, "import", "", note=path))
    except OSError as exc:
        raise SuppressionFileError(f"cannot read it: {exc.strerror}", file=path) from None
    except csv.Error as exc:
        raise SuppressionFileError(
            f"not a CSV file batchsend can read ({exc})",
            file=path,
            fix="save it as CSV with one address per line or an address column",
        ) from None
    except UnicodeDecodeError:
        raise SuppressionFileError(
            "not UTF-8 text", file=path, fix="save the file as CSV UTF-8"
        ) from None
    with _list_store(db_path) as store:
        now = store.now()
        added = add_suppressions(store, [_stamped(e, now) for e in entries])
    click.echo(f"{added:,} added, {len(entries) - added:,} already on the list", err=True)


def _stamped(entry: Suppression, now: str) -> Suppression:
    return replace(entry, first_seen=entry.first_seen or now)


@suppressions_group.command(name="export")
@_db_option
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="CSV file (default: stdout)."
)
def suppressions_export(db_path: str, out: str | None) -> None:
    """Write the list as CSV: email, reason, source, first_seen, note."""
    with _existing(db_path) as store:
        entries = list(suppressions(store))
    with contextlib.ExitStack() as stack:
        fh = (
            stack.enter_context(open(out, "w", encoding="utf-8", newline="")) if out else sys.stdout
        )
        writer = csv.writer(fh)
        writer.writerow(["email", "reason", "source", "first_seen", "note"])
        for s in entries:  # provider text (a bounce reason) never runs as a formula
            cells = [s.email, s.reason, s.source, s.first_seen, s.note or ""]
            writer.writerow([neutralise(c) for c in cells])
    if out:
        click.echo(f"{len(entries):,} addresses written to {out}", err=True)


@suppressions_group.command(name="sync")
@campaign_option("A campaign of the account: its provider, base_url and key settings are used.")
@click.option("--base-url", default=None, help="Confirm a base URL that is not loopback.")
@click.option(
    "--admin-key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="ToSend: a file holding the admin key (else $BATCHSEND_ADMIN_KEY).",
)
@click.option("--admin-key-stdin", is_flag=True, help="ToSend: read the admin key from stdin.")
@click.option(
    "--api-key-file", type=click.Path(dir_okay=False), default=None, help="v1's key file."
)
@click.option("--api-key-stdin", is_flag=True, help="v1: read the API key from standard input.")
@ALLOW_OUTSIDE
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def suppressions_sync(
    campaign_path: str,
    base_url: str | None,
    admin_key_file: str | None,
    admin_key_stdin: bool,
    api_key_file: str | None,
    api_key_stdin: bool,
    allow_outside: tuple[str, ...],
    db_path: str,
    as_json: bool,
) -> None:
    """Add every address on the provider's own suppression list to batchsend's.

    ToSend: GET /v2/suppressions with an admin key (scope suppressions:read). v1: GET
    /api/customer/suppressions with the account's key. Addresses batchsend lists and the
    provider does not are counted (neither provider documents adding to its list).
    """
    campaign = load_campaign(campaign_path, allow_outside=allow_outside)
    if base_url is not None:
        campaign = _with_base_url(campaign, base_url)
    confirmed = base_url is not None
    session = Session(campaign, sandbox=False, dry_run=False, base_url_confirmed=confirmed)
    if campaign.provider == "tosend":
        url = session.provider_url()
        key = load_admin_key(
            key_file=admin_key_file or campaign.admin_key_file,
            stdin=admin_key_stdin,
            needed_for="reading ToSend's suppression list",
            scope="suppressions:read",
        )
    else:
        session.open(api_key=None, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
        url, key = session.provider_url(), session.api_key
    with _list_store(db_path) as store:
        result = asyncio.run(
            sync_suppressions(store, provider=campaign.provider, base_url=url, key=key)
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "provider": result.provider,
                    "listed": result.listed,
                    "added": result.added,
                    "only_ours": result.only_ours,
                }
            )
        )
        return
    click.echo(
        f"{result.provider}'s list: {result.listed:,} addresses, {result.added:,} new to "
        f"batchsend's; {result.only_ours:,} on batchsend's list only",
        err=True,
    )
