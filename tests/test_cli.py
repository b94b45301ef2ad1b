"""The command line's shape: every command is listed and documented."""

from __future__ import annotations

import click
from click.testing import CliRunner

from batchsend.cli import COMMANDS, main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "batchsend" in result.output


def test_every_listed_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    ctx = click.Context(main)
    listed = main.list_commands(ctx)  # a command whose module is not written yet is absent
    assert set(listed) <= set(COMMANDS)
    for name in listed:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output or "example" in result.output, name
