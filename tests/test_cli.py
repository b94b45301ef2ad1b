"""The command line's shape: every command is listed and documented."""

from __future__ import annotations

from click.testing import CliRunner

from batchsend.cli import COMMANDS, main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "batchsend" in result.output


def test_help_lists_exactly_the_commands_batchsend_has() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    section = result.output.split("Commands:", 1)[1]
    shown = [line.split()[0] for line in section.splitlines() if line.strip()]
    assert shown == [
        "init",
        "check",
        "preview",
        "run",
        "resume",
        "reconcile",
        "runs",
        "report",
        "events",
        "suppressions",
        "sandbox",
    ]
    assert list(COMMANDS) == shown


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output or "example" in result.output, name
