"""The SQLite store: runs, recipients, send units and attempts, in one file.

Only this package speaks SQL: the rest of batchsend reads and writes the file through
:class:`Store`, :class:`RunRecorder` and :mod:`batchsend.store.reports`. Its modules:

- :mod:`~batchsend.store.records` -- the values handed in and out (:class:`RunInfo`...);
- :mod:`~batchsend.store.schema` -- the file's mark, its tables, recognising a file;
- :mod:`~batchsend.store.statements` -- the hot path's SQL;
- :mod:`~batchsend.store.database` -- :class:`Store`: runs, claims, sending marks, rows;
- :mod:`~batchsend.store.recorder` -- :class:`RunRecorder`, the engine's record of sends;
- :mod:`~batchsend.store.reports` -- the read-only queries behind reports and summaries.

The tables are described for users who query them in ``docs/database.md``.
sqlite-utils switches the file to WAL, creates the ``runs`` and ``units`` tables, lists
an existing file's tables and columns to recognise it, and adds the columns an older
file lacks; ``recipients`` and ``attempts`` are created with plain SQL because they are
``WITHOUT ROWID`` tables (see ``docs/engine.md``, "The store's layout"), which
sqlite-utils does not create. A file batchsend wrote is therefore an ordinary SQLite
database that the sqlite-utils CLI and Datasette open as they are.

The hot paths (inserting millions of rows at run start, marking a unit ``sending``, its
outcomes) are plain SQL (:mod:`~batchsend.store.statements`) run inside explicit
transactions (:meth:`Store.transaction`) -- multi-row ``INSERT`` and ``UPDATE ... FROM
(VALUES ...)`` for groups of rows -- because they are the ones that must be fast and
whose commit points matter.

A request's composition is recorded with its ``sending`` mark: in the ``units`` table
for a batch or several messages; for one message on a single-send endpoint (every v1
request) the rows' own ``unit_key`` is the record (no ``units`` row is written, which
halves the pages of a small commit), and :meth:`Store.unit` rebuilds it from them.

Durability. The file runs in WAL mode with ``synchronous=NORMAL`` by default: a
transaction is in the WAL file (the operating system's page cache) when ``COMMIT``
returns, so it survives the batchsend process being killed at any instant, ``kill -9``
included -- which is the promise batchsend makes. It may not survive the whole
machine losing power; pass ``synchronous="FULL"`` to :class:`Store` to make every
commit wait for the disk as well (slower, and it protects against power loss).

The write-ahead rule (docs/design.md): :meth:`RunRecorder.mark_sending` commits the
unit's rows as ``sending`` *before it returns*, and the engine sends the request only
after. Outcomes are buffered and committed in small batches (at most :data:`FLUSH_ROWS`
rows or :data:`FLUSH_SECONDS` old, and always together with the next ``mark_sending``),
so a crash can leave a row ``sending`` whose answer had already arrived: resume turns it
into ``unknown``, never into a second send.

No API key is ever written here: the run's settings are filtered through
:func:`safe_settings`, and error texts through :func:`batchsend.apikeys.redact`.
"""

from batchsend.store.database import (
    BUSY_TIMEOUT,
    DEFAULT_DB,
    WAL_AUTOCHECKPOINT_PAGES,
    Store,
    holds,
)
from batchsend.store.recorder import FLUSH_ROWS, FLUSH_SECONDS, RunRecorder
from batchsend.store.records import (
    IN_FLIGHT_REASON,
    NewRecipient,
    RunInfo,
    Settlement,
    UnitRecord,
    UnsettledMessage,
    new_run_id,
    safe_settings,
)
from batchsend.store.schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT",
    "DEFAULT_DB",
    "FLUSH_ROWS",
    "FLUSH_SECONDS",
    "IN_FLIGHT_REASON",
    "SCHEMA_VERSION",
    "WAL_AUTOCHECKPOINT_PAGES",
    "NewRecipient",
    "RunInfo",
    "RunRecorder",
    "Settlement",
    "Store",
    "UnitRecord",
    "UnsettledMessage",
    "holds",
    "new_run_id",
    "safe_settings",
]
