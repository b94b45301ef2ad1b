"""Running a campaign: the library behind ``batchsend run``.

Three lines from Python::

    from batchsend.run import run_campaign
    result = run_campaign("mycampaign/campaign.toml", db_path="batchsend.db", sandbox=True)
    print(result.run_id, result.counts)

A run, in order:

1. load the campaign; read the API key (before the long part, so a missing key costs
   nothing);
2. preflight every row (render, validate; on ``workers`` processes) while inserting the
   rows into the store in ONE transaction: a bad row (without ``skip_invalid``) rolls it
   back, so nothing is recorded and nothing is sent (exit 2); a kill during this step
   records nothing in the store, and the chunks already checked stay in the checkpoint
   beside it (:mod:`batchsend.store.checkpoint`) for the next run to take;
3. for ToSend, ask ``GET /v2/info`` (key, account, sender domain, credits for the rows
   about to be sent) -- still before the run is committed;
4. render again, plan the units and hand them to the engine, which marks each unit
   ``sending`` (committed) before its request leaves;
5. record the run's end state and write its report.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterable
from pathlib import Path

from batchsend import dblocation, ledger, refusals
from batchsend.campaign import load_campaign
from batchsend.errors import (
    CampaignError,
)
from batchsend.fingerprints import fingerprints
from batchsend.intake import Intake, spool_encoder
from batchsend.loops import sync_anywhere
from batchsend.overrides import override, parse_test_to, run_settings
from batchsend.preflight import checkpoint_key
from batchsend.progress import Progress, ProgressDisplay, checked_line, workers_suffix
from batchsend.report import check_report_path
from batchsend.sending import (
    RunResult,
    send_and_finish,
    units_for_pending,
)
from batchsend.session import Session
from batchsend.spool import MessageSpool
from batchsend.store import Store
from batchsend.store.checkpoint import Checkpoint
from batchsend.suppressions import database_suppressions
from batchsend.transport import require_transport


@sync_anywhere  # in a notebook too: see batchsend.loops
def run_campaign(
    campaign_path: str | Path,
    *,
    db_path: str | Path | None = None,
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
    workers: int | None = None,
) -> RunResult:
    """Preflight and send a campaign, recording every row in the store at ``db_path``
    (None: ``$BATCHSEND_DB``, else ``batchsend.db`` in the campaign's folder, see
    :mod:`batchsend.dblocation`).

    Raises :class:`PreflightError` (nothing sent, nothing recorded) when a row is bad
    and ``skip_invalid`` is off, :class:`UnfinishedRunError` when the campaign's last
    real run is unfinished and ``new_run`` is off, :class:`CampaignSentError` when it
    finished and neither ``again`` (send to everyone again, a new run) nor
    ``skip_sent`` (send only to addresses no earlier run sent to) is given,
    :class:`ConcurrentCommandError` when another live command is sending the campaign,
    :class:`LostRecordError` when the database lost a record of this campaign's sends
    (``accept_lost_record`` goes on anyway), :class:`FatalSendError` when ToSend's
    account check refuses before anything is sent, :class:`InputError` when
    ``http_client`` is ``"httpx"`` and httpx (an optional extra) is not installed. Proof
    copies (``test_to``) and dry runs are not refused for earlier runs. ``progress``
    None: a live display when standard error is a terminal. ``allow_outside``: paths
    outside the campaign folder its files may be read from. ``workers``: the processes
    that check and render the rows (None: the machine's cores). A ``base_url`` given
    here is the user's choice; one from the campaign file alone must be loopback
    (:class:`CampaignError` otherwise).

    Example::

        summary = run_campaign("samples/newsletter", sandbox=True, limit=10)
    """
    started = time.monotonic()
    require_transport(http_client)  # a missing optional library: before anything is recorded
    check_report_path(report_path)  # a report it could not write at the end: refused now
    campaign = override(
        load_campaign(campaign_path, allow_outside=allow_outside),
        provider=provider,
        base_url=base_url,
        concurrency=concurrency,
        rate=rate,
    )
    test_address = parse_test_to(test_to) if test_to else None
    if test_address is not None and limit is None:
        limit = 1  # a proof copy: one message unless asked for more
    if again and skip_sent:
        raise CampaignError(
            "--again and --skip-sent contradict each other",
            fix="--again sends to everyone again; --skip-sent only to addresses not sent yet",
        )
    # A real run can email people on the list: not a proof copy, a dry run or a run
    # to the embedded sandbox; only a real one is refused for earlier sends.
    real = not (test_address or dry_run or sandbox)
    where = dblocation.for_campaign(campaign.path, db_path)
    db_path = where.path
    with (
        Store(db_path, accept_lost_record=accept_lost_record) as store,
        Session(
            campaign, sandbox=sandbox, dry_run=dry_run, base_url_confirmed=base_url is not None
        ) as session,
        MessageSpool(Path(db_path).resolve().parent) as spool,
        contextlib.ExitStack() as stack,
    ):
        campaign_path = str(campaign.path)
        lost_notes = refusals.lost_record_notes(
            store, campaign_path, check=real, accept=accept_lost_record
        )
        claim = store.claim(
            campaign_path, command=f"batchsend run {shlex.quote(campaign_path)}", exclusive=real
        )
        earlier: dict[str, tuple[str, str]] = {}

        def refuse_earlier_runs() -> None:
            # Asked once before the long part (a refusal costs nothing), and again inside
            # the transaction that records the run: the decision is made on the state the
            # new run is written on, so two runs started together cannot both proceed.
            if real:
                refusals.refuse_earlier_runs(
                    store, campaign, where, new_run=new_run, again=again, skip_sent=skip_sent
                )
                if skip_sent:
                    earlier.clear()
                    earlier.update(refusals.earlier_sends(store, campaign_path))

        refuse_earlier_runs()
        session.open(api_key=api_key, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
        input_fp, templates_fp = fingerprints(campaign)
        if real and not again:
            refusals.refuse_sent_elsewhere(store, campaign_path, (input_fp, templates_fp))
        settings = run_settings(campaign, session, limit=limit, test_to=test_to, http=http_client)
        listed = database_suppressions(store)
        # Each chunk the row pass checks is kept beside the database as it goes: a kill
        # in a long preflight loses none of them (see batchsend.store.checkpoint).
        key = checkpoint_key(campaign, (input_fp, templates_fp), listed)
        checkpoint = Checkpoint(db_path, campaign_path, key) if key is not None else None
        if checkpoint is not None:
            stack.callback(checkpoint.close)
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
            checking = ProgressDisplay(
                0,
                enabled=progress,
                line=checked_line,
                log_line=checked_line,
                suffix=workers_suffix(workers),
            )
            tally = Intake(
                campaign,
                skip_invalid=skip_invalid,
                limit=limit,
                test=test_to,
                dry_run=dry_run,
                spool=spool,
                encode=spool_encoder(session, run_id, test_address),
                already_sent=earlier if skip_sent and real else None,
                suppressed=listed,
                workers=workers,
                on_rows=lambda rows: checking.update(Progress(sent=rows)),
                checkpoint=checkpoint,
            )
            try:
                store.add_recipients(run_id, tally.recipients())
            finally:
                checking.close()
            tally.raise_if_bad()
            if not dry_run:
                session.check_account(tally.recipients_to_send)
        if checkpoint is not None:
            checkpoint.finish()  # the run's rows are recorded: the pass is not needed
        # So that `batchsend resume RUN_ID` finds this database from any folder.
        ledger.index_run(run_id, db_path, campaign=campaign_path)
        return send_and_finish(
            store,
            session,
            run_id,
            units=lambda provider: units_for_pending(
                store,
                campaign,
                run_id,
                provider,
                test_address,
                limit=limit,
                spool=spool,
                workers=workers,
                unspooled=tally.unspooled,
                wanted=tally.pending,
            ),
            started=started,
            http_client=http_client,
            report_path=report_path,
            progress=progress,
            notes=lost_notes + tally.notes(),
            limit=limit,  # the rows to send (the progress total): the rest stays pending
            pending=len(tally.pending),
            located=where,
            workers=workers,
        )
