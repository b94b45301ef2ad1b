"""What ``run`` and ``resume`` refuse to do, decided before anything is sent.

A real run refuses while the campaign's last run is live, unfinished or finished (unless
told how to go on), and when the same recipients and templates were sent from another
database (the register in :mod:`batchsend.ledger`). Both commands refuse when the
database lost a record of sends. A resume refuses a dry run, a run another process is
sending, and inputs that changed since the run began.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from batchsend import ledger
from batchsend.addresses import dedup_key
from batchsend.campaign import Campaign
from batchsend.dblocation import Located, hint_db
from batchsend.errors import (
    BatchsendError,
    CampaignSentError,
    ConcurrentCommandError,
    LostRecordError,
    ResumeRefusedError,
    UnfinishedRunError,
)
from batchsend.fingerprints import fingerprints
from batchsend.history import effective_state
from batchsend.next_steps import (
    resume_command,
)
from batchsend.process import alive
from batchsend.states import RecipientState, RunState
from batchsend.store import RunInfo, Store


def refuse_earlier_runs(
    store: Store,
    campaign: Campaign,
    where: Located,
    *,
    new_run: bool,
    again: bool,
    skip_sent: bool,
) -> None:
    """Refuse a real run while the campaign's last real run is live, unfinished or finished.

    Live (another process is sending it): always. Unfinished: unless ``new_run``,
    ``again`` or ``skip_sent``. Finished: unless ``again`` or ``skip_sent``.
    """

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
            f"  {resume_command(last.id, hint_db(last.id, where))}\n"
            "or start a new run (its rows are sent again, under new keys) with --new-run, "
            "or one that leaves out the addresses already sent with --skip-sent"
        )
    if again or skip_sent:
        return
    shown = ", ".join(f"{n:,} {state}" for state, n in counts.items() if n) or "no rows"
    raise CampaignSentError(
        f"this campaign was sent already: run {last.id} finished "
        f"{(last.ended_at or last.started_at)[:19].replace('T', ' ')} UTC ({shown}), "
        f"recorded in {where.path}; running it again would email those people a second "
        "time, so nothing was sent.\n"
        "  fix: to send it to everyone again (a new run), add --again; to send only to the "
        "addresses no earlier run sent to (a list that grew), add --skip-sent; for a proof "
        "copy, --test-to ADDRESS"
    )


def earlier_sends(store: Store, campaign_path: str) -> dict[str, tuple[str, str]]:
    """Address (dedup key) -> (run id, state) for every address a real run of the campaign
    sent, or may have sent (``sending``, ``unknown``); ``sent`` wins over the others."""

    found: dict[str, tuple[str, str]] = {}
    for email, state, run_id in store.earlier_sends(campaign_path):
        key = dedup_key(email or "")
        if key not in found or (state == "sent" and found[key][1] != "sent"):
            found[key] = (run_id, state)
    return found


def refuse_sent_elsewhere(store: Store, campaign_path: str, fingerprints: tuple[str, str]) -> None:
    """Refuse a campaign that a run recorded in another database, or under another path.

    The database's own checks know its runs of this campaign file. The same recipients
    and templates sent from elsewhere (another folder's database, the campaign folder
    moved or copied) are only in the user's register of sends (:mod:`batchsend.ledger`).
    """

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


def lost_record_notes(
    store: Store, campaign_path: str, *, check: bool, accept: bool
) -> tuple[str, ...]:
    """Refuse (or, ``accept``, note) runs of this campaign the database no longer records.

    Two sources: the store's own check at open (a run mid-send whose ``-wal`` is gone;
    ``store.accepted_lost``) and the ledger beside the database (a run that began
    sending, or ended with more rows sent, than the database now shows).
    """

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


def refuse_unsafe_resume(store: Store, run: RunInfo, *, force: bool) -> None:
    if run.dry_run:
        raise ResumeRefusedError(f"run {run.id} is a dry run: there is nothing to resume")
    # Asked early so a refusal costs nothing; Store.claim_run decides it atomically.
    if (
        run.state is RunState.RUNNING
        and not force
        and effective_state(run) is RunState.RUNNING
        and run.pid != os.getpid()
    ):
        raise ConcurrentCommandError(
            f"run {run.id} is being sent right now by process {run.pid}; wait for it, "
            "or stop it (Ctrl-C) first. If that process is not batchsend, use --force"
        )


def refuse_changed_inputs(run: RunInfo, campaign: Campaign) -> None:
    input_fp, templates_fp = fingerprints(campaign)
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
