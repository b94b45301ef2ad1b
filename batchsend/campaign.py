"""The campaign file: a TOML description of one campaign, validated into a frozen value.

:func:`load_campaign` reads ``campaign.toml`` and returns a :class:`Campaign`. Every key
is checked against the schema below: an unknown key is an error that names it and the
nearest valid key, a value of the wrong type names the key and the expected type. Each
key, its type, default and help is declared once, as a field of the pydantic models below
(:class:`CampaignFile` and its tables); ``python scripts/campaign_reference.py README.md``
writes the README's "Campaign file reference" tables from them. Paths
(recipient file, template files, attachments, suppression lists, key file) are relative
to the folder holding the campaign file.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from batchsend.apikeys import DEFAULT_ENV_VAR, KEY_ENV_PREFIX, remember_env
from batchsend.confinement import Confinement, config_dir
from batchsend.errors import CampaignError
from batchsend.message import Address
from batchsend.source import SourceSpec
from batchsend.transport import base_url_problem

PROVIDERS = ("v1", "tosend")
STREAM_TYPES = ("transactional", "broadcast", "shared")

_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMATS_BY_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".xlsx": "xlsx"}


def _key(default: Any, help: str, *, shown: str | None = None, only: str | None = None) -> Any:
    """One campaign-file key: its default, its README help, how the README shows the
    default when the value alone would mislead (``shown``), and the one provider that
    understands it (``only``)."""
    extra: dict[str, Any] = {}
    if shown is not None:
        extra["shown"] = shown
    if only is not None:
        extra["only"] = only
    return Field(default, description=help, json_schema_extra=extra or None)


class _Table(BaseModel):
    """A table of the campaign file: no unknown keys, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _none_if_empty(value: str | None) -> str | None:
    return value or None


class SourceTable(_Table):
    """``[source]``: the recipient file."""

    path: str | None = _key(None, "CSV, Parquet or Excel (`.xlsx`) file", shown="required")
    format: str = _key(
        "auto",
        '`"csv"`, `"parquet"`, `"xlsx"`, or `"auto"` (by extension: `.parquet`/`.pq` is'
        " Parquet, `.xlsx` is Excel, anything else CSV)",
    )
    sheet: str | None = _key(None, "the sheet to read (`.xlsx` only)", shown="the first sheet")
    delimiter: str = _key(",", "CSV field separator")
    quote_char: str = _key(
        '"', "CSV quote character (fields may hold delimiters and line breaks)", shown="`'\"'`"
    )
    encoding: str = _key(
        "utf-8",
        'UTF-8 with or without BOM; any Python codec name (e.g. `"latin-1"`) otherwise',
    )


class Columns(_Table):
    """Which column holds what (``[columns]``); other columns are template variables."""

    email: str = _key("email", "the recipient's address")
    name: str | None = _key(None, "the recipient's display name")
    cc: str | None = _key(None, "cc addresses, several in one cell")
    bcc: str | None = _key(None, "bcc addresses, several in one cell")
    attachments: str | None = _key(None, "per-row attachment paths, several separated by `;`")
    list_separators: str = _key(";,", "characters that separate addresses in `cc`/`bcc` cells")
    metadata: Annotated[tuple[str, ...], Field(strict=False)] = _key(
        (),
        "columns copied to the message's metadata (v1 stores and echoes them in webhooks)"
        " and to reports",
        shown="`[]`",
    )

    rename: dict[str, str] = _key(
        {},
        '`[columns.rename]`: column name in the file = the name to use instead (`"First Name"'
        ' = "first"`); every other setting and the templates then use the new name',
    )
    required: Annotated[tuple[str, ...], Field(strict=False)] = _key(
        (),
        "columns (or their aliases) that must not be empty: a row with an empty one is invalid",
        shown="`[]`",
    )

    _empty_is_none = field_validator("name", "cc", "bcc", "attachments")(_none_if_empty)


class AddressTable(_Table):
    """``[sender]`` or ``[reply_to]``."""

    email: str | None = _key(None, "the address")
    name: str | None = _key(None, "display name")


class SenderTable(AddressTable):
    email: str | None = _key(
        None, "the From address; its domain must be verified at the provider", shown="required"
    )
    name: str | None = _key(None, "From display name")


class ReplyToTable(AddressTable):
    email: str | None = _key(None, "Reply-To address")
    name: str | None = _key(None, "Reply-To display name")


def _file_of(key: str) -> str:
    return f"`{key}` read from this file (relative to the campaign folder)"


