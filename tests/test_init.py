"""``batchsend init`` writes an example that passes ``batchsend check`` untouched."""

from __future__ import annotations

from click.testing import CliRunner

from batchsend.cli import main


def test_init_then_check_passes(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(tmp_path / "camp")])
    assert result.exit_code == 0, result.output
    for name in ("campaign.toml", "recipients.csv", "templates/welcome.html.j2"):
        assert (tmp_path / "camp" / name).is_file()
    check = runner.invoke(main, ["check", str(tmp_path / "camp" / "campaign.toml")])
    assert check.exit_code == 0, check.output
    assert "rows 3, sendable 3" in check.output
    shown = runner.invoke(main, ["preview", str(tmp_path / "camp"), "--row", "2"])
    assert shown.exit_code == 0 and "Welcome aboard, Grace!" in shown.output


def test_init_refuses_to_overwrite(tmp_path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path)]).exit_code == 0
    (tmp_path / "campaign.toml").write_text("# my edits\n")
    again = runner.invoke(main, ["init", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert (tmp_path / "campaign.toml").read_text() == "# my edits\n"
    assert runner.invoke(main, ["init", str(tmp_path), "--force"]).exit_code == 0
    assert (tmp_path / "campaign.toml").read_text() != "# my edits\n"
