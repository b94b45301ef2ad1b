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
:mod:`batchsend.errors`, ...); ``__all__`` is the public surface.
"""

from __future__ import annotations

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
