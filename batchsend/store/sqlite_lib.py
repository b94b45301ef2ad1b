"""sqlite-utils, loaded without pandas and numpy.

sqlite-utils imports pandas and numpy when they are installed, only to map their value
types to column types when it creates a table from values. batchsend writes its own
schema and hands the store plain Python values, so those imports are dead weight: about
half a second and 45 MB in every command where pandas is installed (a notebook, the test
dependencies). They are refused while sqlite-utils loads, unless this process has
imported them already (a DataFrame given to the Python API), in which case nothing is
saved and nothing changes. The cost: in a process that loaded batchsend's store first, a
program's own sqlite-utils calls do not map numpy or pandas values to column types (import
pandas first for that).
"""

from __future__ import annotations

import sys

_SKIPPED = ("pandas", "numpy")


def _load() -> None:
    refused = [name for name in _SKIPPED if name not in sys.modules]
    for name in refused:
        sys.modules[name] = None  # type: ignore[assignment]  # "import pandas" raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in refused:
            if sys.modules.get(name) is None:
                del sys.modules[name]


_load()  # first of this package's imports (see __init__), so before any sqlite-utils use
