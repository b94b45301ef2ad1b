"""Running and resuming a campaign: the library behind ``batchsend run`` and ``resume``.

Three lines from Python::

    from batchsend.runner import run_campaign
    summary = run_campaign("mycampaign/campaign.toml", db_path="batchsend.db", sandbox=True)
    print(summary.run_id, summary.counts)

A run, in order:

1. load the campaign; read the API key (before the long part, so a missing key costs
   nothing);
2. preflight every row (render, validate) while inserting the rows into the store in
   ONE transaction: a bad row (without ``skip_invalid``) rolls it back, so nothing is
   recorded and nothing is sent (exit 2); a kill during this step records nothing;
3. for ToSend, ask ``GET /v2/info`` (key, account, sender domain, credits for the rows
   about to be sent) -- still before the run is committed;
4. render again, plan the units and hand them to the engine, which marks each unit
   ``sending`` (committed) before its request leaves;
5. record the run's end state and write its report.

A resume turns rows left ``sending`` by a dead process into ``unknown``, refuses to go
on if the recipient file or the templates changed (``force`` overrides), and sends the
pending rows. ``resend_unknown`` is the user accepting that the provider may already
have delivered the unknown rows (neither provider de-duplicates): each goes again in
its recorded request (same composition, body and ``Idempotency-Key``), or, when only
some messages of that request are still unknown, in a request of those alone.
``retry_failed`` sends the rows that failed with a retryable error (certainly not taken)
again: the recorded request when all of it failed, else a new request of the failed
messages, whose key derives from their own message keys (recorded before it leaves,
like any unit).

Interrupts: the first Ctrl-C sets the engine's stop event (no new request, the ones in
flight finish and are recorded, state ``interrupted``, exit 130); the second cancels
everything at once: rows in flight stay ``sending`` and become ``unknown`` at resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import secrets as _random
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchsend.campaign import Campaign, load_campaign
from batchsend.errors import (
    BatchsendError,
    CampaignError,
    ConcurrentCommandError,
    DiskFullError,
    FatalSendError,
    LostRecordError,
    PreflightError,
    ResumeRefusedError,
    is_disk_full,
)
from batchsend.message import Address, Message, message_key
from batchsend.next_steps import (
    EXIT_ROWS_NOT_SENT,
    NextStep,
    next_steps,
    resume_command,
    state_label,
)
from batchsend.plan import PlannedMessage, SendUnit, plan_units, rebuild_unit
from batchsend.progress import ProgressDisplay
from batchsend.secrets import is_loopback_url, load_api_key, redact, remember
from batchsend.spool import MessageSpool
from batchsend.states import RecipientState, RunState
from batchsend.store import NewRecipient, RunInfo, Store, UnitRecord

__all__ = [
    "CampaignSentError",
    "RunSummary",
    "UnfinishedRunError",
    "resume_command",
    "resume_run",
    "run_campaign",
]

DEFAULT_DB = "batchsend.db"
DEFAULT_REPORT_DIR = "reports"
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by SIGINT"
EXIT_FATAL = 1
_SHOWN_PROBLEMS = 20


class UnfinishedRunError(ResumeRefusedError):
    """``run`` on a campaign whose last run is unfinished: resume it, or ask for a new run."""


class CampaignSentError(ResumeRefusedError):
    """``run`` on a campaign whose last run finished: ``again`` or ``skip_sent`` says how."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run or a resume did, as the CLI prints it (``--json``: :meth:`to_dict`)."""

    run_id: str
    state: RunState
    counts: dict[str, int]
    duration_s: float
    db_path: str
    report_path: str | None
    is_test: bool = False
    dry_run: bool = False
    fatal_error: str | None = None
    interrupted: bool = False  # Ctrl-C
    requests: int = 0  # HTTP attempts made by this invocation (planned ones for a dry run)
    sent_now: int = 0  # rows accepted by this invocation
    notes: tuple[str, ...] = field(default=())
    failed_retryable: int = 0  # of counts["failed"]: the rows --retry-failed would send
    resent_unknown: int = 0  # unknown rows this invocation sent again (--resend-unknown)

    @property
    def exit_code(self) -> int:
        """1 fatal provider error, 130 Ctrl-C, 3 the run ended (or stopped at ``--limit``)
        with rows failed or unknown, 0 otherwise."""
        if self.state is RunState.FATAL:
            return EXIT_FATAL
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.next_steps:
            return EXIT_ROWS_NOT_SENT
        return 0

    @property
    def state_label(self) -> str:
        """The state as shown: ``finished with 3 failed / 2 unknown`` rather than finished."""
        return state_label(self.state, self.counts)

    @property
    def next_steps(self) -> tuple[NextStep, ...]:
        """What to do about the failed and unknown rows, with the exact commands."""
        if self.dry_run:
            return ()
        return next_steps(
            self.run_id, self.db_path, self.counts, failed_retryable=self.failed_retryable
        )

    @property
    def resume(self) -> str | None:
        """The command that continues this run, when there is something left to do."""
        if self.state is RunState.FINISHED or self.dry_run:
            return None
        return resume_command(self.run_id, self.db_path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready object: run id, counts by state, duration, database, report,
        and the next steps for failed and unknown rows."""
        failed = self.counts.get(RecipientState.FAILED.value, 0)
        return {
            "run_id": self.run_id,
            "state": self.state.value,
            "state_label": self.state_label,
            "counts": dict(self.counts),
            "failed_retryable": self.failed_retryable,
            "failed_permanent": failed - self.failed_retryable,
            "resent_unknown": self.resent_unknown,
            "duration_s": round(self.duration_s, 3),
            "db_path": self.db_path,
            "report_path": self.report_path,
            "is_test": self.is_test,
            "dry_run": self.dry_run,
            "fatal_error": self.fatal_error,
            "interrupted": self.interrupted,
            "requests": self.requests,
            "sent_now": self.sent_now,
            "resume": self.resume,
            "next_steps": [step.to_dict() for step in self.next_steps],
            "exit_code": self.exit_code,
            # what preflight skipped and why (duplicates, suppressed), --limit, unknown rows
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A few human lines: what happened, where the report is, what to do next."""
        kind = " (dry run)" if self.dry_run else " (test run)" if self.is_test else ""
        counts = ", ".join(f"{n:,} {state}" for state, n in self.counts.items() if n)
        lines = [
            f"run {self.run_id}{kind}: {self.state_label} in {self.duration_s:.1f}s",
            f"  {counts or 'no rows'}",
        ]
        lines += [f"  {note}" for note in self.notes]
        if self.fatal_error:
            lines.append(f"  stopped: {self.fatal_error}")
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        if self.resume:
            lines.append(f"  resume: {self.resume}")
        steps = self.next_steps
        if steps:
            lines.append("  next:")
            lines += [f"    {step.describe()}" for step in steps]
        return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------


def run_campaign(
    campaign_path: str | Path,
    *,
    db_path: str | Path = DEFAULT_DB,
    provider: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    limit: int | None = None,
    test_to: str | None = None,
    dry_run: bool = False,
    sandbox: bool = False,
    skip_invalid: bool = False,
    new_run: bool = False,
    again: bool = False,
    skip_sent: bool = False,
    accept_lost_record: bool = False,
    http_client: str = "aiohttp",
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    api_key_stdin: bool = False,
    report_path: str | Path | None = None,
    progress: bool | None = None,
    allow_outside: Iterable[str | Path] = (),
) -> RunSummary:
    """Preflight and send a campaign, recording every row in the store at ``db_path``.

    Raises :class:`PreflightError` (nothing sent, nothing recorded) when a row is bad
    and ``skip_invalid`` is off, :class:`UnfinishedRunError` when the campaign's last
    real run is unfinished and ``new_run`` is off, :class:`CampaignSentError` when it
    finished and neither ``again`` (send to everyone again, a new run) nor
    ``skip_sent`` (send only to addresses no earlier run sent to) is given,
    :class:`ConcurrentCommandError` when another live command is sending the campaign,
    :class:`LostRecordError` when the database lost a record of this campaign's sends
    (``accept_lost_record`` goes on anyway), :class:`FatalSendError` when ToSend's
    account check refuses before anything is sent. Proof copies (``test_to``) and dry
    runs are not refused for earlier runs. ``progress`` None: a live display when
    standard error is a terminal. ``allow_outside``: paths outside the
    campaign folder its files may be read from. A ``base_url`` given here is the user's
    choice; one from the campaign file alone must be loopback (:class:`CampaignError`
    otherwise).

    Example::

        summary = run_campaign("samples/newsletter", sandbox=True, limit=10)
    """
    started = time.monotonic()
    campaign = _override(
        load_campaign(campaign_path, allow_outside=allow_outside),
        provider=provider,
        base_url=base_url,
        concurrency=concurrency,
        rate=rate,
    )
    test_address = _test_address(test_to) if test_to else None
    if test_address is not None and limit is None:
        limit = 1  # a proof copy: one message unless asked for more
    if again and skip_sent:
        raise CampaignError(
            "--again and --skip-sent contradict each other",
            fix="--again sends to everyone again; --skip-sent only to addresses not sent yet",
        )
    real = not (test_address or dry_run)
    with (
        Store(db_path, accept_lost_record=accept_lost_record) as store,
        _Session(
            campaign, sandbox=sandbox, dry_run=dry_run, base_url_confirmed=base_url is not None
        ) as session,
        MessageSpool(Path(db_path).resolve().parent) as spool,
    ):
        campaign_path = str(campaign.path)
        lost_notes = _lost_record_notes(store, campaign_path, check=real, accept=accept_lost_record)
        claim = store.claim(
            campaign_path, command=f"batchsend run {shlex.quote(campaign_path)}", exclusive=real
        )
        earlier: dict[str, tuple[str, str]] = {}

        def refuse_earlier_runs() -> None:
            # Asked once before the long part (a refusal costs nothing), and again inside
            # the transaction that records the run: the decision is made on the state the
            # new run is written on, so two runs started together cannot both proceed.
            if real:
                _refuse_earlier_runs(
                    store, campaign, db_path, new_run=new_run, again=again, skip_sent=skip_sent
                )
                if skip_sent:
                    earlier.clear()
                    earlier.update(_earlier_sends(store, campaign_path))

        refuse_earlier_runs()
        session.open(api_key=api_key, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
        input_fp, templates_fp = _fingerprints(campaign)
        if real and not again:
            _refuse_sent_elsewhere(store, campaign_path, (input_fp, templates_fp))
        settings = _settings(campaign, session, limit=limit, test_to=test_to, http=http_client)
        with store.creating_run(
            campaign_path=str(campaign.path),
            campaign_name=campaign.name,
            provider=campaign.provider,
            base_url=session.base_url,
            input_path=str(campaign.source),
            input_fingerprint=input_fp,
            templates_fingerprint=templates_fp,
            settings=settings,
            is_test=test_address is not None,
            dry_run=dry_run,
            metadata_columns=list(campaign.metadata_columns),
            before_insert=refuse_earlier_runs,
        ) as run_id:
            store.claimed_run(claim, run_id)
            tally = _Preflight(
                campaign,
                skip_invalid=skip_invalid,
                limit=limit,
                test=test_to,
                dry_run=dry_run,
                spool=spool,
                encode=_encoder(session, run_id, test_address),
                already_sent=earlier if skip_sent and real else None,
            )
            store.add_recipients(run_id, tally.recipients())
            tally.raise_if_bad()
            if not dry_run:
                session.check_account(tally.recipients_to_send)
        return _send_and_finish(
            store,
            session,
            run_id,
            units=lambda provider: _units_for_pending(
                store, campaign, run_id, provider, test_address, limit=limit, spool=spool
            ),
            started=started,
            http_client=http_client,
            report_path=report_path,
            progress=progress,
            notes=lost_notes + tally.notes(),
        )


def resume_run(
    run_id: str,
    *,
    db_path: str | Path = DEFAULT_DB,
    force: bool = False,
    retry_failed: bool = False,
    resend_unknown: bool = False,
    base_url: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    limit: int | None = None,
    sandbox: bool = False,
    accept_lost_record: bool = False,
    http_client: str = "aiohttp",
    api_key: str | None = None,
    api_key_file: str | Path | None = None,
    api_key_stdin: bool = False,
    report_path: str | Path | None = None,
    progress: bool | None = None,
    allow_outside: Iterable[str | Path] = (),
) -> RunSummary:
    """Continue run ``run_id``: unknown for what was in flight, then send what is pending.

    Raises :class:`ResumeRefusedError` (exit 2) when the recipient file or templates
    changed since the run began (unless ``force``), when the run is a dry run, or when
    another live process is sending it or its campaign (:class:`ConcurrentCommandError`);
    :class:`LostRecordError` when the database lost a record of the run's sends
    (``accept_lost_record`` goes on anyway). With ``force``, the run's rows are matched
    to the current recipient file by address, never by position: a row that moved is
    found, a new address is added and sent, a removed one keeps its record.

    Example::

        summary = resume_run("20261121T103455-ab12cd", retry_failed=True)
    """
    started = time.monotonic()
    if not Path(db_path).is_file():
        raise ResumeRefusedError(f"{db_path}: no batchsend database here (pass --db)")
    with Store(db_path, accept_lost_record=accept_lost_record) as store:
        run = store.get_run(run_id)
        _refuse_unsafe_resume(store, run, force=force)
        notes = list(
            _lost_record_notes(
                store, run.campaign_path, check=not run.is_test, accept=accept_lost_record
            )
        )
        store.claim(
            run.campaign_path,
            command=f"batchsend resume {shlex.quote(run_id)}",
            run_id=run_id,
            exclusive=not run.is_test,
        )
        settings = run.settings
        campaign = _override(
            load_campaign(run.campaign_path, allow_outside=allow_outside),
            provider=run.provider,
            base_url=base_url or run.base_url,
            concurrency=concurrency or settings.get("concurrency"),
            rate=rate if rate is not None else settings.get("rate"),
            batch_size=settings.get("batch_size"),
        )
        if not force:
            _refuse_changed_inputs(run, campaign)
        test_to = settings.get("test_to")
        test_address = _test_address(test_to) if test_to else None
        use_sandbox = sandbox or bool(settings.get("sandbox"))
        # The recorded base URL passed this same check when the run began.
        confirmed = bool(base_url or run.base_url)
        with _Session(
            campaign, sandbox=use_sandbox, dry_run=False, base_url_confirmed=confirmed
        ) as session:
            session.open(api_key=api_key, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
            store.claim_run(run_id, force=force)
            store.forget_planned_keys(run_id)
            unknown = store.sending_to_unknown(run_id)
            rows: dict[int, int] | None = None
            if force:
                rows, matched = _match_rows_by_address(store, campaign, run_id)
                notes.append(matched)
            if unknown:
                notes.append(
                    f"{len(unknown):,} row(s) were in flight when the run stopped: now unknown"
                    + ("" if resend_unknown else " (not sent again)")
                )
            rebuilt = _rebuild_units(
                store,
                campaign,
                run_id,
                session.placement,
                test_address,
                unknown=resend_unknown,
                failed=retry_failed,
                rows=rows,
            )
            resending = _resending_unknown(store, run_id, rebuilt) if resend_unknown else set()
            if resending:
                # Said before anything leaves: the user accepted this with the flag, and
                # must see what it means while there is still time to press Ctrl-C.
                print(
                    f"batchsend: --resend-unknown: sending {len(resending):,} row(s) of "
                    "unknown outcome again; the provider may already have delivered them, "
                    "so those people may get this message twice",
                    file=sys.stderr,
                )
            return _send_and_finish(
                store,
                session,
                run_id,
                # The rebuilt units are bound (and checked against their recorded keys)
                # before the engine starts: a refusal is then one clear error, not an
                # exception raised inside the engine's task group.
                units=lambda provider: itertools.chain(
                    list(_bind(rebuilt, provider)),
                    _units_for_pending(
                        store, campaign, run_id, provider, test_address, limit, rows=rows
                    ),
                ),
                started=started,
                http_client=http_client,
                report_path=report_path,
                progress=progress,
                notes=tuple(notes),
                check_account=True,
                extra_rows=sum(len(rows) for item in rebuilt for rows in item.composition),
                limit=limit,
                resending=resending,
            )


# --- pieces -------------------------------------------------------------------------------


def _override(
    campaign: Campaign,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    batch_size: int | None = None,
) -> Campaign:
    send = campaign.send
    send = send.model_copy(
        update={
            "concurrency": concurrency or send.concurrency,
            "rate": rate if rate is not None else send.rate,
            "batch_size": batch_size or send.batch_size,
        }
    )
    if provider is not None and provider not in ("v1", "tosend"):
        raise CampaignError(f"unknown provider {provider!r}", fix="use v1 or tosend")
    if base_url is not None:
        _check_base_url(base_url)
    return dataclasses.replace(
        campaign,
        provider=provider or campaign.provider,  # type: ignore[arg-type]
        base_url=base_url or campaign.base_url,
        send=send,
    )


def _check_base_url(url: str) -> None:
    """Refuse a --base-url that is not http(s)://host[:port] before anything is sent."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError when out of range)
    except ValueError as exc:
        raise CampaignError(f"--base-url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CampaignError(
            f"--base-url {url!r} is not an http(s) URL",
            fix="give the provider's API root, e.g. http://127.0.0.1:8025",
        )


def _test_address(value: str) -> Address:
    from batchsend.addresses import AddressBook, InvalidAddress

    try:
        normalised = AddressBook().normalise(value)
    except InvalidAddress as exc:
        raise CampaignError(f"--test-to {value!r} is not a valid address: {exc}") from None
    return Address(getattr(normalised, "email", value))


def _fingerprints(campaign: Campaign) -> tuple[str, str]:
    from batchsend.preflight import fingerprints

    return fingerprints(campaign)


def _settings(
    campaign: Campaign, session: _Session, *, limit: int | None, test_to: str | None, http: str
) -> dict[str, Any]:
    send = campaign.send
    return {
        "concurrency": send.concurrency,
        "rate": send.rate,
        "recipients_rate": send.recipients_rate,
        "batch_size": send.batch_size,
        "max_attempts": send.max_attempts,
        "max_retry_time": send.max_retry_time,
        "timeout": send.timeout,
        "idempotent_provider": send.idempotent_provider,
        "on_server_error": send.on_server_error,
        "merge": campaign.merge.enabled,
        "merge_group_column": campaign.merge.group_column,
        "merge_placement": campaign.merge.placement,
        "limit": limit,
        "test_to": test_to,
        "http_client": http,
        "sandbox": session.sandboxed,
        "host": socket.gethostname(),
    }


def _refuse_earlier_runs(
    store: Store,
    campaign: Campaign,
    db_path: str | Path,
    *,
    new_run: bool,
    again: bool,
    skip_sent: bool,
) -> None:
    """Refuse a real run while the campaign's last real run is live, unfinished or finished.

    Live (another process is sending it): always. Unfinished: unless ``new_run``,
    ``again`` or ``skip_sent``. Finished: unless ``again`` or ``skip_sent``.
    """
    from batchsend.process import alive

    last = store.latest_run(str(campaign.path), real_only=True)
    if last is None:
        return
    counts = store.counts(last.id)
    if (
        last.state is RunState.RUNNING
        and last.pid != os.getpid()
        and alive(last.settings.get("host"), last.pid, None)
    ):
        raise ConcurrentCommandError(
            f"the last run of this campaign, {last.id}, is being sent right now by process "
            f"{last.pid}; two at once could email the same people twice, so nothing was "
            "sent.\n  fix: wait for it to finish, or stop it (Ctrl-C), then run this "
            "command again"
        )
    if last.state is not RunState.FINISHED:
        if new_run or again or skip_sent:
            return
        left = ", ".join(
            f"{counts[s.value]:,} {s.value}"
            for s in (RecipientState.PENDING, RecipientState.SENDING, RecipientState.UNKNOWN)
            if counts[s.value]
        )
        raise UnfinishedRunError(
            f"the last run of this campaign, {last.id}, is unfinished ({last.state.value}"
            f"{': ' + left if left else ''}); resume it with:\n"
            f"  {resume_command(last.id, db_path)}\n"
            "or start a new run (its rows are sent again, under new keys) with --new-run, "
            "or one that leaves out the addresses already sent with --skip-sent"
        )
    if again or skip_sent:
        return
    shown = ", ".join(f"{n:,} {state}" for state, n in counts.items() if n) or "no rows"
    raise CampaignSentError(
        f"this campaign was sent already: run {last.id} finished "
        f"{(last.ended_at or last.started_at)[:19].replace('T', ' ')} UTC ({shown}), "
        f"recorded in {db_path}; running it again would email those people a second "
        "time, so nothing was sent.\n"
        "  fix: to send it to everyone again (a new run), add --again; to send only to the "
        "addresses no earlier run sent to (a list that grew), add --skip-sent; for a proof "
        "copy, --test-to ADDRESS"
    )


def _earlier_sends(store: Store, campaign_path: str) -> dict[str, tuple[str, str]]:
    """Address (dedup key) -> (run id, state) for every address a real run of the campaign
    sent, or may have sent (``sending``, ``unknown``); ``sent`` wins over the others."""
    from batchsend.addresses import dedup_key

    found: dict[str, tuple[str, str]] = {}
    for email, state, run_id in store.earlier_sends(campaign_path):
        key = dedup_key(email or "")
        if key not in found or (state == "sent" and found[key][1] != "sent"):
            found[key] = (run_id, state)
    return found


def _refuse_sent_elsewhere(store: Store, campaign_path: str, fingerprints: tuple[str, str]) -> None:
    """Refuse a campaign that a run recorded in another database, or under another path.

    The database's own checks know its runs of this campaign file. The same recipients
    and templates sent from elsewhere (another folder's database, the campaign folder
    moved or copied) are only in the user's register of sends (:mod:`batchsend.ledger`).
    """
    from batchsend import ledger

    here = str(Path(store.path).resolve())
    for e in ledger.registered_sends(fingerprints):
        if e.get("db") == here and e.get("campaign") == campaign_path:
            continue  # this database's own record of this campaign decides
        where = e.get("db")
        raise CampaignSentError(
            f"this campaign (the same recipients and templates) was already sent: run "
            f"{e.get('run_id')} began sending at {e.get('at')} from {e.get('campaign')}, "
            f"recorded in the database {where}; sending it from here would email those "
            "people again\n  fix: to continue or inspect that run, use --db "
            f"{shlex.quote(str(where))} (batchsend runs --db ...); to send to everyone again "
            "anyway, pass --again"
        )


def _lost_record_notes(
    store: Store, campaign_path: str, *, check: bool, accept: bool
) -> tuple[str, ...]:
    """Refuse (or, ``accept``, note) runs of this campaign the database no longer records.

    Two sources: the store's own check at open (a run mid-send whose ``-wal`` is gone;
    ``store.accepted_lost``) and the ledger beside the database (a run that began
    sending, or ended with more rows sent, than the database now shows).
    """
    from batchsend import ledger

    notes = []
    if store.accepted_lost:
        notes.append(
            f"--accept-lost-record: the lost record of run(s) {', '.join(store.accepted_lost)} "
            "was accepted; rows it shows pending may be sent a second time"
        )
    if not check:
        return tuple(notes)
    problems: list[tuple[str, str]] = []
    for run_id, events in ledger.entries(store.path, campaign_path).items():
        if any(e.get("event") == "accepted" for e in events):
            continue
        began = next((e for e in events if e.get("event") == "sending"), None)
        if began is None:
            continue
        ended = [e for e in events if e.get("event") == "ended"]
        sent_then = max((int((e.get("counts") or {}).get("sent", 0)) for e in ended), default=0)
        try:
            sent_now: int | None = store.counts(run_id)["sent"] if store.get_run(run_id) else 0
        except BatchsendError:
            sent_now = None
        if sent_now is None:
            problems.append(
                (
                    run_id,
                    f"run {run_id} began sending {began.get('rows', '?')} row(s) at "
                    f"{began.get('at')}"
                    + (f" and ended with {sent_then:,} sent" if ended else "")
                    + ", but this database does not hold it",
                )
            )
        elif sent_now < sent_then:
            problems.append(
                (
                    run_id,
                    f"run {run_id} ended with {sent_then:,} sent at {ended[-1].get('at')}, "
                    f"but this database shows {sent_now:,}",
                )
            )
    if not problems:
        return tuple(notes)
    where = ledger.ledger_path(store.path)
    if accept:
        for run_id, _ in problems:
            ledger.record(store.path, "accepted", run_id=run_id, campaign=campaign_path)
        notes.append(
            "--accept-lost-record: the database lacks sends the ledger recorded ("
            + "; ".join(text for _, text in problems)
            + "); those people may be sent a second time"
        )
        return tuple(notes)
    raise LostRecordError(
        f"{store.path}: this database lacks sends of this campaign that batchsend recorded "
        f"in {where}:\n"
        + "\n".join(f"  {text}" for _, text in problems)
        + "\nIt was deleted, replaced by an older copy, or moved; sending now could email "
        "those people a second time, so nothing was sent.\n"
        "  fix: put the database back (with its -wal file, if any) or pass --db with where "
        "it is now; or, accepting that those people may get a second email, pass "
        "--accept-lost-record"
    )


def _refuse_unsafe_resume(store: Store, run: RunInfo, *, force: bool) -> None:
    if run.dry_run:
        raise ResumeRefusedError(f"run {run.id} is a dry run: there is nothing to resume")
    if run.state is RunState.RUNNING and not force:
        from batchsend.report import effective_state

        # Asked early so a refusal costs nothing; Store.claim_run decides it atomically.
        if effective_state(run) is RunState.RUNNING and run.pid != os.getpid():
            raise ConcurrentCommandError(
                f"run {run.id} is being sent right now by process {run.pid}; wait for it, "
                "or stop it (Ctrl-C) first. If that process is not batchsend, use --force"
            )


def _match_rows_by_address(
    store: Store, campaign: Campaign, run_id: str
) -> tuple[dict[int, int], str]:
    """Map the current recipient file's rows to the run's rows by address (``--force``).

    Returns ``{file row: run row}`` and a note of what changed. A row that moved keeps
    its run row (and its recorded state: sent, unknown and sending are never sent
    again); an address new to the run is added as a new run row (``pending``, or
    ``skipped`` with preflight's reason), numbered after the run's last; a run row whose
    address left the file keeps its record, and if it was still ``pending`` (nothing to
    send it from) becomes ``skipped`` with reason ``removed_from_input``.
    """
    from batchsend.addresses import dedup_key
    from batchsend.preflight import iter_rows

    recorded = store.run_rows(run_id)
    held: dict[str, tuple[int, str]] = {}
    for row, email, state, _ in recorded:
        key = dedup_key(email or "")
        # a skipped duplicate shares its address with the row that decides
        if key not in held or (held[key][1] == RecipientState.SKIPPED and state != "skipped"):
            held[key] = (row, state)
    rows: dict[int, int] = {}
    seen: set[str] = set()
    new: list[int] = []
    moved = 0
    for r in iter_rows(campaign, only=lambda _row: False):  # addresses only, no rendering
        key = dedup_key(r.email)
        if key in seen:  # a duplicate in the file: its first row is the one matched
            continue
        seen.add(key)
        if key in held:
            rows[r.row] = held[key][0]
            moved += held[key][0] != r.row
        else:
            new.append(r.row)
    added: list[NewRecipient] = []
    if new:
        wanted = set(new)
        after = max((row for row, _, _, _ in recorded), default=0)
        for r in iter_rows(campaign, only=wanted.__contains__):
            if r.row not in wanted:
                continue
            run_row = after + 1 + len(added)
            rows[r.row] = run_row
            sendable = r.skip_reason is None and r.message is not None
            added.append(
                NewRecipient(
                    row=run_row,
                    email=r.email,
                    name=r.name,
                    state=RecipientState.PENDING if sendable else RecipientState.SKIPPED,
                    reason=None if sendable else r.skip_reason or "invalid",
                    error_message="; ".join(p.message for p in r.problems) or None,
                    tag=r.tag,
                    metadata=r.metadata,
                )
            )
        store.add_recipients(run_id, added)
    removed = [
        (row, state) for row, email, state, _ in recorded if dedup_key(email or "") not in seen
    ]
    removed_pending = [row for row, state in removed if state == RecipientState.PENDING]
    if removed_pending:
        store.skip_rows(
            run_id,
            removed_pending,
            "removed_from_input",
            "resume --force: this address is no longer in the recipient file",
        )
    pending_new = sum(1 for a in added if a.state is RecipientState.PENDING)
    note = (
        f"--force matched the rows to the recipient file by address: {moved:,} moved, "
        f"{len(added):,} new ({pending_new:,} to send, as rows {added[0].row}+)"
        if added
        else f"--force matched the rows to the recipient file by address: {moved:,} moved, 0 new"
    )
    note += f", {len(removed):,} removed (kept as recorded"
    note += (
        f"; {len(removed_pending):,} pending of them skipped as removed_from_input)"
        if removed_pending
        else ")"
    )
    return rows, note


def _refuse_changed_inputs(run: RunInfo, campaign: Campaign) -> None:
    input_fp, templates_fp = _fingerprints(campaign)
    changed = []
    if run.input_fingerprint and input_fp != run.input_fingerprint:
        changed.append(f"the recipient file {campaign.source}")
    if run.templates_fingerprint and templates_fp != run.templates_fingerprint:
        changed.append("the campaign file or its templates, attachments or suppression lists")
    if changed:
        raise ResumeRefusedError(
            f"cannot resume run {run.id}: {' and '.join(changed)} changed since it began, so "
            "the remaining messages would differ from what the run planned; restore them, "
            "or resume with --force to send the current version"
        )


class _Preflight:
    """Turns preflight's rows into store rows, counting what a refusal must report."""

    def __init__(
        self,
        campaign: Campaign,
        *,
        skip_invalid: bool,
        limit: int | None,
        test: str | None,
        dry_run: bool = False,
        spool: MessageSpool | None = None,
        encode: Callable[[Message], PlannedMessage] | None = None,
        already_sent: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.already_sent = already_sent
        self.spool = spool
        self.encode = encode
        self.dry_run = dry_run
        self.campaign = campaign
        self.skip_invalid = skip_invalid
        self.limit = limit
        self.test = test is not None
        self.problems: list[Any] = []
        self.problem_rows = 0
        self.sendable = 0
        self.to_send = 0
        self.recipients_to_send = 0
        self.skipped: dict[str, int] = {}

    def recipients(self) -> Iterator[NewRecipient]:
        from batchsend.addresses import dedup_key
        from batchsend.preflight import iter_rows
        from batchsend.render import html_to_text

        spool = self.spool
        encode = self.encode
        # derive_text=False: the HTML-to-text conversion cannot fail and is the slowest
        # step; only the rows about to be sent need it, when they enter the spool.
        for r in iter_rows(self.campaign, derive_text=False):
            if r.skip_reason is not None:
                self.skipped[r.skip_reason] = self.skipped.get(r.skip_reason, 0) + 1
                if r.problems:
                    self.problem_rows += 1
                    if len(self.problems) < _SHOWN_PROBLEMS:
                        self.problems.extend(r.problems[: _SHOWN_PROBLEMS - len(self.problems)])
                text = "; ".join(p.message for p in r.problems) or None
                yield NewRecipient(
                    row=r.row,
                    email=r.email,
                    name=r.name,
                    state=RecipientState.SKIPPED,
                    reason=r.skip_reason,
                    error_message=text,
                    tag=r.tag,
                    metadata=r.metadata,
                )
                continue
            earlier = self.already_sent.get(dedup_key(r.email)) if self.already_sent else None
            if earlier is not None:  # --skip-sent: an earlier run sent (or may have) to it
                run_id, state = earlier
                why = "already_sent" if state == RecipientState.SENT else "maybe_sent"
                self.skipped[why] = self.skipped.get(why, 0) + 1
                yield NewRecipient(
                    row=r.row,
                    email=r.email,
                    name=r.name,
                    state=RecipientState.SKIPPED,
                    reason=why,
                    error_message=(
                        f"run {run_id} sent to this address"
                        if why == "already_sent"
                        else f"run {run_id} may have sent to this address (state {state})"
                    ),
                    tag=r.tag,
                    metadata=r.metadata,
                )
                continue
            self.sendable += 1
            state = RecipientState.PENDING
            reason = None
            key = None  # the message's key, when preflight planned it
            if self.limit is None or self.to_send < self.limit:
                self.to_send += 1
                m = r.message
                assert m is not None
                self.recipients_to_send += 1 if self.test else len(m.to) + len(m.cc) + len(m.bcc)
                if spool is not None and spool.usable:
                    if m.text is None and m.html is not None:
                        m = dataclasses.replace(m, text=html_to_text(m.html))
                    if encode is None:
                        spool.add(r.group, m)
                    else:
                        try:
                            planned = encode(m)
                        except (TypeError, ValueError) as exc:
                            # the send pass renders again, and meets the error where it
                            # always did: when the request is built
                            spool.drop(f"row {m.row} could not be encoded: {exc}")
                        else:
                            spool.add_planned(planned)
                            key = planned.key
            elif self.test:
                # A proof run sends its first rows only; the others are settled at once.
                state, reason = RecipientState.SKIPPED, "limit"
            yield NewRecipient(
                row=r.row,
                email=r.email,
                name=r.name,
                state=state,
                reason=reason,
                tag=r.tag,
                metadata=r.metadata,
                message_key=key,
            )

    def raise_if_bad(self) -> None:
        if not self.problem_rows or self.skip_invalid:
            return
        lines = []
        for p in self.problems:
            where = f"row {p.row}" + (f", column {p.column!r}" if p.column else "")
            lines.append(f"  {where}: {p.message}" + (f" (fix: {p.fix})" if p.fix else ""))
        more = self.problem_rows - len({p.row for p in self.problems})
        if more > 0:
            lines.append(f"  ... and {more:,} more row(s)")
        raise PreflightError(
            f"{self.campaign.source}: {self.problem_rows:,} row(s) failed preflight; nothing "
            "was sent:\n" + "\n".join(lines) + "\n  fix: correct those rows (batchsend check "
            "lists them all), or pass --skip-invalid to send the others and record these "
            "as skipped",
            problems=self.problems,
        )

    def notes(self) -> tuple[str, ...]:
        notes = []
        skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items()))
        if skipped:
            notes.append(f"skipped at preflight: {skipped}")
        if self.limit is not None and self.sendable > self.to_send:
            rest = self.sendable - self.to_send
            notes.append(
                f"--limit {self.limit}: {rest:,} sendable row(s) "
                + (
                    "skipped (test run)"
                    if self.test
                    else "skipped (dry run)"
                    if self.dry_run
                    else "left pending for a resume"
                )
            )
        return tuple(notes)


class _Session:
    """The provider side of an invocation: the key, the base URL, an embedded sandbox.

    ``base_url_confirmed``: the user gave the base URL (``--base-url``). Otherwise it
    comes from the campaign file, which may come from anyone, and the key is sent only
    to a loopback one.
    """

    def __init__(
        self, campaign: Campaign, *, sandbox: bool, dry_run: bool, base_url_confirmed: bool = False
    ) -> None:
        self.campaign = campaign
        self.sandboxed = sandbox
        self.dry_run = dry_run
        self.base_url = campaign.base_url
        self.base_url_confirmed = base_url_confirmed
        self.api_key = ""
        self._sandbox: Any = None
        self.account_rate: float | None = None

    @property
    def placement(self) -> str:
        return self.campaign.merge.placement

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sandbox is not None:
            self._sandbox.stop()
            self._sandbox = None

    def open(
        self, *, api_key: str | None, api_key_file: str | Path | None, api_key_stdin: bool
    ) -> None:
        """Find the key and the server (start the embedded sandbox if asked)."""
        if self.sandboxed:
            from batchsend.sandbox import Sandbox

            # A fresh key per invocation, registered for redaction like any other.
            self.api_key = remember("sk-sandbox-" + _random.token_hex(12))
            self._sandbox = Sandbox(
                api_keys=(self.api_key,), domains=(self.campaign.sender_domain,)
            ).start()
            self.base_url = self._sandbox.base_url
            return
        if not self.dry_run:
            self._refuse_unconfirmed_base_url()
        if self.dry_run:
            self.api_key = "dry-run"  # never sent: a dry run makes no HTTP request
        elif api_key is not None:
            self.api_key = remember(api_key)
        else:
            campaign = self.campaign
            self.api_key = load_api_key(
                env_var=campaign.api_key_env,
                key_file=api_key_file or campaign.api_key_file,
                stdin=api_key_stdin,
            )
        if not self.base_url:
            if self.dry_run:
                self.base_url = "http://127.0.0.1:9"  # never contacted
                return
            raise CampaignError(
                "no provider base URL",
                file=str(self.campaign.path),
                fix="set base_url in the campaign, pass --base-url, or try it with --sandbox",
            )

    def _refuse_unconfirmed_base_url(self) -> None:
        """The key goes to a host the campaign file alone named only if it is this machine."""
        url = self.base_url
        if url is None or self.base_url_confirmed or is_loopback_url(url):
            return
        raise CampaignError(
            f"base_url {url!r} is not on this machine, and batchsend would send your API key"
            " to it; a base URL from a campaign file is used only on loopback (127.0.0.1,"
            " ::1, localhost) unless you confirm it",
            file=str(self.campaign.path),
            fix=f"if you trust this host with your key, pass --base-url {url} on the command"
            " line (or try the campaign with --sandbox)",
        )

    def provider(self) -> Any:
        from batchsend.providers import RecipientLimits, get_provider

        n = self.campaign.send.max_recipients_per_field
        assert self.base_url is not None
        return get_provider(
            self.campaign.provider,
            base_url=self.base_url,
            api_key=self.api_key,
            batch_size=self.campaign.send.batch_size,
            limits=RecipientLimits(n, n, n),
        )

    def check_account(self, recipients: int) -> None:
        """ToSend: ``GET /v2/info`` says the run can go (key, account, domain, credits)."""
        if self.campaign.provider != "tosend":
            return
        from batchsend.providers import check_account

        provider = self.provider()
        info = asyncio.run(provider.account_info())
        check_account(info, sender_domains={self.campaign.sender_domain}, recipients=recipients)
        self.account_rate = info.limit_per_second


def _encoder(
    session: _Session, run_id: str, test_address: Address | None
) -> Callable[[Message], PlannedMessage] | None:
    """Preflight's encoder of each row's message, when the send pass can use it as is.

    Each message is planned (its key) and encoded by the provider once, in preflight;
    the send pass then joins the spooled bytes into requests. Merging (which plans
    across rows) and proof copies (which change the recipients) keep the rendered
    messages instead; so does a dry run, whose rows never get a key.
    """
    if session.campaign.merge.enabled or test_address is not None or session.dry_run:
        return None
    provider = session.provider()

    def encode(m: Message) -> PlannedMessage:
        planned = PlannedMessage(message_key(run_id, m), (m.row,), m)
        wire = provider.encode_message(planned)
        return PlannedMessage(planned.key, planned.rows, None, wire, planned.recipient_count)

    return encode


def _rows_to_messages(
    campaign: Campaign,
    wanted: Callable[[int], bool],
    test_address: Address | None,
    rows: dict[int, int] | None = None,
) -> Iterator[Any]:
    """Preflight rows (rendered in full) for the rows ``wanted`` says, proof-copied if asked.

    ``rows`` (a forced resume): ``{file row: run row}``; ``wanted`` then names run rows,
    and each message carries its run row, found by its address, not its position.
    """
    from batchsend.preflight import iter_rows

    accept = wanted
    if rows is not None:
        by_file = rows

        def accept(file_row: int) -> bool:
            run_row = by_file.get(file_row)
            return run_row is not None and wanted(run_row)

    for r in iter_rows(campaign, only=accept):
        message = r.message
        if message is None or not accept(r.row):
            continue
        if rows is not None:
            run_row = rows[r.row]
            message = dataclasses.replace(message, row=run_row)
            r = dataclasses.replace(r, row=run_row, message=message)
        if test_address is not None:
            r = dataclasses.replace(r, message=_proof(message, test_address))
        yield r


def _spooled(
    spool: MessageSpool, wanted: set[int], test_address: Address | None
) -> Iterator[tuple[str | None, Message]]:
    """The spooled ``(group, message)`` of the rows ``wanted``, proof-copied if asked."""
    for group, message in spool:
        if message.row not in wanted:  # defence: the spool holds the pending rows only
            raise RuntimeError(f"row {message.row} is in the spool but not pending")
        if test_address is not None:
            message = _proof(message, test_address)
        yield group, message


def _spooled_planned(spool: MessageSpool, wanted: set[int]) -> Iterator[PlannedMessage]:
    """The spooled planned messages of the rows ``wanted`` (exactly those, in order)."""
    for planned in spool.planned():
        for row in planned.rows:
            if row not in wanted:  # defence: the spool holds the pending rows only
                raise RuntimeError(f"row {row} is in the spool but not pending")
        yield planned


def _proof(message: Message, to: Address) -> Message:
    return dataclasses.replace(message, to=(to,), cc=(), bcc=())


def _units_for_pending(
    store: Store,
    campaign: Campaign,
    run_id: str,
    provider: Any,
    test_address: Address | None,
    limit: int | None,
    spool: MessageSpool | None = None,
    rows: dict[int, int] | None = None,
) -> Iterator[SendUnit]:
    """Plan the run's ``pending`` rows (the first ``limit`` of them) into units, streaming.

    With a ``spool`` holding exactly those rows (a run right after its preflight), the
    messages come from it; otherwise (a resume, a dropped spool) they are rendered again
    (``rows``: matched to the file by address, see :func:`_match_rows_by_address`).
    """
    pending = store.rows_in_state(run_id, [RecipientState.PENDING])
    if limit is not None:
        pending = pending[:limit]
    if not pending:
        return iter(())
    wanted = set(pending)
    merge = campaign.merge.enabled and test_address is None
    messages: Iterable[Any]
    if spool is not None and spool.usable and spool.count == len(wanted):
        if spool.form == "planned":
            messages = _spooled_planned(spool, wanted)
        else:
            messages = _spooled(spool, wanted, test_address)
    else:
        messages = _rows_to_messages(campaign, wanted.__contains__, test_address, rows)
    return plan_units(
        messages,
        run_id=run_id,
        provider=provider,
        merge=merge,
        placement=campaign.merge.placement,
        max_recipients_per_field=campaign.send.max_recipients_per_field,
    )


@dataclass(frozen=True, slots=True)
class _Rebuild:
    """A recorded request to send again: its composition and the key it must carry."""

    run_id: str
    placement: str
    record: UnitRecord
    composition: tuple[tuple[int, ...], ...]
    same_request: bool  # True: the recorded request exactly (same key)
    messages: dict[int, Message]
    prior: str  # the state its rows are in now, and keep unless an answer settles them


def _rebuild_units(
    store: Store,
    campaign: Campaign,
    run_id: str,
    placement: str,
    test_address: Address | None,
    *,
    unknown: bool,
    failed: bool,
    rows: dict[int, int] | None = None,
) -> list[_Rebuild]:
    # A recorded request goes again only with the messages whose rows are all still in
    # the state being settled AND still belong to it: after a 207 its other messages are
    # sent, refused for good, or moved to a request of their own (a split), and must not
    # travel again. The same request (same key) when that is all of it; else a new one.
    plans: list[tuple[UnitRecord, tuple[tuple[int, ...], ...], bool, str]] = []
    wanted = []
    if unknown:
        wanted.append((RecipientState.UNKNOWN, False))
    if failed:
        wanted.append((RecipientState.FAILED, True))
    for state, retryable_only in wanted:
        owned = store.rows_by_unit(run_id, state, retryable_only=retryable_only)
        for record in store.units_with_rows_in(run_id, [state], retryable_only=retryable_only):
            mine = owned.get(record.key, set())
            again = tuple(rows for rows in record.composition if set(rows) <= mine)
            if again:
                plans.append((record, again, again == record.composition, state.value))
    if not plans:
        return []
    needed = {row for _, composition, _, _ in plans for rows in composition for row in rows}
    messages = {
        r.row: r.message
        for r in _rows_to_messages(campaign, needed.__contains__, test_address, rows)
    }
    missing = needed - messages.keys()
    if missing:
        raise ResumeRefusedError(
            f"cannot send rows {sorted(missing)[:10]} again: they are no longer sendable rows "
            "of the recipient file"
        )
    return [
        _Rebuild(
            run_id,
            placement,
            record,
            composition,
            same,
            {r: messages[r] for rows in composition for r in rows},
            prior,
        )
        for record, composition, same, prior in plans
    ]


def _resending_unknown(store: Store, run_id: str, rebuilt: list[_Rebuild]) -> set[int]:
    """The unknown rows that the rebuilt units are about to send again."""
    rows = {r for item in rebuilt for composition in item.composition for r in composition}
    return rows & set(store.rows_in_state(run_id, [RecipientState.UNKNOWN]))


def _bind(rebuilt: list[_Rebuild], provider: Any) -> Iterator[SendUnit]:
    """The rebuilt units, checked: a repeat of a recorded request must carry its key."""
    for item in rebuilt:
        unit = rebuild_unit(
            item.composition,
            item.messages,
            run_id=item.run_id,
            batch=item.record.batch,
            placement=item.placement,
        )
        if item.same_request and unit.key != item.record.key:
            raise ResumeRefusedError(
                f"the request {item.record.key} cannot be rebuilt identically (its messages "
                "render differently now); its rows stay unknown rather than risk a duplicate"
            )
        yield dataclasses.replace(unit, prior=item.prior)


# --- sending and finishing ------------------------------------------------------------------


#: Signals that stop a run like Ctrl-C: SIGTERM is what ``docker stop``, systemd and CI
#: send, SIGHUP what a closed terminal sends. The first finishes what is in flight.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupts:
    """Ctrl-C (or SIGTERM, SIGHUP) once: set the stop event; twice: cancel the send at once."""

    def __init__(self, stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
        self.stop = stop
        self.task = task
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            self.stop.set()
            print(
                "\nbatchsend: stopping -- finishing the requests in flight "
                "(press Ctrl-C again, or send the signal again, to quit at once)",
                file=sys.stderr,
            )
        else:
            self.task.cancel()


async def _drive(
    units: Iterable[SendUnit],
    *,
    provider: Any,
    recorder: Any,
    campaign: Campaign,
    rate: float | None,
    recipients_rate: float | None,
    http_client: str,
    display: ProgressDisplay,
    interrupts: list[_Interrupts],
) -> Any:
    from batchsend.engine import Uncertainty, send_units
    from batchsend.ratelimit import RateLimiter
    from batchsend.retry import RetryPolicy
    from batchsend.transport import make_transport

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    handler = _Interrupts(stop, task)
    interrupts.append(handler)
    installed: list[signal.Signals] = []
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, handler)  # main thread only
            installed.append(signum)
    send = campaign.send
    try:
        async with make_transport(
            http_client, concurrency=send.concurrency, timeout=send.timeout
        ) as transport:
            return await send_units(
                units,
                provider=provider,
                transport=transport,  # type: ignore[arg-type]
                recorder=recorder,
                concurrency=send.concurrency,
                limiter=RateLimiter(
                    requests_per_second=rate, recipients_per_second=recipients_rate
                ),
                retry=RetryPolicy(max_attempts=send.max_attempts, max_time=send.max_retry_time),
                on_progress=display.on_engine_progress,
                stop_event=stop,
                uncertainty=Uncertainty(
                    idempotent_provider=send.idempotent_provider,
                    retry_server_errors=send.on_server_error == "retry",
                ),
            )
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _stops_cleanly_on_a_full_disk(
    send_and_finish: Callable[..., RunSummary],
) -> Callable[..., RunSummary]:
    """A full disk while sending is one error with the resume command, not a traceback
    per worker. Nothing more can be written, so the run stays as last committed: a row
    whose ``sending`` mark is committed becomes ``unknown`` at resume, the rest pending."""

    @functools.wraps(send_and_finish)
    def guarded(store: Store, session: _Session, run_id: str, **kwargs: Any) -> RunSummary:
        try:
            return send_and_finish(store, session, run_id, **kwargs)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            raise DiskFullError(
                f"the disk holding {store.path} is full: run {run_id} stopped; what it"
                " recorded is kept (rows that were in flight will be unknown), and the"
                " report was not written\n  fix: free some space, then: "
                + resume_command(run_id, store.path)
            ) from None

    return guarded


@_stops_cleanly_on_a_full_disk
def _send_and_finish(
    store: Store,
    session: _Session,
    run_id: str,
    *,
    units: Callable[[Any], Iterable[SendUnit]],
    started: float,
    http_client: str,
    report_path: str | Path | None,
    progress: bool | None,
    notes: tuple[str, ...],
    check_account: bool = False,
    extra_rows: int = 0,
    limit: int | None = None,
    resending: set[int] | None = None,
) -> RunSummary:
    run = store.get_run(run_id)
    campaign = session.campaign
    provider = session.provider()
    recorder = store.recorder(run_id)
    since = store.now()
    fatal: str | None = None
    interrupted = False
    requests = 0
    sent_now = 0
    notes_list = list(notes)
    if run.dry_run:
        requests = _dry_run(store, run_id, provider, units(provider))
    else:
        planned = units(provider)
        to_send = store.counts(run_id)[RecipientState.PENDING.value]
        if limit is not None:
            to_send = min(to_send, limit)
        to_send += extra_rows
        if check_account and to_send:
            try:
                session.check_account(to_send)
            except FatalSendError as exc:
                store.set_run_state(run_id, RunState.FATAL, fatal_error=str(exc), ended=True)
                raise
        # Before the first request: the run is marked as sending in the main database
        # file (checkpointed) and in the ledger beside it, so that losing the -wal file
        # or the database itself is detected, not met with a second send (docs/engine.md).
        store.mark_sending_started(run_id)
        if not run.is_test:
            from batchsend import ledger

            if not ledger.record(
                store.path, "sending", run_id=run_id, campaign=run.campaign_path, rows=to_send
            ):
                notes_list.append(
                    f"could not write {ledger.ledger_path(store.path)}: a later loss of this "
                    "database would not be detected"
                )
            if not ledger.register_send(
                store.path,
                run_id=run_id,
                campaign=run.campaign_path,
                fingerprints=(run.input_fingerprint or "", run.templates_fingerprint or ""),
            ):
                notes_list.append(
                    f"could not write {ledger.register_path()}: a run of this campaign from "
                    "another database would not be refused"
                )
        # ToSend's limit_per_second counts emails (every address), not requests: it is
        # the recipients' rate unless the campaign sets its own.
        rate = campaign.send.rate
        recipients_rate = campaign.send.recipients_rate or session.account_rate
        display = ProgressDisplay(to_send, enabled=progress)
        interrupts: list[_Interrupts] = []
        result = None
        try:
            result = asyncio.run(
                _drive(
                    planned,
                    provider=provider,
                    recorder=recorder,
                    campaign=campaign,
                    rate=rate,
                    recipients_rate=recipients_rate,
                    http_client=http_client,
                    display=display,
                    interrupts=interrupts,
                )
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
        finally:
            display.close()
            recorder.flush()  # every answer that arrived is kept, whatever happened
        if result is not None:
            requests = result.requests
            sent_now = result.sent
            interrupted = interrupted or result.stopped
            if result.fatal is not None:
                fatal = redact(str(result.fatal))
        if interrupts and interrupts[0].count >= 2:
            left = len(store.rows_in_state(run_id, [RecipientState.SENDING]))
            notes_list.append(f"stopped at once: {left:,} row(s) in flight become unknown")
    counts = store.counts(run_id)
    resent = 0
    if resending:
        # Sent again = marked sending by this invocation (its request left), whatever
        # came back: an answer lost again leaves the row unknown, but it did travel.
        resent = sum(1 for row in resending if store.recipient(run_id, row)["updated_at"] >= since)
        notes_list.append(
            f"--resend-unknown: {resent:,} row(s) of unknown outcome sent again (the "
            "provider may have delivered them twice)"
        )
    if fatal:
        state = RunState.FATAL
    elif interrupted or counts[RecipientState.PENDING.value] or counts["sending"]:
        state = RunState.INTERRUPTED
    else:
        state = RunState.FINISHED
    store.set_run_state(run_id, state, fatal_error=fatal, ended=True)
    if not run.dry_run:
        store.clear_sending_mark(run_id)
        if not run.is_test:
            from batchsend import ledger

            ledger.record(
                store.path, "ended", run_id=run_id, campaign=run.campaign_path, counts=counts
            )
            ledger.register_send(
                store.path,
                run_id=run_id,
                campaign=run.campaign_path,
                fingerprints=(run.input_fingerprint or "", run.templates_fingerprint or ""),
                counts=counts,
            )
    written = _write_report(store, run_id, report_path)
    return RunSummary(
        run_id=run_id,
        state=state,
        counts=counts,
        duration_s=time.monotonic() - started,
        db_path=str(store.path),
        report_path=written,
        is_test=run.is_test,
        dry_run=run.dry_run,
        fatal_error=fatal,
        interrupted=interrupted,
        requests=requests,
        sent_now=sent_now,
        notes=tuple(notes_list),
        failed_retryable=store.failed_retryable(run_id),
        resent_unknown=resent,
    )


def _dry_run(store: Store, run_id: str, provider: Any, units: Iterable[SendUnit]) -> int:
    """Build every request (proving each serialises), send none; rows end ``skipped``."""
    rows: list[int] = []
    requests = 0
    for unit in units:
        provider.build_request(unit)
        requests += 1
        rows.extend(unit.rows)
    store.skip_rows(run_id, rows, "dry_run", "dry run: the request was built, not sent")
    rest = store.rows_in_state(run_id, [RecipientState.PENDING])  # beyond --limit
    store.skip_rows(run_id, rest, "limit", "dry run: beyond --limit")
    return requests


def _write_report(store: Store, run_id: str, report_path: str | Path | None) -> str | None:
    from batchsend.report import format_for, write_report

    out = Path(report_path) if report_path else Path(DEFAULT_REPORT_DIR) / f"{run_id}.csv"
    # Absolute, so the path printed at the end can be opened from anywhere.
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_report(store.path, run_id, out, format=format_for(out))
    except BatchsendError as exc:
        print(f"batchsend: the report could not be written: {exc}", file=sys.stderr)
        return None
    store.set_report_path(run_id, str(written))
    return str(written)
