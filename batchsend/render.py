"""Rendering: one sandboxed Jinja environment per campaign, every template compiled once.

A :class:`Renderer` turns one row's values into the message's text parts: subject,
HTML, text, calendar invite, headers (including RFC 8058 one-click unsubscribe), tag
and tags. A missing variable is an error, never an empty string (``StrictUndefined``);
HTML is autoescaped; templates run in Jinja's ``SandboxedEnvironment``, so a shared
template cannot reach Python internals. When there is no text template the text part is
generated from the HTML with ``inscriptis``. Rendering is deterministic: the same row
gives the same bytes.

Problems of one row raise :class:`RowRenderError` (the caller records it and goes on);
problems of a template itself (syntax, sandbox escape) raise :class:`TemplateError`
subclasses at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import jinja2
import jinja2.sandbox
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2.loaders import split_template_path

from batchsend.campaign import Campaign, TemplateRef
from batchsend.errors import TemplateError, TemplateSecurityError

_HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".html.j2", ".htm.j2", ".html.jinja", ".html.jinja2")
_HEADER_BREAK = re.compile(r"[\r\n\0]")
_UNDEFINED = re.compile(r"'([^']+)' is undefined")
UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
#: RFC 5322's line limit, and ToSend's documented subject limit.
MAX_SUBJECT = 998
#: Widths in printf-style (``%9s``) and format-style (``{:>9}``) specifications.
_WIDTH = re.compile(r"%[#0\- +]*(\d+)|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class RowRenderError(Exception):
    """One row cannot be rendered; ``column`` names the variable or part at fault."""

    def __init__(self, column: str | None, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.message = message
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Rendered:
    """The text parts of one row's message."""

    subject: str
    html: str | None
    text: str | None
    ical: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    tag: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def ical_datetime(value: Any) -> str:
    """An RFC 5545 UTC date-time (``20260321T180000Z``) from a datetime or ISO string."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y%m%dT%H%M%SZ")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    raise TypeError(f"ical_datetime needs a date-time, got {type(value).__name__}")


def ical_text(value: Any) -> str:
    """Escape a value for an RFC 5545 TEXT property (backslash, comma, semicolon, newline)."""
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")
    return text.replace("\r\n", "\\n").replace("\n", "\\n")


#: Links keep their targets (``[Unsubscribe](https://...)``): a text part that says only
#: "Unsubscribe" or "Pay your invoice" is useless to the reader who cannot click.
_TEXT_CONFIG = ParserConfig(display_links=True)


def html_to_text(html: str) -> str:
    """The plain-text alternative of an HTML body (inscriptis keeps the layout readable)."""
    return get_text(html, _TEXT_CONFIG).strip() + "\n"


def _finalize(value: Any) -> Any:
    # An empty Parquet cell is None; an email must never say "None".
    return "" if value is None else value


class _TooBig(Exception):
    """A template operation would build a value over the render limit (raised before it does)."""


class _Environment(jinja2.sandbox.SandboxedEnvironment):
    """Jinja's sandbox, plus a size check before the operations that multiply memory.

    The sandbox stops escapes to Python internals, not a template that builds a huge
    value in one step: ``first * 10**10``, ``7 ** 10**8``, ``first.center(10**10)``,
    ``'%9999999999s' % first``. Those are refused before they allocate; a streamed
    output (a long loop) is stopped by the renderer's running total instead, and a
    ``MemoryError`` from anything else is reported as the same size problem.
    """

    intercepted_binops = frozenset({"*", "**", "%"})
    max_size = 5_000_000

    def _limit(self, size: int, what: str) -> None:
        if size > self.max_size:
            raise _TooBig(what)

    def _widths(self, spec: str) -> None:
        for match in _WIDTH.finditer(spec):
            width = int(match.group(1) or match.group(2))
            self._limit(width, f"a format width of {width}")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and type(n) is int:
                    self._limit(len(seq) * n, f"{len(seq)} x {n} items")
        elif operator == "**":
            if type(left) is int and type(right) is int and abs(left) > 1 and right > 0:
                self._limit(right * abs(left).bit_length() // 3, f"{left} ** {right}")
        elif operator == "%" and isinstance(left, str):
            self._widths(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            name = getattr(target, "__name__", "")
            if name in _PADDING_METHODS:
                for value in (*args, *kwargs.values()):
                    if type(value) is int:
                        __self._limit(value, f"{name}({value})")
            elif name in ("format", "format_map"):
                __self._widths(owner)
        return super().call(__context, __obj, *args, **kwargs)


def _guarded_filters(env: _Environment) -> None:
    """The built-in filters that pad or format, checked like the methods above."""
    center, indent, format_ = env.filters["center"], env.filters["indent"], env.filters["format"]

    def checked_center(value: Any, width: int = 80) -> str:
        if type(width) is int:
            env._limit(width, f"center({width})")
        return center(value, width)

    def checked_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> str:
        if type(width) is int:
            env._limit(width * (str(value).count("\n") + 1), f"indent({width})")
        return indent(value, width, *args, **kwargs)

    def checked_format(value: Any, *args: Any, **kwargs: Any) -> str:
        env._widths(str(value))
        return format_(value, *args, **kwargs)

    env.filters.update(center=checked_center, indent=checked_indent, format=checked_format)


class _CampaignLoader(jinja2.BaseLoader):
    """The campaign's template files, and what they include, import or extend.

    Names are looked up in the campaign folder, as Jinja's ``FileSystemLoader`` does,
    then the real path (symlinks resolved) must stay inside the folder or a path the user
    allowed: a symlink to a file outside is refused, never read (:mod:`batchsend.confinement`).
    """

    def __init__(self, campaign: Campaign) -> None:
        self.folder = campaign.folder
        self.confinement = campaign.confinement
        self.files = {r.name: r.file for r in campaign.templates() if r.file is not None}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        path = self.files.get(template)
        if path is None:
            path = self.folder.joinpath(*split_template_path(template))
        if not self.confinement.contains(path):
            raise TemplateError(
                f"template {template!r} is outside the campaign folder",
                file=template,
                fix=self.confinement.fix(path),
            )
        real = path.resolve()
        if not real.is_file():
            raise jinja2.TemplateNotFound(template)
        source = read_template(TemplateRef(template, file=real))
        return source, str(real), lambda: True


class _Part:
    """One compiled template, or a constant when the source has no Jinja syntax."""

    __slots__ = ("constant", "name", "template")

    def __init__(self, env: jinja2.Environment, ref: TemplateRef, source: str) -> None:
        self.name = ref.name
        self.constant: str | None = None
        self.template: jinja2.Template | None = None
        if "{" not in source:
            self.constant = source
        else:
            self.template = env.get_template(ref.name)


class Renderer:
    """Compiles a campaign's templates once and renders rows with them."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.max_bytes = campaign.max_render_bytes
        inline = {r.name: r.inline for r in campaign.templates() if r.inline is not None}
        html_names = {campaign.message.html.name} if campaign.message.html else set()
        self.env = _Environment(
            loader=jinja2.ChoiceLoader([jinja2.DictLoader(inline), _CampaignLoader(campaign)]),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: (
                bool(name) and (name in html_names or name.endswith(_HTML_SUFFIXES))
            ),
            finalize=_finalize,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.env.max_size = self.max_bytes
        _guarded_filters(self.env)
        self.env.filters["ical_datetime"] = ical_datetime
        self.env.filters["ical_text"] = ical_text
        m = campaign.message
        self.subject = self._compile(m.subject)
        self.html = self._compile(m.html)
        self.text = self._compile(m.text)
        self.ical = self._compile(m.ical)
        self.tag = self._compile(m.tag)
        self.unsubscribe = self._compile(m.unsubscribe_url)
        self.headers = [(name, self._compile(ref)) for name, ref in m.headers]
        self.tags = [(name, self._compile(ref)) for name, ref in m.tags]

    def _compile(self, ref: TemplateRef | None) -> _Part | None:
        if ref is None:
            return None
        source = ref.inline if ref.inline is not None else read_template(ref)
        where = "campaign.toml" if ref.inline is not None else ref.name
        try:
            return _Part(self.env, ref, source)
        except jinja2.TemplateSyntaxError as exc:
            name = exc.filename or exc.name or where
            if ref.inline is not None:
                name = f"{self.campaign.path.name} ({ref.name.partition(':')[2]})"
            raise TemplateError(
                f"template syntax error at line {exc.lineno}: {exc.message}",
                file=name,
                fix="correct the Jinja syntax on that line",
            ) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {exc.name!r} (included) not found",
                file=where,
                fix="includes are looked up relative to the campaign folder",
            ) from None

    def _run(self, part: _Part | None, values: Mapping[str, Any], limit: int) -> str | None:
        if part is None:
            return None
        if part.constant is not None:
            return part.constant
        assert part.template is not None
        try:
            chunks: list[str] = []
            size = 0
            for chunk in part.template.generate(values):
                size += len(chunk)
                if size > limit:
                    raise RowRenderError(
                        None,
                        f"{part.name} renders to more than {limit} characters",
                        fix="shorten the content or raise max_render_bytes in the campaign",
                    )
                chunks.append(chunk)
            return "".join(chunks)
        except jinja2.UndefinedError as exc:
            message = exc.message or str(exc)
            found = _UNDEFINED.search(message)
            column = found.group(1) if found else None
            raise RowRenderError(
                column,
                f"{part.name}: missing template variable ({message})",
                fix=f"add a {column!r} column or value, or change the template"
                if column
                else "check the template's variables against the file's columns",
            ) from None
        except jinja2.sandbox.SecurityError as exc:
            raise TemplateSecurityError(
                f"the template tried to reach Python internals: {exc}",
                file=part.name,
                fix="remove the access to underscored or unsafe attributes from the template",
            ) from None
        except RowRenderError:
            raise
        except (_TooBig, MemoryError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise RowRenderError(
                None,
                f"{part.name} renders to more than {limit} characters{detail}",
                fix="shorten the content or raise max_render_bytes in the campaign",
            ) from None
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise RowRenderError(None, f"{part.name}: {type(exc).__name__}: {exc}") from None

    def render(self, values: Mapping[str, Any], *, derive_text: bool = True) -> Rendered:
        """Render every part for one row's ``values``.

        ``derive_text=False`` skips generating text from HTML (preflight: that step
        cannot fail, and it is by far the slowest).
        """
        budget = self.max_bytes
        subject = self._run(self.subject, values, budget) or ""
        _header_safe("subject", subject)
        if not subject.strip():
            raise RowRenderError("subject", "the subject renders empty")
        if len(subject) > MAX_SUBJECT:
            raise RowRenderError(
                "subject",
                f"the subject renders to {len(subject):,} characters, over the {MAX_SUBJECT}"
                " a subject may have",
                fix="shorten the subject template or the values it uses",
            )
        html = self._run(self.html, values, budget - len(subject))
        text = self._run(self.text, values, budget - len(subject) - len(html or ""))
        if text is None and html is not None and derive_text:
            text = html_to_text(html)
        ical = self._run(self.ical, values, budget)
        if ical is not None:
            ical = ical.replace("\r\n", "\n").replace("\n", "\r\n")
        total = sum(len(p) for p in (subject, html, text, ical) if p)
        if total > self.max_bytes:
            raise RowRenderError(
                None,
                f"the message renders to {total} characters, over max_render_bytes"
                f" ({self.max_bytes})",
                fix="shorten the content or raise max_render_bytes in the campaign",
            )
        headers: dict[str, str] = {}
        for name, part in self.headers:
            value = self._run(part, values, 998) or ""
            _header_safe(f"headers.{name}", value)
            headers[name] = value
        if self.unsubscribe is not None:
            url = self._run(self.unsubscribe, values, 2000) or ""
            _header_safe("unsubscribe_url", url)
            if not url.startswith("https://") or " " in url:
                raise RowRenderError(
                    "unsubscribe_url", f"{url!r} is not an https URL without spaces"
                )
            headers["List-Unsubscribe"] = f"<{url}>"
            headers["List-Unsubscribe-Post"] = UNSUBSCRIBE_POST
        tag = self._run(self.tag, values, 998)
        if tag is not None:
            _header_safe("tag", tag)
        tags: dict[str, str] = {}
        for name, part in self.tags:
            value = self._run(part, values, 256) or ""
            _header_safe(f"tags.{name}", value)
            tags[name] = value
        return Rendered(subject, html, text, ical, headers, tag or None, tags)


def _header_safe(column: str, value: str) -> None:
    if _HEADER_BREAK.search(value):
        raise RowRenderError(
            column,
            f"{column} contains a line break or NUL (header injection)",
            fix="remove CR, LF and NUL characters from the values used in headers",
        )


def read_template(ref: TemplateRef) -> str:
    """A template file's text; :class:`TemplateError` naming it if it cannot be read."""
    assert ref.file is not None
    try:
        return ref.file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TemplateError("the template is not UTF-8", file=ref.name) from None
    except OSError as exc:
        raise TemplateError(f"cannot read the template: {exc.strerror}", file=ref.name) from None
