"""The package ships what users need: every subpackage and the starter campaign."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "batchsend").rglob("__init__.py")
    }
    mapped = set(config.get("package-dir", {}))
    assert on_disk | mapped == listed, "add the new package to [tool.setuptools] packages"


def test_starter_campaign_comes_from_the_top_level_templates_folder(tmp_path: Path) -> None:
    from batchsend.scaffold import write_example

    written = {p.relative_to(tmp_path).as_posix() for p in write_example(tmp_path)}
    expected = {
        p.relative_to(ROOT / "templates" / "starter").as_posix()
        for p in (ROOT / "templates" / "starter").rglob("*")
        if p.is_file() and p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    assert written == expected
    assert "campaign.toml" in written
    assert sys.modules["batchsend.starter"].__file__ is not None
