"""Checks both providers share: address syntax, attachment sizes, bodies for the log, and
which hosts count as this machine (the sandbox listens and posts webhooks on loopback only).
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import re
from email.utils import parseaddr
from typing import Any, TypeGuard
from urllib.parse import urlsplit

MB = 1024 * 1024

# Lenient on purpose (the providers accept what their MTA accepts): one @, no spaces or
# brackets, a dotted domain whose labels are not empty.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\".]+(\.[^@\s<>()\[\],;:\".]+)+$")


_BASE64 = re.compile(r"[A-Za-z0-9+/\s]*=?\s*=?\s*")


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
    # a2b_base64 skips characters outside the alphabet ("!!!" decodes to nothing); line
    # breaks and spaces (MIME-wrapped base64) are fine, anything else is not base64.
    if _BASE64.fullmatch(content) is None:
        return None
    try:
        return len(binascii.a2b_base64(content))
    except (binascii.Error, ValueError):
        return None


def logged_body(body: dict[str, Any], raw: bytes | None) -> str | bytes:
    """The JSON kept in the message log: ``body`` minus attachment contents and ``api_key``.

    ``raw`` is the request's own bytes when ``body`` is the whole request: without
    attachments or a key in the body (the usual case) they are kept as they are, no
    copy, no re-encoding.
    """
    if "api_key" in body:  # a key is a secret: it is never logged
        body = {k: v for k, v in body.items() if k != "api_key"}
        raw = None
    attachments = body.get("attachments")
    if not attachments or not isinstance(attachments, list):
        return raw if raw is not None else json.dumps(body, ensure_ascii=False)
    return json.dumps(without_attachment_contents(body), ensure_ascii=False)


def without_attachment_contents(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each attachment's content replaced by its decoded size."""
    attachments = body["attachments"]
    stripped = []
    for item in attachments:
        if isinstance(item, dict) and "content" in item:
            size = decoded_size(item["content"])
            item = {k: v for k, v in item.items() if k != "content"}
            item["content_bytes"] = size
        stripped.append(item)
    return {**body, "attachments": stripped}


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (127.0.0.0/8, ::1) or ``localhost``?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_url_problem(url: str) -> str | None:
    """Why ``url`` may not receive the sandbox's webhooks, or None when it may.

    Only ``http(s)://`` URLs whose host is loopback pass: events the sandbox makes up
    must never leave this machine.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r} is not an http:// or https:// URL"
    if not is_loopback(host):
        return (
            f"{url!r} is not on this machine: the sandbox posts webhooks to loopback only "
            "(127.0.0.0/8, ::1 or localhost)"
        )
    return None
