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

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from time import perf_counter
from typing import Any, TypeVar

import jinja2
import jinja2.compiler
import jinja2.meta
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2.loaders import split_template_path
from markupsafe import Markup

from batchsend.campaign import Campaign, TemplateRef
from batchsend.errors import TemplateError, TemplateSecurityError
from batchsend.variables import ROW, Variables

T = TypeVar("T")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".html.j2", ".htm.j2", ".html.jinja", ".html.jinja2")
_HEADER_BREAK = re.compile(r"[\r\n\0]")
_UNDEFINED = re.compile(r"'([^']+)' is undefined")
_NO_KEY = re.compile(r"^'dict object' has no attribute '(.+)'$")
UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
#: RFC 5322's line limit, and ToSend's documented subject limit.
MAX_SUBJECT = 998
#: Widths in printf-style (``%9s``) and format-style (``{:>9}``) specifications.
_WIDTH = re.compile(r"%[#0\- +]*(\d+)|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")
_NESTED_FIELD = re.compile(r"\{[^{}]*:[^{}]*\{")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
#: Per row: the most seconds its templates may take, and how many characters all the
#: values they build (through ``~``, ``+``, ``*``, filters, method calls) may add up to,
#: as a multiple of ``max_render_bytes`` (each single value stays under it).
MAX_RENDER_SECONDS = 2.0
BUILT_FACTOR = 10
#: Integers a template multiplies stay under this many bits (big ones get slow).
_MAX_INT_BITS = 100_000


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


class _TooSlow(Exception):
    """A row's templates ran past :data:`MAX_RENDER_SECONDS`."""


