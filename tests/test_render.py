"""Rendering: strict variables, autoescaped HTML, the sandbox, header injection, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.campaigns import campaign_folder

from batchsend.campaign import load_campaign
from batchsend.errors import TemplateError, TemplateSecurityError
from batchsend.render import Renderer, RowRenderError, html_to_text, ical_datetime, ical_text

BASE = """\
provider = "tosend"
max_render_bytes = {limit}
[source]
path = "r.csv"
[sender]
email = "news@example.com"
[message]
{message}
"""


def renderer(tmp_path: Path, message: str, limit: int = 100_000, files=None) -> Renderer:
    toml = BASE.format(limit=limit, message=message)
    files = {"r.csv": "email\na@example.com\n", **(files or {})}
    return Renderer(load_campaign(campaign_folder(tmp_path, toml, files)))


def test_missing_variable_is_an_error_never_empty(tmp_path) -> None:
    r = renderer(tmp_path, 'subject = "Hi {{ first_name }}"\ntext = "x"')
    with pytest.raises(RowRenderError) as info:
        r.render({"email": "a@example.com"})
    assert info.value.column == "first_name"
    assert "missing template variable" in info.value.message
    assert info.value.fix and "first_name" in info.value.fix


def test_html_is_autoescaped_text_and_subject_are_not(tmp_path) -> None:
    r = renderer(
        tmp_path,
        'subject = "{{ v }}"\nhtml = "<p>{{ v }}</p>"\ntext = "{{ v }}"',
    )
    out = r.render({"v": "<b>Tom & Jerry</b>"})
    assert out.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert out.text == "<b>Tom & Jerry</b>"
    assert out.subject == "<b>Tom & Jerry</b>"


def test_html_file_is_autoescaped_too(tmp_path) -> None:
    r = renderer(
        tmp_path,
        'subject = "s"\nhtml_file = "t/body.j2"',
        files={"t/body.j2": "<p>{{ v }}</p>"},
    )
    assert r.render({"v": "<script>"}).html == "<p>&lt;script&gt;</p>"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ v.__class__ }}",
    ],
)
def test_sandbox_escape_is_a_security_error(tmp_path, template) -> None:
    r = renderer(tmp_path, f'subject = "s"\ntext = "{template}"')
    with pytest.raises(TemplateSecurityError) as info:
        r.render({"v": "x"})
    assert info.value.exit_code == 2


def test_syntax_error_names_file_and_line(tmp_path) -> None:
    with pytest.raises(TemplateError) as info:
        renderer(
            tmp_path,
            'subject = "s"\nhtml_file = "body.html.j2"',
            files={"body.html.j2": "<p>ok</p>\n<p>{% if x %}never closed</p>\n"},
        )
    text = str(info.value)
    assert "body.html.j2" in text and "line" in text
    assert not isinstance(info.value, TemplateSecurityError)


def test_inline_syntax_error_names_the_key(tmp_path) -> None:
    with pytest.raises(TemplateError, match=r"campaign.toml \(message.subject\)"):
        renderer(tmp_path, 'subject = "{{ unclosed "\ntext = "x"')


@pytest.mark.parametrize(
    ("message", "values", "column"),
    [
        ('subject = "{{ s }}"\ntext = "x"', {"s": "Hi\r\nBcc: x@example.com"}, "subject"),
        ('subject = "{{ s }}"\ntext = "x"', {"s": "Hi\x00"}, "subject"),
        (
            'subject = "s"\ntext = "x"\n[message.headers]\nX-Id = "{{ s }}"',
            {"s": "1\nX-Evil: 1"},
            "headers.X-Id",
        ),
        (
            'subject = "s"\ntext = "x"\nunsubscribe_url = "https://e.com/u/{{ s }}"',
            {"s": "a\rb"},
            "unsubscribe_url",
        ),
        ('subject = "s"\ntext = "x"\n[message.tags]\nk = "{{ s }}"', {"s": "a\nb"}, "tags.k"),
    ],
)
def test_header_injection_is_rejected(tmp_path, message, values, column) -> None:
    r = renderer(tmp_path, message)
    with pytest.raises(RowRenderError) as info:
        r.render(values)
    assert info.value.column == column
    assert "header injection" in info.value.message


def test_output_size_limit(tmp_path) -> None:
    r = renderer(
        tmp_path, 'subject = "s"\nhtml = "{% for i in range(n) %}xxxxxxxxxx{% endfor %}"', 500
    )
    assert len(r.render({"n": 10}).html) == 100
    with pytest.raises(RowRenderError, match="more than"):
        r.render({"n": 1000})


def test_text_is_generated_from_html_when_no_text_template(tmp_path) -> None:
    r = renderer(tmp_path, 'subject = "s"\nhtml = "<h1>Hi {{ n }}</h1><ul><li>one</li></ul>"')
    out = r.render({"n": "Ann"})
    assert "Hi Ann" in out.text and "one" in out.text and "<" not in out.text
    assert r.render({"n": "Ann"}, derive_text=False).text is None
    assert html_to_text("<p>a</p><p>b</p>").split() == ["a", "b"]


def test_generated_text_keeps_link_targets() -> None:
    """The text part must still carry the unsubscribe or payment URL, not just its label."""
    html = '<p>Pay <a href="https://pay.example.com/i?n=1&amp;c=2">here</a></p>'
    text = html_to_text(html + '<a href="https://e.com/unsub">Unsubscribe</a>')
    assert "https://pay.example.com/i?n=1&c=2" in text
    assert "https://e.com/unsub" in text


def test_unsubscribe_headers_follow_rfc_8058(tmp_path) -> None:
    r = renderer(
        tmp_path, 'subject = "s"\ntext = "x"\nunsubscribe_url = "https://e.com/u?id={{ id }}"'
    )
    headers = r.render({"id": "42"}).headers
    assert headers["List-Unsubscribe"] == "<https://e.com/u?id=42>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_rendering_is_deterministic_and_none_is_empty(tmp_path) -> None:
    r = renderer(tmp_path, 'subject = "s {{ a }}"\nhtml = "<p>{{ a }}|{{ b }}</p>"')
    first = r.render({"a": "x", "b": None})
    assert first == r.render({"a": "x", "b": None})
    assert first.html == "<p>x|</p>"


def test_ical_filters() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    lisbon_summer = timezone(timedelta(hours=1))
    assert ical_datetime(datetime(2026, 6, 18, 10, 0, tzinfo=lisbon_summer)) == "20260618T090000Z"
    assert ical_datetime("2026-06-18T09:00:00+00:00") == "20260618T090000Z"
    assert ical_datetime(datetime(2026, 6, 18, 9, tzinfo=UTC)) == "20260618T090000Z"
    assert ical_text("a, b; c\\d\ne") == "a\\, b\\; c\\\\d\\ne"


def test_ical_lines_end_with_crlf(tmp_path) -> None:
    r = renderer(tmp_path, 'subject = "s"\ntext = "x"\nical = "BEGIN:VCALENDAR\\nEND:VCALENDAR\\n"')
    assert r.render({}).ical == "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
