"""The Python API's documentation runs: every ``python`` block of docs/python-api.md, top
to bottom in one namespace, and the README's "From Python" block, each in an empty folder
against the embedded sandbox."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return _BLOCK.findall(text)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


@pytest.mark.parametrize(
    "source",
    ["docs/python-api.md", "README.md#from-python"],
)
def test_the_documented_examples_run(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source.startswith("README"):
        blocks = python_blocks(readme_section("From Python"))
    else:
        blocks = python_blocks((ROOT / source).read_text(encoding="utf-8"))
    assert blocks, f"no python blocks in {source}"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for n, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{source} block {n}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{source}, python block {n} failed: {error!r}") from error