class MessageTable(_Table):
    """``[message]``: templates and per-message fields."""

    subject: str | None = _key(
        None,
        "subject template; CR, LF or NUL in the result make the row invalid",
        shown="required",
    )
    subject_file: str | None = _key(None, _file_of("subject"))
    html: str | None = _key(None, "HTML body template (html or text is required)")
    html_file: str | None = _key(None, _file_of("html"))
    text: str | None = _key(
        None, "text body template; without one, text is generated from the HTML (inscriptis)"
    )
    text_file: str | None = _key(None, _file_of("text"))
    ical: str | None = _key(
        None,
        "calendar invite template (RFC 5545; line ends become CRLF). *v1* sends it as"
        " `icalEvent`; *tosend* has no calendar field, so it travels as an `invite.ics`"
        " attachment (`text/calendar; method=REQUEST`)",
    )
    ical_file: str | None = _key(None, _file_of("ical"))
    headers: dict[str, str] = _key({}, "`[message.headers]`: header name = value template")
    tag: str | None = _key(None, "*v1*: analytics tag template", only="v1")
    tags: dict[str, str] = _key(
        {},
        "*tosend*: `[message.tags]` name = value template (names <= 128, values <= 256 chars)",
        only="tosend",
    )
    track_opens: bool | None = _key(None, "*v1*: open tracking", shown="account setting", only="v1")
    track_clicks: bool | None = _key(
        None, "*v1*: click tracking", shown="account setting", only="v1"
    )
    stream_type: str | None = _key(
        None,
        '*v1*: `"transactional"`, `"broadcast"` or `"shared"`',
        shown='`"shared"` at the provider',
        only="v1",
    )
    domain: str | None = _key(
        None, "*v1*: sending domain", shown="first verified domain", only="v1"
    )
    unsubscribe_url: str | None = _key(
        None,
        "RFC 8058 one-click unsubscribe: an `https://` URL template; adds"
        " `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`",
    )


class AttachmentTable(_Table):
    """``[[attachments]]``: a static file attached to every message."""

    path: str | None = _key(None, "file inside the campaign folder", shown="required")
    filename: str | None = _key(None, "name shown to the recipient", shown="the file's name")
    content_type: str | None = _key(None, "MIME type", shown="guessed from the name")
    content_id: str | None = _key(
        None,
        "*tosend*: inline image, referenced in HTML as `cid:<content_id>`",
        only="tosend",
    )


class SuppressionTable(_Table):
    """``[suppression]``: addresses never to send to."""

    files: list[str] = _key([], "CSV files of addresses (earlier unsubscribes, bounces)")
    column: str = _key(
        "email",
        "the column holding the address (the first column when no header has this name)",
    )


class SendSettings(_Table):
    """How fast and how hard to send (``[send]``)."""

    concurrency: int = _key(16, "requests in flight at once")
    rate: float | None = _key(None, "requests per second", shown="none (no limit)")
    recipients_rate: float | None = _key(
        None,
        "recipients (to + cc + bcc addresses) per second; holds together with `rate`",
        shown="*tosend*: the account's `limit_per_second`; else no limit",
    )
    batch_size: int = _key(
        100, "*tosend*: emails per batch request (1..100; 1 = single-send endpoint)"
    )
    max_recipients_per_field: int = _key(50, "most addresses in each of to, cc and bcc")
    timeout: float = _key(30.0, "seconds per request")
    max_attempts: int = _key(5, "tries per request before a message is `failed`")
    max_retry_time: float = _key(300.0, "seconds of retrying per request before giving up")
    idempotent_provider: bool = _key(
        False,
        "the provider honours `Idempotency-Key` (neither documented one does): requests it"
        " may have processed are retried under the same key instead of ending `unknown`",
    )
    on_server_error: str = _key(
        "unknown",
        'a 5xx answer leaves its rows `unknown`; `"retry"` sends them again, accepting that'
        " the provider may deliver twice",
    )


class MergeSettings(_Table):
    """Merging identical messages into one with several recipients (``[merge]``)."""

    enabled: bool = _key(False, "merge rows whose rendered messages are identical")
    group_column: str | None = _key(None, "only merge rows with the same value in this column")
    placement: str = _key("bcc", 'where merged recipients go: `"bcc"` or `"to"`')

    _empty_is_none = field_validator("group_column")(_none_if_empty)