def _measure(value: Any, limit: int) -> int:
    """A value's size in characters and items (nested), counted until past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, list | tuple):
            total += len(v)
            if total <= limit:
                stack.extend(v)
        elif isinstance(v, dict):
            total += len(v)
            if total <= limit:
                stack.extend(v.values())
        else:
            total += 1
    return total


#: The filter every ``for`` loop's iterable goes through (a direct call, no sandbox hop).
_LOOP_FILTER = "batchsend_loop"


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """Compiles ``~`` and ``for`` through the environment, which counts and times them.

    Jinja's sandbox routes calls, attributes and chosen operators through the
    environment, but not string concatenation (``a ~ b``) nor loop iterations, so a
    template could double a string forty times or spin nested loops unseen.
    """

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        self.write("environment.checked_value(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_Template(self, node: jinja2.nodes.Template, frame: Any = None) -> None:
        for loop in node.find_all(jinja2.nodes.For):
            loop.iter = jinja2.nodes.Filter(
                loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno
            )
        super().visit_Template(node, frame)


class _Environment(jinja2.sandbox.SandboxedEnvironment):
    """Jinja's sandbox, plus a size check before the operations that multiply memory.

    The sandbox stops escapes to Python internals, not a template that builds a huge
    value in one step: ``first * 10**10``, ``7 ** 10**8``, ``first.center(10**10)``,
    ``'%9999999999s' % first``. Those are refused before they allocate; a streamed
    output (a long loop) is stopped by the renderer's running total instead, and a
    ``MemoryError`` from anything else is reported as the same size problem.

    What a template builds step by step (a value doubled by ``~``, ``+``, ``join``,
    ``replace`` or ``format`` in a ``namespace``) is counted: each value a template
    builds must stay under ``max_size`` and all of them, per row, under ``max_built``;
    and each call, operator and loop start checks the row's deadline (:meth:`start_row`).
    """

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    max_size = 5_000_000
    max_built = BUILT_FACTOR * 5_000_000
    max_seconds = MAX_RENDER_SECONDS
    built = 0
    deadline = math.inf

    def start_row(self) -> None:
        """Reset the row's budget: nothing built yet, the clock started."""
        self.built = 0
        self.deadline = perf_counter() + self.max_seconds

    def _limit(self, size: int, what: str) -> None:
        if size > self.max_size:
            raise _TooBig(what)

    def _tick(self) -> None:
        if perf_counter() > self.deadline:
            raise _TooSlow()

    def checked_value(self, value: Any) -> Any:
        """``value``, a template built it: count it against the row's limits."""
        if perf_counter() > self.deadline:
            raise _TooSlow()
        kind = type(value)
        if kind is str or kind is Markup:
            size = len(value)
        elif kind is list or kind is tuple:
            try:  # a flat list of strings, at C speed
                size = len(value) + sum(map(len, value))
            except TypeError:
                size = _measure(value, self.max_size)
        elif kind is dict or isinstance(value, str | bytes):
            size = _measure(value, self.max_size)
        else:
            return value
        if size > self.max_size:
            raise _TooBig(f"a value of {size:,}+ characters")
        self.built += size
        if self.built > self.max_built:
            raise _TooBig(f"values built add up to more than {self.max_built:,} characters")
        return value

    def checked_iter(self, iterable: T) -> T:
        """``iterable`` for a ``for`` loop, once the row's deadline is checked.

        Checked as each loop starts: one loop over one bounded value is quick, and the
        loops nested in it start again on every iteration.
        """
        if perf_counter() > self.deadline:
            raise _TooSlow()
        return iterable

    def _int_args(self, values: Iterable[Any], what: str) -> None:
        for value in values:
            if type(value) is int:
                self._limit(value, f"{what} with {value}")

    def _widths(self, spec: str) -> None:
        for match in _WIDTH.finditer(spec):
            width = int(match.group(1) or match.group(2))
            self._limit(width, f"a format width of {width}")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and type(n) is int:
                    size = len(seq) if isinstance(seq, str) else _measure(seq, self.max_size)
                    self._limit(size * n, f"{size} x {n} items")
            ints = type(left) is int and type(right) is int
            if ints and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _TooBig("a product of integers over 100,000 bits")
        elif operator == "**":
            if type(left) is int and type(right) is int and abs(left) > 1 and right > 0:
                self._limit(right * abs(left).bit_length() // 3, f"{left} ** {right}")
        elif operator == "%" and isinstance(left, str):
            self._widths(left)
            if "*" in left:  # '%*s': the width is an argument
                self._int_args(right if isinstance(right, tuple) else (right,), "a % width")
        return self.checked_value(super().call_binop(context, operator, left, right))

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
                if _NESTED_FIELD.search(owner):  # '{:>{}}': a width from the arguments
                    mapping = args[0] if name == "format_map" and args else {}
                    values = mapping.values() if isinstance(mapping, Mapping) else ()
                    __self._int_args((*args, *kwargs.values(), *values), name)
            elif name == "replace" and len(args) >= 2:
                old, new = args[0], args[1]
                if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
                    grown = owner.count(old) * (len(new) - len(old))
                    __self._limit(len(owner) + grown, "replace()")
            elif name == "join" and len(args) == 1:
                items = list(args[0])
                __self._limit(_measure(items, __self.max_size) * max(1, len(owner)), "join()")
                args = (items,)
            elif name == "translate":
                __self._limit(len(owner) * _longest(args[0] if args else None), "translate()")
        value = super().call(__context, __obj, *args, **kwargs)
        # Inline, for speed (calls are on the hot path): a new string counts whole; a
        # list a call returns holds values that exist already (split: pieces of one).
        kind = type(value)
        if kind is str or kind is list or kind is tuple or kind is Markup:
            size = len(value)
            __self.built += size
            if size > __self.max_size or __self.built > __self.max_built:
                __self.built -= size
                __self.checked_value(value)  # raises, naming the limit
        if perf_counter() > __self.deadline:
            raise _TooSlow()
        return value


def _longest(table: Any) -> int:
    """The longest replacement in a ``str.translate`` table (1 when none is longer)."""
    values = table.values() if isinstance(table, Mapping) else ()
    return max([1, *(len(v) for v in values if isinstance(v, str))])


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
        if "*" in str(value):  # '%*s': the width is an argument
            env._int_args((*args, *kwargs.values()), "format")
        return format_(value, *args, **kwargs)

    env.filters.update(center=checked_center, indent=checked_indent, format=checked_format)
    join, replace = env.filters["join"], env.filters["replace"]
    batch, slice_ = env.filters["batch"], env.filters["slice"]

    @jinja2.pass_eval_context
    def checked_join(ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(value) if attribute is None else value
        if isinstance(items, list):
            env._limit(_measure(items, env.max_size) * max(1, len(str(d))), "join")
        return join(ctx, items, d, attribute)

    @jinja2.pass_eval_context
    def checked_replace(ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> str:
        text, old, new = str(s), str(old), str(new)
        if len(new) > len(old):
            env._limit(len(text) + text.count(old) * (len(new) - len(old)), "replace")
        return replace(ctx, s, old, new, count)

    def checked_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        env._int_args((linecount,), "batch")
        return batch(value, linecount, fill_with)

    def checked_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
        env._int_args((slices,), "slice")
        return slice_(value, slices, fill_with)

    env.filters.update(join=checked_join, replace=checked_replace)
    env.filters.update(batch=checked_batch, slice=checked_slice)
    for name, f in list(env.filters.items()):
        env.filters[name] = _counted(env, f)
    lipsum: Callable[..., str] = env.globals["lipsum"]  # type: ignore[assignment]

    def checked_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        env._limit(n * max * 10, "lipsum")
        return lipsum(n, html, min, max)

    env.globals["lipsum"] = checked_lipsum
    env.filters[_LOOP_FILTER] = env.checked_iter


def _counted(env: _Environment, f: Callable[..., Any]) -> Callable[..., Any]:
    """Filter ``f``, its result counted against the row's limits (Jinja's pass_* kept)."""

    @functools.wraps(f)
    def counted(*args: Any, **kwargs: Any) -> Any:
        value = f(*args, **kwargs)
        if type(value) is str:  # the common case, inline: filters are on the hot path
            env.built += len(value)
            if len(value) <= env.max_size and env.built <= env.max_built:
                return value
            env.built -= len(value)
        return env.checked_value(value)

    return counted


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
    """Compiles a campaign's templates once and renders rows with them.

    ``variables``: the recipient file's columns as template variables (aliases and
    ``row``, :mod:`batchsend.variables`); without it a row's values are the variables.
    """

    def __init__(self, campaign: Campaign, variables: Variables | None = None) -> None:
        self.campaign = campaign
        self.variables = variables
        self._sources: list[tuple[str, str]] = []  # (part, template source)
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
        self.env.max_built = BUILT_FACTOR * self.max_bytes
        _guarded_filters(self.env)
        self.env.filters["ical_datetime"] = ical_datetime
        self.env.filters["ical_text"] = ical_text
        m = campaign.message
        self.subject = self._compile(m.subject, "the subject")
        self.html = self._compile(m.html, "the HTML")
        self.text = self._compile(m.text, "the text")
        self.ical = self._compile(m.ical, "the invite")
        self.tag = self._compile(m.tag, "the tag")
        self.unsubscribe = self._compile(m.unsubscribe_url, "the unsubscribe URL")
        self.headers = [(name, self._compile(ref, f"header {name}")) for name, ref in m.headers]
        self.tags = [(name, self._compile(ref, f"tag {name}")) for name, ref in m.tags]
        # One row's variables, with the environment's globals under them, make ONE dict
        # that each of its templates reads as is (``shared``): Jinja would otherwise copy
        # globals and variables into a new dict for every template of every row.
        self._globals = dict(self.env.globals)

    def uses(self) -> dict[str, list[str]]:
        """Which column each part uses: column -> parts (``the subject``, ``the HTML``).

        Read from the templates' own text (variables, ``row["..."]`` and ``row.x``), not
        from what they include; needs ``variables``.
        """
        out: dict[str, list[str]] = {}
        if self.variables is None:
            return out
        for part, source in self._sources:
            try:
                names = _names_used(self.env.parse(source))
            except jinja2.TemplateSyntaxError:
                continue
            for name in names:
                column = self.variables.column(name)
                if column is not None and part not in out.setdefault(column, []):
                    out[column].append(part)
        return out

    def _compile(self, ref: TemplateRef | None, part: str) -> _Part | None:
        if ref is None:
            return None
        source = ref.inline if ref.inline is not None else read_template(ref)
        self._sources.append((part, source))
        where = "campaign.toml" if ref.inline is not None else ref.name
        try:
            return _Part(self.env, ref, source)
        except (RecursionError, MemoryError):
            raise TemplateError(
                "the template is nested too deeply to compile",
                file=where,
                fix="flatten the nested expressions or blocks",
            ) from None
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

    def _run(self, part: _Part | None, values: dict[str, Any], limit: int) -> str | None:
        if part is None:
            return None
        if part.constant is not None:
            return part.constant
        template = part.template
        assert template is not None
        try:
            chunks: list[str] = []
            size = 0
            # values: see render(). No globals: they are in values, and Jinja would make
            # a set of their names per template only for imports, which see the same.
            context = jinja2.runtime.new_context(
                self.env, template.name, template.blocks, values, shared=True
            )
            for chunk in template.root_render_func(context):
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
            raise self._undefined(part, exc) from None
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
        except RecursionError:
            raise RowRenderError(
                None,
                f"{part.name}: recursion too deep (a macro or loop calling itself without end,"
                " or a value nested too deeply)",
                fix="give the recursion an end, or flatten the value",
            ) from None
        except _TooSlow:
            # The template, not the row: every row would cost the same seconds.
            raise TemplateError(
                f"rendering takes more than {self.env.max_seconds:g} s for one row (the limit)",
                file=part.name,
                fix="simplify the template: fewer or shorter loops, less nesting",
            ) from None
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise RowRenderError(None, f"{part.name}: {type(exc).__name__}: {exc}") from None

    def _undefined(self, part: _Part, exc: jinja2.UndefinedError) -> RowRenderError:
        message = exc.message or str(exc)
        found = _UNDEFINED.search(message)
        column = found.group(1) if found else None
        hint = None
        if self.variables is not None:
            if column is not None:
                hint = self.variables.suggest(column)
            elif (key := _NO_KEY.match(message)) is not None:
                column = key.group(1)
                hint = self.variables.suggest_column(column)
                message = f"no column {column!r} in row[...]"
        if hint is not None:
            message = f"{message}; {hint}"
        return RowRenderError(
            column,
            f"{part.name}: missing template variable ({message})",
            fix=f"add a {column!r} column or value, or change the template"
            if column
            else "check the template's variables against the file's columns",
        )

    def render(self, values: Mapping[str, Any], *, derive_text: bool = True) -> Rendered:
        """Render every part for one row's ``values``.

        ``derive_text=False`` skips generating text from HTML (preflight: that step
        cannot fail, and it is by far the slowest).
        """
        scope = self._globals.copy()
        scope.update(self.variables.scope(values) if self.variables is not None else values)
        values = scope  # every template of the row reads this one dict (see __init__)
        budget = self.max_bytes
        self.env.start_row()
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


def _names_used(ast: jinja2.nodes.Template) -> set[str]:
    """The variables a template reads from the row where an empty value would show.

    A variable is a free name, ``row["x"]`` or ``row.x``. Uses with a fallback do not
    count: ``x or "there"``, ``x | default("there", true)``, the test of ``{% if x %}``
    or ``a if x else b`` and what that ``if`` holds.
    """
    reads = (jinja2.nodes.Name, jinja2.nodes.Getitem, jinja2.nodes.Getattr)
    total = Counter(name for node in ast.find_all(reads) if (name := _variable(node)))
    guarded: Counter[str] = Counter()
    for node in ast.find_all(
        (jinja2.nodes.Or, jinja2.nodes.Filter, jinja2.nodes.If, jinja2.nodes.CondExpr)
    ):
        inside: list[jinja2.nodes.Node] = []
        name = None
        if isinstance(node, jinja2.nodes.Or):
            name = _variable(node.left)
        elif isinstance(node, jinja2.nodes.Filter):
            name = _variable(node.node) if _is_empty_default(node) else None
        elif isinstance(node, jinja2.nodes.If):
            name, inside = _variable(node.test), list(node.body)
        elif isinstance(node, jinja2.nodes.CondExpr):
            name, inside = _variable(node.test), [node.expr1]
        if name is None:
            continue
        guarded[name] += 1
        for child in inside:  # what the ``if`` shows only when the value is there
            found = [child, *child.find_all(reads)]
            guarded[name] += sum(_variable(n) == name for n in found)
    return {name for name, count in total.items() if count > guarded[name]}


def _variable(node: jinja2.nodes.Node | None) -> str | None:
    """The row's variable ``node`` reads (``x``, ``row["x"]``, ``row.x``), if it is one."""
    if isinstance(node, jinja2.nodes.Name):
        return node.name if node.ctx == "load" and node.name != ROW else None
    if isinstance(node, jinja2.nodes.Getitem | jinja2.nodes.Getattr):
        target = node.node
        if not (isinstance(target, jinja2.nodes.Name) and target.name == ROW):
            return None
        if isinstance(node, jinja2.nodes.Getattr):
            return node.attr
        key = node.arg
        if isinstance(key, jinja2.nodes.Const) and isinstance(key.value, str):
            return key.value
    return None


def _is_empty_default(node: jinja2.nodes.Filter) -> bool:
    """``default(value, true)``: a fallback for an empty value too (not only a missing one)."""
    if node.name not in ("default", "d"):
        return False
    flags = node.args[1:2] + [k.value for k in node.kwargs if k.key == "boolean"]
    return any(isinstance(f, jinja2.nodes.Const) and f.value is True for f in flags)


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
