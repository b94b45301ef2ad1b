"""Rendering time and memory are bounded per row, whatever the template does.

A template may build a value step by step (doubling it forty times in a ``namespace``
passes 4 GB in seconds), recurse without end, or spin nested loops that print
nothing. Each is a clear error naming the template (and the row), never a traceback,
an exhausted machine or a run that never ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.campaigns import campaign_folder

from batchsend.campaign import load_campaign
from batchsend.errors import TemplateError
from batchsend.render import Renderer, RowRenderError

CAMPAIGN = """\
provider = "tosend"
[source]
path = "r.csv"
[sender]
email = "news@example.com"
[message]
subject = "Hi"
text_file = "body.txt.j2"
"""


def renderer(tmp_path: Path, body: str) -> Renderer:
    files = {"r.csv": "email,first\na@example.com,Ann\n", "body.txt.j2": body}
    return Renderer(load_campaign(campaign_folder(tmp_path, CAMPAIGN, files)))


def doubled(step: str, start: str = "first", times: int = 40) -> str:
    """A template that applies ``step`` (which doubles ``ns.v``) ``times`` times."""
    return (
        f"{{% set ns = namespace(v={start}) %}}"
        f"{{% for i in range({times}) %}}{{% set ns.v = {step} %}}{{% endfor %}}"
        "{{ ns.v | length }}"
    )


GROWTH = {
    "concat": doubled("ns.v ~ ns.v"),
    "list plus": doubled("ns.v + ns.v", start="[first]"),
    "join filter": doubled("[ns.v, ns.v] | join"),
    "join method": doubled("''.join([ns.v, ns.v])"),
    "replace filter": doubled("ns.v | replace('A', 'AA')"),
    "replace method": doubled("ns.v.replace('A', 'AA')"),
    "replace empty": "{{ (first * 1000000).replace('', 'xy') | length }}",
    "format filter": doubled("'%s%s' | format(ns.v, ns.v)"),
    "format method": doubled("'{}{}'.format(ns.v, ns.v)"),
    "percent": doubled("'%s%s' % (ns.v, ns.v)"),
    "integers": doubled("ns.v * ns.v", start="7"),
    "nested width": "{{ '{:>{}}'.format(first, 10**10) }}",
    "star width": "{{ '%*s' % (10**10, first) }}",
    "list of big strings": "{% set s = first * 1000000 %}{{ ([s] * 1000) | join | length }}",
    "batch fill": "{{ first | batch(10**10, 'x') | list | length }}",
    "many values": (
        "{% set s = first * 1000000 %}{% set ns = namespace(v=[]) %}"
        "{% for i in range(1000) %}{% set ns.v = ns.v + [s ~ i] %}{% endfor %}"
        "{{ ns.v | length }}"
    ),
    "lipsum": "{{ lipsum(10**8) | length }}",
}


@pytest.mark.parametrize("name", GROWTH)
def test_a_value_built_step_by_step_is_stopped(tmp_path: Path, name: str) -> None:
    r = renderer(tmp_path, GROWTH[name])
    start = time.perf_counter()
    with pytest.raises(RowRenderError) as info:
        r.render({"first": "Ann"})
    assert "body.txt.j2 renders to more than" in info.value.message
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    "body",
    [
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% macro f() %}{{ caller() }}{% endmacro %}"
        "{% macro g() %}{% call f() %}{{ g() }}{% endcall %}{% endmacro %}{{ g() }}",
        "{% set ns = namespace(v=[]) %}{% for i in range(3000) %}{% set ns.v = [ns.v] %}"
        "{% endfor %}{{ ns.v }}",
    ],
)
def test_endless_recursion_is_a_row_problem_not_a_traceback(tmp_path: Path, body: str) -> None:
    r = renderer(tmp_path, body)
    with pytest.raises(RowRenderError) as info:
        r.render({"first": "Ann"})
    assert "body.txt.j2: recursion too deep" in info.value.message


def test_a_template_nested_too_deeply_to_compile_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        renderer(tmp_path, "{{ " + "(" * 5000 + "first" + ")" * 5000 + " }}")
    assert "body.txt.j2" in str(info.value) and "nested too deeply" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        # loops that print nothing and call nothing: only the loop hook sees them
        "{% set s = first * 2000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% for i in range(50) %}{{ f(n + 1) if n < 3 else '' }}{% endfor %}"
        "{% endmacro %}{% for i in range(100000) %}{{ f(0) }}{% endfor %}",
    ],
)
def test_rendering_one_row_has_a_time_limit(tmp_path: Path, body: str) -> None:
    r = renderer(tmp_path, body)
    r.env.max_seconds = 0.2  # the default (2 s) is too long a wait for a test
    start = time.perf_counter()
    with pytest.raises(TemplateError) as info:
        r.render({"first": "Ann"})
    assert time.perf_counter() - start < 1.5
    assert "body.txt.j2" in str(info.value) and "more than 0.2 s" in str(info.value)


def test_ordinary_templates_are_unaffected(tmp_path: Path) -> None:
    body = (
        "{% set ns = namespace(total=0, names=[]) %}"
        "{% for item in items.split(';') %}{% set ns.total = ns.total + loop.index %}"
        "{% set ns.names = ns.names + [item | upper] %}{% endfor %}"
        "{{ ns.names | join(', ') }} {{ ns.total }} {{ '%05d' % 42 }} {{ '{:>6}'.format(first) }}"
        " {{ first | replace('n', 'nn') }} {{ 3 * 4 }} {{ 10 ** 6 }} {{ [1, 2] * 2 }}"
    )
    r = renderer(tmp_path, body)
    for _ in range(3):  # the budget is per row: it resets
        out = r.render({"first": "Ann", "items": "a;b;c"})
    assert out.text == "A, B, C 6 00042    Ann Annnn 12 1000000 [1, 2, 1, 2]"
