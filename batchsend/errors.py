"""Every error batchsend raises on purpose.

One root, so callers can catch everything batchsend means with one clause::

    BatchsendError                      exit_code 1 unless a subclass says otherwise
    ├── InputError                      exit 2: the user's input is wrong; nothing was sent
    │   ├── CampaignError               the campaign file (unknown key, wrong type, missing sender)
    │   ├── SourceError                 the recipient file (encoding, header, missing column)
    │   ├── TemplateError               a template (syntax, missing variable, size limit)
    │   │   └── TemplateSecurityError   a template tried to escape Jinja's sandbox
    │   ├── AttachmentError             an attachment path (missing, escaping the folder, too big)
    │   ├── SecretError                 no API key where the campaign says it is
    │   ├── PreflightError              one or more rows failed preflight (carries the problems)
    │   └── SuppressionFileError        a suppression list to import (missing, not CSV, no address)
    ├── EventPayloadError               a provider event batchsend cannot read (malformed JSON)
    ├── SendError                       a request did not succeed
    │   ├── RetryableSendError          NOT processed, safe to send again: 429, refused
    │   │                               connection, connect timeout
    │   ├── UncertainSendError          MAYBE processed: read timeout after sending, the
    │   │                               connection lost before a full answer, 500-504
    │   ├── PermanentSendError          other 4xx: this message will never be accepted
    │   └── FatalSendError              the whole run must stop (bad key, no credits, domain)
    ├── CannotAskError                  exit 2: the provider cannot be asked (admin key, scope,
    │   │                               no Events API); nothing was changed
    │   └── ReconcileError              ... by reconcile (or the run was never sent)
    └── StoreError                      the SQLite store
        ├── DatabaseFileError           exit 2: --db names a file that is not a usable database
        │   └── LostRecordError         the database lost a record of sends (-wal gone, older copy)
        ├── RunNotFoundError            exit 2: no run with the id the user gave
        ├── ResumeRefusedError          inputs changed since the run began, or nothing to resume
        │   ├── ConcurrentCommandError  another batchsend command is at work on it right now
        │   ├── UnfinishedRunError      run: the campaign's last run is unfinished (resume it)
        │   └── CampaignSentError       run: the campaign was sent already (--again, --skip-sent)
        ├── DiskFullError               the disk filled during a run: stopped, state kept
        └── DatabaseGoneError           the database file was deleted or replaced mid-run

Messages never contain an API key: code that builds one from a response body or a
request must pass it through :func:`batchsend.apikeys.redact` first.
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass


class BatchsendError(Exception):
    """Root of every error batchsend raises on purpose."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Location:
    """Where a bad input sits, so the message can name it."""

    file: str | None = None
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.row is not None:
            # Rows are numbered from 1 below the header; row 0 is the header itself.
            parts.append(f"row {self.row}" if self.row else "header row")
        if self.column:
            parts.append(f"column {self.column!r}")
        return ", ".join(parts)


class InputError(BatchsendError):
    """The user's input is wrong; nothing was sent. ``fix`` says how to put it right."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.location = Location(file, row, column)
        self.fix = fix
        self.detail = message
        where = str(self.location)
        text = f"{where}: {message}" if where else message
        if fix:
            text = f"{text}\n  fix: {fix}"
        super().__init__(text)


class CampaignError(InputError):
    """The campaign file is wrong."""


class SourceError(InputError):
    """The recipient file cannot be read as a table of recipients."""


class TemplateError(InputError):
    """A template does not compile, needs a missing variable, or renders too much."""


class TemplateSecurityError(TemplateError):
    """A template tried to reach Python internals through Jinja's sandbox."""


class AttachmentError(InputError):
    """An attachment is missing, unreadable, outside the campaign folder, or too big."""


class SecretError(InputError):
    """The API key is not where the campaign says it is."""


class PreflightError(InputError):
    """Preflight found bad rows; ``problems`` lists them (file, row, column, reason)."""

    def __init__(self, message: str, problems: list | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class SuppressionFileError(InputError):
    """A suppression list given to ``batchsend suppressions import`` cannot be read."""


class EventPayloadError(BatchsendError):
    """A webhook body or an Events API answer that is not an event batchsend can read."""


class SendError(BatchsendError):
    """A request to the provider did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after


class RetryableSendError(SendError):
    """Not processed, worth trying again later: 429, refused connection, connect timeout.

    The provider certainly did not act on the request, so sending the same request
    again cannot deliver anything twice.
    """


class UncertainSendError(SendError):
    """The provider may have processed the request: never sent again on our own.

    A read timeout after the request was written, a connection closed before a complete
    answer, a 500-504: the message may have been delivered. Neither provider
    de-duplicates, so the rows become ``unknown`` until the provider is asked or the user
    accepts the risk of a second delivery (docs/engine.md, "Was it processed?").
    """


class PermanentSendError(SendError):
    """This message will never be accepted as it is."""


class FatalSendError(SendError):
    """Nothing more can be sent in this run (bad key, no credits, sender domain)."""


class CannotAskError(BatchsendError):
    """The provider cannot be asked at all (events pull, suppressions sync, reconcile): a
    key refused or lacking its scope, an account without the Events API. Nothing changed."""

    exit_code = 2


class ReconcileError(CannotAskError):
    """``batchsend reconcile`` cannot ask the provider at all: a sending key where an admin
    key belongs, a key refused or lacking its scope, an account without the Events API, a
    run that was never sent. Raised before any row changes."""

    exit_code = 2


class StoreError(BatchsendError):
    """The SQLite store is unusable or inconsistent."""


class DatabaseFileError(StoreError):
    """The database file cannot be opened, or is not an SQLite database: bad input."""

    exit_code = 2


class RunNotFoundError(StoreError):
    """The database holds no run with the id the user gave: bad input."""

    exit_code = 2


class ResumeRefusedError(StoreError):
    """A resume cannot go on safely (inputs changed, or nothing to resume)."""

    exit_code = 2


class LostRecordError(DatabaseFileError):
    """The database lacks sends it once recorded (its ``-wal`` file is gone, or it is an
    older copy): sending now could email people a second time."""


class ConcurrentCommandError(ResumeRefusedError):
    """Another live batchsend command is working on the campaign, the run or the database."""


class UnfinishedRunError(ResumeRefusedError):
    """``run`` on a campaign whose last run is unfinished: resume it, or ask for a new run."""


class CampaignSentError(ResumeRefusedError):
    """``run`` on a campaign whose last run finished: ``again`` or ``skip_sent`` says how."""


class DatabaseGoneError(StoreError):
    """The database file was deleted or replaced while a command was using it."""


class DiskFullError(StoreError):
    """The disk filled while a run wrote to it: the run stopped, its state up to the last
    commit kept (rows in flight become ``unknown``); free space, then resume it."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk: ``ENOSPC``/``EDQUOT``, or SQLite's SQLITE_FULL.

    An exception group (the engine's workers fail together) counts when every one of its
    errors is a full disk, directly or as the error being handled when it was raised (a
    ``finally`` that tried to write too).
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disk_full(e) for e in exc.exceptions)
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, BatchsendError):  # already said clearly
            return False
        if isinstance(seen, sqlite3.OperationalError) and (
            getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(seen)
        ):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, BaseExceptionGroup):
            return is_disk_full(seen)
        seen = seen.__context__
    return False
