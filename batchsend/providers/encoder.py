"""A message's key and provider JSON, made where it was rendered (a row pass's worker).

:class:`WireEncoder` is picklable and light: a worker process that renders rows also
encodes them with it, and imports no more than the providers' message format needs.
"""

from __future__ import annotations

import dataclasses
import functools

from batchsend.message import Message, message_key
from batchsend.plan import PlannedMessage
from batchsend.providers import Provider, RecipientLimits, get_provider

__all__ = ["WireEncoder"]


@dataclasses.dataclass(frozen=True)
class WireEncoder:
    """A message's key and provider JSON (picklable: it travels to the row pass's workers).

    It holds no API key: encoding a message needs none, and a worker never sends.
    """

    provider: str
    base_url: str
    batch_size: int
    per_field: int
    run_id: str

    def __call__(self, m: Message) -> PlannedMessage:
        provider = self._provider()
        planned = PlannedMessage(message_key(self.run_id, m), (m.row,), m)
        wire = provider.encode_message(planned)
        return PlannedMessage(planned.key, planned.rows, None, wire, planned.recipient_count)

    def _provider(self) -> Provider:
        return _provider_for(self)


@functools.lru_cache(maxsize=4)
def _provider_for(encoder: WireEncoder) -> Provider:
    """The provider that encodes for ``encoder``: made once a run and process (a few kept,
    not one for every run a long-lived notebook ever made)."""
    n = encoder.per_field
    return get_provider(
        encoder.provider,
        base_url=encoder.base_url,
        api_key="",
        batch_size=encoder.batch_size,
        limits=RecipientLimits(n, n, n),
    )
