"""A message's key and provider JSON, made where it was rendered (a row pass's worker).

:class:`WireEncoder` is picklable and light: a worker process that renders rows also
encodes them with it, and imports no more than the providers' message format needs.
"""

from __future__ import annotations

import dataclasses

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
        made = _PROVIDERS.get(self)
        if made is None:
            n = self.per_field
            made = _PROVIDERS[self] = get_provider(
                self.provider,
                base_url=self.base_url,
                api_key="",
                batch_size=self.batch_size,
                limits=RecipientLimits(n, n, n),
            )
        return made


_PROVIDERS: dict[WireEncoder, Provider] = {}
