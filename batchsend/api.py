"""The Python API: a campaign built in Python, its check, preview, run, resume and report.

The same library the command line stands on, for a script or a notebook::

    import batchsend as bs

    campaign = bs.Campaign(
        provider="tosend",
        sender="news@example.com",
        subject="Hi {{ first_name }}",
        text="Hello {{ first_name }}!",
        recipients=frame,  # polars or pandas DataFrame, list of dicts, or a file
    )
    run = campaign.run(sandbox=True)
    run.report()  # a polars DataFrame, one row per recipient

Where a run's inputs live. A run must be resumable, and a resume re-reads the inputs
and refuses when they changed, so a campaign built in Python is written out before it
runs: ``batchsend-campaigns/<name>/`` beside the database holds ``campaign.toml`` (the
keys given here, as the campaign file), the recipients (a DataFrame or list as
``recipients.parquet``, a file as a copy of it) and copies of the template files,
attachments and suppression lists it names. That folder is the campaign's identity in
the database, as a campaign file's path is for ``batchsend run``: running the same
``name`` again is refused as already sent unless ``again`` or ``skip_sent`` is given,
and ``batchsend resume RUN_ID`` works on it from the command line too. Without a
``name``, the folder is named after a hash of the keys (not the recipients).

Synchronous calls work in a plain script and inside a running event loop (a Jupyter
notebook): the send then runs on its own loop in a worker thread (see
:mod:`batchsend.loops`). :meth:`Campaign.arun` and :meth:`Run.aresume` are the
``async`` forms, for code that must not block its loop; cancelling one is a Ctrl-C.
:func:`runs` lists a database's runs as a DataFrame.

API keys are never an argument: they come from the environment variable the campaign
names (``api_key_env``, default ``BATCHSEND_API_KEY``) or a key file (``api_key_file``),
as for the command line; ``sandbox=True`` needs none.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import polars as pl

from batchsend.campaign import Campaign as CampaignSettings
from batchsend.campaign import build_campaign, dump_campaign, keys, load_campaign, tables
from batchsend.check_report import format_report
from batchsend.errors import CampaignError, SourceError
from batchsend.fingerprints import campaign_files
from batchsend.history import effective_state, find_run, list_runs, open_db
from batchsend.loops import in_worker
from batchsend.preflight import PreflightReport, preflight
from batchsend.preview import Preview
from batchsend.preview import preview as render_preview
from batchsend.report import iter_report
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sending import RunResult
from batchsend.source import iter_batches
from batchsend.states import RecipientState, RunState
from batchsend.store import DEFAULT_DB
from batchsend.summary import RunSummary, read_summary
from batchsend.suppressions import database_suppressions

#: Where the campaigns built in Python are written, beside the database.
CAMPAIGNS_FOLDER = "batchsend-campaigns"
#: How a campaign built in Python is named in error messages.
SHOWN = "batchsend.Campaign"

_TEMPLATE_KEYS = ("subject", "html", "text", "ical")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")

Recipients = pl.DataFrame | pl.LazyFrame | Sequence[Mapping[str, Any]] | str | Path | Any


class Campaign:
    """A campaign: the campaign file's keys given in Python, and its recipients.

    ``settings`` is a dict of the campaign file's keys (tables as nested dicts:
    ``{"provider": "tosend", "sender": {"email": ...}, "message": {"subject": ...}}``);
    keyword arguments add to it, and may give ``[message]`` keys (``subject``, ``html``,
    ``text``, ``html_file``...) and ``sender`` / ``reply_to`` (``"Name <addr>"``) at the
    top. A template is a string, or a :class:`~pathlib.Path` to a file (the same as
    ``html_file``). Every key is validated as in a campaign file, with the same messages.

    ``recipients``: a polars or pandas DataFrame, a list of dicts (one per row), or the
    path of a CSV or Parquet file (``[source]`` keys say how to read it); without it,
    ``source.path`` must name the file. ``folder`` is where relative paths (template
    files, attachments, suppression lists, a key file) are found: default, the current
    folder.

    Example::

        campaign = Campaign(
            provider="tosend",
            sender="Example News <news@example.com>",
            subject="Hi {{ first_name }}",
            html="<p>Hello {{ first_name }}</p>",
            recipients=[{"email": "ann@example.org", "first_name": "Ann"}],
        )
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        /,
        *,
        recipients: Recipients = None,
        folder: str | Path | None = None,
        **keys: Any,
    ) -> None:
        self.folder = Path(folder if folder is not None else ".").resolve()
        self._data = _normalise(settings, keys)
        self._frame: pl.DataFrame | None = None
        self._file: Path | None = None
        source = self._data.setdefault("source", {})
        if not isinstance(source, dict):
            raise CampaignError("source: expected a table", file=SHOWN, fix="pass a dict")
        if recipients is None:
            if not source.get("path"):
                raise CampaignError(
                    "recipients: missing",
                    file=SHOWN,
                    fix="pass recipients= (a DataFrame, a list of dicts or a file path)",
                )
            self._file = self.folder / str(source["path"])
        elif isinstance(recipients, str | Path):
            self._file = self.folder / Path(recipients).expanduser()
        else:
            self._frame = _frame_of(recipients)
        if self._file is not None and not self._file.is_file():
            raise SourceError(
                "the recipient file does not exist", file=str(self._file), fix="check the path"
            )
        if source.get("path") and recipients is not None:
            raise CampaignError(
                "source.path: given as well as recipients=", file=SHOWN, fix="keep only one"
            )
        # Validated now against the folder the paths are relative to, so a mistake shows
        # where it was made, not at run time.
        self._checked: CampaignSettings = build_campaign(
            self._written_data(), folder=self.folder, shown=SHOWN
        )
        self._key_file = self._checked.api_key_file
        self._path: Path | None = None  # set by from_file: the campaign file itself

    @classmethod
    def from_file(cls, path: str | Path) -> Campaign:
        """A campaign file (``campaign.toml``, or its folder) as it is, for check, preview
        and run from Python: the same campaign as ``batchsend run PATH``, nothing copied.

        Example::

            run = Campaign.from_file("samples/newsletter").run(sandbox=True)
        """
        checked = load_campaign(path)
        self = cls.__new__(cls)
        self.folder = checked.folder
        self._data = tomllib.loads(checked.path.read_text(encoding="utf-8-sig"))
        self._frame = None
        self._file = checked.source
        self._checked = checked
        self._key_file = checked.api_key_file
        self._path = checked.path
        return self

    @property
    def name(self) -> str:
        """The campaign's name, and the name of the folder it is written to."""
        if self._path is not None:
            return self._checked.name
        name = self._data.get("name")
        if name:
            return str(name)
        blob = dump_campaign(self._data).encode()
        return "campaign-" + hashlib.sha256(blob).hexdigest()[:10]

    @property
    def settings(self) -> dict[str, Any]:
        """The campaign file's keys as given (a copy)."""
        return copy.deepcopy(self._data)

    @property
    def recipients(self) -> pl.DataFrame:
        """The recipients as a DataFrame (a file is read as ``check`` would read it)."""
        if self._frame is not None:
            return self._frame
        assert self._file is not None
        spec = dataclasses.replace(self._checked.source_settings, path=self._file)
        return pl.concat(list(iter_batches(spec)), how="vertical_relaxed")

    def __repr__(self) -> str:
        count = f"{self._frame.height} rows" if self._frame is not None else str(self._file)
        return f"<batchsend.Campaign {self.name!r} ({self._data.get('provider')}, {count})>"

    # -- what the command line's check and preview do ---------------------------------------

    def check(self, *, db: str | Path | None = None, workers: int | None = None) -> Check:
        """Read and render every row, send nothing, and say what is wrong.

        ``db``: a database whose suppression list is consulted (read only). ``workers``:
        the processes that check the rows (None: the machine's cores; the same result
        with any number).

        Example::

            result = campaign.check()
            assert result.ok, result
        """
        listed = database_suppressions(db)
        with tempfile.TemporaryDirectory(prefix="batchsend-check-") as tmp:
            campaign = self._settings_in(Path(tmp))
            return Check(preflight(campaign, suppressed=listed, workers=workers))

    def preview(self, row: int = 1, *, out_dir: str | Path | None = None) -> Preview:
        """Row ``row`` (1-based) rendered, with the request body its provider would get.

        ``out_dir``: also write ``row-N.html``, ``.txt`` and ``.json`` there.
        """
        with tempfile.TemporaryDirectory(prefix="batchsend-preview-") as tmp:
            return render_preview(self._settings_in(Path(tmp)), row, out_dir)

    # -- sending -------------------------------------------------------------------------

    def run(
        self,
        *,
        db: str | Path = DEFAULT_DB,
        sandbox: bool = False,
        base_url: str | None = None,
        limit: int | None = None,
        test_to: str | None = None,
        dry_run: bool = False,
        skip_invalid: bool = False,
        new_run: bool = False,
        again: bool = False,
        skip_sent: bool = False,
        api_key_file: str | Path | None = None,
        report_path: str | Path | None = None,
        progress: bool | None = None,
        http_client: str = "aiohttp",
        workers: int | None = None,
    ) -> Run:
        """Preflight and send, recording every row in ``db``; the options of ``batchsend run``.

        ``sandbox=True`` sends to a sandbox started for the run (nothing leaves the
        machine, no key needed). Raises what :func:`batchsend.run.run_campaign` raises:
        :class:`~batchsend.errors.PreflightError` for bad rows (nothing sent), and the
        refusals of a campaign already sent or unfinished.

        Example::

            run = campaign.run(sandbox=True)
            print(run.counts)
        """
        key_file = api_key_file or self._key_file
        result = run_campaign(
            self.write(db),
            db_path=db,
            sandbox=sandbox,
            base_url=base_url,
            limit=limit,
            test_to=test_to,
            dry_run=dry_run,
            skip_invalid=skip_invalid,
            new_run=new_run,
            again=again,
            skip_sent=skip_sent,
            api_key_file=key_file,
            report_path=report_path,
            progress=progress,
            http_client=http_client,
            workers=workers,
        )
        return Run(result.run_id, db=db, result=result, api_key_file=key_file)

    async def arun(self, **options: Any) -> Run:
        """:meth:`run` for ``async`` code: the send runs in a worker thread, the loop goes on.

        Cancelling the awaiting task is a Ctrl-C: the requests in flight finish and are
        recorded, the run is left ``interrupted`` (continue it with :meth:`Run.resume`
        on :func:`runs`' id), then :class:`asyncio.CancelledError` is raised.
        """
        return await in_worker(lambda: self.run(**options))

    # -- the campaign folder -------------------------------------------------------------

    def write(self, db: str | Path = DEFAULT_DB) -> Path:
        """Write the campaign folder beside ``db`` (see the module docstring); its file.

        Files are replaced only when their content changed, so an unchanged campaign
        keeps the fingerprints its runs recorded. A campaign :meth:`from_file` is not
        copied: its own file is returned.
        """
        if self._path is not None:
            return self._path  # a campaign file: run as it is
        folder = Path(db).resolve().parent / CAMPAIGNS_FOLDER / _slug(self.name)
        return self._write_into(folder)

    def _settings_in(self, folder: Path) -> CampaignSettings:
        if self._path is not None:
            return load_campaign(self._path)
        return load_campaign(self._write_into(folder))

    def _written_data(self) -> dict[str, Any]:
        """The keys as written to the campaign folder's ``campaign.toml``."""
        data = copy.deepcopy(self._data)
        data.pop("api_key_file", None)  # stays where it is: passed to the run instead
        source = data.setdefault("source", {})
        if self._frame is not None:
            source.update(path="recipients.parquet", format="parquet")
        else:
            assert self._file is not None
            source["path"] = "recipients" + "".join(self._file.suffixes[-1:])
        return data

    def _write_into(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        data = self._written_data()
        recipients = folder / data["source"]["path"]
        if self._frame is not None:
            partial = folder / "recipients.parquet.partial"
            self._frame.write_parquet(partial)
            _replace_if_changed(partial, recipients)
        else:
            assert self._file is not None
            _copy_if_changed(self._file, recipients)
        for path in campaign_files(self._checked)[1:]:  # [0] is the campaign file itself
            _copy_if_changed(path, folder / path.relative_to(self.folder))
        toml = folder / "campaign.toml.partial"
        toml.write_text(dump_campaign(data), encoding="utf-8")
        return _replace_if_changed(toml, folder / "campaign.toml")


@dataclass(frozen=True, slots=True)
class Check:
    """What :meth:`Campaign.check` found: ``ok``, the counts, ``problems`` as a table.

    ``str(check)`` is the report ``batchsend check`` prints.
    """

    report: PreflightReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def rows(self) -> int:
        return self.report.rows

    @property
    def sendable(self) -> int:
        return self.report.sendable

    @property
    def skipped(self) -> dict[str, int]:
        """Rows skipped, by reason (``invalid``, ``duplicate``, ``suppressed``)."""
        return dict(self.report.skipped_by_reason)

    @property
    def estimated_requests(self) -> int:
        return self.report.estimated_requests

    @property
    def problems(self) -> pl.DataFrame:
        """One row per problem: ``row``, ``column``, ``problem``, ``fix``."""
        return pl.DataFrame(
            {
                "row": [p.row for p in self.report.problems],
                "column": [p.column for p in self.report.problems],
                "problem": [p.message for p in self.report.problems],
                "fix": [p.fix for p in self.report.problems],
            },
            schema={"row": pl.Int64, "column": pl.String, "problem": pl.String, "fix": pl.String},
        )

    def __str__(self) -> str:
        return format_report(self.report)


class Run:
    """A run recorded in a database: its state and counts, report, summary and resume.

    :meth:`Campaign.run` returns one; :meth:`open` finds one by its id. ``result`` is
    what the last call here did (:class:`~batchsend.sending.RunResult`, None for a run
    only opened).
    """

    def __init__(
        self,
        run_id: str,
        *,
        db: str | Path = DEFAULT_DB,
        result: RunResult | None = None,
        api_key_file: str | Path | None = None,
    ) -> None:
        self.run_id = run_id
        self.db = Path(db)
        self.result = result
        self._key_file = api_key_file

    @classmethod
    def open(cls, run_id: str, *, db: str | Path = DEFAULT_DB) -> Run:
        """The run ``run_id`` of ``db``; :class:`~batchsend.errors.InputError` if absent."""
        with open_db(db) as store:
            find_run(store, run_id)
        return cls(run_id, db=db)

    def __repr__(self) -> str:
        return f"<batchsend.Run {self.run_id} ({self.state.value}) in {self.db}>"

    @property
    def state(self) -> RunState:
        """The run's state now (a ``running`` run whose process is gone: ``interrupted``)."""
        with open_db(self.db) as store:
            return effective_state(find_run(store, self.run_id))

    @property
    def counts(self) -> dict[str, int]:
        """How many rows are in each state, as recorded now (every state listed)."""
        with open_db(self.db) as store:
            find_run(store, self.run_id)
            return store.counts(self.run_id)

    def report(
        self, *, states: Iterable[str] | None = None, with_input: bool = True
    ) -> pl.DataFrame:
        """The run's report as one DataFrame, one row per recipient (``batchsend report``).

        ``states`` keeps only rows in those states (``["failed", "unknown"]``);
        ``with_input`` joins the recipients' other columns.
        """
        frames = list(iter_report(self.db, self.run_id, states=states, with_input=with_input))
        return pl.concat(frames, how="vertical_relaxed")

    def summary(self) -> RunSummary:
        """The one-page summary's figures: counts, reasons, attempts over time."""
        return read_summary(self.db, self.run_id)

    def resume(
        self,
        *,
        force: bool = False,
        retry_failed: bool = False,
        resend_unknown: bool = False,
        sandbox: bool = False,
        base_url: str | None = None,
        limit: int | None = None,
        api_key_file: str | Path | None = None,
        report_path: str | Path | None = None,
        progress: bool | None = None,
        http_client: str = "aiohttp",
        workers: int | None = None,
    ) -> Run:
        """Continue the run (``batchsend resume``): what was in flight becomes unknown,
        the pending rows are sent; ``retry_failed`` / ``resend_unknown`` as on the command
        line. Returns this run with :attr:`result` set."""
        key_file = api_key_file or self._key_file
        self.result = resume_run(
            self.run_id,
            db_path=self.db,
            force=force,
            retry_failed=retry_failed,
            resend_unknown=resend_unknown,
            sandbox=sandbox,
            base_url=base_url,
            limit=limit,
            api_key_file=key_file,
            report_path=report_path,
            progress=progress,
            http_client=http_client,
            workers=workers,
        )
        return self

    async def aresume(self, **options: Any) -> Run:
        """:meth:`resume` for ``async`` code (in a worker thread, as :meth:`Campaign.arun`)."""
        return await in_worker(lambda: self.resume(**options))


def open_run(run_id: str, *, db: str | Path = DEFAULT_DB) -> Run:
    """The run ``run_id`` recorded in ``db`` (:meth:`Run.open`).

    Example::

        bs.open_run("20261203T101500-ab12cd").report(states=["failed"])
    """
    return Run.open(run_id, db=db)


def runs(*, db: str | Path = DEFAULT_DB) -> pl.DataFrame:
    """Every run in ``db``, newest first, one row each (``batchsend runs``): ``run_id``,
    ``campaign``, ``state``, ``started_at``, ``ended_at``, a column per recipient state,
    and ``resume``, the command that continues it (null when there is nothing to do).

    Example::

        bs.runs().filter(pl.col("state") == "interrupted")
    """
    rows = []
    for listing in list_runs(db):
        run = listing.run
        rows.append(
            {
                "run_id": run.id,
                "campaign": run.campaign_name,
                "campaign_path": run.campaign_path,
                "state": listing.state.value,
                "started_at": run.started_at,
                "ended_at": run.ended_at,
                **{state.value: run.counts.get(state.value, 0) for state in RecipientState},
                "is_test": run.is_test,
                "dry_run": run.dry_run,
                "resume": listing.resume,
            }
        )
    schema = {
        "run_id": pl.String,
        "campaign": pl.String,
        "campaign_path": pl.String,
        "state": pl.String,
        "started_at": pl.String,
        "ended_at": pl.String,
        **{state.value: pl.Int64 for state in RecipientState},
        "is_test": pl.Boolean,
        "dry_run": pl.Boolean,
        "resume": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


# -- building the campaign file's keys ----------------------------------------------------


def _normalise(settings: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The campaign file's keys from ``settings`` and the keyword arguments."""
    data: dict[str, Any] = copy.deepcopy(dict(settings or {}))
    message_keys = set(keys("message"))
    for key, value in extra.items():
        if key in ("sender", "reply_to") and isinstance(value, str):
            name, email = parseaddr(value) if "<" in value else ("", value)
            data[key] = {"email": email or value, **({"name": name} if name else {})}
        elif key in message_keys and key not in tables()[""].model_fields:
            data.setdefault("message", {})[key] = value
        else:
            data[key] = value
    message = data.get("message")
    if isinstance(message, dict):
        for key in _TEMPLATE_KEYS:
            if isinstance(message.get(key), Path):
                message[f"{key}_file"] = str(message.pop(key))
        for key in [k for k, v in message.items() if isinstance(v, Path)]:
            message[key] = str(message[key])
    for key, value in list(data.items()):
        if isinstance(value, Path):
            data[key] = str(value)
    return data


def _frame_of(recipients: Any) -> pl.DataFrame:
    """The recipients as a polars DataFrame, whatever form they came in."""
    if isinstance(recipients, pl.LazyFrame):
        recipients = recipients.collect()
    if isinstance(recipients, pl.DataFrame):
        frame = recipients
    elif type(recipients).__module__.partition(".")[0] == "pandas":
        frame = _from_pandas(recipients)
    elif isinstance(recipients, Sequence) and all(isinstance(r, Mapping) for r in recipients):
        if not recipients:
            raise SourceError("the list of recipients is empty", file="recipients")
        frame = pl.from_dicts(list(recipients), infer_schema_length=None)
    else:
        raise CampaignError(
            f"recipients: expected a DataFrame, a list of dicts or a file path, got"
            f" {type(recipients).__name__}",
            file=SHOWN,
        )
    if frame.height == 0:
        raise SourceError("the recipients table has no rows", file="recipients")
    return frame


def _from_pandas(frame: Any) -> pl.DataFrame:
    try:
        return pl.from_pandas(frame)
    except ImportError:
        # polars needs pyarrow for pandas' text (object) columns; without it, the values
        # go across as Python objects, pandas' missing values (NaN, None, NaT) as null.
        clean = frame.astype(object).where(frame.notna(), None)
        return pl.DataFrame({str(c): clean[c].tolist() for c in clean.columns}, strict=False)


def _slug(name: str) -> str:
    return _SLUG.sub("-", name).strip("-.")[:80] or "campaign"


def _replace_if_changed(new: Path, target: Path) -> Path:
    """Move ``new`` over ``target`` unless ``target`` already holds the same bytes."""
    if target.is_file() and target.read_bytes() == new.read_bytes():
        new.unlink()
    else:
        new.replace(target)
    return target


def _copy_if_changed(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    _replace_if_changed(partial, target)
