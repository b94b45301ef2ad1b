"""Email addresses: normalised and validated with ``email-validator`` (no DNS lookups).

:class:`AddressBook` validates one address at a time and is fast on the common case:
each distinct domain is validated (and IDNA-normalised) by the library once and cached,
and a local part that is a plain ASCII dot-atom -- the form the library accepts
without further rules -- is taken as is. Anything else (quoted, Unicode or odd local
parts) goes through the library whole. Tests check the fast path agrees with the
library on a table of addresses and on generated ones.

Duplicates are compared as the mail system compares addresses (:func:`dedup_key`). The
domain is case-insensitive (DNS), compared in its IDNA (ASCII) form, so ``bücher.de``,
``BÜCHER.de`` and ``xn--bcher-kva.de`` are one domain. The local part belongs to the
receiving server, and RFC 5321 lets it be case-sensitive; in practice mailbox providers
treat ASCII case as equal (``Ann@`` is ``ann@``), so ASCII letters are compared without
case and everything else exactly, as written (after email-validator's NFC
normalisation, which only unifies two spellings of one character). Never Unicode case
folding or NFKC: they fold distinct local parts into one (``ß`` into ``ss``, ``ﬁ`` into
``fi``, ``Ä`` into ``ä``), and the second person would be skipped as a duplicate and get
nothing. Skipping a real person is the worse mistake here, since two addresses a server
treats as one still get one message each -- never two of the same row.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

# RFC 5322 "atext" dot-atom, ASCII only: what email-validator accepts unconditionally.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_CONTROL = re.compile(r"[\r\n\0]")

# Scripts that legitimately share one domain label (UTS #39's "highly restrictive"
# level): Japanese mixes Han and kana, Chinese Han and Bopomofo, Korean Han and Hangul,
# each possibly with Latin. Any other mixture in one label is a homoglyph warning sign.
_SCRIPT_SETS = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


def _scripts(label: str) -> set[str]:
    """The scripts of a label's letters, by the first word of their Unicode names."""
    return {
        unicodedata.name(c, "UNKNOWN").split()[0]
        for c in label
        if c.isalpha() and unicodedata.name(c, "").split()[0] != "MODIFIER"
    }


def mixed_script_label(domain: str) -> str | None:
    """The first label of ``domain`` that mixes scripts (``exаmple`` with a Cyrillic а).

    Single-script IDN labels (``bücher``, ``пример``, ``ελλάδα``) are fine; so are the
    usual CJK mixtures. Whole-script look-alikes (an all-Cyrillic ``аррӏе``) are not
    caught by this rule.
    """
    if domain.isascii():
        return None
    for label in domain.split("."):
        scripts = _scripts(label)
        if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS):
            return label
    return None


@dataclass(frozen=True, slots=True)
class Normalised:
    """A valid address: ``email`` to send to, ``key`` to compare for duplicates."""

    email: str
    key: str


class InvalidAddress(ValueError):
    """The address is not valid; the message says why."""


def dedup_key(email: str) -> str:
    """The comparison key of a normalised address: ASCII (IDNA) domain, ASCII case ignored.

    Only ASCII letters lose their case, in the local part as in the domain; any other
    character is compared as written (see the module docstring for why):

    >>> dedup_key("Ann@Example.ORG"), dedup_key("ß@example.org"), dedup_key("SS@example.org")
    ('ann@example.org', 'ß@example.org', 'ss@example.org')
    """
    local, _, domain = email.rpartition("@")
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{_ascii_lower(local)}@{domain.lower()}"


def _ascii_lower(text: str) -> str:
    """``text`` with A-Z lowered and every other character kept (``str.lower`` maps ``İ``)."""
    return text.encode("utf-8").lower().decode("utf-8")


class AddressBook:
    """Validates addresses, caching each domain's verdict."""

    def __init__(self) -> None:
        # domain as written -> (normalised domain, ascii domain) or the error text
        self._domains: dict[str, tuple[str, str] | str] = {}

    def normalise(self, raw: str) -> Normalised:
        """Return the normalised address or raise :class:`InvalidAddress`."""
        if not raw:
            raise InvalidAddress("the address is empty")
        if _CONTROL.search(raw):
            raise InvalidAddress("the address contains a line break or NUL")
        value = raw.strip()
        local, at, domain = value.rpartition("@")
        if at and len(local) <= 64 and _DOT_ATOM.fullmatch(local):
            verdict = self._domain(domain)
            if isinstance(verdict, str):
                raise InvalidAddress(verdict)
            ascii_domain = verdict[1]
            if len(local) + 1 + len(ascii_domain) <= 254:
                # The ASCII (IDNA) domain: what every provider API accepts.
                return Normalised(f"{local}@{ascii_domain}", f"{local.lower()}@{ascii_domain}")
        try:
            result = validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise InvalidAddress(str(exc)) from None
        verdict = self._domain(result.domain)  # cached: the homoglyph rule, once per domain
        if isinstance(verdict, str):
            raise InvalidAddress(verdict)
        email = result.ascii_email or result.normalized
        return Normalised(email, dedup_key(email))

    def _domain(self, domain: str) -> tuple[str, str] | str:
        cached = self._domains.get(domain)
        if cached is None:
            try:
                result = validate_email(f"a@{domain}", check_deliverability=False)
                cached = (result.domain, result.ascii_domain.lower())
                label = mixed_script_label(result.domain)
                if label is not None:
                    cached = (
                        f"the domain label {label!r} mixes scripts "
                        f"({', '.join(sorted(_scripts(label))).lower()}): a look-alike"
                        " (homoglyph) domain, not sent to"
                    )
            except EmailNotValidError as exc:
                cached = str(exc)
            if len(self._domains) < 100_000:
                self._domains[domain] = cached
        return cached


def split_list(cell: str | None, separators: str) -> list[str]:
    """The addresses in a cc/bcc cell: split on any of ``separators``, blanks dropped."""
    if not cell:
        return []
    for sep in separators[1:]:
        cell = cell.replace(sep, separators[0])
    return [part.strip() for part in cell.split(separators[0]) if part.strip()]


_BOOK = AddressBook()


def suppression_key(raw: str) -> str:
    """The comparison key of an address from outside the recipient file (a provider's
    event or list, the user's command line), built as preflight builds a row's: an
    address preflight would refuse still gets a key (``dedup_key`` of it, stripped), so
    it can be listed and removed."""
    try:
        return _BOOK.normalise(raw).key
    except InvalidAddress:
        return dedup_key(raw.strip())
