"""The sandbox's account and memory: settings, rate limits, message log, lookups, faults.

Everything here is plain Python driven by the server's event loop; nothing awaits. The
settings are a frozen :class:`SandboxConfig` swapped whole by :meth:`SandboxState.configure`,
so a handler reads one consistent snapshot and a live change never half-applies.

The sandbox is the real service, not a mirror of our client: by default it does what the
providers document and nothing more (no de-duplication: a request sent twice is two
messages). Decisions where the documents are silent (docs/sandbox.md has the long form):

- Credits: one credit per accepted recipient (to + cc + bcc, after disposable addresses
  are dropped), on both providers; a batch is checked whole first (every address of
  every email), then charged per accepted email. ``credits=None``: not credit-based.
- ToSend rate (``tosend_emails_per_second`` = R): a token bucket of at most R emails,
  refilled continuously at R/s; a send request costs every to+cc+bcc address of every
  email in it (at least 1) and is admitted when the bucket holds min(cost, R); then the
  whole cost is taken and the level may go negative. Info and lookups are not counted.
- v1 rate (``v1_requests_per_minute``): a sliding 60-second window of admitted v1
  requests (sends and events queries); ``X-RateLimit-Reset`` is the epoch second the
  oldest one leaves the window.
- Refused requests (429) take nothing from either limit.
- Idempotency exists only with ``idempotency_keys=True``: keyed by (API key, path,
  ``Idempotency-Key``), compared on the SHA-256 of the raw body, kept 24 hours; only
  answers that accepted at least one email are stored.
- Lookups: every accepted message stays in :attr:`SandboxState.log`. Beyond
  ``keep_messages`` the oldest are compacted (body dropped, the fields lookups and
  events need kept), so lookups find every message ever accepted.
- Faults draw from one ``random.Random(seed)`` in request order, so a run with the same
  seed and the same request sequence injects the same faults.
- Delivery outcomes (:mod:`batchsend.sandbox.outcomes`) are drawn per accepted recipient
  at acceptance, from a hash, not from that RNG; their events are stored at once with the
  times they happen (``event_delay_s`` later) and every reader shows an event only once
  its time has come. The newest ``keep_events`` are kept. Events due a webhook wait in
  :attr:`SandboxState.outbox` for :mod:`batchsend.sandbox.webhooks`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple

from batchsend.sandbox.outcomes import DEFAULT_EVENT_DELAY_S, duplicated, first_link, timeline
from batchsend.sandbox.rules import loopback_url_problem

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
DEFAULT_KEEP_EVENTS = 1_000_000
#: ToSend's webhook bodies, newest first (the three generations its docs show).
WEBHOOK_SHAPES = ("current", "flat", "legacy")
#: Delivery events per provider that a webhook carries (ToSend: bounces and complaints).
WEBHOOK_EVENTS = {
    "tosend": frozenset({"bounced", "complained"}),
    "v1": frozenset({"delivered", "bounced", "complained", "opened", "clicked"}),
}
DEFAULT_ADMIN_KEY = "tsend_admin_test"
ADMIN_KEY_PREFIX = "tsend_admin_"
#: What an admin key holds when ``admin_scopes`` does not list it: read the delivery log.
DEFAULT_ADMIN_SCOPES: tuple[str, ...] = ("emails:read", "suppressions:read")
INFO_SHAPES = ("current", "older")
#: Settings that no longer exist, and what replaced them (a clear error, not a silent no-op).
REPLACED_SETTINGS = {
    "rate_limit": "tosend_emails_per_second (ToSend, emails/s) and "
    "v1_requests_per_minute (v1, requests/min)",
}


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything that can be set at start or changed live with ``configure``.

    ``key_domains`` restricts keys to sending domains (key -> allowed domains); a key not
    listed may send from every verified domain. ``admin_keys`` are ToSend admin keys
    (``tsend_admin_...``) for the lookup endpoints; ``admin_scopes`` gives a key its
    scopes (default :data:`DEFAULT_ADMIN_SCOPES`).
    """

    api_keys: tuple[str, ...] = ("sk-test",)
    domains: tuple[str, ...] = ("example.com",)
    pending_domains: tuple[str, ...] = ()
    key_domains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    credits: int | None = None
    # ToSend's sending rate in EMAILS per second (every to+cc+bcc address counted), as
    # /v2/info reports it in limit_per_second; None: unlimited.
    tosend_emails_per_second: int | None = None
    # v1's documented limit is 600 requests per minute per customer; None: unlimited.
    v1_requests_per_minute: int | None = None
    # Honour Idempotency-Key (replay the first answer, 409 on a different body). Neither
    # real provider documents this, so it is off by default: a resend is a new message.
    idempotency_keys: bool = False
    # /v2/info answers in ToSend's "current" shape or the "older" one its docs still show.
    info_shape: str = "current"
    admin_keys: tuple[str, ...] = (DEFAULT_ADMIN_KEY,)
    admin_scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # v1's Events API (an enterprise feature); False answers 403 event_api_disabled.
    events_api: bool = True
    # Refused before processing (500/502/503), nothing accepted.
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    # Accepted and logged, then the connection is closed with no answer.
    drop_rate: float = 0.0
    # Accepted and logged, then answered 500.
    fail_after_accept_rate: float = 0.0
    # Accepted and logged, then answered only after slow_ms.
    slow_rate: float = 0.0
    slow_ms: float = 0.0
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
    # How many accepted messages stay whole in memory for inspection (/_sandbox/messages);
    # the oldest are compacted beyond it (counted, still in the --record file, and still
    # found by the lookups, in a fraction of the memory). None keeps them all whole.
    keep_messages: int | None = DEFAULT_KEEP_MESSAGES
    # Delivery outcomes (batchsend.sandbox.outcomes), drawn per accepted recipient from a
    # hash of (seed, message, recipient): fractions of recipients that bounce, and of
    # delivered ones that complain, open and click; the events come event_delay_s later.
    bounce_rate: float = 0.0
    complaint_rate: float = 0.0
    open_rate: float = 0.0
    click_rate: float = 0.0
    event_delay_s: float = DEFAULT_EVENT_DELAY_S
    # How many events stay in memory (the oldest go first); None keeps them all.
    keep_events: int | None = DEFAULT_KEEP_EVENTS
    # Webhooks: where each provider posts its events (loopback only); webhook_url serves
    # both providers unless one has its own. None: nothing is posted.
    webhook_url: str | None = None
    tosend_webhook_url: str | None = None
    v1_webhook_url: str | None = None
    # ToSend signs its bodies when the webhook has a secret: X-ToSend-Signature.
    webhook_secret: str | None = field(default=None, repr=False)  # a secret: never shown
    # Which of ToSend's three documented bodies it posts.
    webhook_shape: str = "current"
    # The fraction of acknowledged events posted a second time, as both providers warn.
    webhook_dup_rate: float = 0.0
    # An unacknowledged post (not 2xx, no connection, timeout) is tried again after
    # webhook_backoff_s, doubling each time, up to webhook_max_attempts posts in all.
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 0.5
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 4

    def __post_init__(self) -> None:
        for name in (
            "fail_rate",
            "drop_rate",
            "fail_after_accept_rate",
            "slow_rate",
            "spike_rate",
            "bounce_rate",
            "complaint_rate",
            "open_rate",
            "click_rate",
            "webhook_dup_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("webhook_url", "tosend_webhook_url", "v1_webhook_url"):
            url = getattr(self, name)
            if url is not None:
                problem = loopback_url_problem(url) if isinstance(url, str) else "not a string"
                if problem is not None:
                    raise ValueError(f"{name}: {problem}")
        if self.webhook_shape not in WEBHOOK_SHAPES:
            raise ValueError(
                f"webhook_shape must be one of {WEBHOOK_SHAPES}, got {self.webhook_shape!r}"
            )
        for name in ("webhook_max_attempts", "webhook_concurrency"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.webhook_timeout_s <= 0:
            raise ValueError(f"webhook_timeout_s must be positive, got {self.webhook_timeout_s}")
        for name, unit in (
            ("tosend_emails_per_second", "email/s"),
            ("v1_requests_per_minute", "request/min"),
        ):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(
                    f"{name} must be a whole number >= 1 {unit} or null, got {value!r}"
                )
        if self.info_shape not in INFO_SHAPES:
            raise ValueError(f"info_shape must be one of {INFO_SHAPES}, got {self.info_shape!r}")
        for name in ("latency_ms", "spike_ms", "slow_ms", "event_delay_s", "webhook_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.credits is not None and self.credits < 0:
            raise ValueError(f"credits must not be negative, got {self.credits}")
        keep = self.keep_messages
        if keep is not None and (type(keep) is not int or keep < 0):
            raise ValueError(f"keep_messages must be a whole number >= 0 or null, got {keep!r}")
        keep = self.keep_events
        if keep is not None and (type(keep) is not int or keep < 0):
            raise ValueError(f"keep_events must be a whole number >= 0 or null, got {keep!r}")
        if self.refuse_next < 0:
            raise ValueError(f"refuse_next must not be negative, got {self.refuse_next}")
        object.__setattr__(self, "schedule", _checked_schedule(self.schedule))
        # tuples, whatever sequence the caller gave (a list from JSON config, say)
        for name in ("api_keys", "domains", "pending_domains", "admin_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        bad = [k for k in self.admin_keys if not k.startswith(ADMIN_KEY_PREFIX)]
        if bad:
            raise ValueError(
                f"admin keys start with {ADMIN_KEY_PREFIX!r}; got {len(bad)} that do not"
            )
        for name in ("key_domains", "admin_scopes"):
            value = {
                k: (v,) if isinstance(v, str) else tuple(v)
                for k, v in dict(getattr(self, name)).items()
            }
            object.__setattr__(self, name, value)


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


def unknown_settings(names: set[str]) -> str:
    """The error message for settings that do not exist (naming what replaced old ones)."""
    replaced = [
        f"{k} is now {REPLACED_SETTINGS[k]}" for k in sorted(names & REPLACED_SETTINGS.keys())
    ]
    return f"unknown sandbox setting(s): {', '.join(sorted(names))}" + (
        f" ({'; '.join(replaced)})" if replaced else ""
    )


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
    ``sender`` and ``domain`` are what the provider delivered from (v1 fills in
    ``noreply@<domain>`` and the auto-picked domain); ``attachments`` are the file names
    the recipient gets, ``invite.ics`` included where a calendar invite travelled.
    """

    provider: str
    endpoint: str
    idempotency_key: str | None
    message_id: str
    email_id: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    body_json: str | bytes  # the request JSON minus attachment contents (and api_key)
    received: float
    batch_index: int | None = None
    sender: str = ""
    domain: str = ""
    subject: str = ""
    attachments: tuple[str, ...] = ()
    # This message's events are ids first_event .. first_event + events - 1 (set on
    # acceptance; a v1 message's queued and sent events come first).
    first_event: int = 0
    events: int = 0

    @property
    def calendar_invite(self) -> bool:
        """Did a calendar invite travel with this message (as ``invite.ics``)?"""
        return any(name.lower() == INVITE_ICS for name in self.attachments)

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
        out["delivered_from"] = self.sender
        out["sending_domain"] = self.domain
        out["delivered_attachments"] = list(self.attachments)
        out["calendar_invite"] = self.calendar_invite
        return out

    def compacted(self) -> Logged:
        """This entry without its body: what lookups and events still need of it."""
        if self.provider != "v1":
            return self._replace(body_json="{}")
        body = json.loads(self.body_json)
        kept = {k: body[k] for k in ("metadata", "tag", "headers") if k in body}
        return self._replace(body_json=json.dumps(kept, ensure_ascii=False))


INVITE_ICS = "invite.ics"


class Event(NamedTuple):
    """One event of one recipient (atoms only, like :class:`Logged`).

    ``type`` is ``queued``/``sent`` (v1's, one per message, for its ``to``) or a delivery
    event: ``delivered``, ``bounced`` (``bounce_type`` hard/soft, with a ``reason``),
    ``opened``, ``complained``, ``clicked`` (with the ``url`` followed). ``position`` is
    the message's place in the log; ``duplicate``: its webhook is posted twice.
    """

    id: int
    provider: str
    type: str
    bounce_type: str | None
    reason: str | None
    message_id: str
    email_id: str | None
    recipient: str
    batchsend_id: str | None
    at: float
    position: int
    url: str | None = None
    duplicate: bool = False

    def seen(self, now: float) -> bool:
        """Has it happened by ``now``? (v1's ``queued`` and ``sent`` are there at once.)"""
        return self.at <= now or self.type in ("queued", "sent")

    def as_dict(self, delivery: Delivery | None) -> dict[str, Any]:
        """The entry of ``GET /_sandbox/events``."""
        return {
            "id": self.id,
            "provider": self.provider,
            "type": self.type,
            "bounce_type": self.bounce_type,
            "reason": self.reason,
            "message_id": self.message_id,
            "email_id": self.email_id,
            "recipient": self.recipient,
            "batchsend_id": self.batchsend_id,
            "url": self.url,
            "created_at": iso_time(self.at),
            "webhook": None if delivery is None else delivery.as_dict(),
        }


class Delivery:
    """How an event's webhook went: posts made, and the answers they got."""

    __slots__ = ("attempts", "done", "failures", "sent", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.attempts = 0  # posts made, retries and the duplicate included
        self.failures = 0  # posts not acknowledged (not 2xx, no connection, timeout)
        self.sent = 0  # posts the receiver acknowledged (2 when duplicated)
        self.done = False  # no post left to make (acknowledged, or attempts used up)

    def as_dict(self) -> dict[str, Any]:
        """The ``webhook`` field of a ``/_sandbox/events`` entry."""
        return {
            "url": self.url,
            "attempts": self.attempts,
            "acknowledged": self.sent > 0,
            "deliveries_sent": self.sent,
            "pending": not self.done,
        }


_iso_cache: list[Any] = [None, ""]


def iso_time(now: float) -> str:
    """``now`` as ISO 8601 UTC with milliseconds and a Z, as the providers write times."""
    second, millis = divmod(round(now * 1000), 1000)  # rounded: x.001 is not x.000999...
    if _iso_cache[0] != second:  # formatting the date part once per second is enough
        _iso_cache[0] = second
        _iso_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_iso_cache[1]}.{millis:03d}Z"


_DOMAIN_COLUMNS = {"delivered": 0, "bounced": 1, "complained": 2}

#: How long after ``queued`` v1's ``sent`` event is stamped.
SENT_AFTER_S = 0.001


def json_object(raw: str | bytes) -> dict[str, Any]:
    """A logged body as a dict (an empty one if it is not a JSON object)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class SandboxState:
    """The one account the sandbox serves, and what it saw.

    ``clock`` returns epoch seconds; tests inject a fake one to step the rate limits.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        record: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.record_path = record
        self._record_file: IO[str] | None = None
        # Every accepted message in order; the first ``forgotten`` are compacted.
        self.log: list[Logged] = []
        self.forgotten = 0  # accepted messages no longer kept whole (beyond keep_messages)
        # lookups: ToSend message_id -> position in log (the latest when repeated);
        # v1 email_id -> position
        self.tosend_index: dict[str, int] = {}
        self.v1_index: dict[str, int] = {}
        self.idempotency: OrderedDict[tuple[str, str, str], StoredResponse] = OrderedDict()
        self.config = config
        self.rng = random.Random(config.seed)
        self.credits = config.credits
        self.domain_sent: dict[str, int] = {}
        self.recipients_per_hour: dict[int, int] = {}  # epoch hour -> recipients accepted
        # stats
        self.requests = 0
        self.client_gone = 0  # requests whose client left before the body was read
        self.in_flight = 0  # provider requests being handled right now
        self.accepted = 0
        self.recipients_accepted = 0
        self.dropped_disposable = 0
        self.dropped_suppressed = 0  # ToSend recipients blocked as suppressed
        self.duplicates = 0
        self.rejections: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        # rate limits
        self._bucket: float | None = None  # ToSend emails in the bucket; None = full
        self._bucket_at = 0.0
        self._v1_window: deque[float] = deque()
        self.refuse_left = config.refuse_next
        self._schedule = list(config.schedule)
        # events: the newest keep_events, ids contiguous (events[i].id == events[0].id + i)
        self.events: deque[Event] = deque(maxlen=config.keep_events)
        self.next_event = 1
        self.events_forgotten = 0
        self.outcomes: dict[str, int] = {}  # delivery events drawn, by type
        # ToSend's per-domain totals for /v2/info: [delivered, bounced, complained] recipients
        self.domain_outcomes: dict[str, list[int]] = {}
        # hard bounces and complaints, per provider: address -> the event that put it there
        self.suppressions: dict[str, dict[str, Event]] = {"tosend": {}, "v1": {}}
        # webhooks: each posted event's progress, and a heap of (when due, event id)
        self.deliveries: dict[int, Delivery] = {}
        self.outbox: list[tuple[float, int]] = []
        self.webhook_counts: dict[str, int] = {}
        self.webhooks_pending = 0
        self.wake: Callable[[], None] | None = None  # set by the webhook sender
        self._set_derived()

    # settings --------------------------------------------------------------------------

    def _set_derived(self) -> None:
        cfg = self.config
        self.keys = frozenset(cfg.api_keys)
        self.admin_keys = frozenset(cfg.admin_keys)
        self.verified = frozenset(d.lower() for d in cfg.domains)
        self.pending = frozenset(d.lower() for d in cfg.pending_domains) - self.verified
        self.key_domains = {k: frozenset(d.lower() for d in v) for k, v in cfg.key_domains.items()}

    def configure(self, **changes: Any) -> SandboxConfig:
        """Apply setting changes live; ``credits`` and ``seed`` reset the balance / the RNG."""
        unknown = set(changes) - CONFIG_FIELDS
        if unknown:
            raise ValueError(unknown_settings(unknown))
        self.config = replace(self.config, **changes)
        if "credits" in changes:
            self.credits = self.config.credits
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        if "refuse_next" in changes:
            self.refuse_left = self.config.refuse_next
        if "schedule" in changes:
            self._schedule = list(self.config.schedule)
        if "tosend_emails_per_second" in changes:
            self._bucket = None  # a new limit starts with a full bucket
        if "keep_messages" in changes:
            self._compact()
        if "keep_events" in changes and self.config.keep_events != self.events.maxlen:
            kept: deque[Event] = deque(maxlen=self.config.keep_events)
            for event in self.events:
                self._store(event, kept)
            self.events = kept
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

    def admin_scopes(self, key: str) -> tuple[str, ...]:
        """The scopes an admin key holds."""
        return self.config.admin_scopes.get(key, DEFAULT_ADMIN_SCOPES)

    # request accounting ------------------------------------------------------------------

    def count_request(self, now: float) -> None:
        """Count one provider request in the totals and its wall-clock second."""
        self.requests += 1
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        while self._schedule and self._schedule[0][0] <= self.requests:
            self.configure(**self._schedule.pop(0)[1])

    def refuse_storm(self) -> bool:
        """Is this request one of the ``refuse_next`` certain 429s (counted down)?"""
        if self.refuse_left:
            self.refuse_left -= 1
            _count(self.faults, "429")
            return True
        return False

    def tosend_admit(self, now: float, emails: int) -> float:
        """Take ``emails`` from ToSend's bucket: 0.0 when admitted, else seconds to wait.

        The bucket holds at most R emails and refills at R per second; a request is
        admitted when it holds min(emails, R), so a request larger than R is never
        refused forever, and the level may go negative (the next one waits longer).
        """
        rate = self.config.tosend_emails_per_second
        if rate is None:
            return 0.0
        level = rate if self._bucket is None else self._bucket
        level = min(float(rate), level + max(0.0, now - self._bucket_at) * rate)
        self._bucket_at = now
        need = min(emails, rate)
        if level >= need:
            self._bucket = level - emails
            return 0.0
        self._bucket = level
        _count(self.faults, "429")
        return (need - level) / rate

    def v1_admit(self, now: float) -> tuple[bool, int, int, int]:
        """Count one v1 request in the sliding minute.

        Returns (admitted, remaining, reset epoch second, seconds to wait when refused);
        the reset is when the oldest request in the window leaves it.
        """
        limit = self.config.v1_requests_per_minute
        window = self._v1_window
        if limit is None:
            return True, 0, math.ceil(now), 0
        edge = now - 60
        while window and window[0] <= edge:
            window.popleft()
        if len(window) >= limit:
            frees = window[0] + 60
            _count(self.faults, "429")
            return False, 0, math.ceil(frees), max(1, math.ceil(frees - now))
        window.append(now)
        return True, limit - len(window), math.ceil(window[0] + 60), 0

    def v1_window_state(self, now: float) -> tuple[int, int]:
        """(remaining, reset) of the v1 window without counting a request."""
        limit = self.config.v1_requests_per_minute or 0
        window = self._v1_window
        edge = now - 60
        while window and window[0] <= edge:
            window.popleft()
        reset = math.ceil(window[0] + 60) if window else math.ceil(now)
        return max(0, limit - len(window)), reset

    def _draw(self, rate: float, fault: str) -> bool:
        if rate and self.rng.random() < rate:
            _count(self.faults, fault)
            return True
        return False

    def draw_failure(self) -> int | None:
        """A random 500/502/503 to inject, or None (one draw per send, only if enabled)."""
        rate = self.config.fail_rate
        if rate and self.rng.random() < rate:
            status = self.rng.choice((500, 502, 503))
            _count(self.faults, str(status))
            return status
        return None

    def draw_spike(self) -> float:
        """Extra seconds to delay this request (a latency spike), or 0."""
        cfg = self.config
        if cfg.spike_ms and self._draw(cfg.spike_rate, "spike"):
            return cfg.spike_ms / 1000
        return 0.0

    def draw_after_accept(self) -> str | None:
        """What happens to an accepted answer: ``"drop"``, ``"fail"``, ``"slow"`` or None.

        One draw per enabled fault, in that order, so enabling a later one does not
        change where the earlier ones land for a given seed.
        """
        cfg = self.config
        if self._draw(cfg.drop_rate, "dropped"):
            return "drop"
        if self._draw(cfg.fail_after_accept_rate, "failed_after_accept"):
            return "fail"
        if cfg.slow_ms and self._draw(cfg.slow_rate, "slow"):
            return "slow"
        return None

    def reject(self, status: int | str) -> None:
        """Count a request (or one email of a batch) refused by the contract."""
        _count(self.rejections, str(status))

    # idempotency (only with idempotency_keys) ------------------------------------------

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

    @property
    def messages(self) -> list[Logged]:
        """The accepted messages still kept whole, oldest first."""
        return self.log[self.forgotten :]

    def accept(self, entry: Logged, recipients: int) -> None:
        """Log one accepted email, charge its credits, append it to the record file."""
        if self.credits is not None:
            self.credits -= recipients
        self.accepted += 1
        self.recipients_accepted += recipients
        domain = entry.domain
        self.domain_sent[domain] = self.domain_sent.get(domain, 0) + 1
        hour = int(entry.received) // 3600
        self.recipients_per_hour[hour] = self.recipients_per_hour.get(hour, 0) + recipients
        log = self.log
        position = len(log)
        entry = self._draw_events(entry, position)
        log.append(entry)
        if entry.provider == "v1":
            assert entry.email_id is not None
            self.v1_index[entry.email_id] = position
        else:
            self.tosend_index[entry.message_id] = position
        if self.record_path is not None:
            if self._record_file is None:
                self._record_file = open(self.record_path, "a", encoding="utf-8")  # noqa: SIM115
            self._record_file.write(json.dumps(entry.as_dict(), ensure_ascii=False) + "\n")
            self._record_file.flush()
        keep = self.config.keep_messages
        if keep is not None and position + 1 - self.forgotten > keep:
            self._compact()

    def _compact(self) -> None:
        """Compact the oldest whole messages beyond ``keep_messages``."""
        keep = self.config.keep_messages
        if keep is None:
            return
        log = self.log
        while len(log) - self.forgotten > keep:
            log[self.forgotten] = log[self.forgotten].compacted()
            self.forgotten += 1

    # events ------------------------------------------------------------------------------

    def webhook_url(self, provider: str) -> str | None:
        """Where ``provider`` posts its events: its own URL, else the shared one."""
        cfg = self.config
        own = cfg.tosend_webhook_url if provider == "tosend" else cfg.v1_webhook_url
        return own or cfg.webhook_url

    def _draw_events(self, entry: Logged, position: int) -> Logged:
        """Draw and store the events of a message being accepted (its ids on the entry)."""
        cfg = self.config
        first = self.next_event
        raw = entry.body_json
        key = hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode()).hexdigest()
        body: dict[str, Any] | None = None
        batchsend_id = None
        made: list[Event] = []

        def add(kind: str, recipient: str, at: float, **extra: Any) -> None:
            made.append(
                Event(
                    id=first + len(made),
                    provider=entry.provider,
                    type=kind,
                    bounce_type=extra.get("bounce_type"),
                    reason=extra.get("reason"),
                    message_id=entry.message_id,
                    email_id=entry.email_id,
                    recipient=recipient,
                    batchsend_id=batchsend_id,
                    at=at,
                    position=position,
                    url=extra.get("url"),
                    duplicate=extra.get("duplicate", False),
                )
            )

        start = entry.received
        if entry.provider == "v1":
            body = json_object(raw)
            metadata = body.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("batchsend_id"), str):
                batchsend_id = metadata["batchsend_id"]
            add("queued", entry.to[0], entry.received)
            add("sent", entry.to[0], entry.received + SENT_AFTER_S)
            start += SENT_AFTER_S  # the delivery follows "sent", whatever the delay
        url = self.webhook_url(entry.provider)
        hooked = WEBHOOK_EVENTS[entry.provider] if url is not None else frozenset()
        for recipient in (*entry.to, *entry.cc, *entry.bcc):
            steps = timeline(
                seed=cfg.seed,
                message_key=key,
                recipient=recipient,
                accepted_at=start,
                delay=cfg.event_delay_s,
                bounce_rate=cfg.bounce_rate,
                complaint_rate=cfg.complaint_rate,
                open_rate=cfg.open_rate,
                click_rate=cfg.click_rate,
            )
            for step in steps:
                link = None
                if step.type == "clicked":
                    body = json_object(raw) if body is None else body
                    html, text = body.get("html"), body.get("text")
                    link = first_link(
                        html if isinstance(html, str) else None,
                        text if isinstance(text, str) else None,
                    )
                add(
                    step.type,
                    recipient,
                    step.at,
                    bounce_type=step.bounce_type,
                    reason=step.reason,
                    url=link,
                    duplicate=step.type in hooked
                    and duplicated(cfg.seed, key, recipient, step.type, cfg.webhook_dup_rate),
                )
        queued = False
        for event in made:
            self._store(event, self.events)
            kind = event.type
            if kind in ("queued", "sent"):
                continue
            counted = f"bounced_{event.bounce_type}" if kind == "bounced" else kind
            self.outcomes[counted] = self.outcomes.get(counted, 0) + 1
            column = _DOMAIN_COLUMNS.get(kind)
            if column is not None:
                totals = self.domain_outcomes.setdefault(entry.domain, [0, 0, 0])
                totals[column] += 1
            if kind == "complained" or event.bounce_type == "hard":
                self._suppress(event)
            if url is not None and kind in hooked and self.event(event.id) is not None:
                self.deliveries[event.id] = Delivery(url)
                self.webhooks_pending += 1
                heapq.heappush(self.outbox, (event.at, event.id))
                queued = True
        self.next_event = first + len(made)
        if queued and self.wake is not None:
            self.wake()
        return entry._replace(first_event=first, events=len(made))

    def _store(self, event: Event, events: deque[Event]) -> None:
        """Append ``event``; beyond ``keep_events`` the oldest goes, with its webhook."""
        if events.maxlen is not None and len(events) >= events.maxlen:
            self.events_forgotten += 1
            if events.maxlen == 0:
                gone = event
            else:
                gone = events[0]
                events.append(event)
            delivery = self.deliveries.pop(gone.id, None)
            if delivery is not None and not delivery.done:
                self.webhooks_pending -= 1
            return
        events.append(event)

    def _suppress(self, event: Event) -> None:
        """Put a hard-bounced or complaining address on its provider's suppression list."""
        listed = self.suppressions[event.provider]
        address = event.recipient.lower()
        if address in listed:
            return
        listed[address] = event
        keep = self.config.keep_events
        while keep is not None and len(listed) > keep:
            del listed[next(iter(listed))]

    def event(self, event_id: int) -> Event | None:
        """The stored event with this id, or None (never made, or forgotten)."""
        events = self.events
        if not events:
            return None
        index = event_id - events[0].id
        return events[index] if 0 <= index < len(events) else None

    def events_of(self, entry: Logged) -> list[Event]:
        """The stored events of one accepted message, in id order."""
        found = (self.event(i) for i in range(entry.first_event, entry.first_event + entry.events))
        return [e for e in found if e is not None]

    def happened(self, now: float, since: int = 0) -> list[Event]:
        """Stored events whose time has come, with an id above ``since``, in id order."""
        events = self.events
        start = 0 if not events else max(0, since + 1 - events[0].id)
        return [e for i, e in enumerate(events) if i >= start and e.seen(now)]

    def events_view(self, since: int = 0) -> list[dict[str, Any]]:
        """``GET /_sandbox/events``: delivery events that have happened, in id order."""
        deliveries = self.deliveries
        return [
            e.as_dict(deliveries.get(e.id))
            for e in self.happened(self.clock(), since)
            if e.type not in ("queued", "sent")
        ]

    def message_status(self, entry: Logged, now: float) -> str:
        """What ToSend's log says of a message: ``complaint``, ``bounced`` or ``sent``."""
        kinds = {e.type for e in self.events_of(entry) if e.at <= now}
        if "complained" in kinds:
            return "complaint"
        return "bounced" if "bounced" in kinds else "sent"

    def is_suppressed(self, provider: str, address: str, now: float) -> bool:
        """Is ``address`` on ``provider``'s suppression list by ``now``?"""
        event = self.suppressions[provider].get(address.lower())
        return event is not None and event.at <= now

    def listed(self, provider: str, now: float) -> list[Event]:
        """``provider``'s suppression list as of ``now``, newest first."""
        return [e for e in reversed(self.suppressions[provider].values()) if e.at <= now]

    # webhooks (driven by batchsend.sandbox.webhooks) ---------------------------------------

    def due_posts(self, now: float, limit: int) -> list[tuple[Event, Delivery]]:
        """Up to ``limit`` webhook posts due by ``now``, taken off the outbox."""
        out: list[tuple[Event, Delivery]] = []
        outbox = self.outbox
        while outbox and outbox[0][0] <= now and len(out) < limit:
            _due, event_id = heapq.heappop(outbox)
            event = self.event(event_id)
            delivery = self.deliveries.get(event_id)
            if event is not None and delivery is not None and not delivery.done:
                out.append((event, delivery))
        return out

    def next_post_at(self) -> float | None:
        """When the next webhook post is due, or None when none is waiting."""
        return self.outbox[0][0] if self.outbox else None

    def post_later(self, event: Event, now: float) -> None:
        """Put back a post that was cut short (the sandbox stopping): due again at once."""
        heapq.heappush(self.outbox, (now, event.id))

    def posted(self, event: Event, delivery: Delivery, ok: bool, now: float) -> None:
        """Record one post's answer: acknowledged, or to be tried again after a back-off.

        An acknowledged event drawn for ``webhook_dup_rate`` is posted once more at once;
        that second post is not retried.
        """
        delivery.attempts += 1
        counts = self.webhook_counts
        _count(counts, "posts")
        if ok:
            delivery.sent += 1
            _count(counts, "acknowledged")
            if delivery.sent == 1 and event.duplicate:
                _count(counts, "duplicates")
                heapq.heappush(self.outbox, (now, event.id))
                return
        else:
            _count(counts, "failed")
            delivery.failures += 1
            if delivery.sent == 0:
                if delivery.attempts < self.config.webhook_max_attempts:
                    backoff = self.config.webhook_backoff_s * 2 ** (delivery.failures - 1)
                    heapq.heappush(self.outbox, (now + backoff, event.id))
                    return
                _count(counts, "abandoned")
        delivery.done = True
        self.webhooks_pending -= 1

    def close(self) -> None:
        """Close the record file (reopened on the next accepted message)."""
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    # inspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the counters (the body of ``GET /_sandbox/stats``).

        ``requests``: every request to a provider endpoint; ``accepted``: emails logged;
        ``duplicates``: idempotent replays (only with ``idempotency_keys``; no new
        message); ``rejections``: refusals by the contract by status code (each refused
        email of a batch counts; a batch email answered ``spam`` counts as ``"spam"``);
        ``faults``: ``"500"``/``"502"``/``"503"`` (``fail_rate``, refused before
        processing), ``"429"`` (rate limits and ``refuse_next``), ``"dropped"``
        (accepted, no answer), ``"failed_after_accept"`` (accepted, answered 500),
        ``"slow"`` (accepted, answered after ``slow_ms``) and ``"spike"`` (a delayed
        request); ``requests_per_second``: provider requests per epoch second (keys are
        strings); ``in_flight``: provider requests still being handled (a held or slow
        one); ``client_gone``: requests whose client left before their body was read
        (never processed); ``messages_kept`` / ``messages_forgotten``: accepted messages still whole
        in memory, and the oldest compacted beyond ``keep_messages`` (still found by the
        lookups); ``messages_indexed``: every accepted message the lookups can find;
        ``suppressed_dropped``: ToSend recipients blocked as suppressed; ``outcomes``: the
        delivery events drawn, by type (``bounced_hard``/``bounced_soft``), counted at
        acceptance; ``events_kept`` / ``events_forgotten``: the event store beyond
        ``keep_events``; ``webhooks``: ``posts`` made, ``acknowledged`` (2xx),
        ``failed``, ``duplicates`` (second posts on purpose), ``abandoned`` (attempts
        used up) and ``pending`` (events with a post still to come).
        """
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "client_gone": self.client_gone,
            "accepted": self.accepted,
            "recipients_accepted": self.recipients_accepted,
            "disposable_dropped": self.dropped_disposable,
            "suppressed_dropped": self.dropped_suppressed,
            "duplicates": self.duplicates,
            "rejections": dict(self.rejections),
            "faults": dict(self.faults),
            "credits": self.credits,
            "messages_kept": len(self.log) - self.forgotten,
            "messages_forgotten": self.forgotten,
            "messages_indexed": len(self.log),
            "idempotency_keys": len(self.idempotency),
            "outcomes": dict(self.outcomes),
            "events_kept": len(self.events),
            "events_forgotten": self.events_forgotten,
            "webhooks": {
                **{k: 0 for k in ("posts", "acknowledged", "failed", "duplicates", "abandoned")},
                **self.webhook_counts,
                "pending": self.webhooks_pending,
            },
            "requests_per_second": {str(k): v for k, v in self.per_second.items()},
            "max_requests_per_second": max(self.per_second.values(), default=0),
        }

    def config_dict(self) -> dict[str, Any]:
        """The current settings, JSON-ready."""
        cfg = self.config
        out = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
        out["key_domains"] = {k: list(v) for k, v in cfg.key_domains.items()}
        out["admin_scopes"] = {k: list(v) for k, v in cfg.admin_scopes.items()}
        out["schedule"] = [[at, changes] for at, changes in cfg.schedule]
        for name in ("api_keys", "domains", "pending_domains", "admin_keys"):
            out[name] = list(out[name])
        return out
