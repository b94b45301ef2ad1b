"""API keys: where they come from, and keeping them out of everything we write.

A key is read from an environment variable, a key file, or standard input; never from
a command-line value (it would show in ``ps``). :func:`redact` removes every key this
process has loaded from a string before it reaches a log, an error, the store or a report.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from batchsend.errors import SecretError

DEFAULT_ENV_VAR = "BATCHSEND_API_KEY"
#: ToSend's admin keys (reading its delivery log and suppression list) start with this.
ADMIN_KEY_PREFIX = "tsend_admin_"
ADMIN_KEY_ENV = "BATCHSEND_ADMIN_KEY"
#: A campaign file's ``api_key_env`` must start with this: it may not pick another secret.
KEY_ENV_PREFIX = "BATCHSEND_"

_loaded: set[str] = set()


def remember(key: str) -> str:
    """Register a key so that :func:`redact` hides it; returns the key."""
    if key:
        _loaded.add(key)
    return key


def remember_env(name: str) -> None:
    """Register the key environment variable ``name`` holds, if any, before it is loaded.

    Called before a campaign reads any file, so that a file which happens to hold the
    environment (``/proc/self/environ``) or the key cannot show it in an error message.
    """
    remember(os.environ.get(name, "").strip())


def redact(text: str) -> str:
    """``text`` with every loaded key replaced by ``[redacted]``."""
    for key in _loaded:
        if key and key in text:
            text = text.replace(key, "[redacted]")
    return text


def load_api_key(
    *, env_var: str | None = None, key_file: str | Path | None = None, stdin: bool = False
) -> str:
    """Read the API key from standard input, a key file or the environment, in that order.

    Raises :class:`SecretError` (exit 2) naming where it looked, never the value.
    """
    if stdin:
        key = sys.stdin.readline().strip()
        if not key:
            raise SecretError("no API key on standard input", fix="pipe the key: ... < keyfile")
        return remember(key)
    if key_file is not None:
        path = Path(key_file)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            if _maybe_a_key(path.name):
                # A key pasted where a path belongs: never echo it (nor let it out later).
                remember(path.name)
                raise SecretError(
                    f"cannot read the API key file: {exc.strerror} (its name is not shown:"
                    " it looks like it could be a key itself)",
                    fix="api_key_file (or --api-key-file) names a FILE holding the key; put"
                    " the key in that file, or in an environment variable (api_key_env)",
                ) from None
            raise SecretError(
                f"cannot read the API key file: {exc.strerror}",
                file=str(path),
                fix="point api_key_file (or --api-key-file) at a readable file holding the key",
            ) from None
        return remember(_key_from_file(raw, path))
    name = env_var or DEFAULT_ENV_VAR
    key = os.environ.get(name, "").strip()
    if not key:
        raise SecretError(
            f"no API key: the environment variable {name} is not set",
            fix=f"export {name}=... (or set api_key_file in the campaign, or --api-key-stdin)",
        )
    return remember(key)


MAX_KEY_FILE_BYTES = 4096
_FILE_FIX = (
    "leave only the key in the file, on one line (no comment, no second key, no quotes);"
    " a trailing line break is fine"
)


def _key_from_file(raw: bytes, path: Path) -> str:
    """The key a key file holds, or a :class:`SecretError` that never shows its content.

    Anything but one line of printable ASCII is refused rather than guessed at: two lines
    joined would be a wrong key sent in a header, the first line alone may be a comment.
    """
    shown = str(path)
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise SecretError(
            f"the API key file is larger than {MAX_KEY_FILE_BYTES:,} bytes: not a key file",
            file=shown,
            fix=_FILE_FIX,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SecretError(
            "the API key file is not UTF-8 text (saved as UTF-16, or not text at all)",
            file=shown,
            fix="save the key as plain UTF-8 or ASCII text: " + _FILE_FIX,
        ) from None
    key = text.strip()
    if not key:
        raise SecretError("the API key file is empty", file=shown, fix=_FILE_FIX)
    lines = len(key.splitlines())
    if lines > 1:
        raise SecretError(
            f"the API key file holds {lines} lines; a key is one line (its content is not shown)",
            file=shown,
            fix=_FILE_FIX,
        )
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise SecretError(
            "the API key file holds a space, a control or non-ASCII character: no API key"
            " does (its content is not shown)",
            file=shown,
            fix=_FILE_FIX,
        )
    return key


def _maybe_a_key(name: str) -> bool:
    """A file name that could be a pasted key: 16+ characters, no dot, no space."""
    return len(name) >= 16 and "." not in name and " " not in name


def is_loopback_url(url: str) -> bool:
    """Does ``url`` name this machine (127.0.0.0/8, ::1, ``localhost``)?

    Only such a base URL may come from a campaign file alone: the key is sent to it.
    Names that merely resolve to loopback (``127.0.0.1.nip.io``) do not count.
    """
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def load_secret(what: str, *, env_var: str, secret_file: str | Path | None) -> str | None:
    """A shared secret other than the API key (a webhook's signing secret or URL token):
    from ``secret_file`` if given, else the environment variable ``env_var``; None when
    neither is set. Raises :class:`SecretError` for an unreadable or malformed file,
    never showing its content."""
    if secret_file is None:
        value = os.environ.get(env_var, "").strip()
        return remember(value) if value else None
    path = Path(secret_file)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretError(
            f"cannot read the {what} file: {exc.strerror}",
            file=str(path),
            fix=f"point the option at a readable file holding the {what}, or set {env_var}",
        ) from None
    try:
        value = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        value = ""
    if not value or len(raw) > MAX_KEY_FILE_BYTES or len(value.splitlines()) > 1:
        raise SecretError(
            f"the {what} file does not hold one line of text (its content is not shown)",
            file=str(path),
            fix=f"put only the {what} in the file, on one line",
        )
    return remember(value)


def load_admin_key(
    *, key_file: str | Path | None = None, stdin: bool = False, needed_for: str, scope: str
) -> str:
    """The ToSend admin key (standard input, a key file, or ``$BATCHSEND_ADMIN_KEY``),
    checked to be one. ``needed_for`` and ``scope`` word the errors; the key is never shown.
    """
    if key_file is None and not stdin and not os.environ.get(ADMIN_KEY_ENV, "").strip():
        raise SecretError(
            f"no ToSend admin key: {needed_for} needs an admin key ({ADMIN_KEY_PREFIX}...), "
            f"and the environment variable {ADMIN_KEY_ENV} is not set",
            fix=f"export {ADMIN_KEY_ENV}=... (an admin key with the {scope} scope), set "
            "admin_key_file in the campaign, or pass --admin-key-file FILE or --admin-key-stdin",
        )
    key = load_api_key(env_var=ADMIN_KEY_ENV, key_file=key_file, stdin=stdin)
    return check_admin_key(key, scope=scope, cannot="do this")


def check_admin_key(key: str, *, scope: str, cannot: str) -> str:
    """``key`` (registered for redaction) if it is a ToSend admin key, else SecretError."""
    remember(key)
    if not key.startswith(ADMIN_KEY_PREFIX):
        raise SecretError(
            f"the admin key is not a ToSend admin key: admin keys start with "
            f"{ADMIN_KEY_PREFIX!r} (a sending key cannot {cannot}); the key is not shown",
            fix=f"create an admin key with the {scope} scope in ToSend and put it in "
            f"{ADMIN_KEY_ENV}, or in the file --admin-key-file names",
        )
    return key