class CampaignFile(_Table):
    """The whole campaign file as written: the top-level keys and one field per table."""

    name: str | None = _key(None, "shown in reports", shown="the folder's name")
    provider: str | None = _key(
        None,
        '`"v1"` (MailerLogic single send) or `"tosend"` (ToSend)',
        shown="required",
    )
    base_url: str | None = _key(
        None,
        'API root, e.g. `"http://127.0.0.1:8025"` for the sandbox; a host that is not'
        " loopback is used only when given with `--base-url` (see [API keys](#api-keys))",
    )
    api_key_env: str = _key(
        DEFAULT_ENV_VAR,
        "environment variable holding the API key; must start with `BATCHSEND_`",
    )
    api_key_file: str | None = _key(
        None,
        "file holding the key (read instead of the environment variable): in the campaign"
        " folder or `~/.config/batchsend/`",
    )
    admin_key_file: str | None = _key(
        None,
        "*tosend*: file holding the admin key (`tsend_admin_...`, scope `emails:read`) that"
        " `batchsend reconcile` reads the delivery log with (read instead of"
        " `BATCHSEND_ADMIN_KEY`): in the campaign folder or `~/.config/batchsend/`",
        only="tosend",
    )
    max_render_bytes: int = _key(
        5_000_000,
        "most characters one message may render to (subject + HTML + text + invite); a row"
        " over it is invalid. Also the most a single value built by a template may hold; all"
        " values built for one row may add up to ten times it",
    )
    source: SourceTable = SourceTable()
    columns: Columns = Columns()
    sender: SenderTable = SenderTable()
    reply_to: ReplyToTable = ReplyToTable()
    message: MessageTable = MessageTable()
    attachments: list[AttachmentTable] = []
    suppression: SuppressionTable = SuppressionTable()
    send: SendSettings = SendSettings()
    merge: MergeSettings = MergeSettings()


def tables() -> dict[str, type[_Table]]:
    """Every table of the campaign file by name, the top level as ``""``."""
    out: dict[str, type[_Table]] = {"": CampaignFile}
    for name, field in CampaignFile.model_fields.items():
        inner = _table_type(field.annotation)
        if inner is not None:
            out[name] = inner
    return out


def _table_type(annotation: Any) -> type[_Table] | None:
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, _Table):
        return annotation
    return None


def keys(table: str) -> dict[str, FieldInfo]:
    """The keys a table may hold (for the top level: not the tables)."""
    fields = tables()[table].model_fields
    return {k: f for k, f in fields.items() if _table_type(f.annotation) is None}


