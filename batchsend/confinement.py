"""Which files a campaign may read: its own folder, and what the user allowed.

A campaign folder may come from someone else. Whatever its campaign file names (the
recipient file, templates and everything they include, import or extend, attachments,
suppression lists, the key file), batchsend reads only files whose real path, symlinks
resolved, lies inside the campaign folder or inside a path the user named on the
command line with ``--allow-outside``. A campaign file cannot allow itself anything:
the permission comes from the person running the command. A key file may also live in
the per-user config folder (:func:`config_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: The option that widens the confinement, as error messages name it.
ALLOW_OPTION = "--allow-outside"


def config_dir() -> Path:
    """The per-user folder for batchsend's key files: ``$XDG_CONFIG_HOME/batchsend``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batchsend"


def real_path(path: Path) -> Path | None:
    """``path`` with every symlink resolved; None when it cannot be (a loop, a NUL)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Confinement:
    """The folders (or single files) a campaign may read from, as real paths."""

    folder: Path
    allowed: tuple[Path, ...] = ()

    @classmethod
    def of(cls, folder: Path, allow_outside: Iterable[str | Path] = ()) -> Confinement:
        allowed = tuple(p for p in (real_path(Path(a).expanduser()) for a in allow_outside) if p)
        return cls(real_path(folder) or folder, allowed)

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.folder, *self.allowed)

    def contains(self, path: Path, *, extra: tuple[Path, ...] = ()) -> bool:
        """Is ``path``'s real path inside the folder, an allowed path or ``extra``?"""
        real = real_path(path)
        return real is not None and any(real.is_relative_to(r) for r in (*self.roots, *extra))

    def fix(self, path: Path) -> str:
        """How to put right a refused ``path`` (its real location is shown)."""
        real = real_path(path)
        where = f" (it is {real})" if real is not None and real != path else ""
        return (
            f"keep the file inside the campaign folder {self.folder}{where}; if you trust "
            f"this campaign to read it, pass {ALLOW_OPTION} {(real or path).parent} "
            "on the command line"
        )
