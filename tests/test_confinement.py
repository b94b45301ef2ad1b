"""No file escapes the campaign folder, and no secret goes where the user did not send it.

Every file a campaign names (recipient file, templates and what they include, import or
extend, attachments, suppression lists, key file) is resolved with its symlinks and
must lie inside the campaign folder, or inside a path the user allowed on the command
line with ``--allow-outside`` (a campaign file cannot allow itself anything). A key
file may also live in the per-user config folder. The API key goes only to a loopback
host unless the user names the host with ``--base-url``, and only from a
``BATCHSEND_*`` variable. The key in the environment is registered for redaction
before any file is read.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.campaigns import TEXT, write_campaign
from support.processes import batchsend_command

from batchsend.apikeys import redact
from batchsend.campaign import load_campaign
from batchsend.cli import main
from batchsend.errors import CampaignError
from batchsend.session import Session

KEY = "sk-live-CONFINE-4b2d9e71c0a85f36"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Every path this process opens while the test runs (a Python audit hook)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            seen.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one switches itself off
    yield seen
    active[0] = False


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the campaign with a file that must never be read or sent."""
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.txt").write_text(f"email\n{KEY}@example.org\n", encoding="utf-8")
    return folder


def edit(campaign: Path, old: str, new: str) -> None:
    text = campaign.read_text(encoding="utf-8")
    assert old in text
    campaign.write_text(text.replace(old, new, 1), encoding="utf-8")


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, list(args), env={"BATCHSEND_API_KEY": KEY, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug in batchsend
    return result


def commands(campaign: Path, db: Path) -> list[list[str]]:
    """check, preview and run --dry-run: the commands that read everything, send nothing."""
    return [
        ["check", str(campaign)],
        ["preview", str(campaign), "--row", "1"],
        ["run", str(campaign), "--dry-run", "--db", str(db)],
    ]


def refused(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert "Traceback" not in result.output
    assert KEY not in result.output


def no_run(db: Path) -> None:
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


# --- every file the campaign names ----------------------------------------------------------


def _source_cases(outside: Path) -> dict[str, tuple[str, str]]:
    """How a campaign may name a recipient file outside its folder: (path, symlink target)."""
    return {
        "absolute": (str(outside / "secret.txt"), ""),
        "dotdot": ("../private/secret.txt", ""),
        "symlink": ("list.csv", str(outside / "secret.txt")),
        "symlinked folder": ("data/secret.txt", str(outside)),
    }


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "symlinked folder"])
def test_a_recipient_file_outside_the_folder_is_refused_unread(
    tmp_path: Path, outside: Path, opened: list[str], case: str
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1)
    raw, target = _source_cases(outside)[case]
    if target:
        (tmp_path / "c" / raw.split("/")[0]).symlink_to(target)
    edit(campaign, 'path = "recipients.csv"', f'path = "{raw}"')
    db = tmp_path / "store.db"
    for command in commands(campaign, db):
        refused(invoke(*command), "source.path", "outside the campaign folder", "--allow-outside")
    assert not [p for p in opened if Path(p).name == "secret.txt"], opened
    no_run(db)


def test_allow_outside_on_the_command_line_lets_the_user_read_a_file_elsewhere(
    tmp_path: Path, outside: Path
) -> None:
    (outside / "list.csv").write_text("email,first,n\nbob@example.org,Bob,1\n", "utf-8")
    campaign = write_campaign(tmp_path / "c", rows=1)
    edit(campaign, 'path = "recipients.csv"', f'path = "{outside / "list.csv"}"')
    result = invoke("check", str(campaign), "--allow-outside", str(outside))
    assert result.exit_code == 0, result.output
    assert "sendable 1" in result.output


def test_a_campaign_file_cannot_allow_itself_a_path(tmp_path: Path, outside: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1, extra=f'allow_outside = ["{outside}"]')
    refused(invoke("check", str(campaign)), "allow_outside", "unknown key")


