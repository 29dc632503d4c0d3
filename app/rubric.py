"""The publishability rubric: would a marketer publish this banner as written?

Relevance and grounding say whether copy is about the right products and invents nothing;
they do not see a subheadline that says the headline again, a call to action that is a
category name, or a line that names nothing about what it shows. This module reads the copy
the way a marketer does and names what it finds, field by field. It is the one place that
judges publishability: the guards (app/guards.py) refuse on its hard findings and hand its
soft ones to best-of-n (app/choosing.py), the eval counts them, and the studio preview and the
review queue show them.

It is deterministic and fast (word lists and set arithmetic, no model): a training loop can use
it as a reward and a gate. ``tests/data/rubric_cases.yaml`` holds copy labelled by hand; its
precision and recall are measured by ``eval/rubric.py`` and pinned by tests.

English is what its word lists know. For copy in another language the checks that need an
English lexicon (the call to action's verb, a sentence's verb) run only where the template
gives its own ``cta_verbs``; the others (restated, bare heading, vague, banned phrases) read
words, not grammar, and hold in any language.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Literal, Protocol

from lemminflect import getAllLemmas

FindingName = Literal[
    "restated", "garbled", "weak_cta", "cliche", "bare_heading", "not_a_sentence", "vague"
]

# Hard findings refuse the copy (a retry, then fallback copy): a restated subheadline, garbled
# text (glued or doubled words, stray punctuation, a button that stops on "the", words of no
# language) and a call to action that is not an action are wrong on the page whatever else
# the banner does well, and a banned phrase is the brand's own rule, checked like its banned
# terms. Soft findings make
# copy weaker without making it wrong: a bare category headline, a subheadline without a verb,
# copy that names nothing specific. They lose in best-of-n (app/choosing.py) to a sample
# without them; a lone sample is served with them on it.
HARD: frozenset[str] = frozenset({"restated", "garbled", "weak_cta", "cliche"})
SOFT: frozenset[str] = frozenset({"bare_heading", "not_a_sentence", "vague"})
FINDINGS: tuple[FindingName, ...] = (
    "restated",
    "garbled",
    "weak_cta",
    "cliche",
    "bare_heading",
    "not_a_sentence",
    "vague",
)

# A subheadline whose content words are this share (or more) of the headline's says it again.
# Chosen on tests/data/rubric_cases.yaml (``python -m eval.rubric`` prints the sweep): from 0.4
# to 0.6 every labelled restatement is found and no near-miss is ("Coffee & tea for slow
# Sundays" / "Whole-bean coffee and loose-leaf tea to brew at home": 2 of 6 words); 0.7 misses
# one ("Cosy knits for cold days" / "... for the cold days ahead" is 4 of 5). 0.6, the
# strictest of the three, leaves most room to a subheadline that builds on the headline.
RESTATED_SHARE = 0.6
# Fewer words than this is a fragment, not a sentence ("Bags & Travel").
MIN_SENTENCE_WORDS = 4

# Verbs a call to action starts with, in English: what the rubric accepts where a template
# names none. A template's ``cta_verbs`` replaces them; multi-word entries are phrasal verbs
# ("gear up").
DEFAULT_CTA_VERBS: tuple[str, ...] = (
    "shop",
    "discover",
    "explore",
    "browse",
    "find",
    "see",
    "get",
    "try",
    "brew",
    "gear up",
    "start",
    "meet",
    "treat",
    "build",
    "stock up",
    "pack",
    "refresh",
    "upgrade",
    "order",
    "add",
    "grab",
    "plan",
    "cook",
    "bake",
    "play",
    "listen",
    "read",
    "plant",
    "grow",
    "create",
    "make",
    "style",
    "wear",
    "dress",
    "layer",
    "train",
    "run",
    "ride",
    "walk",
    "pour",
    "sip",
    "taste",
    "light",
    "decorate",
    "furnish",
    "relax",
    "unwind",
    "care",
    "pamper",
    "fetch",
    "spoil",
    "equip",
    "outfit",
    "choose",
    "pick",
    "compare",
    "view",
    "learn",
    "join",
    "save",
    "collect",
    "celebrate",
    "gift",
    "camp",
    "hike",
    "travel",
    "paint",
    "draw",
    "fix",
    "clean",
    "organise",
    "organize",
    "sleep",
    "stay",
    "keep",
    "bring",
    "take",
    "set up",
    "load up",
    "warm up",
    "cool down",
    "dive in",
    "tune in",
    "level up",
    "step out",
    "head out",
    "suit up",
    "kit out",
    "refill",
    "restock",
    "cozy up",
    "cosy up",
    "freshen up",
    "go",
    "come",
    "visit",
    "check out",
    "love",
    "enjoy",
    "give",
)
# The verbs the grammar lets the model start a call to action with where a template names
# none: the general ones. With all of the above the model, wanting "Bags & Travel", wrote
# "Bake and Travel" (a listed verb close by its letters to what it meant), "Furnish", "Bring";
# a template for one kind of shop adds its own ("brew", "pack") with ``cta_verbs``. Not
# "meet" either: the model met categories with it ("Meet Kitchen & Cookware", "Meet Women").
GRAMMAR_CTA_VERBS: tuple[str, ...] = (
    "shop",
    "discover",
    "explore",
    "browse",
    "see",
    "find",
    "get",
    "try",
    "start",
    "view",
    "pick",
    "choose",
    "grab",
    "order",
    "plan",
    "learn",
    "join",
    "take",
    "treat",
    "gear up",
    "stock up",
    "check out",
)

# Tired phrases a brand's rules refuse by default (``banned_phrases``): the openers and fillers
# a small model repeats, and the marketing fluff a reader skips.
DEFAULT_BANNED_PHRASES: tuple[str, ...] = (
    "a new page in",
    "your morning",
    "elevate your",
    "look no further",
    "unleash",
    "next level",
    "game changer",
    "game-changer",
    "must-have",
    "the world of",
    "something for everyone",
    "in one place",
    "curated just for you",
    "step up your",
    "discover the magic",
    "like never before",
    "you deserve",
)

_WORD = re.compile(r"[\w'’]+(?:-[\w'’]+)*")
# Articles, pronouns, prepositions and the like: no content of their own.
_STOPWORDS = frozenset(
    "a an the and or but nor of for to with from by in on at as into onto over under up out "
    "off about through your you yours our ours we us my me i their they them its it this "
    "that these those there here is are was were be been being am do does did so too very "
    "just all any every each some more most much many no not only own same than then when "
    "while who whom which what where why how can will shall may might must would could "
    "should let lets let's it's you're we're they're you'll we'll one ones".split()
)
# Words every banner may say whatever it shows: they name nothing about the products.
_GENERIC = frozenset(
    "shop shopping store picks pick favourite favorite favourites favorites collection "
    "range essentials essential item items product products thing things stuff everything "
    "world page day days time times best great perfect ultimate style styles love need "
    "needs find discover explore new season right made choice choices selection line lines "
    "latest top go good nice lovely amazing beautiful wonderful awesome quality premium "
    "special week weekend today now moment life way ways look looks feel feeling treat "
    "treats idea ideas experience experiences upgrade favourite corner edit here".split()
)
# Leading words a bare heading may wear ("Shop Garden Tools", "Our garden tools").
_HEADING_PREFIXES = ("shop the", "shop our", "shop", "explore", "discover", "the", "our")

# Where a word that may be a noun or a verb ("light", "packs") is a verb: after a subject, a
# modal or "to" ("tapers that burn", "to brew"); before what a verb takes (a determiner, an
# object pronoun, a particle, an adverb: "Light the fire", "clip onto", "burn slowly").
_SUBJECTS = frozenset(
    "i you we they he she it this that these those which who everything each both one to "
    "will can could would should may might must shall also just still".split()
)
_DETERMINERS = frozenset(
    "the a an your our their its his her my this these those every each any most all some "
    "no".split()
)
_VERB_NEXT = _DETERMINERS | frozenset(
    "it them you us me up down out off away back together onto into through straight "
    "between across around".split()
)
# Verbs shop copy uses all the time that are seldom its nouns: verbs wherever no determiner
# or adjective stands before them ("A grinder and a kettle make better coffee").
_COMMON_VERBS = frozenset(
    "make makes keep keeps bring brings give gives help helps let lets take takes get gets "
    "turn turns go goes come comes hold holds meet meets suit suits stay stays add adds "
    "feel feels look looks".split()
)
# What follows a noun in a list rather than a verb ("zips, a hood"; "towels and balm").
_LIST_GLUE = frozenset([",", ";", ":", ".", "!", "?", "and", "or"])


def _stem(word: str) -> str:
    """A word's plain form for matching: case folded, possessive and plural cut
    ("tents" = "tent", "boxes" = "box", "berries" = "berry")."""
    word = word.casefold().replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    word = word.strip("'")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("ss", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words_of(text: str) -> list[str]:
    """The words of ``text``, case folded, "&" read as "and"."""
    return _WORD.findall(text.replace("&", " and ").casefold())


def _content(text: str) -> list[str]:
    """Stems of the words that carry meaning (no articles, pronouns, prepositions)."""
    return [_stem(w) for w in words_of(text) if w not in _STOPWORDS and not w.isdigit()]


def _readings(word: str) -> frozenset[str]:
    """The parts of speech an English word can be (lemminflect's lexicon: NOUN, VERB, AUX,
    ADJ, ...); empty for a word it does not know (a brand name)."""
    return frozenset(getAllLemmas(word.replace("’", "'")))


_TOKEN = re.compile(r"[\w'’]+(?:-[\w'’]+)*|[,;:.!?]")


def _takes_object(word: str) -> bool:
    """Whether ``word`` is what a verb is followed by: a determiner, a pronoun, a particle,
    an adverb in -ly, or a word that can only be an adjective ("stays readable")."""
    return word in _VERB_NEXT or word.endswith("ly") or _readings(word) == {"ADJ"}


def has_verb(text: str) -> bool:
    """Whether an English line has a verb, by the parts of speech its words can be
    (``_readings``) and where they stand.

    A word that can only be a verb ("survive", "chosen", "is") is one. A word that can also
    be a noun or an adjective ("light", "packs", "warm") is one after a subject, a modal or
    "to"; never right after a determiner or before a list's comma or "and"; where it opens
    the line or a clause, only before what a verb takes ("Light the fire", "Swim with"); else
    before what a verb takes, or as a verb's -s form after a singular noun ("the hamper packs
    plates") or its base form after a plural one ("long blades cut silk"). So a noun list
    ("Side zips, a pocket hood and a fibreglass frame") has none."""
    tokens = [t.replace("’", "'") for t in _TOKEN.findall(text.replace("&", " and ").casefold())]
    for i, word in enumerate(tokens):
        readings = _readings(word)
        if not readings & {"VERB", "AUX"}:
            continue
        if not readings - {"VERB", "AUX"}:
            return True
        before = tokens[i - 1] if i else ""
        after = tokens[i + 1] if i + 1 < len(tokens) else "."
        if before in _SUBJECTS:
            return True
        if before in _DETERMINERS or _readings(before) == {"ADJ"}:
            continue
        if word in _COMMON_VERBS:
            return True
        if after in _LIST_GLUE:
            continue
        if not before or before in _LIST_GLUE or before in ("with", "for", "in", "of"):
            if after == "with" or _takes_object(after):
                return True
            continue
        if _takes_object(after):
            return True
        nounish = "NOUN" in _readings(before) or not _readings(before)
        if nounish and word.endswith("s") != before.endswith("s"):
            return True
    return False


class Shown(Protocol):
    """What the rubric reads of a product a banner shows (``app.domain.Product`` has it)."""

    @property
    def title(self) -> str: ...

    @property
    def category(self) -> str: ...

    @property
    def description(self) -> str: ...


@dataclass(frozen=True)
class Finding:
    """One thing a marketer would not publish: which, in which field, and why in words."""

    name: FindingName
    field: str
    detail: str

    @property
    def hard(self) -> bool:
        return self.name in HARD

    def __str__(self) -> str:
        return f"{self.name}: {self.field}: {self.detail}"


@dataclass(frozen=True)
class RubricRules:
    """What one template and its brand rules ask of copy.

    ``cta_verbs``: what a call to action may start with (None: the English defaults for
    English copy, and no verb check for another language). ``banned_phrases``: the brand's
    tired phrases (None: ``DEFAULT_BANNED_PHRASES``; empty: none). ``english``: whether the
    copy is in English (the sentence check needs its lexicon)."""

    cta_verbs: tuple[str, ...] | None = None
    banned_phrases: tuple[str, ...] | None = None
    english: bool = True

    @property
    def verbs(self) -> tuple[str, ...]:
        """The verbs calls to action are held to; empty: none checked."""
        if self.cta_verbs is not None:
            return self.cta_verbs
        return DEFAULT_CTA_VERBS if self.english else ()

    @property
    def grammar_verbs(self) -> tuple[str, ...]:
        """The verbs the grammar lets a call to action start with (a subset of ``verbs``);
        empty: any word."""
        if self.cta_verbs is not None:
            return self.cta_verbs
        return GRAMMAR_CTA_VERBS if self.english else ()

    @property
    def phrases(self) -> tuple[str, ...]:
        return DEFAULT_BANNED_PHRASES if self.banned_phrases is None else self.banned_phrases


DEFAULT_RULES = RubricRules()


def restated(headline: str, subheadline: str) -> bool:
    """Whether the subheadline says the headline again: the same words once case,
    punctuation and "&"/"and" are ignored, the headline's words (two or more) word for word
    inside it, or most of its content words are the headline's."""
    said_words, again_words = words_of(headline), words_of(subheadline)
    if said_words == again_words:
        return True
    # The whole headline again inside the subheadline ("Bags & Travel" / "Bags & Travel (what
    # they looked at lately)"): the subheadline adds to it, but says it first.
    size = len(said_words)
    if size >= 2 and any(
        again_words[i : i + size] == said_words for i in range(len(again_words) - size + 1)
    ):
        return True
    said = set(_content(headline))
    again = set(_content(subheadline))
    if not again:  # "For you": nothing said twice, nothing said at all (the length check)
        return False
    return len(again & said) / len(again) >= RESTATED_SHARE


