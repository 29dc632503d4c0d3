"""Output schemas: what the model must write, as Pydantic models Outlines compiles to a grammar.

Products are named by their candidate number (1..K), never by id: the schema is the same for
every request of a template (so its grammar compiles once), and the model cannot name a product
that was not offered. Every string has a maxLength and every array a maxItems: without them a
small model can loop inside a string until the token budget runs out and the JSON is cut.

The text fields also carry a ``pattern``: what copy may never hold is written into the grammar,
so the model cannot spend a generation on it (refused afterwards, each one cost a retry). A
grammar that honours a pattern and a maxLength together is needed: the vLLM server runs the
guidance backend (llguidance intersects the two; xgrammar 0.2 drops the length), and the
in-process engine uses llguidance too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

Tone = Literal["warm", "playful", "premium", "practical", "urgent"]


class BannerCopy(BaseModel):
    """The fields every schema has; the per-template subclasses add the limits."""

    model_config = ConfigDict(extra="forbid")

    headline: str
    subheadline: str
    cta: str
    layout: str
    tone: Tone
    badge: str | None = None
    products: list[int]


@dataclass(frozen=True)
class SchemaSpec:
    name: str
    description: str
    headline_max: int
    subheadline_max: int
    cta_max: int
    badge_max: int
    layouts: tuple[str, ...]
    min_products: int
    max_products: int
    # A button, not a sentence: the prompts ask for two or three words, and the grammar stops
    # the call to action there, on a whole word.
    cta_words: int = 3

    def limits(self) -> dict[str, int]:
        return {
            "headline": self.headline_max,
            "subheadline": self.subheadline_max,
            "cta": self.cta_max,
            "badge": self.badge_max,
            "min_products": self.min_products,
            "max_products": self.max_products,
        }


SCHEMAS: dict[str, SchemaSpec] = {
    spec.name: spec
    for spec in (
        SchemaSpec(
            "banner",
            "A hero banner: headline, supporting line, call to action.",
            60,
            120,
            24,
            20,
            ("hero", "split", "grid", "carousel"),
            1,
            4,
        ),
        SchemaSpec(
            "grid_heading",
            "The heading over a grid of products.",
            48,
            100,
            20,
            20,
            ("grid", "carousel"),
            2,
            6,
        ),
        SchemaSpec(
            "spotlight",
            "A category spotlight: one theme, a few products.",
            60,
            140,
            24,
            20,
            ("hero", "split"),
            1,
            3,
        ),
    )
}


class UnknownSchemaError(KeyError):
    pass


# Never in copy: markup, brackets, braces and backquotes (our prompt's delimiters; a page would
# render them), quotes and backslashes (a small model loops on JSON escapes), control
# characters (a line break fakes a turn).
# And the symbol blocks no banner's words need, which the model reaches for when the grammar
# closes the way it wanted (the full suite served "Bags & Travel, Unwind, ⑑" and "See
# Lounge ！"): from the per mille sign to the end of the arrows, shapes and dingbats (the
# currency signs aside: copy with digits names prices), and the full-width forms.
# Invisible format marks too (a right-to-left mark served in "Luxury, \u200fCedar & Pine").
_NEVER_IN_COPY = (
    r'"\\<>{}\[\]`\x00-\x1f\x7f' + "‰-₟⃐-⯿！-～" + "\u200b-\u200f\u202a-\u202e\u2060-\u206f"
)
_NEVER_SAID = "no quotes, backslashes, brackets, braces, backquotes, markup or symbols"
# Digits too, unless the template asks for them (``copy_digits``): a 135M model invents
# numbers, and the guards refused a first attempt for one 2,705 times in a 10,006-banner job.
# And the percent sign with them: without a number it is the husk of an invented discount
# ("Save big % today" when asked for "50% off").
# And the characters that are numbers without being 0-9: a fraction the tokenizer offers
# whole ("Coffee ½-Lager", "Sleeping Bag, ⅛"), superscripts and subscripts, circled numbers,
# the degree sign, which says nothing without one, and the letterlike symbols beside the
# number forms, which the model reaches for in their place ("Sleeping Bag, ⅅ" for "20°F").
_DIGITS = "0-9%°²³¹¼-¾₠-⃏"  # and the currency signs, which say nothing without a number
_NO_DIGITS = ", no digits, number signs or % (the template's copy_digits is off)"
# Each pattern built here, in words: what a validation error says instead of the regex.
_RULES: dict[str, str] = {}


def copy_pattern(digits: bool = False) -> str:
    """What copy may be, as a regex every engine's grammar and Pydantic accept: runs of the
    characters it may use, one space between, a comma only at a run's end. So no space before
    a comma, no ", ," or ",,", no double, leading or trailing space and no closing comma: the
    litter a small model leaves when it runs out of words ("Bearpaw Essentials, ,")."""
    chars = f"[^{_NEVER_IN_COPY}{'' if digits else _DIGITS}\\s,]"
    # Where digits are allowed, a comma may stand between them too ("$1,299", "4,50 €").
    between_digits = f"|,\\d{chars}*" if digits else ""
    pattern = f"^{chars}+(?:,? {chars}+{between_digits})*$"
    _RULES[pattern] = (
        _NEVER_SAID
        + ("" if digits else _NO_DIGITS)
        + "; single spaces, and a comma only after a word and before a space"
    )
    return pattern


def cta_pattern(words: int, digits: bool = False, verbs: tuple[str, ...] = ()) -> str:
    """One to ``words`` words of letters (an apostrophe, hyphen or ampersand inside), single
    spaces between, none before or after, and perhaps a closing ``.`` or ``!``: a small model
    otherwise packs more words in with commas ("Shop a brew,a,a"). ``verbs``: what the first
    word (or words: "gear up") must be, capitalised or not (app/rubric.py ``cta_verbs``): a
    call to action is an action, and said here it costs nothing at sampling time."""
    # A word: no space, nothing copy may never hold, no punctuation but an inner apostrophe,
    # hyphen or ampersand. Said as a negated class of ASCII characters, which Python's re (the
    # JSON schema checkers), Rust's regex (Pydantic) and llguidance all read alike, and which
    # lets every script's letters through.
    inner = f"\\s{_NEVER_IN_COPY}{'' if digits else _DIGITS}_,.;:!?()/|+*=~^$#%@"
    # A word starts with a letter (or a digit where digits are allowed): "&Tea" is not one,
    # and ends with one: "next-door-" is not either. Its capital, if any, is its first letter:
    # the model glues two words it has no room for ("Explore theOutdoor", "Coffee andTea"),
    # and a button's word never needs a second one.
    rest = f"{inner}A-Z"
    # An acronym is a word too ("Shop TV stands"): capitals only.
    acronym = "[A-Z]{2,5}"
    word = f"(?:[^{inner}&'-](?:[^{rest}]*[^{rest}&-])?|{acronym})"
    if verbs:
        by_length: dict[int, list[str]] = {}
        for verb in dict.fromkeys(" ".join(v.split()) for v in verbs if v.strip()):
            by_length.setdefault(len(verb.split()), []).append(_either_case(verb))
        # After the verb, its object: never "and" or "or" first (the model, wanting a
        # category's name, wrote "Browse and Travel", "Pick and Tail"). An "&" may join two
        # of its words and counts as none: "Shop Coffee & Tea" (it glued "Coffee andTea"
        # when it could not).
        # Nor, anywhere in the object, a word that starts with "and": held from writing
        # "and", the model glued it to whatever came next ("Browse andbound", "Shop Coffee
        # andte").
        part = _word_except(f"{inner}&'-", rest, ("and", "or"), prefixes=("and",))
        part = f"(?:{part}|{acronym})"
        starts = []
        for length, alternatives in sorted(by_length.items()):
            if length > words:
                continue
            more = words - length
            tail = f"(?: {part}(?: (?:& )?{part}){{0,{more - 1}}})?" if more else ""
            starts.append(f"(?:{'|'.join(sorted(alternatives))}){tail}")
        pattern = f"^(?:{'|'.join(starts)})[.!]?$"
        shown = ", ".join(v.capitalize() for v in list(dict.fromkeys(verbs))[:6])
        _RULES[pattern] = (
            f"one to {words} words starting with an action verb ({shown}"
            f"{', ...' if len(verbs) > 6 else ''}) and not then 'and' or 'or', single spaces "
            "(an & may join two words), perhaps a closing . or !" + ("" if digits else _NO_DIGITS)
        )
        return pattern
    pattern = f"^{word}(?: (?:& )?{word}){{0,{words - 1}}}[.!]?$"
    _RULES[pattern] = (
        f"one to {words} words of letters (an apostrophe, hyphen or ampersand inside) with "
        f"single spaces (an & may join two words), perhaps a closing . or !"
        + ("" if digits else _NO_DIGITS)
    )
    return pattern


def _word_except(
    not_first: str, not_inner: str, excluded: tuple[str, ...], prefixes: tuple[str, ...] = ()
) -> str:
    """A word (its first character none of ``not_first``, the others none of ``not_inner``,
    its last no ``&``, ``'`` or ``-``) that is none of ``excluded`` and starts with none of
    ``prefixes``, in either case of its first letter, as a regex without lookarounds
    (llguidance and Rust's regex have none): the words, as a tree of prefixes, and at each
    node any other way to go on."""
    tree: dict[str, Any] = {}
    for entry in excluded:
        node = tree
        for letter in entry.casefold():
            node = node.setdefault(letter, {})
        node[""] = {}
    for prefix in prefixes:
        node = tree
        for letter in prefix.casefold()[:-1]:
            node = node.setdefault(letter, {})
        node[prefix.casefold()[-1]] = {"*": {}}  # nothing may follow: the node is closed

    def branch(node: dict[str, Any], first: bool) -> str:
        """The rest of a word from ``node`` (the prefix read so far) on."""
        letters = [c for c in node if c not in ("", "*")]
        cased = [v for c in letters for v in (c, c.upper())] if first else letters
        # The letters first: a class's bare "-" must stay its last character.
        banned = "".join(re.escape(c) for c in cased) + (not_first if first else not_inner)
        ends = _no_end(banned)
        ways = [  # another character than the tree's: one that may end the word, or more
            f"[^{ends}]",
            f"[^{banned}][^{not_inner}]*[^{_no_end(not_inner)}]",
        ]
        for letter in letters:
            child = node[letter]
            if "*" in child:  # a prefix nothing may follow, nor end on
                continue
            either = f"[{letter}{letter.upper()}]" if first else re.escape(letter)
            rest = branch(child, False)
            # The word may end on the letter unless the letters so far are an excluded word.
            ways.append(f"{either}(?:{rest}){'' if '' in child else '?'}")
        return "(?:" + "|".join(ways) + ")"

    return branch(tree, True)


def _no_end(chars: str) -> str:
    """``chars`` (a negated class's body) and the characters a word never ends on ("&" and
    "-"; an apostrophe may: "kids'"), "-" last."""
    return chars.removesuffix("-") + "&-"


def _either_case(verb: str) -> str:
    """``gear up`` as a regex that also takes ``Gear up``: the first letter in either case."""
    first, rest = verb[0], verb[1:]
    lead = (
        f"[{first.upper()}{first.lower()}]" if first.upper() != first.lower() else re.escape(first)
    )
    # Spaces stay bare: every engine's regex reads a plain space alike.
    return lead + " ".join(re.escape(part) for part in rest.split(" "))


def copy_error(error: ValidationError) -> str:
    """The first problem of copy that does not fit its schema, in words a marketer reads
    (``cta: one to 3 words of letters ...``), not the regex."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "output"
    pattern = str((first.get("ctx") or {}).get("pattern", ""))
    if first["type"] == "string_pattern_mismatch" and pattern in _RULES:
        return f"{where}: {_RULES[pattern]}"
    return f"{where}: {first['msg']}"


def _text(max_length: int, pattern: str) -> Any:
    return Annotated[str, Field(min_length=1, max_length=max_length, pattern=pattern)]


@lru_cache(maxsize=64)
def output_model(
    schema: str, k: int, digits: bool = False, cta_verbs: tuple[str, ...] = ()
) -> type[BannerCopy]:
    """The schema ``schema`` for ``k`` candidates, built once and reused (grammar cache key);
    ``digits``: whether its copy may hold digits; ``cta_verbs``: what its call to action
    starts with (empty: any word)."""
    spec = SCHEMAS.get(schema)
    if spec is None:
        raise UnknownSchemaError(f"unknown schema '{schema}' (known: {', '.join(SCHEMAS)})")
    if k < spec.min_products:
        raise ValueError(f"schema '{schema}' needs at least {spec.min_products} candidates")
    # Literal types built at run time: the allowed numbers and layouts become JSON enums.
    number: Any = Literal.__getitem__(tuple(range(1, k + 1)))
    layout: Any = Literal.__getitem__(spec.layouts)
    text = copy_pattern(digits)
    model: type[BannerCopy] = create_model(
        f"{spec.name.title().replace('_', '')}K{k}{'Digits' if digits else ''}"
        f"{'Verbs' if cta_verbs else ''}",
        __base__=BannerCopy,
        __doc__=spec.description,
        headline=(_text(spec.headline_max, text), ...),
        subheadline=(_text(spec.subheadline_max, text), ...),
        cta=(_text(spec.cta_max, cta_pattern(spec.cta_words, digits, cta_verbs)), ...),
        layout=(layout, ...),
        tone=(Tone, ...),
        badge=(Annotated[str | None, Field(max_length=spec.badge_max, pattern=text)], None),
        products=(
            list[number],
            Field(
                min_length=spec.min_products,
                max_length=spec.max_products,
            ),
        ),
    )
    return model
