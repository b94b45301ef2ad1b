"""What the command line changes in a campaign, and the settings a run records.

``run`` and ``resume`` take the same overrides (provider, base URL, concurrency, rate);
a resume takes them from the run's recorded settings unless the user gives new ones.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from batchsend.addresses import AddressBook, InvalidAddress
from batchsend.campaign import Campaign
from batchsend.errors import (
    CampaignError,
)
from batchsend.message import Address
from batchsend.session import Session
from batchsend.transport import base_url_problem


def override(
    campaign: Campaign,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    batch_size: int | None = None,
) -> Campaign:
    send = campaign.send
    send = send.model_copy(
        update={
            "concurrency": concurrency or send.concurrency,
            "rate": rate if rate is not None else send.rate,
            "batch_size": batch_size or send.batch_size,
        }
    )
    if provider is not None and provider not in ("v1", "tosend"):
        raise CampaignError(f"unknown provider {provider!r}", fix="use v1 or tosend")
    if base_url is not None:
        _check_base_url(base_url)
    return dataclasses.replace(
        campaign,
        provider=provider or campaign.provider,  # type: ignore[arg-type]
        base_url=base_url or campaign.base_url,
        send=send,
    )


def _check_base_url(url: str) -> None:
    """Refuse a --base-url that is not http(s)://host[:port] before anything is sent."""
    problem = base_url_problem(url)
    if problem is not None:
        raise CampaignError(
            f"--base-url {url!r} {problem}",
            fix="give the provider's API root, e.g. http://127.0.0.1:8025",
        )


def parse_test_to(value: str) -> Address:
    try:
        normalised = AddressBook().normalise(value)
    except InvalidAddress as exc:
        raise CampaignError(f"--test-to {value!r} is not a valid address: {exc}") from None
    return Address(getattr(normalised, "email", value))


def run_settings(
    campaign: Campaign, session: Session, *, limit: int | None, test_to: str | None, http: str
) -> dict[str, Any]:
    send = campaign.send
    return {
        "concurrency": send.concurrency,
        "rate": send.rate,
        "recipients_rate": send.recipients_rate,
        "batch_size": send.batch_size,
        "max_attempts": send.max_attempts,
        "max_retry_time": send.max_retry_time,
        "timeout": send.timeout,
        "idempotent_provider": send.idempotent_provider,
        "on_server_error": send.on_server_error,
        "merge": campaign.merge.enabled,
        "merge_group_column": campaign.merge.group_column,
        "merge_placement": campaign.merge.placement,
        "limit": limit,
        "test_to": test_to,
        "http_client": http,
        "sandbox": session.sandboxed,
        "host": socket.gethostname(),
    }