# A word glued to the next one by a missing space ("Coffee andTea", "Check out forFood"):
# two lower-case letters, then a capital that starts a word.
_GLUED = re.compile(r"\w*[a-z]{2,}[A-Z][a-z]\w*")
# Punctuation no sentence has: a space before a comma or stop, two commas, a closing comma,
# a hashtag ("Bearpaw Essentials, ,", "A great swim #Swim #Shop").
_STRAY = re.compile(r"\s[,;:.]|[,;:]\s*[,;:.]|[,;:]\s*$|#\w+|\w[-&](?=[\s,.!?]|$)")
# What a button never stops on ("Pick up the.", "Check out your"); "See all" and "Shop
# more" are whole.
_DANGLING = frozenset(
    "the a an your our their its his her my this these those every each and or of for to "
    "with in on at from by".split()
)
# Glue between two words a list or a name repeats ("Pets & Pets", "Podcasts, Podcasts").
_REPEAT_GLUE = frozenset([",", "&", "and", "or", "/"])
# Words English makes by doubling, which a doubled word is not otherwise.
_REDUPLICATED = frozenset(
    "bye-bye hush-hush so-so no-no yo-yo pom-pom tom-tom choo-choo tut-tut can-can "
    "goody-goody mahi-mahi night-night knock-knock".split()
)
_GLUE_TOKEN = re.compile(r"[\w'’]+(?:-[\w'’]+)*|[,&/]")