def kind(annotation: Any) -> str:
    """How an error and the README name a key's type."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation) or annotation
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        list: "array of strings",
        tuple: "array of strings",
        dict: "table of strings",
    }[origin]


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """A template: inline text from the campaign file or a file under the campaign folder.

    ``name`` is what Jinja knows it by (and what errors name): the file's path relative
    to the campaign folder, or ``campaign.toml:<key>`` for inline text.
    """

    name: str
    inline: str | None = None
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class StaticAttachment:
    """A file attached to every message (``[[attachments]]``)."""

    path: str  # as written, relative to the campaign folder
    filename: str
    content_type: str | None
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """What each message is made of (``[message]``, ``[sender]``, ``[reply_to]``)."""

    sender: Address
    subject: TemplateRef
    html: TemplateRef | None = None
    text: TemplateRef | None = None
    ical: TemplateRef | None = None
    reply_to: Address | None = None
    headers: tuple[tuple[str, TemplateRef], ...] = ()
    tag: TemplateRef | None = None
    tags: tuple[tuple[str, TemplateRef], ...] = ()
    track_opens: bool | None = None
    track_clicks: bool | None = None
    stream_type: str | None = None
    domain: str | None = None
    unsubscribe_url: TemplateRef | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    """A validated campaign. Build it with :func:`load_campaign`."""

    path: Path
    folder: Path
    name: str
    provider: Literal["v1", "tosend"]
    base_url: str | None
    api_key_env: str
    api_key_file: Path | None
    source_settings: SourceSpec
    columns: Columns
    message: MessageSettings
    attachments: tuple[StaticAttachment, ...]
    suppression_files: tuple[Path, ...]
    suppression_column: str
    send: SendSettings
    merge: MergeSettings
    max_render_bytes: int
    # ToSend: the admin key's file, for reconcile (None: $BATCHSEND_ADMIN_KEY or the CLI)
    admin_key_file: Path | None = None
    #: Paths outside the folder the user allowed (``--allow-outside``), as real paths.
    allowed_paths: tuple[Path, ...] = ()

    @property
    def confinement(self) -> Confinement:
        """Where this campaign may read files from (see :mod:`batchsend.confinement`)."""
        return Confinement(self.folder, self.allowed_paths)

    @property
    def source(self) -> Path:
        """The recipient file."""
        return self.source_settings.path

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        return self.columns.metadata

    @property
    def sender_domain(self) -> str:
        return self.message.sender.email.rpartition("@")[2]

    def templates(self) -> tuple[TemplateRef, ...]:
        """Every template the campaign renders, in a fixed order."""
        m = self.message
        refs = [m.subject, m.html, m.text, m.ical, m.tag, m.unsubscribe_url]
        refs += [t for _, t in m.headers] + [t for _, t in m.tags]
        return tuple(r for r in refs if r is not None)


def load_campaign(path: str | Path, *, allow_outside: Iterable[str | Path] = ()) -> Campaign:
    """Read and validate a campaign file.

    Every file it names must lie, symlinks resolved, inside its folder or inside one of
    ``allow_outside`` (the user's ``--allow-outside`` options); a key file may also lie
    in the per-user config folder. The API key in the environment (``BATCHSEND_API_KEY``
    and the variable the campaign names) is registered for redaction before any other
    file is read.

    Raises :class:`CampaignError` (exit 2) naming the key and how to fix it.

    Example::

        campaign = load_campaign("samples/newsletter/campaign.toml")
    """
    path = Path(path)
    if path.is_dir():
        path = path / "campaign.toml"
    shown = str(path)
    remember_env(DEFAULT_ENV_VAR)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CampaignError(
            f"cannot read the campaign file: {exc.strerror}",
            file=shown,
            fix="give the path of a campaign.toml (batchsend init DIR writes one)",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CampaignError("the campaign file is not UTF-8", file=shown) from None
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(
            f"not valid TOML: {exc}", file=shown, fix="correct the TOML syntax at that line"
        ) from None
    return _Builder(path.resolve(), shown, data, allow_outside).build()


def build_campaign(
    data: dict[str, Any],
    *,
    folder: str | Path,
    shown: str,
    path: str | Path | None = None,
    allow_outside: Iterable[str | Path] = (),
) -> Campaign:
    """Validate ``data`` (the campaign file's keys as Python values) into a :class:`Campaign`.

    The same checks as :func:`load_campaign`, with the same messages: an error names the
    key as ``shown: message.subject: ...``. Paths are relative to ``folder``; ``path``
    is the campaign file the campaign will be known by (default ``folder/campaign.toml``).

    Example::

        campaign = build_campaign(
            {"provider": "tosend", "sender": {"email": "news@example.com"},
             "message": {"subject": "Hi", "text": "Hello"},
             "source": {"path": "recipients.csv"}},
            folder=".", shown="my campaign",
        )
    """
    remember_env(DEFAULT_ENV_VAR)
    file = Path(path) if path is not None else Path(folder) / "campaign.toml"
    return _Builder(file.resolve(), shown, data, allow_outside).build()


def dump_campaign(data: dict[str, Any]) -> str:
    """``data`` (campaign keys as :func:`build_campaign` takes them) as campaign-file TOML.

    Strings are written as TOML basic strings (JSON's escapes are valid TOML), so any
    text survives the round trip through :func:`load_campaign`.
    """
    top = {k: v for k, v in data.items() if not isinstance(v, dict | list) or k not in tables()}
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items() if v is not None]
    for name in tables():
        value = data.get(name)
        if not name or value is None:
            continue
        if isinstance(value, list):
            for item in value:
                lines += ["", f"[[{name}]]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
            continue
        inner = {k: v for k, v in value.items() if not isinstance(v, dict)}
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in inner.items() if v is not None]
        for k, v in value.items():
            if isinstance(v, dict):
                lines += ["", f"[{name}.{k}]"]
                lines += [f"{_toml_value(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # TOML allows no raw DEL; JSON leaves it raw
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"a campaign file cannot hold {type(value).__name__} {value!r}")


def _nearest(key: str, valid: list[str]) -> str | None:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return match[0] if match else None


class _Builder:
    """Checks the parsed TOML against :class:`CampaignFile` and builds the :class:`Campaign`."""

    def __init__(
        self, path: Path, shown: str, data: dict[str, Any], allow_outside: Iterable[str | Path]
    ) -> None:
        self.path = path
        self.folder = path.parent
        self.shown = shown
        self.data = data
        self.confinement = Confinement.of(self.folder, allow_outside)

    def confined(self, key: str, raw: str, *, extra: tuple[Path, ...] = ()) -> Path:
        """The file ``raw`` names, refused unless its real path is where it may be read."""
        path = self.folder / raw
        if not self.confinement.contains(path, extra=extra):
            raise self.fail(
                key, f"{raw!r} is outside the campaign folder", fix=self.confinement.fix(path)
            )
        return path

    def fail(self, key: str, message: str, fix: str | None = None) -> CampaignError:
        return CampaignError(f"{key}: {message}", file=self.shown, fix=fix)

    # -- the file's shape ------------------------------------------------------------------

    def parse(self) -> CampaignFile:
        """The file as a :class:`CampaignFile`; the first unknown key or wrong type raises."""
        for name, table in tables().items():
            raw = self.data.get(name)
            if raw is None or not name:
                continue
            if CampaignFile.model_fields[name].annotation is table:
                if not isinstance(raw, dict):
                    raise self.fail(name, "expected a table", fix=f"write it as [{name}]")
            elif not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
                raise self.fail(name, "expected an array of tables", "write [[attachments]]")
        try:
            return CampaignFile.model_validate(self.data)
        except ValidationError as exc:
            raise self.translate(exc.errors()[0]) from None

    def translate(self, error: Any) -> CampaignError:
        loc = list(error["loc"])
        table = loc.pop(0) if len(loc) > 1 and loc[0] in tables() else ""
        index = loc.pop(0) if table and isinstance(loc[0], int) else None
        key = str(loc[0])
        if error["type"] == "extra_forbidden":
            return self.unknown(table, key, index)
        value: Any = self.data
        for part in error["loc"][: len(error["loc"]) - len(loc) + 1]:
            value = value[part]
        dotted = ".".join(p for p in (table, key) if p)
        if index is not None:
            dotted = f"{table}[{index}].{key}"
        expected = kind(tables()[table].model_fields[key].annotation)
        return self.fail(dotted, f"expected a {expected}, got {type(value).__name__} {value!r}")

    def unknown(self, table: str, key: str, index: int | None = None) -> CampaignError:
        dotted = f"{table}.{key}" if table else key
        if table == "" and key in ("api_key", "key", "token", "secret"):
            return self.fail(
                dotted,
                "API keys never go in the campaign file",
                fix="set api_key_env (an environment variable name) or api_key_file",
            )
        valid = list(keys(table)) + (sorted(n for n in tables() if n) if table == "" else [])
        near = _nearest(key, valid)
        if near is None:  # the key may belong in another table
            for other in tables():
                if key in keys(other):
                    near = f"[{other}] {key}" if other else key
                    break
        hint = f"did you mean {near!r}?" if near else "remove it"
        where = f"in [{table}]" if table else "at the top level"
        return self.fail(
            dotted,
            f"unknown key {where}; {hint}",
            fix=f"valid keys {where}: {', '.join(valid)} (see README: campaign file reference)",
        )

    # -- building -------------------------------------------------------------------------

    def build(self) -> Campaign:
        self.check_api_key_env(self.data.get("api_key_env", DEFAULT_ENV_VAR))
        f = self.parse()
        provider = f.provider
        if provider is None:
            raise self.fail("provider", "missing", fix='set provider = "v1" or "tosend"')
        if provider not in PROVIDERS:
            near = _nearest(provider, list(PROVIDERS))
            raise self.fail(
                "provider",
                f"unknown provider {provider!r}" + (f"; did you mean {near!r}?" if near else ""),
                fix='set provider = "v1" or "tosend"',
            )
        self.check_provider_keys(provider, f)

        self.check_send(f.send)
        self.check_merge(f.merge)
        message = self.build_message(f)
        self.check_columns(f.columns)
        if f.max_render_bytes <= 0:
            raise self.fail("max_render_bytes", "must be positive")
        base_url = f.base_url
        problem = base_url_problem(base_url) if base_url is not None else None
        if problem is not None:
            raise self.fail("base_url", f"{base_url!r} {problem}")
        return Campaign(
            path=self.path,
            folder=self.folder,
            name=f.name or self.folder.name,
            # checked against PROVIDERS above
            provider=provider,  # type: ignore[arg-type]
            base_url=base_url.rstrip("/") if base_url else None,
            api_key_env=f.api_key_env,
            api_key_file=self.key_file(f.api_key_file),
            admin_key_file=self.key_file(f.admin_key_file, "admin_key_file"),
            source_settings=self.build_source(f.source, f.columns),
            columns=f.columns,
            message=message,
            attachments=tuple(self.build_attachment(i, a) for i, a in enumerate(f.attachments)),
            suppression_files=tuple(
                self.confined("suppression.files", p) for p in f.suppression.files
            ),
            suppression_column=f.suppression.column,
            send=f.send,
            merge=f.merge,
            max_render_bytes=f.max_render_bytes,
            allowed_paths=self.confinement.allowed,
        )

    def key_file(self, raw: str | None, key: str = "api_key_file") -> Path | None:
        """A key file: in the campaign folder, an allowed path or the user's config folder."""
        if not raw:
            return None
        path = self.confined(key, str(Path(raw).expanduser()), extra=(config_dir(),))
        return path

    def check_api_key_env(self, value: Any) -> None:
        """Refuse anything but a BATCHSEND_ variable name; never shown: it may be the key.

        The key is sent to the provider: a campaign file naming AWS_SECRET_ACCESS_KEY or
        GITHUB_TOKEN would send that secret instead.
        """
        if isinstance(value, str) and _ENV_VAR_NAME.fullmatch(value):
            if value.startswith(KEY_ENV_PREFIX):
                remember_env(value)
                return
            raise self.fail(
                "api_key_env",
                f"names a variable outside {KEY_ENV_PREFIX}* (not shown: it may be an API key);"
                " batchsend sends what that variable holds to the provider, so a campaign"
                " file may only name a variable meant for batchsend",
                fix=f"put the key in {DEFAULT_ENV_VAR} (or another {KEY_ENV_PREFIX}... variable,"
                ' e.g. export BATCHSEND_TOSEND_KEY="$MY_KEY") and name that, or use api_key_file',
            )
        raise self.fail(
            "api_key_env",
            "is not an environment variable name (value not shown: it may be an API key)",
            fix="api_key_env names an environment variable, e.g. BATCHSEND_API_KEY; "
            "put the key itself in that variable or in api_key_file",
        )

    def check_provider_keys(self, provider: str, f: CampaignFile) -> None:
        for table in tables():
            values: list[BaseModel] = list(f.attachments) if table == "attachments" else []
            if table and table != "attachments":
                values = [getattr(f, table)]
            elif not table:  # the top level's own keys
                values = [f]
            for key, field in keys(table).items():
                only = (field.json_schema_extra or {}).get("only")  # type: ignore[union-attr]
                if only is None or only == provider:
                    continue
                if any(getattr(v, key) != field.default for v in values):
                    other = {
                        "tag": "use [message.tags] on tosend",
                        "tags": "use message.tag on v1",
                    }.get(key, f"remove it, or use provider = {only!r}")
                    raise self.fail(
                        f"{table}.{key}" if table else key,
                        f"only provider {only!r} supports it",
                        fix=other,
                    )

    def build_source(self, t: SourceTable, columns: Columns) -> SourceSpec:
        if not t.path:
            raise self.fail(
                "source.path", "missing", fix='set [source] path = "recipients.csv" (or .parquet)'
            )
        path = self.confined("source.path", t.path)
        fmt = t.format
        if fmt == "auto":
            fmt = _FORMATS_BY_SUFFIX.get(path.suffix.lower(), "csv")
        if fmt not in ("csv", "parquet", "xlsx"):
            raise self.fail(
                "source.format", f"unknown format {fmt!r}", 'use "csv", "parquet" or "xlsx"'
            )
        if t.sheet is not None and fmt != "xlsx":
            raise self.fail("source.sheet", "only an .xlsx file has sheets", fix="remove it")
        renames = tuple(columns.rename.items())
        targets = [new for _, new in renames]
        for old, new in renames:
            if not new.strip() or any(c in new for c in "\r\n\0"):
                raise self.fail(f"columns.rename.{old}", f"{new!r} is not a usable column name")
            if targets.count(new) > 1:
                raise self.fail(
                    f"columns.rename.{old}",
                    f"{new!r} is the new name of more than one column",
                    fix="give each column a different name",
                )
        if fmt == "xlsx":
            return SourceSpec(path, "xlsx", sheet=t.sheet, rename=renames)
        for key, char in (("delimiter", t.delimiter), ("quote_char", t.quote_char)):
            if len(char) != 1:
                raise self.fail(f"source.{key}", f"must be one character, got {char!r}")
        try:
            import codecs

            codec = codecs.lookup(t.encoding)
        except LookupError:
            raise self.fail(
                "source.encoding", f"unknown encoding {t.encoding!r}", 'e.g. "utf-8", "latin-1"'
            ) from None
        # rot13, base64, hex, bz2...: codecs, but not between bytes and text.
        if not getattr(codec, "_is_text_encoding", True):
            raise self.fail(
                "source.encoding",
                f"{t.encoding!r} is not a text encoding (it cannot decode a file into text)",
                'name the file\'s character encoding, e.g. "utf-8", "latin-1", "cp1252"',
            )
        read_as: Literal["csv", "parquet"] = "parquet" if fmt == "parquet" else "csv"
        return SourceSpec(path, read_as, t.delimiter, t.quote_char, t.encoding, rename=renames)

    def check_columns(self, t: Columns) -> None:
        if not t.email:
            raise self.fail("columns.email", "must name the address column")
        if not t.list_separators:
            raise self.fail("columns.list_separators", "must hold at least one character")

    def address(self, table: str, t: AddressTable, required: bool) -> Address | None:
        if not t.email:
            if required:
                raise self.fail(
                    f"{table}.email", "missing", fix=f'set [{table}] email = "news@example.com"'
                )
            return None
        try:
            email = validate_email(t.email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise self.fail(
                f"{table}.email", f"{t.email!r} is not a valid address: {exc}"
            ) from None
        for key, value in (("email", t.email), ("name", t.name)):
            if value and any(c in value for c in "\r\n\0"):
                raise self.fail(f"{table}.{key}", "contains a line break or NUL")
        return Address(email, t.name or None)

    def template(self, key: str, t: MessageTable, required: bool = False) -> TemplateRef | None:
        inline, file = getattr(t, key), getattr(t, f"{key}_file")
        if inline is not None and file is not None:
            raise self.fail(
                f"message.{key}", f"both {key} and {key}_file are set", fix="keep only one"
            )
        if file is not None:
            return self.template_file(f"message.{key}_file", file)
        if inline is not None:
            if self.names_a_file(inline):
                raise self.fail(
                    f"message.{key}",
                    f"{inline!r} is a file name, which would be sent as the {key} itself",
                    fix=f"write {key}_file = {inline!r} to use the file as the template",
                )
            return TemplateRef(f"campaign.toml:message.{key}", inline=inline)
        if required:
            raise self.fail(f"message.{key}", "missing", fix=f"set {key} = ... or {key}_file = ...")
        return None

    def names_a_file(self, inline: str) -> bool:
        """Is an inline template really a path to a file in the campaign folder?

        ``html = "templates/x.html.j2"`` is valid TOML and a valid template: the message
        would say "templates/x.html.j2". A one-word value naming an existing file is that
        mistake.
        """
        value = inline.strip()
        if not value or len(value) > 255 or any(c.isspace() or c in "{}<>" for c in value):
            return False
        try:
            return (self.folder / value).is_file()
        except (OSError, ValueError):
            return False

    def template_file(self, key: str, file: str) -> TemplateRef:
        resolved = self.confined(key, file).resolve()
        if not resolved.is_file():
            raise self.fail(key, f"template file {file!r} not found", fix="check the path")
        if not resolved.is_relative_to(self.folder):  # in a path the user allowed
            return TemplateRef(resolved.as_posix(), file=resolved)
        return TemplateRef(resolved.relative_to(self.folder).as_posix(), file=resolved)

    def build_message(self, f: CampaignFile) -> MessageSettings:
        t = f.message
        sender = self.address("sender", f.sender, required=True)
        assert sender is not None
        html = self.template("html", t)
        text = self.template("text", t)
        if html is None and text is None:
            raise self.fail(
                "message.html",
                "a message needs html or text",
                fix="set html_file (and optionally text_file) in [message]",
            )
        if t.stream_type is not None and t.stream_type not in STREAM_TYPES:
            raise self.fail(
                "message.stream_type",
                f"{t.stream_type!r} is not one of {', '.join(STREAM_TYPES)}",
            )
        url = t.unsubscribe_url
        if url is not None and not url.startswith("https://"):
            raise self.fail(
                "message.unsubscribe_url",
                "RFC 8058 one-click unsubscribe needs an https:// URL",
                fix='e.g. unsubscribe_url = "https://example.com/unsub?u={{ id }}"',
            )
        headers = []
        for name, value in t.headers.items():
            if not name or any(c in name for c in ": \r\n\0\t"):
                raise self.fail(f"message.headers.{name}", "is not a valid header name")
            if name.lower() in ("list-unsubscribe", "list-unsubscribe-post") and url:
                raise self.fail(
                    f"message.headers.{name}", "is already set by message.unsubscribe_url"
                )
            headers.append((name, TemplateRef(f"campaign.toml:message.headers.{name}", value)))
        tags = [(k, TemplateRef(f"campaign.toml:message.tags.{k}", v)) for k, v in t.tags.items()]
        for k, _ in tags:
            if len(k) > 128:
                raise self.fail(f"message.tags.{k[:20]}...", "tag names are at most 128 chars")
        return MessageSettings(
            sender=sender,
            subject=self.template("subject", t, required=True),  # type: ignore[arg-type]
            html=html,
            text=text,
            ical=self.template("ical", t),
            reply_to=self.address("reply_to", f.reply_to, required=False),
            headers=tuple(headers),
            tag=TemplateRef("campaign.toml:message.tag", t.tag) if t.tag else None,
            tags=tuple(tags),
            track_opens=t.track_opens,
            track_clicks=t.track_clicks,
            stream_type=t.stream_type,
            domain=t.domain,
            unsubscribe_url=TemplateRef("campaign.toml:message.unsubscribe_url", url)
            if url
            else None,
        )

    def build_attachment(self, i: int, t: AttachmentTable) -> StaticAttachment:
        if not t.path:
            raise self.fail(f"attachments[{i}].path", "missing")
        filename = t.filename or Path(t.path).name
        for key, value in (("filename", filename), ("content_id", t.content_id)):
            if value and any(c in value for c in '\r\n\0"/\\'):
                raise self.fail(f"attachments[{i}].{key}", f"{value!r} has forbidden characters")
        return StaticAttachment(t.path, filename, t.content_type, t.content_id)

    def check_send(self, t: SendSettings) -> None:
        for key in ("concurrency", "batch_size", "max_recipients_per_field", "max_attempts"):
            if getattr(t, key) < 1:
                raise self.fail(f"send.{key}", f"must be at least 1, got {getattr(t, key)}")
        for key in ("rate", "recipients_rate", "timeout", "max_retry_time"):
            value = getattr(t, key)
            if value is not None and not (0 < value < math.inf):
                raise self.fail(f"send.{key}", f"must be a positive number, got {value}")
        if t.on_server_error not in ("unknown", "retry"):
            raise self.fail(
                "send.on_server_error",
                f'{t.on_server_error!r}: use "unknown" (the rows wait to be settled) or '
                '"retry" (send again, accepting that the provider may deliver twice)',
            )
        if t.batch_size > 100:
            raise self.fail("send.batch_size", "ToSend accepts at most 100 emails per batch")

    def check_merge(self, t: MergeSettings) -> None:
        if t.placement not in ("bcc", "to"):
            raise self.fail("merge.placement", f'{t.placement!r}: use "bcc" or "to"')


# -- the README's campaign file reference ---------------------------------------------------

#: Each table of the README reference: its marker name and the campaign tables it shows.
README_TABLES = {
    "top": ("",),
    "source": ("source",),
    "columns": ("columns",),
    "sender": ("sender", "reply_to"),
    "message": ("message",),
    "attachments": ("attachments",),
    "suppression": ("suppression",),
    "send": ("send",),
    "merge": ("merge",),
}
_MARKER = re.compile(
    r"(<!-- campaign-reference: (\w+) -->\n)(.*?)(<!-- /campaign-reference -->)", re.S
)
REFERENCE_COMMAND = "python scripts/campaign_reference.py README.md"


def _shown_default(field: FieldInfo) -> str:
    shown = (field.json_schema_extra or {}).get("shown")  # type: ignore[union-attr]
    if isinstance(shown, str):
        return shown
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list | tuple):
        return "`[]`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def reference_table(names: tuple[str, ...]) -> str:
    """The Markdown table documenting the keys of the campaign tables ``names``."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for table in names:
        fields = keys(table)
        for key, field in fields.items():
            if key.endswith("_file") and key.removesuffix("_file") in fields:
                continue  # shown with its inline twin: `subject` / `subject_file`
            shown = f"{table}.{key}" if len(names) > 1 else key
            cell = f"`{shown}`"
            if f"{key}_file" in fields:
                cell += f" / `{shown}_file`"
            lines.append(
                f"| {cell} | {kind(field.annotation)} | {_shown_default(field)}"
                f" | {field.description} |"
            )
    return "\n".join(lines) + "\n"


def render_reference(readme: str) -> str:
    """``readme`` with every campaign-reference table regenerated from the models."""

    def table(m: re.Match[str]) -> str:
        return m.group(1) + reference_table(README_TABLES[m.group(2)]) + m.group(4)

    return _MARKER.sub(table, readme)
