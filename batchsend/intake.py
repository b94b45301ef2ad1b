"""The store intake: preflight's rows become the run's rows in the store.

:class:`Intake` walks the recipient file once (render, validate, de-duplicate), yields
the store rows, counts what a refusal must report, and spools the messages about to be
sent so the send pass does not render them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from batchsend.addresses import dedup_key
from batchsend.campaign import Campaign
from batchsend.errors import (
    PreflightError,
)
from batchsend.message import Address, Message
from batchsend.plan import PlannedMessage
from batchsend.preflight import PassNotes, iter_rows
from batchsend.providers.encoder import WireEncoder
from batchsend.render import html_to_text
from batchsend.rowset import RowSet
from batchsend.session import Session
from batchsend.spool import MessageSpool
from batchsend.states import RecipientState
from batchsend.store import NewRecipient
from batchsend.store.checkpoint import Checkpoint

_SHOWN_PROBLEMS = 20


class Intake:
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
        suppressed: Mapping[str, str] | None = None,
        workers: int | None = None,
        on_rows: Callable[[int], object] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.workers = workers
        self.checkpoint = checkpoint
        self.pass_notes = PassNotes()
        # Rows to send that a checkpoint gave back checked but not rendered: the send
        # pass renders them; the spool holds the others.
        self.unspooled = RowSet()
        # The rows recorded pending that the send pass sends (all, or the first --limit):
        # what the store would answer, known without a scan of the run's rows.
        self.pending = RowSet()
        self.on_rows = on_rows  # called with the rows checked so far, every 1,000 rows
        self.rows = 0
        self.suppressed = suppressed
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
        spool = self.spool
        encode = self.encode
        # derive_text=False: the HTML-to-text conversion cannot fail and is the slowest
        # step; only the rows about to be sent need it, when they enter the spool. The
        # workers that render the rows encode them too, unless --limit leaves some out.
        in_workers = encode if self.limit is None and spool is not None else None
        rows = iter_rows(
            self.campaign,
            derive_text=False,
            suppressed=self.suppressed,
            workers=self.workers,
            encoder=in_workers,
            keep_values=False,
            checkpoint=self.checkpoint,
            notes=self.pass_notes,
        )
        on_rows = self.on_rows
        for r in rows:
            self.rows += 1
            if on_rows is not None and self.rows % 1000 == 0:
                on_rows(self.rows)
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
                    reason=r.stored_reason,
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
            reason: str | None = None
            words: str | None = None  # the report's words for a row not sent
            key = None  # the message's key, when preflight planned it
            if self.limit is None or self.to_send < self.limit:
                self.to_send += 1
                self.pending.add(r.row)
                m = r.message
                if r.planned is not None:  # rendered and encoded by a worker
                    self.recipients_to_send += r.planned.recipient_count
                    if spool is not None and spool.usable:
                        if spool.add_planned(r.planned):
                            key = r.planned.key
                        else:  # the spool is full: the send pass renders this row
                            self.unspooled.add(r.row)
                elif m is None:  # checked by an earlier pass: rendered when sent
                    self.recipients_to_send += 1 if self.test else r.recipients
                    self.unspooled.add(r.row)
                else:
                    self.recipients_to_send += (
                        1 if self.test else len(m.to) + len(m.cc) + len(m.bcc)
                    )
                    key = self._spool(spool, encode, r.group, m)
            elif self.test:
                # A proof run sends its first rows only; the others are settled at once.
                state, reason = RecipientState.SKIPPED, "limit"
                words = (
                    f"test run: only the first {self.limit:,} row(s) went, each as a proof "
                    "copy to the test address"
                )
            yield NewRecipient(
                row=r.row,
                email=r.email,
                name=r.name,
                state=state,
                reason=reason,
                error_message=words,
                tag=r.tag,
                metadata=r.metadata,
                message_key=key,
            )

    def _spool(
        self,
        spool: MessageSpool | None,
        encode: Callable[[Message], PlannedMessage] | None,
        group: str | None,
        m: Message,
    ) -> str | None:
        """Spool a message rendered here (not by a worker); its key, when planned."""
        if spool is None or not spool.usable:
            return None
        if spool.full:
            self.unspooled.add(m.row)  # the send pass renders it
            return None
        if m.text is None and m.html is not None:
            m = dataclasses.replace(m, text=html_to_text(m.html))
        if encode is None:
            stored, key = spool.add(group, m), None
        else:
            try:
                planned = encode(m)
            except (TypeError, ValueError) as exc:
                # the send pass renders again, and meets the error where it always
                # did: when the request is built
                spool.drop(f"row {m.row} could not be encoded: {exc}")
                return None
            stored = spool.add_planned(planned)
            key = planned.key if stored else None
        if not stored and spool.usable:
            self.unspooled.add(m.row)
        return key

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
        kept = self.pass_notes.kept_rows
        if kept and self.checkpoint is not None:
            notes.append(
                f"preflight went on from an earlier one of the same inputs that stopped before"
                f" sending: {kept:,} row(s) it had checked were not checked again"
                f" (kept in {self.checkpoint.path.name})"
            )
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


def spool_encoder(
    session: Session, run_id: str, test_address: Address | None
) -> WireEncoder | None:
    """Preflight's encoder of each row's message, when the send pass can use it as is.

    Each message is planned (its key) and encoded by the provider once, in preflight
    (in the worker that rendered it); the send pass then joins the spooled bytes into
    requests. Merging (which plans across rows) and proof copies (which change the
    recipients) keep the rendered messages instead; so does a dry run, whose rows never
    get a key.
    """
    if session.campaign.merge.enabled or test_address is not None or session.dry_run:
        return None
    assert session.base_url is not None
    c = session.campaign
    return WireEncoder(
        c.provider, session.base_url, c.send.batch_size, c.send.max_recipients_per_field, run_id
    )