def garbled(text: str, field: str, facts: str = "", english: bool = True) -> str | None:
    """What makes ``text`` read as broken rather than written, if anything: glued or
    doubled words, stray punctuation, a call to action (``field`` "cta") that stops on an
    article or a preposition, or (``english``) a line of three or more words most of which
    are no English word and none of the products'. ``facts``: what the products say (their
    titles, categories and descriptions), whose names may double a word ("hori hori")."""
    facts = facts.casefold()
    known = set(words_of(facts))
    words = words_of(text)
    if (glued := _GLUED.search(text)) is not None:
        return f"glued words '{glued.group(0)}'"
    if (stray := _STRAY.search(text)) is not None:
        return f"stray punctuation '{stray.group(0).strip() or stray.group(0)}'"
    for word in words:
        # "and" with the next word run into it, no space ("Browse andbound", "Coffee andte").
        if word.startswith("and") and len(word) > 3 and word not in known and not _english(word):
            return f"glued words '{word}'"
    tokens = [t.casefold() for t in _GLUE_TOKEN.findall(text)]
    for token in tokens:
        # One word hyphenated to itself ("a lime-lime wax paste").
        parts = token.split("-")
        doubled = len(parts) > 1 and len(set(parts)) == 1
        if doubled and token not in _REDUPLICATED and token not in facts:
            return f"'{token}'"
    # The same two-word name twice in one line ("a nest box with a nest box"): a list that
    # ran out of products.
    names: set[tuple[str, str]] = set()
    for a, b in pairwise(tokens):
        if a in _STOPWORDS or b in _STOPWORDS or not {a, b}.isdisjoint(_REPEAT_GLUE):
            continue
        if (a, b) in names:
            return f"'{a} {b}' twice"
        names.add((a, b))
    for i in range(len(tokens) - 1):
        a, b = tokens[i], tokens[i + 1]
        if a == b and a not in _REPEAT_GLUE and not a.isdigit() and f"{a} {a}" not in facts:
            return f"'{a}' twice"
        repeated = i + 2 < len(tokens) and a == tokens[i + 2] != b
        if repeated and b in _REPEAT_GLUE and a not in _STOPWORDS:
            return f"'{a} {b} {a}'"
    if english and (foreign := _foreign_letter(text, facts)) is not None:
        return f"letters of another script '{foreign}'"
    if field == "cta" and len(words) > 1 and words[-1] in _DANGLING:
        return f"stops on '{words[-1]}'"
    if english and len(words) >= 3:
        unknown = [w for w in words if w not in _STOPWORDS and w not in known and not _english(w)]
        if len(unknown) >= 2 and len(unknown) * 2 > len(words):
            return f"no English words: {', '.join(unknown[:3])}"
    return None


