"""What becomes of an accepted message at each recipient: the delivery outcome.

Pure functions over plain values; :mod:`batchsend.sandbox.state` calls them once per
accepted recipient and stores the events they describe. docs/sandbox.md has the long form.

- Every draw comes from a hash of (seed, the message as sent, recipient), never from the
  order requests arrived in: the same seed and the same messages give the same outcomes
  however the sends were interleaved, retried or batched. "The message as sent" is its
  logged body, so ToSend's ``message_hash`` and v1's ``metadata`` are part of it. Without
  a seed a per-process salt is used: stable within one sandbox, different across runs.
- One uniform draw decides the fate: below ``bounce_rate`` the recipient bounces (soft
  for :data:`SOFT_SHARE` of them, on a second draw), otherwise it is delivered; a
  delivered recipient complains below ``complaint_rate`` (a third draw), opens below
  ``open_rate`` and clicks below ``click_rate`` (a click implies an open).
- Special recipients (the local part before any ``+tag``, case-insensitive, on any
  domain), as a mailbox simulator has them, ignore the rates: :data:`SPECIAL_LOCAL_PARTS`.
- Times: a bounce or a delivery comes ``delay`` after acceptance; an open and a complaint
  one more ``delay`` later, a click a third.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import NamedTuple

#: Fraction of drawn bounces that are soft (transient) rather than hard (permanent).
SOFT_SHARE = 0.25
DEFAULT_EVENT_DELAY_S = 0.5

HARD_REASON = "550 5.1.1 The mailbox does not exist at the recipient's server"
SOFT_REASON = "452 4.2.2 The recipient's mailbox is full; try again later"

#: Local parts whose outcome is fixed, whatever the rates.
SPECIAL_LOCAL_PARTS: dict[str, str] = {
    "bounce": "a hard (permanent) bounce",
    "softbounce": "a soft (transient) bounce",
    "complaint": "delivered, then a complaint",
    "success": "delivered; never bounces or complains (opens and clicks follow the rates)",
}

#: The event types a recipient can have, in the order they happen.
DELIVERY_EVENTS = ("delivered", "bounced", "opened", "complained", "clicked")

_SALT = os.urandom(8).hex()
_LINK = re.compile(r"https?://[^\s\"'<>]+")


class Step(NamedTuple):
    """One event of a recipient's timeline."""

    type: str  # one of DELIVERY_EVENTS
    bounce_type: str | None  # "hard" | "soft" for a bounce
    reason: str | None
    at: float  # epoch seconds


def _unit(salt: str, *parts: str) -> list[float]:
    digest = hashlib.sha256("\0".join((salt, *parts)).encode()).digest()
    return [int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in range(0, 32, 8)]


def _salt(seed: int | None) -> str:
    return _SALT if seed is None else str(seed)


def special(recipient: str) -> str | None:
    """The special local part of ``recipient`` (``Bounce+x@any.org`` -> ``bounce``), or None."""
    local = recipient.rpartition("@")[0].split("+", 1)[0].lower()
    return local if local in SPECIAL_LOCAL_PARTS else None


def timeline(
    *,
    seed: int | None,
    message_key: str,
    recipient: str,
    accepted_at: float,
    delay: float,
    bounce_rate: float = 0.0,
    complaint_rate: float = 0.0,
    open_rate: float = 0.0,
    click_rate: float = 0.0,
) -> list[Step]:
    """The events of one recipient of one accepted message, oldest first (deterministic)."""
    fate, kind, complaint, engagement = _unit(_salt(seed), message_key, recipient.lower())
    forced = special(recipient)
    first = accepted_at + delay
    if forced in ("bounce", "softbounce") or (forced is None and fate < bounce_rate):
        soft = forced == "softbounce" or (forced is None and kind < SOFT_SHARE)
        if soft:
            return [Step("bounced", "soft", SOFT_REASON, first)]
        return [Step("bounced", "hard", HARD_REASON, first)]
    steps = [Step("delivered", None, None, first)]
    clicked = engagement < click_rate
    if clicked or engagement < open_rate:
        steps.append(Step("opened", None, None, first + delay))
    if forced == "complaint" or (forced is None and complaint < complaint_rate):
        steps.append(Step("complained", None, None, first + delay))
    if clicked:
        steps.append(Step("clicked", None, None, first + 2 * delay))
    return steps


def duplicated(seed: int | None, message_key: str, recipient: str, kind: str, rate: float) -> bool:
    """Is this event's webhook delivered twice on purpose (``webhook_dup_rate``)?"""
    if not rate:
        return False
    return _unit(_salt(seed), "dup", message_key, recipient.lower(), kind)[0] < rate


def first_link(*texts: str | None) -> str | None:
    """The first http(s) link in the message's html or text: what a click follows."""
    for text in texts:
        if text:
            found = _LINK.search(text)
            if found:
                return found.group(0)
    return None
