"""``batchsend init``: write an example campaign a user can edit.

The example (``campaign.toml``, ``recipients.csv`` and its templates) lives in the
repository's top-level ``templates/starter`` folder, ships inside the package as
``batchsend.starter`` (see pyproject.toml), and passes ``batchsend check`` untouched.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from batchsend.errors import InputError

# Files that make the folder importable as batchsend.starter: not part of the example.
_PACKAGING_FILES = {"__init__.py"}


def _example_files() -> list[tuple[str, bytes]]:
    root = resources.files("batchsend.starter")
    out: list[tuple[str, bytes]] = []
    pending = [("", root)]
    while pending:
        prefix, node = pending.pop()
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    pending.append((f"{rel}/", child))
            elif not child.name.startswith(".") and child.name not in _PACKAGING_FILES:
                out.append((rel, child.read_bytes()))
    return sorted(out)


def write_example(folder: str | Path, *, force: bool = False) -> list[Path]:
    """Write the example campaign into ``folder`` and return the files written.

    Refuses (:class:`InputError`) to overwrite an existing file unless ``force``.

    Example::

        write_example("mycampaign")   # then: batchsend check mycampaign/campaign.toml
    """
    folder = Path(folder)
    files = _example_files()
    if not force:
        existing = [rel for rel, _ in files if (folder / rel).exists()]
        if existing:
            raise InputError(
                f"{folder / existing[0]} already exists; nothing was written",
                fix="choose a new folder, or pass --force to overwrite",
            )
    written = []
    for rel, data in files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written
