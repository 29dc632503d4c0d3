"""Locales: prices and numbers as the shopper's locale writes them, and the copy's language.

A shopper's ``locale`` ("de-DE") decides how prices read in the prompt (``1.234,50 €``) and
which number format the guards expect in the copy. The language the copy is written in is the
shopper's when the configured model writes it (``MARQUEE_LLM_LANGUAGES``), else English: the
banner then says so (``locale_fallback``), rather than a small English-only model writing
broken German. Formatting is Babel's CLDR data, never hand-written patterns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency

DEFAULT_LOCALE = "en-US"


@lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale:
    """Babel's locale for a tag ("de-DE", "de"); an unknown one is the default's."""
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE.replace("-", "_"))


def known_locale(tag: str) -> bool:
    """Whether CLDR knows the tag (``babel_locale`` would not fall back to the default)."""
    try:
        Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return False
    return True


def format_price(price: float, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """``1299.5, "EUR", "de-DE"`` -> ``1.299,50 €``; ``"en-US"`` -> ``€1,299.50``."""
    return str(format_currency(price, currency, locale=babel_locale(locale)))


def language_of(locale: str) -> str:
    """The language part of a tag: "de-DE" -> "de"."""
    return locale.split("-", 1)[0].lower()


def language_name(locale: str) -> str:
    """The language in English words, for an instruction: "de-DE" -> "German"."""
    return str(babel_locale(language_of(locale)).get_display_name("en"))


@dataclass(frozen=True)
class CopyLocale:
    """The locale a banner's copy is written for."""

    requested: str  # the shopper's
    written: str  # the copy's: the requested one, or the default when the model lacks it
    fallback: bool  # the requested language is not one the model writes

    @property
    def language(self) -> str:
        return language_name(self.written)


def copy_locale(requested: str, model_languages: Sequence[str]) -> CopyLocale:
    """Write in the shopper's language if the model writes it, else in the default's."""
    if language_of(requested) in {language_of(lang) for lang in model_languages}:
        return CopyLocale(requested, requested, False)
    same = language_of(requested) == language_of(DEFAULT_LOCALE)
    return CopyLocale(requested, DEFAULT_LOCALE, not same)


@lru_cache(maxsize=256)
def _number_pattern(locale: str) -> tuple[re.Pattern[str], str, str]:
    symbols = babel_locale(locale).number_symbols.get("latn", {})
    decimal, group = symbols.get("decimal", "."), symbols.get("group", ",")
    # Grouping may also be written with a plain space where the locale's is a (narrow)
    # no-break space, as people type it ("1 234,50").
    groups = re.escape(group) + ("| " if group in {"\u00a0", "\u202f"} else "")
    pattern = re.compile(rf"\d(?:\d|(?:{groups})(?=\d{{3}}))*(?:{re.escape(decimal)}\d+)?")
    return pattern, decimal, group


def numbers_in(text: str, locale: str = DEFAULT_LOCALE) -> set[str]:
    """Every number in a text, canonical, read with the locale's separators: ``1.234,50`` in
    de-DE and ``1,234.50`` in en-US are both ``1234.5``."""
    pattern, decimal, group = _number_pattern(locale)
    # Numbers that are one character, not 0-9: a fraction (½), a superscript (²), a circled
    # or another script's digit. Each stands for itself; CJK numerals (letters) are words.
    found = {c for c in text if not c.isascii() and unicodedata.category(c) in ("Nd", "No")}
    for token in pattern.findall(text):
        plain = token.replace(group, "").replace(" ", "").replace(decimal, ".")
        try:
            found.add(format(Decimal(plain).normalize(), "f"))
        except InvalidOperation:
            continue
    return found
