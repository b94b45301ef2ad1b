"""Template variables from a recipient file's columns.

Every column is a template variable under its own name when that name is one Jinja can
write (``email``, ``Company``), and under a normalised alias when it is not or has
capitals: ``First Name`` is also ``first_name``, ``E-mail`` ``e_mail``, ``2024 Spend``
``col_2024_spend``, ``Prénom`` ``prenom``. Whatever its name, ``row`` holds every column
under its name in the file (``{{ row["First Name"] }}``), unless a column is itself named
``row``.

The alias is the name with accents removed, lower-cased, every run of other characters
than ``a-z`` and ``0-9`` made one ``_``, and ``_`` trimmed from both ends; ``col_`` goes
before one that would start with a digit, ``_`` after one that is a Jinja keyword (``if``
becomes ``if_``, ``self`` ``self_``). Two columns with the same alias (``First Name`` and
``first-name``) are a clash: neither gets it, and :meth:`Variables.notes` names both. An
alias that is another column's own name stays that column's.
"""

from __future__ import annotations

import difflib
import keyword
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROW = "row"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OTHER = re.compile(r"[^a-z0-9]+")
# Words a template cannot use as a variable: Jinja's operators and literals, and ``self``
# (always the template itself).
_JINJA_WORDS = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "elif", "for", "true", "false", "none", "self"}
)


def alias(name: str, position: int = 0) -> str:
    """The normalised variable name of column ``name`` (``position``: from 1, for a name
    with no letter or digit at all)."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    out = _OTHER.sub("_", plain.lower()).strip("_")
    if not out:
        return f"col_{position}"
    if out[0].isdigit():
        out = f"col_{out}"
    if out in _JINJA_WORDS or keyword.iskeyword(out):
        out += "_"
    return out


def writable(name: str) -> bool:
    """Can a template write ``name`` as a bare variable?"""
    return bool(_IDENTIFIER.fullmatch(name)) and name.lower() not in _JINJA_WORDS


@dataclass(frozen=True, slots=True)
class Variables:
    """The template variables of a file's columns: build it with :meth:`of`."""

    columns: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> column
    clashes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # alias -> columns

    @classmethod
    def of(cls, columns: Iterable[str]) -> Variables:
        """The variables of ``columns`` (the names :func:`~batchsend.source.read_columns`
        gives, renames applied)."""
        names = tuple(columns)
        own = set(names)
        claims: dict[str, list[str]] = {}
        for position, name in enumerate(names, start=1):
            a = alias(name, position)
            if a != name and a != ROW:
                claims.setdefault(a, []).append(name)
        aliases: dict[str, str] = {}
        clashes: dict[str, tuple[str, ...]] = {}
        for a, claimed in claims.items():
            if a in own:
                clashes[a] = (a, *claimed)
            elif len(claimed) > 1:
                clashes[a] = tuple(claimed)
            else:
                aliases[a] = claimed[0]
        return cls(names, aliases, clashes)

    def scope(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """One row's variables: its ``values`` by column name, the aliases and ``row``."""
        out = dict(values)
        for a, column in self.aliases.items():
            out[a] = values.get(column)
        if ROW not in values:
            out[ROW] = values
        return out

    def column(self, name: str) -> str | None:
        """The column a template variable or a setting names: its own name or its alias."""
        if name in self.columns:
            return name
        return self.aliases.get(name)

    def names(self) -> list[str]:
        """Every name a template can use for a column: the writable names, the aliases."""
        return [c for c in self.columns if writable(c)] + list(self.aliases)

    def suggest(self, name: str) -> str | None:
        """What to say about a variable ``name`` that no column provides, or None."""
        clash = self.clashes.get(name)
        if clash is not None and name not in self.columns:
            both = " and ".join(repr(c) for c in clash)
            return (
                f"{name!r} is the alias of more than one column ({both}), so neither has it;"
                f" write row[{clash[0]!r}], or rename one in [columns.rename]"
            )
        lowered = {alias(c): c for c in self.names()}
        same = lowered.get(alias(name))  # Last_Name for last_name, firstname for FirstName
        near = [same] if same else difflib.get_close_matches(name, self.names(), n=3, cutoff=0.6)
        if not near:
            return None
        return "did you mean " + " or ".join(repr(n) for n in near) + "?"

    def suggest_column(self, name: str) -> str | None:
        """``did you mean ...?`` for a ``row[...]`` key that is no column, or None."""
        near = difflib.get_close_matches(name, self.columns, n=3, cutoff=0.6)
        if not near:
            return None
        return "did you mean " + " or ".join(f"row[{n!r}]" for n in near) + "?"

    def notes(self) -> list[str]:
        """One line per alias clash, for ``check``."""
        out = []
        for a, columns in self.clashes.items():
            names = " and ".join(repr(c) for c in columns)
            if a in self.columns:
                out.append(
                    f"note: columns {names} share the alias {a!r}; {a!r} is the column of that"
                    f" name (use row[...] for the other)"
                )
            else:
                out.append(
                    f"note: columns {names} share the alias {a!r}, so neither has it: use"
                    f" row[{columns[0]!r}] or rename one in [columns.rename]"
                )
        return out
