"""Resuming a run: the library behind ``batchsend resume``.

A resume turns rows left ``sending`` by a dead process into ``unknown``, refuses to go
on if the recipient file or the templates changed (``force`` overrides), and sends the
pending rows. ``resend_unknown`` is the user accepting that the provider may already
have delivered the unknown rows (neither provider de-duplicates): each goes again in
its recorded request (same composition, body and ``Idempotency-Key``), or, when only
some messages of that request are still unknown, in a request of those alone.
``reconcile`` first asks the provider about the unknown rows (:mod:`batchsend.reconcile`):
the ones it never accepted are pending again, and this resume sends them.
``retry_failed`` sends the rows that failed with a retryable error (certainly not taken)
again: the recorded request when all of it failed, else a new request of the failed
messages, whose key derives from their own message keys (recorded before it leaves,
like any unit).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchsend import dblocation, ledger, refusals
from batchsend.addresses import dedup_key
from batchsend.apikeys import load_api_key
from batchsend.campaign import Campaign, load_campaign
from batchsend.errors import (
    ResumeRefusedError,
    SecretError,
)
from batchsend.loops import sync_anywhere
from batchsend.message import Address, Message
from batchsend.overrides import override, parse_test_to
from batchsend.plan import SendUnit, rebuild_unit
from batchsend.preflight import RowResult, iter_rows
from batchsend.reconcile import DEFAULT_GRACE, reconcile_run
from batchsend.report import check_report_path
from batchsend.sending import (
    RunResult,
    rows_to_messages,
    send_and_finish,
    units_for_pending,
)
from batchsend.session import Session
from batchsend.states import RecipientState
from batchsend.store import NewRecipient, Store, UnitRecord
from batchsend.suppressions import database_suppressions
from batchsend.transport import require_transport


@sync_anywhere  # in a notebook too: see batchsend.loops
def resume_run(
    run_id: str,
    *,
    db_path: str | Path | None = None,
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
    reconcile: bool = False,
    grace: float = DEFAULT_GRACE,
    admin_key: str | None = None,
    admin_key_file: str | Path | None = None,
    admin_key_stdin: bool = False,
    workers: int | None = None,
) -> RunResult:
    """Continue run ``run_id``: unknown for what was in flight, then send what is pending.

    ``workers``: the processes that render the rows to send (None: the machine's cores);
    sending starts as soon as the first of them are rendered.

    ``reconcile`` asks the provider about the unknown rows first (``grace`` and the
    ``admin_key*`` options as for :func:`batchsend.reconcile.reconcile_run`): what it
    never accepted is then pending, and sent by this resume.
    The run is looked for in ``db_path``, else where :func:`batchsend.dblocation.for_run`
    finds it (``$BATCHSEND_DB``, ``./batchsend.db``, the user's index of runs).

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
    require_transport(http_client)  # a missing optional library: before anything is recorded
    check_report_path(report_path)  # a report it could not write at the end: refused now
    where = dblocation.for_run(run_id, db_path)
    db_path = where.path
    if not Path(db_path).is_file():
        raise ResumeRefusedError(f"{db_path}: no batchsend database here (pass --db)")
    reconciled = None
    if reconcile:
        if api_key_stdin and admin_key_stdin:
            raise SecretError(
                "only one key can come from standard input",
                fix="give the admin key with --admin-key-file or $BATCHSEND_ADMIN_KEY",
            )
        if api_key_stdin and api_key is None:  # read once: reconcile and the resume share it
            api_key, api_key_stdin = load_api_key(stdin=True), False
        reconciled = reconcile_run(
            run_id,
            db_path=db_path,
            grace=grace,
            admin_key=admin_key,
            admin_key_file=admin_key_file,
            admin_key_stdin=admin_key_stdin,
            api_key=api_key,
            api_key_file=api_key_file,
            base_url=base_url,
            http_client=http_client,
            progress=progress,
            allow_outside=allow_outside,
        )
    result = _resume(
        run_id,
        started=started,
        db_path=db_path,
        force=force,
        retry_failed=retry_failed,
        resend_unknown=resend_unknown,
        base_url=base_url,
        concurrency=concurrency,
        rate=rate,
        limit=limit,
        sandbox=sandbox,
        accept_lost_record=accept_lost_record,
        http_client=http_client,
        api_key=api_key,
        api_key_file=api_key_file,
        api_key_stdin=api_key_stdin,
        report_path=report_path,
        progress=progress,
        allow_outside=allow_outside,
        notes=[reconciled.note()] if reconciled is not None else [],
        located=where,
        workers=workers,
    )
    if reconciled is None:
        return result
    return dataclasses.replace(result, reconciled=reconciled.to_dict())


def _resume(
    run_id: str,
    *,
    located: dblocation.Located,
    started: float,
    db_path: str | Path,
    force: bool,
    retry_failed: bool,
    resend_unknown: bool,
    base_url: str | None,
    concurrency: int | None,
    rate: float | None,
    limit: int | None,
    sandbox: bool,
    accept_lost_record: bool,
    http_client: str,
    api_key: str | None,
    api_key_file: str | Path | None,
    api_key_stdin: bool,
    report_path: str | Path | None,
    progress: bool | None,
    allow_outside: Iterable[str | Path],
    notes: list[str],
    workers: int | None,
) -> RunResult:
    with Store(db_path, accept_lost_record=accept_lost_record) as store:
        run = store.get_run(run_id)
        if ledger.indexed_db(run_id) != Path(db_path).resolve():
            # A run from before the index, or a database moved: found from anywhere now.
            ledger.index_run(run_id, db_path, campaign=run.campaign_path)
        refusals.refuse_unsafe_resume(store, run, force=force)
        notes += refusals.lost_record_notes(
            store, run.campaign_path, check=not run.is_test, accept=accept_lost_record
        )
        store.claim(
            run.campaign_path,
            command=f"batchsend resume {shlex.quote(run_id)}",
            run_id=run_id,
            exclusive=not run.is_test,
        )
        settings = run.settings
        campaign = override(
            load_campaign(run.campaign_path, allow_outside=allow_outside),
            provider=run.provider,
            base_url=base_url or run.base_url,
            concurrency=concurrency or settings.get("concurrency"),
            rate=rate if rate is not None else settings.get("rate"),
            batch_size=settings.get("batch_size"),
        )
        if not force:
            refusals.refuse_changed_inputs(run, campaign)
        test_to = settings.get("test_to")
        test_address = parse_test_to(test_to) if test_to else None
        use_sandbox = sandbox or bool(settings.get("sandbox"))
        # The recorded base URL passed this same check when the run began.
        confirmed = bool(base_url or run.base_url)
        with Session(
            campaign, sandbox=use_sandbox, dry_run=False, base_url_confirmed=confirmed
        ) as session:
            session.open(api_key=api_key, api_key_file=api_key_file, api_key_stdin=api_key_stdin)
            store.claim_run(run_id, force=force)
            store.forget_planned_keys(run_id)
            unknown = store.sending_to_unknown(run_id)
            rows: dict[int, int] | None = None
            if force:
                rows, matched = _match_rows_by_address(store, campaign, run_id, workers)
                notes.append(matched)
            if unknown:
                notes.append(
                    f"{len(unknown):,} row(s) were in flight when the run stopped: now unknown"
                    + ("" if resend_unknown else " (not sent again)")
                )
            barred = _skip_suppressed(store, run_id)
            if barred:
                notes.append(
                    f"{barred:,} pending row(s) skipped: their address went on the suppression "
                    "list since the run began"
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
                workers=workers,
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
            wanted = store.pending_rows(run_id, limit)  # read once: planned and counted
            return send_and_finish(
                store,
                session,
                run_id,
                # The rebuilt units are bound (and checked against their recorded keys)
                # before the engine starts: a refusal is then one clear error, not an
                # exception raised inside the engine's task group.
                units=lambda provider: units_for_pending(
                    store,
                    campaign,
                    run_id,
                    provider,
                    test_address,
                    limit,
                    rows=rows,
                    workers=workers,
                    before=list(_bind(rebuilt)),
                    wanted=wanted,
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
                located=located,
                workers=workers,
                pending=len(wanted),
            )


def _skip_suppressed(store: Store, run_id: str) -> int:
    """Mark ``skipped`` the pending rows whose address is now on the database's
    suppression list (a bounce or complaint from another campaign since this run began);
    how many. Stored addresses are already normalised, so their ``dedup_key`` is the key
    preflight gave them."""
    listed = database_suppressions(store)
    if not listed:
        return 0
    by_reason: dict[str, list[int]] = {}
    for row, email in store.pending_addresses(run_id):
        why = listed.get(dedup_key(email or ""))
        if why is not None:
            by_reason.setdefault(why, []).append(row)
    for why, rows in by_reason.items():
        store.skip_rows(
            run_id, rows, f"suppressed: {why}", "on the suppression list since the run began"
        )
    return sum(len(rows) for rows in by_reason.values())


def _match_rows_by_address(
    store: Store, campaign: Campaign, run_id: str, workers: int | None = 1
) -> tuple[dict[int, int], str]:
    """Map the current recipient file's rows to the run's rows by address (``--force``).

    Returns ``{file row: run row}`` and a note of what changed. A row that moved keeps
    its run row (and its recorded state: sent, unknown and sending are never sent
    again); an address new to the run is added as a new run row (``pending``, or
    ``skipped`` with preflight's reason), numbered after the run's last; a run row whose
    address left the file keeps its record, and if it was still ``pending`` (nothing to
    send it from) becomes ``skipped`` with reason ``removed_from_input``.
    """

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
    # addresses only, no rendering
    for r in iter_rows(campaign, only=lambda _row: False, workers=workers, keep_values=False):
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
        listed = database_suppressions(store)
        passed = iter_rows(
            campaign,
            only=wanted.__contains__,
            suppressed=listed,
            workers=workers,
            keep_values=False,
        )
        for r in passed:
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
                    reason=None if sendable else r.stored_reason or "invalid",
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
    workers: int | None = 1,
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
        for r in rows_to_messages(campaign, needed.__contains__, test_address, rows, workers)
        if isinstance(r, RowResult) and r.message is not None  # always: no encoder given
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


def _bind(rebuilt: list[_Rebuild]) -> Iterator[SendUnit]:
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
