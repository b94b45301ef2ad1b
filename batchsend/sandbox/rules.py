"""Checks both providers share: address syntax, attachment sizes, bodies for the log."""

from __future__ import annotations

import binascii
import re
from email.utils import parseaddr
from typing import Any, TypeGuard

MB = 1024 * 1024

# Lenient on purpose (the providers accept what their MTA accepts): one @, no spaces or
# brackets, a dotted domain whose labels are not empty.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\".]+(\.[^@\s<>()\[\],;:\".]+)+$")


def valid_address(value: object) -> TypeGuard[str]:
    """Is ``value`` a string holding one plausible email address?"""
    return isinstance(value, str) and len(value) <= 320 and _ADDRESS.match(value) is not None


def domain_of(address: str) -> str:
    """The lower-cased domain of a valid address."""
    return address.rsplit("@", 1)[1].lower()


def rfc5322_address(value: str) -> str | None:
    """The address in ``"Name <a@b.c>"`` or ``"a@b.c"``, or None if there is none."""
    _name, address = parseaddr(value)
    return address if valid_address(address) else None


def decoded_size(content: object) -> int | None:
    """Bytes that base64 ``content`` decodes to, or None if it is not base64 text."""
    if not isinstance(content, str):
        return None
    try:
        return len(binascii.a2b_base64(content))
    except (binascii.Error, ValueError):
        return None


def without_attachment_contents(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` for the message log: attachment contents replaced by their decoded size.

    The body is shared, not copied, when it has no attachments (the usual case), which
    keeps the hot path free of copies; the log never mutates it.
    """
    attachments = body.get("attachments")
    if not attachments or not isinstance(attachments, list):
        return body
    stripped = []
    for item in attachments:
        if isinstance(item, dict) and "content" in item:
            size = decoded_size(item["content"])
            item = {k: v for k, v in item.items() if k != "content"}
            item["content_bytes"] = size
        stripped.append(item)
    return {**body, "attachments": stripped}