@pytest.mark.parametrize("command", ["check", "preview", "run"])
def test_proc_self_environ_as_the_recipient_file_never_shows_the_key(
    tmp_path: Path, command: str
) -> None:
    """The reported hole: its header ("the file has: ...") was the process environment.

    A real process, because /proc/self/environ holds the environment a process started
    with. Refused as outside the folder; and with --allow-outside /proc (the user's own
    choice) the key, registered before any file is read, is still redacted.
    """
    campaign = write_campaign(tmp_path / "c", rows=1)
    edit(campaign, 'path = "recipients.csv"', 'path = "/proc/self/environ"')
    args = {"check": [], "preview": ["--row", "1"], "run": ["--dry-run"]}[command]
    env = {**os.environ, "BATCHSEND_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    for allow in ([], ["--allow-outside", "/proc"]):
        proc = subprocess.run(
            batchsend_command(command, str(campaign), *args, *allow,
                              *(["--db", str(tmp_path / "s.db")] if command == "run" else [])),
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert KEY not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        if not allow:
            assert "outside the campaign folder" in proc.stderr


@pytest.mark.parametrize(
    "statement",
    [
        '{% include "parts/footer.txt" %}',
        '{% import "parts/footer.txt" as f %}{{ f }}',
        '{% from "parts/footer.txt" import x %}',
        '{% extends "parts/footer.txt" %}',
        '{% include "shared/footer.txt" %}',  # a symlinked folder
    ],
)
def test_an_include_through_a_symlink_to_outside_is_refused_and_never_sent(
    tmp_path: Path, outside: Path, make_sandbox, statement: str
) -> None:
    """The reported hole: the outside file's content went to every recipient."""
    sandbox = make_sandbox(api_keys=(KEY,))
    campaign = write_campaign(tmp_path / "c", rows=1, base_url=sandbox.base_url)
    folder = tmp_path / "c"
    (folder / "parts").mkdir()
    (folder / "parts" / "footer.txt").symlink_to(outside / "secret.txt")
    (folder / "shared").symlink_to(outside)
    (outside / "footer.txt").write_text(f"{KEY}\n", encoding="utf-8")
    (folder / "body.txt.j2").write_text(f"Hello.\n{statement}\n", encoding="utf-8")
    edit(campaign, f'text = "{TEXT}"', 'text_file = "body.txt.j2"')
    db = tmp_path / "store.db"
    for command in [*commands(campaign, db), ["run", str(campaign), "--db", str(db)]]:
        refused(invoke(*command), "outside the campaign folder")
    assert sandbox.stats()["requests"] == 0
    no_run(db)


def test_a_symlink_inside_the_folder_to_a_file_inside_it_is_fine(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1)
    folder = tmp_path / "c"
    (folder / "real.txt").write_text("the footer", encoding="utf-8")
    (folder / "footer.txt").symlink_to(folder / "real.txt")
    (folder / "body.txt.j2").write_text('{% include "footer.txt" %}', encoding="utf-8")
    edit(campaign, f'text = "{TEXT}"', 'text_file = "body.txt.j2"')
    result = invoke("preview", str(campaign), "--row", "1")
    assert result.exit_code == 0, result.output


def test_an_include_allowed_on_the_command_line_is_read(tmp_path: Path, outside: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1)
    folder = tmp_path / "c"
    (outside / "footer.txt").write_text("shared footer", encoding="utf-8")
    (folder / "footer.txt").symlink_to(outside / "footer.txt")
    (folder / "body.txt.j2").write_text('{% include "footer.txt" %}', encoding="utf-8")
    edit(campaign, f'text = "{TEXT}"', 'text_file = "body.txt.j2"')
    result = invoke("check", str(campaign), "--allow-outside", str(outside / "footer.txt"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("message.text_file", 'text_file = "LINK"'),
        ("suppression.files", '[suppression]\nfiles = ["LINK"]'),
        ("suppression.files", '[suppression]\nfiles = ["OUTSIDE"]'),
        ("api_key_file", 'api_key_file = "LINK"'),
        ("api_key_file", 'api_key_file = "OUTSIDE"'),
    ],
)
def test_every_file_the_campaign_names_follows_the_same_rule(
    tmp_path: Path, outside: Path, opened: list[str], key: str, line: str
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=1)
    (tmp_path / "c" / "link.txt").symlink_to(outside / "secret.txt")
    line = line.replace("LINK", "link.txt").replace("OUTSIDE", str(outside / "secret.txt"))
    if key == "message.text_file":
        edit(campaign, f'text = "{TEXT}"', line)
    elif key == "api_key_file":
        edit(campaign, "[source]", f"{line}\n[source]")
    else:
        campaign.write_text(campaign.read_text("utf-8") + line + "\n", "utf-8")
    db = tmp_path / "store.db"
    for command in [*commands(campaign, db), ["run", str(campaign), "--db", str(db)]]:
        refused(invoke(*command), key, "outside the campaign folder")
    assert not [p for p in opened if Path(p).name == "secret.txt"], opened
    no_run(db)


def test_a_key_file_may_live_in_the_user_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_sandbox
) -> None:
    config = tmp_path / "config"
    (config / "batchsend").mkdir(parents=True)
    (config / "batchsend" / "tosend.key").write_text(KEY + "\n", encoding="utf-8")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    sandbox = make_sandbox(api_keys=(KEY,))
    campaign = write_campaign(
        tmp_path / "c",
        rows=1,
        base_url=sandbox.base_url,
        extra=f'api_key_file = "{config / "batchsend" / "tosend.key"}"',
    )
    result = invoke("run", str(campaign), "--db", str(tmp_path / "s.db"), env={})
    assert result.exit_code == 0, result.output
    assert len(sandbox.messages()) == 1


# --- where the key may go -------------------------------------------------------------------


def test_a_remote_base_url_in_the_campaign_file_is_refused_before_the_key_is_read(
    tmp_path: Path,
) -> None:
    # .invalid never resolves: even a broken check could not reach another host
    campaign = write_campaign(tmp_path / "c", rows=1, base_url="https://collector.invalid")
    db = tmp_path / "store.db"
    result = invoke("run", str(campaign), "--db", str(db))
    refused(result, "base_url", "collector.invalid", "--base-url")
    no_run(db)
    # the dry run sends nothing (and so needs no confirmation)
    assert invoke("run", str(campaign), "--dry-run", "--db", str(db)).exit_code == 0


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "http://127.8.9.10:9"],
)
def test_a_loopback_base_url_needs_no_confirmation(tmp_path: Path, url: str) -> None:
    campaign = load_campaign(write_campaign(tmp_path / "c", rows=1, base_url=url))
    with Session(campaign, sandbox=False, dry_run=False) as session:
        session.open(api_key=KEY, api_key_file=None, api_key_stdin=False)
        assert session.base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.net",
        "http://127.0.0.1.nip.io:9",
        "http://0.0.0.0:9",
        "http://[::ffff:10.0.0.1]:9",
        "http://localhost.example.net:9",
    ],
)
def test_a_remote_base_url_is_used_only_when_the_user_gave_it(tmp_path: Path, url: str) -> None:
    campaign = load_campaign(write_campaign(tmp_path / "c", rows=1, base_url=url))
    with (
        Session(campaign, sandbox=False, dry_run=False) as session,
        pytest.raises(CampaignError, match="--base-url"),
    ):
        session.open(api_key=KEY, api_key_file=None, api_key_stdin=False)
    with Session(campaign, sandbox=False, dry_run=False, base_url_confirmed=True) as session:
        session.open(api_key=KEY, api_key_file=None, api_key_stdin=False)  # no request made
        assert session.base_url == url


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "HOME", "batchsend_x"])
def test_api_key_env_must_be_a_batchsend_variable(tmp_path: Path, name: str) -> None:
    """Else a campaign file could pick any secret of the user's and send it as the key."""
    campaign = write_campaign(tmp_path / "c", rows=1, extra=f'api_key_env = "{name}"')
    secret = "ghp_" + "z" * 36
    for command in commands(campaign, tmp_path / "s.db"):
        result = invoke(*command, env={name: secret})
        refused(result, "api_key_env", "BATCHSEND_")
        assert secret not in result.output


def test_a_batchsend_variable_named_by_the_campaign_is_used(tmp_path: Path, make_sandbox) -> None:
    sandbox = make_sandbox(api_keys=(KEY,))
    campaign = write_campaign(
        tmp_path / "c",
        rows=1,
        base_url=sandbox.base_url,
        extra='api_key_env = "BATCHSEND_TOSEND_KEY"',
    )
    result = CliRunner().invoke(
        main, ["run", str(campaign), "--db", str(tmp_path / "s.db")],
        env={"BATCHSEND_TOSEND_KEY": KEY, "BATCHSEND_API_KEY": None},
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_the_key_is_registered_for_redaction_when_the_campaign_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = "sk-live-REGISTERED-AT-LOAD-91c7e3"
    monkeypatch.setenv("BATCHSEND_OTHER_KEY", fresh)
    assert redact(fresh) == fresh
    load_campaign(
        write_campaign(tmp_path / "c", rows=1, extra='api_key_env = "BATCHSEND_OTHER_KEY"')
    )
    assert redact(f"header: {fresh}") == "header: [redacted]"
