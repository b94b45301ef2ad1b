"""The package's import graph: no cycle, no import from a higher layer, every module
importable on its own.

The layers are the LAYERS table below, lowest first; a module may import only from its
own layer or a lower one. An import written inside a function counts as much as one at the
top: hiding an import in a function does not make a cycle go away. Only imports under
``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import batchsend

PACKAGE = Path(batchsend.__file__).parent

# Lowest first. A module not listed here fails test_every_module_has_a_layer, so a new
# module is placed on purpose.
LAYERS: tuple[tuple[str, ...], ...] = (
    # what everything stands on; the sandbox plays the provider and leans on nothing
    (
        "version",
        "errors",
        "states",
        "crashpoints",
        "confinement",
        "loops",
        "process",
        "workers",
        "rowset",
        "message",
        "addresses",
        "ledger",
        "progress",
        "sandbox",
    ),
    # keys, limits, plans and the files batchsend reads
    (
        "apikeys",
        "retry",
        "ratelimit",
        "plan",
        "outcome",
        "next_steps",
        "source",
        "variables",
        "spool",
        "scaffold",
        "events",
    ),
    ("transport",),  # HTTP on the wire
    ("providers", "campaign", "store"),  # the two APIs, the campaign file, the database
    ("dblocation",),  # which database a command uses
    # rendering, sending, and what the row pass reads besides the recipients
    ("render", "engine", "attachments", "suppressions"),
    ("fingerprints",),  # hashes of everything a campaign reads, for resume and report
    ("preflight",),  # the row pass
    ("check_report", "history", "preview", "session", "summary", "receiver", "pull"),
    ("refusals", "intake", "overrides", "report_html"),
    ("report", "sending", "reconcile"),
    ("run", "resume"),
    ("api",),  # the Python API: campaigns built in Python, over run, resume and report
    # the package re-exports the public API, so it stands on top with the command line
    ("batchsend", "cli", "__main__"),
)


_TYPING_ONLY = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):  # typing-only imports never run: no edge
        if isinstance(node, ast.If) and ast.unparse(node.test) in _TYPING_ONLY:
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from batchsend import ledger` imports the module batchsend.ledger;
            # `from batchsend.store import Store` imports the package batchsend.store.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module
                target = target.rpartition(".")[0]
            # A module's own packages are imported before it in any case: no edge.
            if target and not name.startswith(target + ".") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    return graph


def _layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            full = "batchsend" if entry == "batchsend" else f"batchsend.{entry}"
            if name == full or (entry != "batchsend" and name.startswith(full + ".")):
                return index
    raise LookupError(name)


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise AssertionError(f"import cycle: {cycle}") from None


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for name in _graph():
        try:
            _layer_of(name)
        except LookupError:
            unplaced.append(name)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [
        f"{name} (layer {_layer_of(name)}) imports {target} (layer {_layer_of(target)})"
        for name, targets in _graph().items()
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_the_sandbox_stands_alone() -> None:
    """The sandbox plays the provider: it must not lean on the client it tests."""
    leaks = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if name.startswith("batchsend.sandbox")
        for target in sorted(targets)
        if not target.startswith("batchsend.sandbox")
    ]
    assert not leaks, "\n".join(leaks)


def test_every_module_imports_in_a_fresh_interpreter_in_dependency_order() -> None:
    order = [
        name
        for name in graphlib.TopologicalSorter(_graph()).static_order()
        if not name.endswith("__main__")  # importing it runs the command line
    ]
    # Lowest first: each module is imported when only what it depends on has been, so
    # one that works only because something else was imported before it fails here.
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        sys.exit(f'{name}: {type(error).__name__}: {error}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *order], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_command_line_does_not_load_pandas_or_numpy(tmp_path: Path) -> None:
    # sqlite-utils imports both when installed (the test dependencies install pandas):
    # half a second and about 45 MB in every command. A command that opens the store:
    script = (
        "import sys\n"
        "from batchsend.cli import main\n"
        "try:\n"
        f"    main(['runs', '--db', {str(tmp_path / 'b.db')!r}], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "import batchsend.run, batchsend.reconcile, sqlite_utils.db\n"
        "print(sorted({'pandas', 'numpy'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # a program using batchsend as a library keeps sqlite-utils whole: its own numpy
    # values still map to column types
    script = (
        "import batchsend.store, numpy, sqlite_utils\n"
        "db = sqlite_utils.Database(memory=True)\n"
        "db['t'].insert({'n': numpy.int64(2)})\n"
        "print(db['t'].columns_dict)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "{'n': <class 'int'>}", result.stderr
