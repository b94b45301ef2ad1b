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
pending rows. ``resend_unknown`` repeats each unknown row's recorded request exactly:
same composition, same body, same ``Idempotency-Key``. ``retry_failed`` sends the rows
that failed with a retryable error again:

* when every message of the original request failed, the very same request goes again
  with the same key: if the provider did accept it after all (an answer lost in a
  timeout), it recognises the key and the body and answers without a second delivery;
* when the provider answered per message (a ToSend 207) and accepted some, it stored
  that answer under the key, so a repeat would only replay it; the failed messages,
  which the provider explicitly refused, go in a new request whose key is derived from
  their own message keys (recorded before it leaves, like any unit).

Interrupts: the first Ctrl-C sets the engine's stop event (no new request, the ones in
flight finish and are recorded, state ``interrupted``, exit 130); the second cancels
everything at once: rows in flight stay ``sending`` and become ``unknown`` at resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import secrets as _random
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
    FatalSendError,
    PreflightError,
    ResumeRefusedError,
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
    real run is unfinished and ``new_run`` is off, :class:`FatalSendError` when ToSend's
    account check refuses before anything is sent. ``progress`` None: a live display
    when standard error is a terminal. ``allow_outside``: paths outside the campaign
    folder its files may be read from. A ``base_url`` given here is the user's choice;
    one from the campaign file alone must be loopback (:class:`CampaignError` otherwise).

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
    with (
        Store(db_path) as store,
        _Session(
            campaign, sandbox=sandbox, dry_run=dry_run, base_url_confirmed=base_url is not None
        ) as session,
        MessageSpool(Path(db_path).resolve().parent) as spool,
    ):
        if not (new_run or test_address or dry_run):
            _refuse_unfinished(store, campaign, db_path)
        session.open(api_key=api_key, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
        input_fp, templates_fp = _fingerprints(campaign)
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
        ) as run_id:
            tally = _Preflight(
                campaign,
                skip_invalid=skip_invalid,
                limit=limit,
                test=test_to,
                dry_run=dry_run,
                spool=spool,
                encode=_encoder(session, run_id, test_address),
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
            notes=tally.notes(),
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
    another live process is sending it.

    Example::

        summary = resume_run("20261121T103455-ab12cd", retry_failed=True)
    """
    started = time.monotonic()
    if not Path(db_path).is_file():
        raise ResumeRefusedError(f"{db_path}: no batchsend database here (pass --db)")
    with Store(db_path) as store:
        run = store.get_run(run_id)
        _refuse_unsafe_resume(store, run, force=force)
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
            store.claim_run(run_id)
            store.forget_planned_keys(run_id)
            unknown = store.sending_to_unknown(run_id)
            notes = []
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
                    _units_for_pending(store, campaign, run_id, provider, test_address, limit),
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
    send = dataclasses.replace(
        send,
        concurrency=concurrency or send.concurrency,
        rate=rate if rate is not None else send.rate,
        batch_size=batch_size or send.batch_size,
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


def _refuse_unfinished(store: Store, campaign: Campaign, db_path: str | Path) -> None:
    last = store.latest_run(str(campaign.path), real_only=True)
    if last is None or last.state is RunState.FINISHED:
        return
    counts = store.counts(last.id)
    left = ", ".join(
        f"{counts[s.value]:,} {s.value}"
        for s in (RecipientState.PENDING, RecipientState.SENDING, RecipientState.UNKNOWN)
        if counts[s.value]
    )
    raise UnfinishedRunError(
        f"the last run of this campaign, {last.id}, is unfinished ({last.state.value}"
        f"{': ' + left if left else ''}); resume it with:\n"
        f"  {resume_command(last.id, db_path)}\n"
        "or start a new run (its rows are sent again, under new keys) with --new-run"
    )


def _refuse_unsafe_resume(store: Store, run: RunInfo, *, force: bool) -> None:
    if run.dry_run:
        raise ResumeRefusedError(f"run {run.id} is a dry run: there is nothing to resume")
    if run.state is RunState.RUNNING and not force:
        from batchsend.report import effective_state

        if effective_state(run) is RunState.RUNNING and run.pid != os.getpid():
            raise ResumeRefusedError(
                f"run {run.id} is being sent right now by process {run.pid}; wait for it, "
                "or stop it (Ctrl-C) first. If that process is not batchsend, use --force"
            )


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
    ) -> None:
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
    campaign: Campaign, wanted: Callable[[int], bool], test_address: Address | None
) -> Iterator[Any]:
    """Preflight rows (rendered in full) for the rows ``wanted`` says, proof-copied if asked."""
    from batchsend.preflight import iter_rows

    for r in iter_rows(campaign, only=wanted):
        if r.message is None or not wanted(r.row):
            continue
        if test_address is not None:
            r = dataclasses.replace(r, message=_proof(r.message, test_address))
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
) -> Iterator[SendUnit]:
    """Plan the run's ``pending`` rows (the first ``limit`` of them) into units, streaming.

    With a ``spool`` holding exactly those rows (a run right after its preflight), the
    messages come from it; otherwise (a resume, a dropped spool) they are rendered again.
    """
    pending = store.rows_in_state(run_id, [RecipientState.PENDING])
    if limit is not None:
        pending = pending[:limit]
    if not pending:
        return iter(())
    wanted = set(pending)
    merge = campaign.merge.enabled and test_address is None
    rows: Iterable[Any]
    if spool is not None and spool.usable and spool.count == len(wanted):
        if spool.form == "planned":
            rows = _spooled_planned(spool, wanted)
        else:
            rows = _spooled(spool, wanted, test_address)
    else:
        rows = _rows_to_messages(campaign, wanted.__contains__, test_address)
    return plan_units(
        rows,
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
) -> list[_Rebuild]:
    plans: list[tuple[UnitRecord, tuple[tuple[int, ...], ...], bool, str]] = []
    if unknown:
        for record in store.units_with_rows_in(run_id, [RecipientState.UNKNOWN]):
            plans.append((record, record.composition, True, RecipientState.UNKNOWN.value))
    if failed:
        retryable = set(store.rows_in_state(run_id, [RecipientState.FAILED], retryable_only=True))
        for record in store.units_with_rows_in(
            run_id, [RecipientState.FAILED], retryable_only=True
        ):
            again = tuple(rows for rows in record.composition if set(rows) <= retryable)
            if again:
                plans.append(
                    (record, again, again == record.composition, RecipientState.FAILED.value)
                )
    if not plans:
        return []
    needed = {row for _, composition, _, _ in plans for rows in composition for row in rows}
    messages = {
        r.row: r.message for r in _rows_to_messages(campaign, needed.__contains__, test_address)
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


class _Interrupts:
    """Ctrl-C once: set the stop event; twice: cancel the send at once."""

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
                "(Ctrl-C again to quit at once)",
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
    installed = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, handler)  # main thread only
        installed = True
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
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


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