def _foreign_letter(text: str, facts: str) -> str | None:
    """A letter of a script other than Latin in English copy that the products do not write
    ("Cat Tree, уебое"), if any."""
    for char in text:
        foreign = char.isalpha() and not char.isascii() and char.casefold() not in facts
        if foreign and not unicodedata.name(char, "").startswith("LATIN"):
            return char
    return None


def is_word(word: str) -> bool:
    """Whether ``word`` (lower case) is a whole English word, not the start of one."""
    return _english(word)


@lru_cache(maxsize=4096)
def _english(word: str) -> bool:
    """Whether the lexicon knows ``word``, its singular ("accessories"), or the two words it
    is made of ("sleepover", "skincare"): it lacks many a plural and compound."""
    if _readings(word) or _readings(_stem(word)):
        return True
    parts = word.split("-")
    if len(parts) > 1:
        return all(_english(part) for part in parts if part)
    return any(
        bool(_readings(word[:i])) and bool(_readings(word[i:]) or _readings(_stem(word[i:])))
        for i in range(3, len(word) - 2)
    )


def title_heading(headline: str, shown: Sequence[Shown]) -> str | None:
    """The shown product whose title (whole, or before its variant: "Trail Runner, Navy") the
    headline only repeats (None: the headline says something of its own)."""
    core = [_stem(w) for w in words_of(headline)]
    for product in shown:
        for title in (product.title, product.title.split(",")[0]):
            if len(core) >= 2 and core == [_stem(w) for w in words_of(title)]:
                return product.title
    return None


