"""The campaign file: every sample loads, every wrong key or value is named with a fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.campaigns import campaign_folder

from batchsend.campaign import (
    README_TABLES,
    REFERENCE_COMMAND,
    keys,
    load_campaign,
    render_reference,
    tables,
)
from batchsend.errors import CampaignError

MINIMAL = """\
provider = "{provider}"
[source]
path = "r.csv"
[sender]
email = "news@example.com"
[message]
subject = "Hi"
text = "Hello"
"""


def write(tmp_path: Path, extra: str = "", provider: str = "tosend", base: str = MINIMAL) -> Path:
    toml = base.format(provider=provider) + extra
    return campaign_folder(tmp_path, toml, {"r.csv": "email\na@example.com\n"})


@pytest.mark.parametrize("sample", ["newsletter", "event-invite", "invoices"])
def test_samples_load(sample: str) -> None:
    campaign = load_campaign(f"samples/{sample}/campaign.toml")
    assert campaign.folder == Path(f"samples/{sample}").resolve()
    assert campaign.source.is_file()
    assert campaign.provider in ("v1", "tosend")


def test_newsletter_values_and_defaults() -> None:
    c = load_campaign("samples/newsletter")  # a folder means its campaign.toml
    assert c.provider == "tosend"
    assert c.base_url == "http://127.0.0.1:8025"
    assert c.api_key_env == "BATCHSEND_API_KEY" and c.api_key_file is None
    assert c.send.concurrency == 4 and c.send.rate == 10.0 and c.send.batch_size == 100
    assert c.send.max_recipients_per_field == 50 and c.send.max_attempts == 5
    assert c.send.timeout == 30.0 and c.send.max_retry_time == 300.0
    assert c.merge.enabled is False and c.merge.placement == "bcc"
    assert c.metadata_columns == ("customer_id",)
    assert c.sender_domain == "northwind-gardens.example"
    assert c.message.reply_to is not None
    assert [name for name, _ in c.message.headers] == ["X-Campaign"]


@pytest.mark.parametrize(
    ("extra", "key", "suggestion"),
    [
        ('provder = "v1"\n', "provider", None),  # top level, before any table
        ("[send]\nconcurency = 4\n", "send.concurency", "concurrency"),
        ("[send]\nrate_limit = 4\n", "send.rate_limit", "rate"),
        ("[columns]\nemial = 'x'\n", "columns.emial", "email"),
        ("[message]\n", None, None),  # repeated table: TOML syntax error, still a CampaignError
        ("[mesage]\nsubject = 'x'\n", "mesage", "message"),
        ("[merge]\ngroup = 'x'\n", "merge.group", "group_column"),
    ],
)
def test_unknown_keys_name_the_key_and_nearest(tmp_path, extra, key, suggestion) -> None:
    if key == "provider":
        path = write(tmp_path, base="provder = 'v1'\n" + MINIMAL.split("\n", 1)[1])
    else:
        path = write(tmp_path, extra)
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    text = str(info.value)
    assert info.value.exit_code == 2
    assert "campaign.toml" in text
    if key == "provider":
        assert "provder" in text and "'provider'" in text
    elif key is not None:
        assert key in text
        assert f"did you mean '{suggestion}'" in text


@pytest.mark.parametrize(
    ("extra", "provider", "words"),
    [
        ('api_key = "secret"\n', "tosend", ["never go in the campaign file"]),
        ("[send]\nconcurrency = 'many'\n", "tosend", ["send.concurrency", "expected a integer"]),
        ("[send]\nconcurrency = 0\n", "tosend", ["at least 1"]),
        ("[send]\nbatch_size = 500\n", "tosend", ["at most 100"]),
        ("[send]\nrate = -1\n", "tosend", ["must be a positive number"]),
        ("[send]\ntimeout = nan\n", "tosend", ["send.timeout", "must be a positive number"]),
        ("[send]\non_server_error = 'resend'\n", "tosend", ["send.on_server_error", "retry"]),
        ("[message.tags]\nx = 'y'\n", "v1", ["message.tags", "only provider 'tosend'"]),
        ("[merge]\nplacement = 'cc'\n", "tosend", ["merge.placement"]),
        ("[[attachments]]\npath = 'a.png'\ncontent_id = 'logo'\n", "v1", ["content_id"]),
    ],
)
def test_wrong_values_are_named(tmp_path, extra, provider, words) -> None:
    text = MINIMAL.format(provider=provider)
    if extra.startswith("api_key"):
        text = extra + text
        extra = ""
    path = write(tmp_path, extra, base=text.replace("{", "{{").replace("}", "}}"))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    for word in words:
        assert word in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("message_table", "words"),
    [
        ('subject = "x"\nhtml = "a"\nhtml_file = "t.html"\n', ["both html and html_file"]),
        ('subject = "x"\n', ["needs html or text"]),
        ('text = "x"\n', ["message.subject", "missing"]),
        ('subject = "x"\ntext = "y"\nhtml_file = "nope.html"\n', ["not found"]),
        ('subject = "x"\ntext = "y"\nhtml_file = "../outside.html"\n', ["outside"]),
        ('subject = "x"\ntext = "y"\nunsubscribe_url = "http://x"\n', ["https"]),
        ('subject = "x"\ntext = "y"\ntag = "t"\n', ["only provider 'v1'"]),
        ('subject = "x"\ntext = "y"\nstream_type = "bulk"\n', ["stream_type"]),
    ],
)
def test_message_table_rules(tmp_path, message_table, words) -> None:
    base = MINIMAL.format(provider="tosend").split("[message]")[0]
    path = write(tmp_path, base=base.replace("{", "{{") + "[message]\n" + message_table)
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("replace", "words"),
    [
        (('provider = "tosend"', 'provider = "smtp"'), ["unknown provider 'smtp'"]),
        (('provider = "tosend"\n', ""), ["provider: missing"]),
        (('email = "news@example.com"', 'email = "not an address"'), ["sender.email"]),
        (('path = "r.csv"', 'path = "r.csv"\nencoding = "klingon"'), ["unknown encoding"]),
    ],
)
def test_required_and_checked_values(tmp_path, replace, words) -> None:
    text = MINIMAL.format(provider="tosend").replace(*replace)
    path = write(tmp_path, base=text)
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    for word in words:
        assert word in str(info.value)


def test_missing_campaign_file_is_an_input_error(tmp_path) -> None:
    with pytest.raises(CampaignError, match="cannot read the campaign file"):
        load_campaign(tmp_path / "nope.toml")


def test_readme_documents_every_key() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    doc = readme.read_text(encoding="utf-8").split("## Campaign file reference", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_.]+)`", doc, flags=re.MULTILINE))
    documented |= {
        part
        for cell in re.findall(r"^\| `([a-z_]+)` / `([a-z_]+)`", doc, flags=re.MULTILINE)
        for part in cell
    }
    for table in tables():
        for key in keys(table):
            assert key in documented or f"{table}.{key}" in documented, f"{table}.{key}"


def test_readme_reference_is_generated_from_the_model() -> None:
    """The README's key tables are what the campaign model says, word for word."""
    assert {t for names in README_TABLES.values() for t in names} == set(tables())
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- campaign-reference: ") == len(README_TABLES)
    assert render_reference(readme) == readme, (
        f"README.md's campaign file reference differs from batchsend/campaign.py: "
        f"run {REFERENCE_COMMAND}"
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[[attachments]]\npath = 1\n", ["attachments[0].path", "expected a string, got int 1"]),
        ("[[attachments]]\npath = 'a'\nname = 'x'\n", ["attachments.name", "'filename'"]),
        ("[columns]\nmetadata = [1]\n", ["columns.metadata", "expected a array of strings"]),
        ("[send]\nrate = true\n", ["send.rate", "expected a number, got bool True"]),
        ("send = 3\n", ["send: expected a table"]),
        ("[source.x]\n", ["source.x", "unknown key in [source]"]),
        ("[reply_to]\ndelimiter = ';'\n", ["reply_to.delimiter", "'[source] delimiter'"]),
    ],
)
def test_type_errors_name_file_and_key(tmp_path, extra, words) -> None:
    text = extra + MINIMAL if extra.startswith("send =") else MINIMAL + extra
    path = write(tmp_path, base=text)
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    assert info.value.exit_code == 2
    assert "campaign.toml" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_an_inline_template_naming_a_file_is_refused(tmp_path) -> None:
    """``html = "templates/x.html.j2"`` (the README once showed it) would send the path."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "x.html.j2").write_text("<p>{{ email }}</p>", encoding="utf-8")
    base = MINIMAL.format(provider="tosend").split("[message]")[0].replace("{", "{{")
    path = write(tmp_path, base=base + '[message]\nsubject = "x"\nhtml = "templates/x.html.j2"\n')
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    assert "message.html" in str(info.value)
    assert "html_file" in str(info.value)
    # A one-word inline text that names no file is an ordinary template.
    path = write(tmp_path, base=base + '[message]\nsubject = "x"\ntext = "templates/y.txt"\n')
    assert load_campaign(path).message.text is not None


def test_readme_campaign_example_loads(tmp_path) -> None:
    """The README's campaign example is valid as written, with its templates in place."""
    readme = Path("README.md").read_text(encoding="utf-8")
    example = re.search(r"## The campaign file.*?```toml\n(.*?)```", readme, re.S)
    assert example is not None
    toml = example.group(1)
    for file in re.findall(r'"(templates/[^"]+)"', toml):
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text("{{ first_name }}", encoding="utf-8")
    (tmp_path / "recipients.csv").write_text("email,full_name,first_name\n", encoding="utf-8")
    (tmp_path / "campaign.toml").write_text(toml, encoding="utf-8")
    message = load_campaign(tmp_path / "campaign.toml").message
    assert message.html is not None and message.html.file is not None
    assert message.text is not None and message.text.file is not None
