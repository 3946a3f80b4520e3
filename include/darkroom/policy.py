"""Restricted terms, matched the way a person reads the text.

A term is found in a prompt when a reader would see it there, whatever the characters:
:func:`fold` turns both the term and the prompt into the same reading form, then the term
must stand as whole words (``cure`` is in "cure all", not in "secure" or "cured"):

1. NFKC: full-width letters, ligatures, mathematical letters become plain ones (``ｃｕｒｅ``);
2. invisible characters go: zero-width space/joiners (U+200B..U+200D), word joiner (U+2060),
   BOM (U+FEFF), soft hyphen (U+00AD), bidi controls and every other format character
   (Unicode category Cf), and ASCII control characters;
3. accents go (NFKD, combining marks dropped): ``crème`` is ``creme``;
4. look-alike letters become the Latin letter they look like (Cyrillic ``а``, Greek ``ο``,
   Cherokee ``Ꮪ``...), from Unicode's confusables table (UTS #39 ``confusables.txt``) as
   shipped by the ``confusable-homoglyphs`` package: every single character whose only
   single-letter look-alike is an ASCII letter or digit (1,315 characters in its 3.3.1 data).
   Text in Cyrillic or Greek that reads as a Latin term is caught on purpose: it reads as one;
5. case-folded;
6. hyphens and dashes (``-``, U+2010..U+2015, U+2212, every Unicode dash) and ``_`` count as
   spaces, runs of spaces as one; between the words of a term the space may be missing, so
   ``dishwasher safe`` catches ``dishwasher-safe``, ``dishwasher_safe`` and ``dishwashersafe``.

Not caught (a reviewer still reads every asset): letters replaced by digits or symbols
(``cur3``), letters spaced out (``c u r e``), misspellings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from darkroom.spec import LoadedSpec

#: ASCII characters a reader does not see as letters: control characters go, separators
#: become spaces.
_ASCII = {c: None for c in range(32) if chr(c) not in "\t\n\r\x0b\x0c"} | {0x7F: None} | {
    ord("-"): " ", ord("_"): " "}


@cache
def look_alikes() -> dict[str, str]:
    """Non-ASCII character -> the ASCII letter or digit it looks like (UTS #39 confusables)."""
    from confusable_homoglyphs.utils import load

    table = {}
    for char, glyphs in load("confusables.json").items():
        if len(char) != 1 or char.isascii():
            continue
        latin = {g["c"] for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()}
        if len(latin) == 1:
            table[char] = latin.pop()
    return table


def _is_separator(c: str) -> bool:
    return c.isspace() or c == "_" or c == "\u2212" or unicodedata.category(c) == "Pd"


def fold(text: str) -> str:
    """``text`` in reading form (see the module docstring): what restricted terms are matched on."""
    if text.isascii():  # the common case, and many times faster
        return " ".join(text.translate(_ASCII).casefold().split())
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cc") or c.isspace())
    text = "".join(c for c in unicodedata.normalize("NFKD", text)
                   if unicodedata.category(c) not in ("Mn", "Me"))
    table = look_alikes()
    text = "".join(c if c.isascii() else table.get(c.lower()) or table.get(c) or c for c in text)
    text = "".join(" " if _is_separator(c) else c for c in text.casefold())
    return " ".join(text.split())


def term_pattern(term: str) -> re.Pattern:
    """Whole words of ``fold(term)``; the space between two words may be missing."""
    words = fold(term).split()
    return re.compile(r"(?<!\w)" + " ?".join(map(re.escape, words)) + r"(?!\w)")


@dataclass(frozen=True)
class RestrictedTerms:
    terms: tuple[str, ...]

    @classmethod
    def for_spec(cls, loaded: LoadedSpec) -> RestrictedTerms:
        """The spec's terms: ``brand.restricted_terms`` and the lines of its terms file."""
        terms = list(loaded.spec.brand.restricted_terms)
        if loaded.spec.brand.restricted_terms_file:
            terms += cls.from_file(loaded.resolve(loaded.spec.brand.restricted_terms_file))
        return cls(tuple(dict.fromkeys(terms)))

    @staticmethod
    def from_file(path: Path, field: str = "brand.restricted_terms_file") -> list[str]:
        """One term per line (``#`` comments); a clear PolicyError when it is not UTF-8 text."""
        from darkroom.errors import PolicyError

        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"field `{field}` = {str(path)!r}: not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start}); fix: save "
                              "the terms file as UTF-8") from None
        except OSError as exc:
            raise PolicyError(f"field `{field}` = {str(path)!r}: cannot be read "
                              f"({exc.strerror or exc}); fix the path") from None
        return [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]

    @cached_property
    def _patterns(self) -> list[tuple[str, re.Pattern]]:
        # Compiled once: planning 10,000 variants checks every prompt. A term that folds to
        # nothing (only invisible characters) would match everywhere: it is left out.
        return [(t, term_pattern(t)) for t in self.terms if fold(t)]

    def find(self, text: str) -> list[str]:
        folded = fold(text)
        return [term for term, pat in self._patterns if pat.search(folded)]

    def matches(self, term: str, text: str) -> bool:
        return any(t == term and pat.search(fold(text)) for t, pat in self._patterns)
