"""The provider APIs batchsend speaks, chosen by name.

Example::

    provider = get_provider("tosend", base_url="http://127.0.0.1:8025", api_key=key)
    request = provider.build_request(unit)
"""

from __future__ import annotations

from typing import Any

from batchsend.providers.base import (
    AccountInfo,
    LookupAnswer,
    LookupKind,
    LookupTarget,
    Provider,
    RecipientLimits,
)
from batchsend.providers.tosend import ToSendProvider, check_account
from batchsend.providers.v1 import V1Provider
from batchsend.transport import HttpRequest

PROVIDERS: dict[str, type[Provider]] = {"tosend": ToSendProvider, "v1": V1Provider}


def get_provider(name: str, *, base_url: str, api_key: str, **options: Any) -> Provider:
    """A provider by name (``"tosend"`` or ``"v1"``).

    ``options`` go to the provider: ``batch_size`` (tosend, 1..100, default 100),
    ``auth`` (v1: ``"x-api-key"``, default, or ``"bearer"``), ``limits``
    (:class:`RecipientLimits`).
    """
    try:
        cls = PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown provider {name!r}; known: {known}") from None
    return cls(base_url=base_url, api_key=api_key, **options)


__all__ = [
    "PROVIDERS",
    "AccountInfo",
    "HttpRequest",
    "LookupAnswer",
    "LookupKind",
    "LookupTarget",
    "Provider",
    "RecipientLimits",
    "ToSendProvider",
    "V1Provider",
    "check_account",
    "get_provider",
]