def _heading_core(headline: str) -> list[str]:
    words = words_of(headline)
    for prefix in _HEADING_PREFIXES:
        lead = prefix.split()
        if words[: len(lead)] == lead and len(words) > len(lead):
            words = words[len(lead) :]
            break
    return [_stem(w) for w in words]


def bare_heading(headline: str, names: Iterable[str]) -> str | None:
    """The theme or category name the headline is and nothing more (None: it says more)."""
    core = _heading_core(headline)
    for name in names:
        if name and core == [_stem(w) for w in words_of(name)]:
            return name
    return None


def starts_with_verb(cta: str, verbs: Sequence[str]) -> bool:
    words = words_of(cta)
    return any(words[: len(v.split())] == v.casefold().split() for v in verbs if v.strip())


@lru_cache(maxsize=32)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    cleaned = sorted({" ".join(words_of(p)) for p in phrases if words_of(p)}, key=len, reverse=True)
    if not cleaned:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(p) for p in cleaned) + r")\b")


def banned_phrase(text: str, phrases: tuple[str, ...]) -> str | None:
    """The first of ``phrases`` said in ``text`` (case, punctuation and "&" ignored)."""
    pattern = _phrase_pattern(phrases)
    hit = pattern.search(" ".join(words_of(text))) if pattern is not None else None
    return hit.group(0) if hit else None


