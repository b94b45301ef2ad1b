"""Shared fixtures: a sandbox per test on 127.0.0.1 (start and stop take about a millisecond).

``sandbox`` is the default account: key ``sk-test``, verified domain ``example.com``.
``make_sandbox(**options)`` builds one with any :class:`batchsend.sandbox.Sandbox`
option (``credits=5``, ``tosend_emails_per_second=10``, ``fail_rate=0.3, seed=1``,
``clock=...``),
started; every sandbox it made is stopped at teardown.

Tests marked ``slow`` (the long forms of the crash and fault campaigns) are deselected
unless a ``-m`` expression is given: ``python -m pytest -m slow`` runs them. Each has a
short form of the same check in the default run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.sandboxes import TEST_DOMAIN, TEST_KEY

from batchsend.sandbox import Sandbox


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the ``slow`` tier out of a run that did not ask for it with ``-m``."""
    if config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(autouse=True)
def _own_register_of_sends(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Each test its own user register of sends and index of runs
    (``$XDG_STATE_HOME/batchsend``).

    The register refuses a campaign already sent from another database; tests generate
    the same campaigns in many folders, and must not see each other's sends (nor the
    developer's own). Subprocesses inherit it through the environment.
    """
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    # Nor the developer's choice of database or progress interval: tests choose their own.
    monkeypatch.delenv("BATCHSEND_DB", raising=False)
    monkeypatch.delenv("BATCHSEND_PROGRESS_INTERVAL", raising=False)


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """A factory of started sandboxes, all stopped at teardown."""
    made: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        options.setdefault("api_keys", (TEST_KEY,))
        options.setdefault("domains", (TEST_DOMAIN,))
        sandbox = Sandbox(**options).start()
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """A started sandbox with key ``sk-test`` and the verified domain ``example.com``."""
    return make_sandbox()
