"""The campaign file: a TOML description of one campaign, validated into a frozen value.

:func:`load_campaign` reads ``campaign.toml`` and returns a :class:`Campaign`. Every key
is checked against the schema below: an unknown key is an error that names it and the
nearest valid key, a value of the wrong type names the key and the expected type. Paths
(recipient file, template files, attachments, suppression lists, key file) are relative
to the folder holding the campaign file. Every key and its default is documented in
the README's "Campaign file reference"; a test keeps it and :data:`SCHEMA` in step.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email

from batchsend.apikeys import DEFAULT_ENV_VAR, KEY_ENV_PREFIX, remember_env
from batchsend.confinement import Confinement, config_dir
from batchsend.errors import CampaignError
from batchsend.message import Address
from batchsend.transport import base_url_problem

PROVIDERS = ("v1", "tosend")
STREAM_TYPES = ("transactional", "broadcast", "shared")

# A key's value kind and its default. ``None`` means "not set".
_STR, _INT, _NUM, _BOOL, _STRS, _TABLE_OF_STR = (
    "string",
    "integer",
    "number",
    "boolean",
    "array of strings",
    "table of strings",
)

#: Every key the campaign file may hold: table -> key -> (kind, default). The empty
#: table name is the top level.
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "": {
        "name": (_STR, None),
        "provider": (_STR, None),
        "base_url": (_STR, None),
        "api_key_env": (_STR, DEFAULT_ENV_VAR),
        "api_key_file": (_STR, None),
        "max_render_bytes": (_INT, 5_000_000),
    },
    "source": {
        "path": (_STR, None),
        "format": (_STR, "auto"),
        "delimiter": (_STR, ","),
        "quote_char": (_STR, '"'),
        "encoding": (_STR, "utf-8"),
    },
    "columns": {
        "email": (_STR, "email"),
        "name": (_STR, None),
        "cc": (_STR, None),
        "bcc": (_STR, None),
        "attachments": (_STR, None),
        "list_separators": (_STR, ";,"),
        "metadata": (_STRS, []),
    },
    "sender": {
        "email": (_STR, None),
        "name": (_STR, None),
    },
    "reply_to": {
        "email": (_STR, None),
        "name": (_STR, None),
    },
    "message": {
        "subject": (_STR, None),
        "subject_file": (_STR, None),
        "html": (_STR, None),
        "html_file": (_STR, None),
        "text": (_STR, None),
        "text_file": (_STR, None),
        "ical": (_STR, None),
        "ical_file": (_STR, None),
        "headers": (_TABLE_OF_STR, {}),
        "tag": (_STR, None),
        "tags": (_TABLE_OF_STR, {}),
        "track_opens": (_BOOL, None),
        "track_clicks": (_BOOL, None),
        "stream_type": (_STR, None),
        "domain": (_STR, None),
        "unsubscribe_url": (_STR, None),
    },
    "attachments": {  # [[attachments]]: static files attached to every message
        "path": (_STR, None),
        "filename": (_STR, None),
        "content_type": (_STR, None),
        "content_id": (_STR, None),
    },
    "suppression": {
        "files": (_STRS, []),
        "column": (_STR, "email"),
    },
    "send": {
        "concurrency": (_INT, 16),
        "rate": (_NUM, None),
        "recipients_rate": (_NUM, None),
        "batch_size": (_INT, 100),
        "max_recipients_per_field": (_INT, 50),
        "timeout": (_NUM, 30.0),
        "max_attempts": (_INT, 5),
        "max_retry_time": (_NUM, 300.0),
        "idempotent_provider": (_BOOL, False),
        "on_server_error": (_STR, "unknown"),
    },
    "merge": {
        "enabled": (_BOOL, False),
        "group_column": (_STR, None),
        "placement": (_STR, "bcc"),
    },
}
_TABLES_AT_TOP = {name for name in SCHEMA if name}
_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ARRAY_TABLES = {"attachments"}

# Keys that only one provider understands: (table, key) -> provider.
_PROVIDER_ONLY = {
    ("message", "tag"): "v1",
    ("message", "track_opens"): "v1",
    ("message", "track_clicks"): "v1",
    ("message", "stream_type"): "v1",
    ("message", "domain"): "v1",
    ("message", "tags"): "tosend",
    ("attachments", "content_id"): "tosend",
}


@dataclass(frozen=True, slots=True)
class SendSettings:
    """How fast and how hard to send (``[send]``)."""

    concurrency: int = 16
    rate: float | None = None  # requests per second, None = as fast as allowed
    recipients_rate: float | None = None  # recipients per second, None = unlimited
    batch_size: int = 100  # ToSend messages per batch request; 1 = single endpoint
    max_recipients_per_field: int = 50
    timeout: float = 30.0
    max_attempts: int = 5
    max_retry_time: float = 300.0
    # The provider honours Idempotency-Key (neither documented one does): requests it may
    # have processed are then retried under the same key instead of ending unknown.
    idempotent_provider: bool = False
    # "unknown" (default): a 5xx leaves its rows unknown; "retry": send them again,
    # accepting that the provider may deliver twice.
    on_server_error: str = "unknown"


@dataclass(frozen=True, slots=True)
class MergeSettings:
    """Merging identical messages into one with several recipients (``[merge]``)."""

    enabled: bool = False
    group_column: str | None = None
    placement: Literal["bcc", "to"] = "bcc"


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """How to read the recipient file (``[source]``)."""

    path: Path
    format: Literal["csv", "parquet"]
    delimiter: str = ","
    quote_char: str = '"'
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True)
class Columns:
    """Which column holds what (``[columns]``); other columns are template variables."""

    email: str = "email"
    name: str | None = None
    cc: str | None = None
    bcc: str | None = None
    attachments: str | None = None
    list_separators: str = ";,"
    metadata: tuple[str, ...] = ()


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
    source_settings: SourceSettings
    columns: Columns
    message: MessageSettings
    attachments: tuple[StaticAttachment, ...]
    suppression_files: tuple[Path, ...]
    suppression_column: str
    send: SendSettings
    merge: MergeSettings
    max_render_bytes: int
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


def _nearest(key: str, valid: list[str]) -> str | None:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return match[0] if match else None


class _Builder:
    """Checks the parsed TOML against :data:`SCHEMA` and builds the :class:`Campaign`."""

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

    # -- schema ---------------------------------------------------------------------------

    def check_table(self, table: str, values: dict[str, Any]) -> dict[str, Any]:
        """Values of ``table`` with defaults filled in; unknown keys and wrong types raise."""
        spec = SCHEMA[table]
        out: dict[str, Any] = {}
        for key, value in values.items():
            dotted = f"{table}.{key}" if table else key
            if table == "" and key in _TABLES_AT_TOP:
                continue
            if key not in spec:
                raise self.unknown(table, key)
            out[key] = self.check_type(dotted, spec[key][0], value)
        for key, (_, default) in spec.items():
            out.setdefault(key, default)
        return out

    def unknown(self, table: str, key: str) -> CampaignError:
        dotted = f"{table}.{key}" if table else key
        if table == "" and key in ("api_key", "key", "token", "secret"):
            return self.fail(
                dotted,
                "API keys never go in the campaign file",
                fix="set api_key_env (an environment variable name) or api_key_file",
            )
        valid = list(SCHEMA[table]) + (sorted(_TABLES_AT_TOP) if table == "" else [])
        near = _nearest(key, valid)
        if near is None:  # the key may belong in another table
            for other, keys in SCHEMA.items():
                if key in keys:
                    near = f"{other}.{key}" if other else key
                    if other:
                        near = f"[{other}] {key}"
                    break
        hint = f"did you mean {near!r}?" if near else "remove it"
        where = f"in [{table}]" if table else "at the top level"
        return self.fail(
            dotted,
            f"unknown key {where}; {hint}",
            fix=f"valid keys {where}: {', '.join(valid)} (see README: campaign file reference)",
        )

    def check_type(self, dotted: str, kind: str, value: Any) -> Any:
        ok = {
            _STR: isinstance(value, str),
            _INT: isinstance(value, int) and not isinstance(value, bool),
            _NUM: isinstance(value, int | float) and not isinstance(value, bool),
            _BOOL: isinstance(value, bool),
            _STRS: isinstance(value, list) and all(isinstance(v, str) for v in value),
            _TABLE_OF_STR: isinstance(value, dict)
            and all(isinstance(v, str) for v in value.values()),
        }[kind]
        if not ok:
            raise self.fail(dotted, f"expected a {kind}, got {type(value).__name__} {value!r}")
        if kind == _NUM:
            return float(value)
        return value

    # -- building -------------------------------------------------------------------------

    def build(self) -> Campaign:
        self.check_api_key_env(self.data.get("api_key_env", DEFAULT_ENV_VAR))
        top = self.check_table("", self.data)
        tables: dict[str, dict[str, Any]] = {}
        for name in _TABLES_AT_TOP - _ARRAY_TABLES:
            raw = self.data.get(name, {})
            if not isinstance(raw, dict):
                raise self.fail(name, "expected a table", fix=f"write it as [{name}]")
            tables[name] = self.check_table(name, raw)
        raw_attachments = self.data.get("attachments", [])
        if not isinstance(raw_attachments, list) or not all(
            isinstance(a, dict) for a in raw_attachments
        ):
            raise self.fail("attachments", "expected an array of tables", "write [[attachments]]")
        attachment_tables = [self.check_table("attachments", a) for a in raw_attachments]

        provider = top["provider"]
        if provider is None:
            raise self.fail("provider", "missing", fix='set provider = "v1" or "tosend"')
        if provider not in PROVIDERS:
            near = _nearest(provider, list(PROVIDERS))
            raise self.fail(
                "provider",
                f"unknown provider {provider!r}" + (f"; did you mean {near!r}?" if near else ""),
                fix='set provider = "v1" or "tosend"',
            )
        self.check_provider_keys(provider, tables, attachment_tables)

        send = self.build_send(tables["send"])
        merge = self.build_merge(tables["merge"])
        message = self.build_message(provider, tables)
        columns = self.build_columns(tables["columns"])
        if top["max_render_bytes"] <= 0:
            raise self.fail("max_render_bytes", "must be positive")
        base_url = top["base_url"]
        problem = base_url_problem(base_url) if base_url is not None else None
        if problem is not None:
            raise self.fail("base_url", f"{base_url!r} {problem}")
        return Campaign(
            path=self.path,
            folder=self.folder,
            name=top["name"] or self.folder.name,
            provider=provider,
            base_url=base_url.rstrip("/") if base_url else None,
            api_key_env=top["api_key_env"],
            api_key_file=self.key_file(top["api_key_file"]),
            source_settings=self.build_source(tables["source"]),
            columns=columns,
            message=message,
            attachments=tuple(self.build_attachment(i, a) for i, a in enumerate(attachment_tables)),
            suppression_files=tuple(
                self.confined("suppression.files", f) for f in tables["suppression"]["files"]
            ),
            suppression_column=tables["suppression"]["column"],
            send=send,
            merge=merge,
            max_render_bytes=top["max_render_bytes"],
            allowed_paths=self.confinement.allowed,
        )

    def key_file(self, raw: str | None) -> Path | None:
        """A key file: in the campaign folder, an allowed path or the user's config folder."""
        if not raw:
            return None
        path = self.confined("api_key_file", str(Path(raw).expanduser()), extra=(config_dir(),))
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

    def check_provider_keys(
        self, provider: str, tables: dict[str, dict[str, Any]], attachments: list[dict[str, Any]]
    ) -> None:
        for (table, key), only in _PROVIDER_ONLY.items():
            if only == provider:
                continue
            values = attachments if table == "attachments" else [tables[table]]
            default = SCHEMA[table][key][1]
            if any(v[key] != default for v in values):
                other = {
                    "tag": "use [message.tags] on tosend",
                    "tags": "use message.tag on v1",
                }.get(key, f"remove it, or use provider = {only!r}")
                raise self.fail(f"{table}.{key}", f"only provider {only!r} supports it", fix=other)

    def build_source(self, t: dict[str, Any]) -> SourceSettings:
        if not t["path"]:
            raise self.fail(
                "source.path", "missing", fix='set [source] path = "recipients.csv" (or .parquet)'
            )
        path = self.confined("source.path", t["path"])
        fmt = t["format"]
        if fmt == "auto":
            fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
        if fmt not in ("csv", "parquet"):
            raise self.fail("source.format", f"unknown format {fmt!r}", 'use "csv" or "parquet"')
        for key in ("delimiter", "quote_char"):
            if len(t[key]) != 1:
                raise self.fail(f"source.{key}", f"must be one character, got {t[key]!r}")
        try:
            import codecs

            codec = codecs.lookup(t["encoding"])
        except LookupError:
            raise self.fail(
                "source.encoding", f"unknown encoding {t['encoding']!r}", 'e.g. "utf-8", "latin-1"'
            ) from None
        # rot13, base64, hex, bz2...: codecs, but not between bytes and text.
        if not getattr(codec, "_is_text_encoding", True):
            raise self.fail(
                "source.encoding",
                f"{t['encoding']!r} is not a text encoding (it cannot decode a file into text)",
                'name the file\'s character encoding, e.g. "utf-8", "latin-1", "cp1252"',
            )
        return SourceSettings(path, fmt, t["delimiter"], t["quote_char"], t["encoding"])

    def build_columns(self, t: dict[str, Any]) -> Columns:
        if not t["email"]:
            raise self.fail("columns.email", "must name the address column")
        if not t["list_separators"]:
            raise self.fail("columns.list_separators", "must hold at least one character")
        return Columns(
            email=t["email"],
            name=t["name"] or None,
            cc=t["cc"] or None,
            bcc=t["bcc"] or None,
            attachments=t["attachments"] or None,
            list_separators=t["list_separators"],
            metadata=tuple(t["metadata"]),
        )

    def address(self, table: str, t: dict[str, Any], required: bool) -> Address | None:
        if not t["email"]:
            if required:
                raise self.fail(
                    f"{table}.email", "missing", fix=f'set [{table}] email = "news@example.com"'
                )
            return None
        try:
            email = validate_email(t["email"], check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise self.fail(
                f"{table}.email", f"{t['email']!r} is not a valid address: {exc}"
            ) from None
        name = t["name"]
        for key, value in (("email", t["email"]), ("name", name)):
            if value and any(c in value for c in "\r\n\0"):
                raise self.fail(f"{table}.{key}", "contains a line break or NUL")
        return Address(email, name or None)

    def template(self, key: str, t: dict[str, Any], required: bool = False) -> TemplateRef | None:
        inline, file = t.get(key), t.get(f"{key}_file")
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

    def build_message(self, provider: str, tables: dict[str, dict[str, Any]]) -> MessageSettings:
        t = tables["message"]
        sender = self.address("sender", tables["sender"], required=True)
        assert sender is not None
        html = self.template("html", t)
        text = self.template("text", t)
        if html is None and text is None:
            raise self.fail(
                "message.html",
                "a message needs html or text",
                fix="set html_file (and optionally text_file) in [message]",
            )
        if t["stream_type"] is not None and t["stream_type"] not in STREAM_TYPES:
            raise self.fail(
                "message.stream_type",
                f"{t['stream_type']!r} is not one of {', '.join(STREAM_TYPES)}",
            )
        url = t["unsubscribe_url"]
        if url is not None and not url.startswith("https://"):
            raise self.fail(
                "message.unsubscribe_url",
                "RFC 8058 one-click unsubscribe needs an https:// URL",
                fix='e.g. unsubscribe_url = "https://example.com/unsub?u={{ id }}"',
            )
        headers = []
        for name, value in t["headers"].items():
            if not name or any(c in name for c in ": \r\n\0\t"):
                raise self.fail(f"message.headers.{name}", "is not a valid header name")
            if name.lower() in ("list-unsubscribe", "list-unsubscribe-post") and url:
                raise self.fail(
                    f"message.headers.{name}", "is already set by message.unsubscribe_url"
                )
            headers.append((name, TemplateRef(f"campaign.toml:message.headers.{name}", value)))
        tags = [
            (k, TemplateRef(f"campaign.toml:message.tags.{k}", v)) for k, v in t["tags"].items()
        ]
        for k, _ in tags:
            if len(k) > 128:
                raise self.fail(f"message.tags.{k[:20]}...", "tag names are at most 128 chars")
        return MessageSettings(
            sender=sender,
            subject=self.template("subject", t, required=True),  # type: ignore[arg-type]
            html=html,
            text=text,
            ical=self.template("ical", t),
            reply_to=self.address("reply_to", tables["reply_to"], required=False),
            headers=tuple(headers),
            tag=TemplateRef("campaign.toml:message.tag", t["tag"]) if t["tag"] else None,
            tags=tuple(tags),
            track_opens=t["track_opens"],
            track_clicks=t["track_clicks"],
            stream_type=t["stream_type"],
            domain=t["domain"],
            unsubscribe_url=TemplateRef("campaign.toml:message.unsubscribe_url", url)
            if url
            else None,
        )

    def build_attachment(self, i: int, t: dict[str, Any]) -> StaticAttachment:
        if not t["path"]:
            raise self.fail(f"attachments[{i}].path", "missing")
        filename = t["filename"] or Path(t["path"]).name
        for key, value in (("filename", filename), ("content_id", t["content_id"])):
            if value and any(c in value for c in '\r\n\0"/\\'):
                raise self.fail(f"attachments[{i}].{key}", f"{value!r} has forbidden characters")
        return StaticAttachment(t["path"], filename, t["content_type"], t["content_id"])

    def build_send(self, t: dict[str, Any]) -> SendSettings:
        for key in ("concurrency", "batch_size", "max_recipients_per_field", "max_attempts"):
            if t[key] < 1:
                raise self.fail(f"send.{key}", f"must be at least 1, got {t[key]}")
        for key in ("rate", "recipients_rate", "timeout", "max_retry_time"):
            if t[key] is not None and not (0 < t[key] < math.inf):
                raise self.fail(f"send.{key}", f"must be a positive number, got {t[key]}")
        if t["on_server_error"] not in ("unknown", "retry"):
            raise self.fail(
                "send.on_server_error",
                f'{t["on_server_error"]!r}: use "unknown" (the rows wait to be settled) or '
                '"retry" (send again, accepting that the provider may deliver twice)',
            )
        if t["batch_size"] > 100:
            raise self.fail("send.batch_size", "ToSend accepts at most 100 emails per batch")
        return SendSettings(**t)

    def build_merge(self, t: dict[str, Any]) -> MergeSettings:
        if t["placement"] not in ("bcc", "to"):
            raise self.fail("merge.placement", f'{t["placement"]!r}: use "bcc" or "to"')
        return MergeSettings(t["enabled"], t["group_column"] or None, t["placement"])
