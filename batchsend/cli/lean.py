"""The command line loads sqlite-utils without pandas and numpy.

sqlite-utils imports pandas and numpy when they are installed, only to map their value
types to column types when it creates a table from values. batchsend writes its own
schema and hands the store plain Python values, so in a ``batchsend`` command those
imports are dead weight: about half a second and 45 MB (and in the main process of a
million-row run) wherever pandas is installed. The command line owns its process, so it
refuses them while sqlite-utils loads, before any command's module is imported; a
program using batchsend as a library keeps sqlite-utils as it is (its own numpy and
pandas values mapped), since sqlite-utils builds that mapping once, when it loads.
"""

from __future__ import annotations

import sys

_SKIPPED = ("pandas", "numpy")


def load_sqlite_utils() -> None:
    """Import sqlite-utils with pandas and numpy refused, unless loaded already."""
    if "sqlite_utils" in sys.modules:
        return
    refused = [name for name in _SKIPPED if name not in sys.modules]
    for name in refused:
        sys.modules[name] = None  # type: ignore[assignment]  # "import pandas" raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in refused:
            if sys.modules.get(name) is None:
                del sys.modules[name]
