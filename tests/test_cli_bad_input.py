"""Bad output paths and a key pasted into api_key_env are bad input: exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support.campaigns import write_campaign

from batchsend.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture()
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["under a file", "missing folder"])
def test_check_errors_file_that_cannot_be_written(tmp_path: Path, afile: Path, where) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3, bad_rows=(2,))
    errors = afile / "errors.csv" if where == "under a file" else tmp_path / "nope" / "bad.csv"
    result = invoke("check", str(campaign), "--errors", str(errors))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(errors) in result.stderr and "cannot write" in result.stderr
    assert "fix:" in result.stderr and result.stdout == ""


def test_check_errors_file_that_is_a_directory(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3)
    result = invoke("check", str(campaign), "--errors", str(tmp_path))
    assert result.exit_code == 2
    assert str(tmp_path) in result.stderr and "is a directory" in result.stderr


@pytest.mark.parametrize("where", ["under a file", "file inside is a folder"])
def test_preview_out_folder_that_cannot_be_written(tmp_path: Path, afile: Path, where) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3)
    out = afile / "preview" if where == "under a file" else tmp_path / "out"
    if where == "file inside is a folder":
        (out / "row-1.txt").mkdir(parents=True)
    result = invoke("preview", str(campaign), "--row", "1", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(out) in result.stderr and "cannot write the preview" in result.stderr
    assert "fix:" in result.stderr and "wrote" not in result.stdout


def test_preview_out_that_is_a_file(tmp_path: Path, afile: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=3)
    result = invoke("preview", str(campaign), "--row", "1", "--out", str(afile))
    assert result.exit_code == 2
    assert str(afile) in result.stderr and "is a file" in result.stderr
    assert afile.read_text(encoding="utf-8") == "not a folder\n"


@pytest.mark.parametrize(
    "line",
    [
        'api_key_env = "sk-live-abc123DEF456ghi789"',
        'api_key_env = "BATCHSEND KEY sk-live-abc123DEF456ghi789"',
        'api_key_env = ""',
        "api_key_env = 4111222233334444",
    ],
)
def test_key_pasted_into_api_key_env_is_refused_without_echoing_it(
    tmp_path: Path, line: str
) -> None:
    campaign = write_campaign(tmp_path / "c", rows=2, extra=line)
    pasted = line.split("=", 1)[1].strip().strip('"')
    for command in (["check", str(campaign)], ["run", str(campaign), "--db", str(tmp_path / "db")]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert "api_key_env" in result.stderr and str(campaign) in result.stderr
        assert "e.g. BATCHSEND_API_KEY" in result.stderr and "api_key_file" in result.stderr
        if pasted:
            assert pasted not in result.stdout + result.stderr
            assert "abc123" not in result.stdout + result.stderr
        assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("pasted", ["sk-live-abc123DEF456ghi789", "re_9f8e7d6c5b4a39281706"])
def test_key_pasted_into_api_key_file_is_not_echoed(tmp_path: Path, pasted: str) -> None:
    campaign = write_campaign(tmp_path / "c", rows=2, extra=f'api_key_file = "{pasted}"')
    result = invoke("run", str(campaign), "--db", str(tmp_path / "db"))
    assert result.exit_code == 2, result.output
    assert pasted not in result.stdout + result.stderr
    assert "cannot read the API key file" in result.stderr
    assert "names a FILE holding the key" in result.stderr


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", rows=2, extra='api_key_file = "secrets/key.txt"')
    result = invoke("run", str(campaign), "--db", str(tmp_path / "db"))
    assert result.exit_code == 2, result.output
    assert "key.txt" in result.stderr and "No such file" in result.stderr
