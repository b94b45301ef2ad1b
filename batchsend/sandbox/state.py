"""The sandbox's account and memory: settings, idempotency store, message log, stats, faults.

Everything here is plain Python driven by the server's event loop; nothing awaits. The
settings are a frozen :class:`SandboxConfig` swapped whole by :meth:`SandboxState.configure`,
so a handler reads one consistent snapshot and a live change never half-applies.

Decisions recorded here (see also ``batchsend/sandbox/__init__.py``):

- Credits: one credit per accepted recipient (to + cc + bcc, after disposable addresses
  are dropped), on both providers. ``credits=None`` means the account is not credit-based.
- Rate limit: a fixed window per wall-clock second (the ``X-RateLimit-Reset`` epoch),
  shared by every authenticated provider request; requests past the limit in the
  current second get 429 and do not count against the window.
- Idempotency: keyed by (API key, path, ``Idempotency-Key``), compared on the SHA-256 of
  the raw body bytes, kept 24 hours. Only responses that accepted at least one email are
  stored, so a request that was refused (validation, credits) is evaluated afresh.
- Faults draw from one ``random.Random(seed)`` in request order, so a run with the same
  seed and the same request sequence injects the same faults.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

IDEMPOTENCY_TTL_S = 24 * 3600

#: A small built-in list of throwaway-mail domains; ToSend drops recipients on these.
DISPOSABLE_DOMAINS: frozenset[str] = frozenset(
    {
        "mailinator.com",
        "guerrillamail.com",
        "sharklasers.com",
        "10minutemail.com",
        "tempmail.com",
        "temp-mail.org",
        "yopmail.com",
        "trashmail.com",
        "throwawaymail.com",
        "getnada.com",
        "dispostable.com",
        "maildrop.cc",
        "fakeinbox.com",
        "discard.email",
    }
)


DEFAULT_KEEP_MESSAGES = 1_000_000


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything that can be set at start or changed live with ``configure``.

    ``key_domains`` restricts keys to sending domains (key -> allowed domains); a key not
    listed may send from every verified domain.
    """

    api_keys: tuple[str, ...] = ("sk-test",)
    domains: tuple[str, ...] = ("example.com",)
    pending_domains: tuple[str, ...] = ()
    key_domains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    credits: int | None = None
    rate_limit: int | None = None
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None
    # A 429 normally carries Retry-After; False answers without it, as some providers do,
    # so a client's own back-off is what keeps it from hammering.
    retry_after: bool = True
    # Latency spikes: this fraction of provider requests waits spike_ms more (seeded draw).
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    # A storm of exactly this many 429s: the next ``refuse_next`` provider requests with a
    # valid key are refused as rate limited, whatever the rate window (counted down).
    refuse_next: int = 0
    # Changes applied as the n-th provider request arrives, before it is answered:
    # ``((n, {setting: value, ...}), ...)``. Faults keyed to the request count land at
    # the same point of a run however fast it goes (no thread racing the client).
    schedule: tuple[tuple[int, dict[str, Any]], ...] = ()
    # How many accepted messages stay in memory for inspection (/_sandbox/messages); the
    # oldest are forgotten beyond it (counted, and still in the --record file). None
    # keeps them all: about 4-5 KB each, so 10 million would need ~45 GB.
    keep_messages: int | None = DEFAULT_KEEP_MESSAGES

    def __post_init__(self) -> None:
        for name in ("fail_rate", "drop_rate", "spike_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1 request/s, got {self.rate_limit}")
        for name in ("latency_ms", "spike_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.credits is not None and self.credits < 0:
            raise ValueError(f"credits must not be negative, got {self.credits}")
        keep = self.keep_messages
        if keep is not None and (type(keep) is not int or keep < 0):
            raise ValueError(f"keep_messages must be a whole number >= 0 or null, got {keep!r}")
        if self.refuse_next < 0:
            raise ValueError(f"refuse_next must not be negative, got {self.refuse_next}")
        object.__setattr__(self, "schedule", _checked_schedule(self.schedule))
        # tuples, whatever sequence the caller gave (a list from JSON config, say)
        for name in ("api_keys", "domains", "pending_domains"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(
            self, "key_domains", {k: tuple(v) for k, v in dict(self.key_domains).items()}
        )


CONFIG_FIELDS = frozenset(f.name for f in fields(SandboxConfig))


def _checked_schedule(schedule: Any) -> tuple[tuple[int, dict[str, Any]], ...]:
    """``schedule`` as sorted ``(request number, changes)`` pairs, each change a setting."""
    out = []
    for entry in schedule or ():
        try:
            at, changes = entry
        except (TypeError, ValueError):
            raise ValueError(
                f"schedule entries are [request number, {{settings}}], got {entry!r}"
            ) from None
        if (
            isinstance(at, bool)
            or not isinstance(at, int)
            or at < 1
            or not isinstance(changes, dict)
        ):
            raise ValueError(f"schedule entries are [request number, {{settings}}], got {entry!r}")
        unknown = set(changes) - CONFIG_FIELDS | ({"schedule"} & set(changes))
        if unknown:
            raise ValueError(f"schedule: unknown or unschedulable setting(s): {sorted(unknown)}")
        out.append((at, dict(changes)))
    return tuple(sorted(out, key=lambda pair: pair[0]))


class StoredResponse(NamedTuple):
    """A response kept for idempotent replay (a tuple of atoms: the collector skips it)."""

    digest: bytes
    status: int
    body: bytes
    expires: float


class Logged(NamedTuple):
    """One accepted email as kept in memory.

    Only strings, numbers and tuples of strings, so the cyclic collector untracks it
    after one pass: a sandbox that has taken a million messages does not make every
    collection walk a million parsed bodies. :meth:`as_dict` builds the public shape.
    """

    provider: str
    endpoint: str
    idempotency_key: str | None
    message_id: str
    email_id: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    body_json: str | bytes  # the request JSON minus attachment contents
    received: float
    batch_index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The entry of ``GET /_sandbox/messages`` and of the ``--record`` file."""
        out: dict[str, Any] = {
            "provider": self.provider,
            "endpoint": self.endpoint,
            "idempotency_key": self.idempotency_key,
            "message_id": self.message_id,
        }
        if self.email_id is not None:
            out["email_id"] = self.email_id
        out["to"] = list(self.to)
        out["cc"] = list(self.cc)
        out["bcc"] = list(self.bcc)
        out["body"] = json.loads(self.body_json)
        out["received_at"] = iso_time(self.received)
        if self.batch_index is not None:
            out["batch_index"] = self.batch_index
        return out


_iso_cache: list[Any] = [None, ""]


def iso_time(now: float) -> str:
    """``now`` as ISO 8601 UTC with milliseconds and a Z, as the providers write times."""
    second = int(now)
    if _iso_cache[0] != second:  # formatting the date part once per second is enough
        _iso_cache[0] = second
        _iso_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_iso_cache[1]}.{int((now - second) * 1000):03d}Z"


class SandboxState:
    """The one account the sandbox serves, and what it saw.

    ``clock`` returns epoch seconds; tests inject a fake one to step the rate window.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        record: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.record_path = record
        self._record_file: IO[str] | None = None
        self.messages: deque[Logged] = deque(maxlen=config.keep_messages)
        self.forgotten = 0  # accepted messages no longer kept (beyond keep_messages)
        self.idempotency: OrderedDict[tuple[str, str, str], StoredResponse] = OrderedDict()
        self.config = config
        self.rng = random.Random(config.seed)
        self.credits = config.credits
        self.domain_sent: dict[str, int] = {}
        # stats
        self.requests = 0
        self.in_flight = 0  # provider requests being handled right now
        self.accepted = 0
        self.recipients_accepted = 0
        self.dropped_disposable = 0
        self.duplicates = 0
        self.rejections: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        # rate window
        self._window = -1
        self._window_count = 0
        self.refuse_left = config.refuse_next
        self._schedule = list(config.schedule)
        self._set_derived()

    # settings --------------------------------------------------------------------------

    def _set_derived(self) -> None:
        cfg = self.config
        self.keys = frozenset(cfg.api_keys)
        self.verified = frozenset(d.lower() for d in cfg.domains)
        self.pending = frozenset(d.lower() for d in cfg.pending_domains) - self.verified
        self.key_domains = {k: frozenset(d.lower() for d in v) for k, v in cfg.key_domains.items()}

    def configure(self, **changes: Any) -> SandboxConfig:
        """Apply setting changes live; ``credits`` and ``seed`` reset the balance / the RNG."""
        unknown = set(changes) - CONFIG_FIELDS
        if unknown:
            raise ValueError(f"unknown sandbox setting(s): {', '.join(sorted(unknown))}")
        self.config = replace(self.config, **changes)
        if "credits" in changes:
            self.credits = self.config.credits
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        if "refuse_next" in changes:
            self.refuse_left = self.config.refuse_next
        if "schedule" in changes:
            self._schedule = list(self.config.schedule)
        if "keep_messages" in changes:
            kept = deque(self.messages, maxlen=self.config.keep_messages)
            self.forgotten += len(self.messages) - len(kept)
            self.messages = kept
        self._set_derived()
        return self.config

    # account ---------------------------------------------------------------------------

    def domain_allowed(self, key: str, domain: str) -> bool:
        """May ``key`` send from ``domain`` (when the key is restricted to some domains)?"""
        allowed = self.key_domains.get(key)
        return allowed is None or domain in allowed

    def first_verified(self) -> str | None:
        """The v1 auto-selected domain: the first verified one, in configured order."""
        for domain in self.config.domains:
            return domain.lower()
        return None

    def has_credits(self, n: int) -> bool:
        """Are there credits for ``n`` more recipients?"""
        return self.credits is None or self.credits >= n

    # request accounting ------------------------------------------------------------------

    def count_request(self, now: float) -> None:
        """Count one provider request in the totals and its wall-clock second."""
        self.requests += 1
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        while self._schedule and self._schedule[0][0] <= self.requests:
            self.configure(**self._schedule.pop(0)[1])

    def rate_check(self, now: float) -> tuple[bool, int, int]:
        """Admit one request under the rate limit: (admitted, remaining, reset epoch second)."""
        limit = self.config.rate_limit
        second = int(now)
        if self.refuse_left:
            self.refuse_left -= 1
            self.faults["429"] = self.faults.get("429", 0) + 1
            return False, 0, second + 1
        if limit is None:
            return True, 0, second + 1
        if second != self._window:
            self._window = second
            self._window_count = 0
        if self._window_count >= limit:
            self.faults["429"] = self.faults.get("429", 0) + 1
            return False, 0, second + 1
        self._window_count += 1
        return True, limit - self._window_count, second + 1

    def draw_failure(self) -> int | None:
        """A random 500/502/503 to inject, or None (one draw per send, only if enabled)."""
        rate = self.config.fail_rate
        if rate and self.rng.random() < rate:
            status = self.rng.choice((500, 502, 503))
            key = str(status)
            self.faults[key] = self.faults.get(key, 0) + 1
            return status
        return None

    def draw_spike(self) -> float:
        """Extra seconds to delay this request (a latency spike), or 0."""
        cfg = self.config
        if cfg.spike_rate and cfg.spike_ms and self.rng.random() < cfg.spike_rate:
            self.faults["spike"] = self.faults.get("spike", 0) + 1
            return cfg.spike_ms / 1000
        return 0.0

    def draw_drop(self) -> bool:
        """Should this accepted response be dropped (connection closed, no answer)?"""
        rate = self.config.drop_rate
        if rate and self.rng.random() < rate:
            self.faults["dropped"] = self.faults.get("dropped", 0) + 1
            return True
        return False

    def reject(self, status: int) -> None:
        """Count a request (or one email of a batch) refused by the contract."""
        key = str(status)
        self.rejections[key] = self.rejections.get(key, 0) + 1

    # idempotency -------------------------------------------------------------------------

    @staticmethod
    def digest(body: bytes) -> bytes:
        """The fingerprint that decides "same body"."""
        return hashlib.sha256(body).digest()

    def recall(self, scope: tuple[str, str, str], now: float) -> StoredResponse | None:
        """The stored response for this key, if any and not expired."""
        store = self.idempotency
        # entries are in insertion order, and all live the same TTL: expire from the front
        while store:
            first = next(iter(store.values()))
            if first.expires > now:
                break
            store.popitem(last=False)
        return store.get(scope)

    def remember(
        self, scope: tuple[str, str, str], digest: bytes, status: int, body: bytes, now: float
    ) -> None:
        """Keep a response for replay for 24 hours."""
        self.idempotency[scope] = StoredResponse(digest, status, body, now + IDEMPOTENCY_TTL_S)

    # messages ----------------------------------------------------------------------------

    def accept(self, entry: Logged, domain: str, recipients: int) -> None:
        """Log one accepted email, charge its credits, append it to the record file."""
        if self.credits is not None:
            self.credits -= recipients
        self.accepted += 1
        self.recipients_accepted += recipients
        self.domain_sent[domain] = self.domain_sent.get(domain, 0) + 1
        messages = self.messages
        if len(messages) == messages.maxlen:
            self.forgotten += 1  # the deque drops its oldest
        messages.append(entry)
        if self.record_path is not None:
            if self._record_file is None:
                self._record_file = open(self.record_path, "a", encoding="utf-8")  # noqa: SIM115
            self._record_file.write(json.dumps(entry.as_dict(), ensure_ascii=False) + "\n")
            self._record_file.flush()

    def close(self) -> None:
        """Close the record file (reopened on the next accepted message)."""
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    # inspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the counters (the body of ``GET /_sandbox/stats``).

        ``requests``: every request to a provider endpoint; ``accepted``: emails logged;
        ``duplicates``: idempotent replays (no new message); ``rejections``: refusals by
        the contract by status code (each refused email of a batch counts); ``faults``:
        injected ``"500"``/``"502"``/``"503"``, ``"429"`` (rate limit), ``"dropped"`` and
        ``"spike"`` (a delayed request);
        ``requests_per_second``: provider requests per epoch second (keys are strings);
        ``in_flight``: provider requests still being handled (a held or slow one);
        ``messages_kept`` / ``messages_forgotten``: accepted messages still in memory, and
        the oldest dropped beyond ``keep_messages``.
        """
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "accepted": self.accepted,
            "recipients_accepted": self.recipients_accepted,
            "disposable_dropped": self.dropped_disposable,
            "duplicates": self.duplicates,
            "rejections": dict(self.rejections),
            "faults": dict(self.faults),
            "credits": self.credits,
            "messages_kept": len(self.messages),
            "messages_forgotten": self.forgotten,
            "idempotency_keys": len(self.idempotency),
            "requests_per_second": {str(k): v for k, v in self.per_second.items()},
            "max_requests_per_second": max(self.per_second.values(), default=0),
        }

    def config_dict(self) -> dict[str, Any]:
        """The current settings, JSON-ready."""
        cfg = self.config
        out = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
        out["key_domains"] = {k: list(v) for k, v in cfg.key_domains.items()}
        out["schedule"] = [[at, changes] for at, changes in cfg.schedule]
        for name in ("api_keys", "domains", "pending_domains"):
            out[name] = list(out[name])
        return out