def specific_words(
    headline: str, subheadline: str, shown: Sequence[Shown], names: Iterable[str]
) -> set[str]:
    """The copy's words that name something about the products shown (a noun, an attribute
    or a use from their titles or descriptions), beyond the theme's and categories' names
    and the words any banner says."""
    said = set(_content(f"{headline} {subheadline}")) - {_stem(w) for w in _GENERIC}
    for name in names:
        said -= set(_content(name))
    facts: set[str] = set()
    for product in shown:
        facts |= set(_content(f"{product.title} {product.description}"))
    return said & facts


def review(
    headline: str,
    subheadline: str,
    cta: str,
    shown: Sequence[Shown],
    *,
    theme: str | None = None,
    categories: Collection[str] = (),
    rules: RubricRules = DEFAULT_RULES,
) -> list[Finding]:
    """Every finding on a banner's copy, in the order of ``FINDINGS``.

    ``shown``: the products it shows; ``theme``: a themed banner's theme name; ``categories``:
    more category names a bare headline might be (the candidates'; the shown products' are
    always included)."""
    findings: list[Finding] = []
    names = [
        n for n in dict.fromkeys([theme or "", *categories, *(p.category for p in shown)]) if n
    ]
    if headline and subheadline and restated(headline, subheadline):
        findings.append(Finding("restated", "subheadline", "says the headline again"))
    facts = " ".join([*(f"{p.title} {p.category} {p.description}" for p in shown), *names])
    for field, value in (("headline", headline), ("subheadline", subheadline), ("cta", cta)):
        if value and (why := garbled(value, field, facts, rules.english)) is not None:
            findings.append(Finding("garbled", field, why))
    verbs = rules.verbs
    if verbs and cta and not starts_with_verb(cta, verbs):
        findings.append(Finding("weak_cta", "cta", f"'{cta}' does not start with an action verb"))
    for field, value in (("headline", headline), ("subheadline", subheadline), ("cta", cta)):
        phrase = banned_phrase(value, rules.phrases)
        if phrase is not None:
            findings.append(Finding("cliche", field, f"'{phrase}'"))
    if headline and (name := bare_heading(headline, names)) is not None:
        findings.append(Finding("bare_heading", "headline", f"only the name '{name}'"))
    elif headline and (title := title_heading(headline, shown)) is not None:
        findings.append(Finding("bare_heading", "headline", f"only the title '{title}'"))
    if subheadline:
        count = len(words_of(subheadline))
        if count < MIN_SENTENCE_WORDS:
            findings.append(Finding("not_a_sentence", "subheadline", f"{count} words"))
        elif rules.english and not has_verb(subheadline):
            findings.append(Finding("not_a_sentence", "subheadline", "no verb"))
    if shown and not specific_words(headline, subheadline, shown, names):
        findings.append(
            Finding("vague", "copy", "names nothing about the products shown beyond their category")
        )
    return findings
