"""batchsend: bulk email campaigns that survive crashes without emailing anyone twice.

The Python API (docs/python-api.md)::

    import batchsend as bs

    campaign = bs.Campaign(
        provider="tosend",
        sender="news@example.com",
        subject="Hi {{ first_name }}",
        text="Hello {{ first_name }}!",
        recipients=[{"email": "ann@example.org", "first_name": "Ann"}],
    )
    campaign.check().ok                 # every row read and rendered, nothing sent
    run = campaign.run(sandbox=True)    # in a script or inside a notebook's loop
    run.report()                        # a polars DataFrame, one row per recipient

Everything here is re-exported from the modules that define it (:mod:`batchsend.api`,
:mod:`batchsend.errors`, ...); ``__all__`` is the public surface. Each name is imported
when first used: ``import batchsend.preflight`` (what the row pass's worker processes
load) does not pay for the whole API, its HTTP clients and the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchsend.api import Campaign, Check, Run, open_run, runs
    from batchsend.errors import (
        BatchsendError,
        CampaignError,
        CampaignSentError,
        ConcurrentCommandError,
        FatalSendError,
        InputError,
        PreflightError,
        ResumeRefusedError,
        SecretError,
        SourceError,
        TemplateError,
        UnfinishedRunError,
    )
    from batchsend.preview import Preview
    from batchsend.sending import RunResult
    from batchsend.states import RecipientState, RunState
    from batchsend.version import USER_AGENT, __version__

_HOMES = {
    "batchsend.api": ("Campaign", "Check", "Run", "open_run", "runs"),
    "batchsend.errors": (
        "BatchsendError",
        "CampaignError",
        "CampaignSentError",
        "ConcurrentCommandError",
        "FatalSendError",
        "InputError",
        "PreflightError",
        "ResumeRefusedError",
        "SecretError",
        "SourceError",
        "TemplateError",
        "UnfinishedRunError",
    ),
    "batchsend.preview": ("Preview",),
    "batchsend.sending": ("RunResult",),
    "batchsend.states": ("RecipientState", "RunState"),
    "batchsend.version": ("USER_AGENT", "__version__"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'batchsend' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "USER_AGENT",
    "BatchsendError",
    "Campaign",
    "CampaignError",
    "CampaignSentError",
    "Check",
    "ConcurrentCommandError",
    "FatalSendError",
    "InputError",
    "PreflightError",
    "Preview",
    "RecipientState",
    "ResumeRefusedError",
    "Run",
    "RunResult",
    "RunState",
    "SecretError",
    "SourceError",
    "TemplateError",
    "UnfinishedRunError",
    "__version__",
    "open_run",
    "runs",
]
