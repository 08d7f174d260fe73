"""Guards against false semantic-cache hits: prompts whose facts differ never share an answer.

Sentence embeddings place "How do I enable two-factor login?" and "How do I disable two-factor
login?" — or "refund of 50 EUR" and "refund of 500 EUR" — very close together, so a cosine
threshold alone serves one prompt the other's answer. :func:`features` pulls out the parts of a
prompt that change its meaning while barely moving its embedding, and :func:`compatible` lets a
cached answer through only when both prompts agree on all of them:

* **negations** — the number of negation cues: ``not``, ``no``, ``never``, ``none``, ``nobody``,
  ``nothing``, ``nowhere``, ``neither``/``nor`` (one cue), ``cannot``, every ``n't`` form (also
  typed without the apostrophe: ``dont``, ``doesnt``), ``without``, ``unable``, ``hardly``,
  ``barely``. The count, not its parity, must match: "no account and no card" is not positive.
* **numbers** — digits, decimals, thousands separators (``1,000`` = ``1000``), percentages
  (``50%`` = ``50 percent`` = ``fifty percent``), number words up to the billions (``twenty
  five`` = ``25``), ordinals (``3rd``), times (``10:30``), a currency symbol or a unit glued to
  the digits (``$5``, ``10gb``).
* **dates** — ISO dates, month names with a day and/or a year (``March 5, 2024`` = ``5 March
  2024`` = ``2024-03-05``), numeric dates (``03/05/2024``, kept as written: day and month order
  is ambiguous), standalone capitalised month names, weekdays, seasons, ``today``/``tonight``/
  ``tomorrow``/``yesterday``, ``this/next/last week`` and the like, and four-digit years
  1900-2099.
* **entities** — capitalised words not at the start of a sentence (runs of them make one entity:
  "New York"), a sentence-initial word that is not a common sentence opener ("Slack keeps
  crashing"), acronyms and words with inner capitals (``AWS``, ``iOS``), words mixing letters
  and digits (``S3``, ``gpt-4``), e-mail addresses and URLs, and quoted strings. An entity of one
  prompt must occur, case-insensitively, in the other: a paraphrase typed in lower case still
  matches, "France" never matches "Germany".
* **opposites** — a small lexicon of antonyms (enable/disable, upload/download, increase/
  decrease, before/after, ...): one prompt using one side and the other only the other side
  never match.

Limits (all on the safe side of a miss, except the last): a paraphrase that spells a number
differently ("a dozen", "2k"), names a date another way ("the first of March") or rewords a
negation ("I lack access" vs "I have no access") is a miss, not a false hit; ``one`` after
"which/the/each/no ..." is read as a pronoun; negative numbers need a leading ``-``. Antonyms
outside the lexicon, lower-case entities in both prompts ("python" vs "java"), and changes of
meaning the features do not cover (roles, comparatives, word order: "A to B" vs "B to A") are
left to the threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

__all__ = ["PromptFeatures", "compatible", "features"]


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """What of a prompt must agree with another prompt's for the two to share an answer."""

    negations: int = 0
    """Negation cues found (``neither ... nor`` counts once)."""
    numbers: frozenset[str] = field(default_factory=frozenset)
    """Canonical numbers: ``"25"``, ``"3.5"``, ``"50%"``, ``"$5"``, ``"10gb"``, ``"10:30"``."""
    dates: frozenset[str] = field(default_factory=frozenset)
    """Canonical dates: ``"2024-03-05"``, ``"--03-05"``, ``"2024-03"``, ``"2024"``,
    ``"monday"``, ``"today"``, ``"next week"``."""
    entities: frozenset[str] = field(default_factory=frozenset)
    """Named entities, acronyms, identifiers and quoted strings, normalised (lower case, words
    separated by one space)."""
    opposites: frozenset[str] = field(default_factory=frozenset)
    """Antonym-lexicon words found, as ``"pair:side"``."""
    normalized: str = ""
    """The prompt in lower case with punctuation as spaces, for entity look-ups."""


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_NORMALISE = re.compile(r"[\W_]+")


def _split(words: str) -> list[str]:
    return words.split()


# -- negation ---------------------------------------------------------------------------------

_NEGATION_WORDS = frozenset(
    _split(
        "not no never none nobody nothing nowhere neither cannot without unable hardly barely "
        "scarcely dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt shouldnt "
        "havent hasnt hadnt aint mustnt neednt"
    )
)


def _negations(words: list[str]) -> int:
    count = 0
    neither = False
    for word in words:
        if word == "neither":
            neither = True
        if word == "nor" and neither:
            continue  # neither ... nor: one cue
        if word in _NEGATION_WORDS or word == "nor" or word.endswith("n't"):
            count += 1
    return count


# -- dates ------------------------------------------------------------------------------------

_MONTHS = {
    name: index
    for index, names in enumerate(
        (
            "january jan",
            "february feb",
            "march mar",
            "april apr",
            "may",
            "june jun",
            "july jul",
            "august aug",
            "september sep sept",
            "october oct",
            "november nov",
            "december dec",
        ),
        start=1,
    )
    for name in names.split()
}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_DATE_PATTERNS = (
    re.compile(r"\b(?P<year>\d{4})-(?P<month>\d\d)-(?P<day>\d\d)\b"),
    re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?:,?\s+{_YEAR}\b)?", re.IGNORECASE),
    re.compile(rf"\b{_DAY}(?:\s+of)?\s+{_MONTH}\b(?:,?\s+{_YEAR}\b)?", re.IGNORECASE),
    re.compile(rf"\b{_MONTH}\s+{_YEAR}\b", re.IGNORECASE),
)
_NUMERIC_DATE = re.compile(r"\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b")
_STANDALONE_MONTH = re.compile(
    r"\b(January|February|March|April|June|July|August|September|October|November|December)\b"
    r"|\b(?:in|of|during|since|until|till|by|before|after|last|next|this|early|late|mid)"
    r"[\s-]+(May)\b"
)
_RELATIVE = re.compile(
    r"\b(today|tonight|tomorrow|yesterday|(?:(?:this|next|last|past|previous|coming)\s+"
    r"(?:week|weekend|month|quarter|year|monday|tuesday|wednesday|thursday|friday|saturday|"
    r"sunday)))\b",
    re.IGNORECASE,
)
_SEASON = re.compile(r"\b(spring|summer|autumn|winter)s?\b", re.IGNORECASE)
_WEEKDAY = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b", re.IGNORECASE
)
_BARE_YEAR = re.compile(r"(?<![\d,.:/$€£-])\b((?:19|20)\d\d)\b(?![\d%,.:/]\d)")


def _month_number(text: str) -> int:
    return int(text) if text.isdigit() else _MONTHS[text.lower().rstrip(".")]


def _canonical_date(match: re.Match[str]) -> str:
    groups = match.groupdict()
    month = _month_number(groups["month"])
    year = groups.get("year")
    day = groups.get("day")
    if day is None:
        return f"{year}-{month:02d}"
    return f"{year or '-'}-{month:02d}-{int(day):02d}"


def _mask(text: str, match: re.Match[str]) -> str:
    start, end = match.span()
    return text[:start] + " " * (end - start) + text[end:]


def _dates(text: str) -> tuple[set[str], str]:
    """Dates found, and the text with them blanked out (their digits are not numbers)."""
    found: set[str] = set()
    for pattern in _DATE_PATTERNS:
        for match in list(pattern.finditer(text)):
            found.add(_canonical_date(match))
            text = _mask(text, match)
    simple: tuple[tuple[re.Pattern[str], int], ...] = (
        (_NUMERIC_DATE, 0),
        (_RELATIVE, 1),
        (_WEEKDAY, 1),
        (_SEASON, 1),
        (_STANDALONE_MONTH, 0),
        (_BARE_YEAR, 1),
    )
    for pattern, group in simple:
        for match in list(pattern.finditer(text)):
            value = match.group(group) if group else match.group(1) or match.group(2)
            if pattern is _NUMERIC_DATE:
                value = match.group(0)
            elif pattern is _STANDALONE_MONTH:
                value = f"--{_month_number(value):02d}"
            found.add(re.sub(r"\s+", " ", value.lower()))
            text = _mask(text, match)
    return found, text


# -- numbers ----------------------------------------------------------------------------------

_UNITS = {
    word: value
    for value, word in enumerate(
        _split(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen"
        )
    )
}
_TENS = {
    word: 10 * value
    for value, word in enumerate(
        _split("_ _ twenty thirty forty fifty sixty seventy eighty ninety")
    )
    if word != "_"
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_PRONOUN_ONE = frozenset(
    _split(
        "which the this that each any every no some another last next only new old right wrong "
        "same every"
    )
)
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?(?P<currency>[$€£¥])?"
    r"(?P<value>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<time>:\d\d)?(?P<suffix>%|[a-zA-Z]+\b)?"
    r"(?P<percent>\s*(?:percent|per\s+cent)\b)?"
)
_ORDINAL = frozenset({"st", "nd", "rd", "th"})


def _canonical_number(text: str) -> str:
    try:
        value = Decimal(text.replace(",", "")).normalize()
    except InvalidOperation:  # pragma: no cover - the pattern only admits digits
        return text
    return format(value, "f")


def _digit_numbers(text: str) -> set[str]:
    found: set[str] = set()
    for match in _NUMBER.finditer(text):
        value = _canonical_number(match["value"])
        if match["time"]:
            value = f"{int(value)}{match['time']}"
        suffix = (match["suffix"] or "").lower()
        if match["percent"] or suffix == "%":
            suffix = "%"
        elif suffix in _ORDINAL:
            suffix = ""
        found.add(f"{match['sign'] or ''}{match['currency'] or ''}{value}{suffix}")
    return found


def _word_numbers(words: list[str]) -> set[str]:
    """Numbers spelled out: runs like ``two hundred and fifty`` become ``250``."""
    found: set[str] = set()
    total = current = 0
    in_number = False
    previous = ""
    for word in [*words, ""]:
        if word in _UNITS or word in _TENS:
            if word == "one" and not in_number and previous in _PRONOUN_ONE:
                previous = word
                continue
            current += _UNITS.get(word, 0) + _TENS.get(word, 0)
            in_number = True
        elif word in _SCALES and (in_number or previous in {"a", "one"}):
            scale = _SCALES[word]
            current = max(current, 1) * scale
            if scale >= 1000:
                total, current = total + current, 0
            in_number = True
        elif word == "and" and in_number:
            pass
        elif in_number:
            value = str(total + current)
            found.add(value + "%" if word in {"percent", "%"} else value)
            total = current = 0
            in_number = False
        previous = word
    return found


# -- entities ---------------------------------------------------------------------------------

_OPENERS = frozenset(
    _split(
        "a an the i i'm i've i'd i'll my me we our us you your it its it's this that these those "
        "there here he she they them their his her what what's whats why when where who whom "
        "whose which how how's can could would should will shall may might must do does did is "
        "are was were be been am have has had if in on at for from to by with of about after "
        "before since during as so but and or yet please hi hello hey thanks thank ok okay yes no "
        "not also just any all some every each many much more most other another such only then "
        "now still even again is there tell explain show give list help make let find get set use "
        "describe compare summarize summarise write create add remove delete update change check "
        "send need want suggest recommend translate convert calculate define name is there "
        "where's who's say draft generate provide"
    )
)
_QUOTED = re.compile(r'"([^"\n]{1,200})"|`([^`\n]{1,200})`|(?<!\w)\'([^\'\n]{1,200})\'(?!\w)')
_IDENTIFIER = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|https?://\S+|\b[\w.-]*[A-Za-z][\w.-]*\d[\w.-]*\b"
    r"|\b[\w.-]*\d[\w.-]*[A-Za-z][\w.-]*\b"
)
_POSSESSIVE = re.compile(r"'s$")


def _normalise(text: str) -> str:
    return " ".join(_NORMALISE.sub(" ", text.lower()).split())


def _is_named(word: str, sentence_start: bool) -> bool:
    if word[0].isupper() and any(c.isupper() for c in word[1:]):
        return len(word) > 1  # acronym or inner capital: AWS, iOS, PostgreSQL
    if any(c.isupper() for c in word[1:]) and word[0].islower():
        return True
    if not word[0].isupper() or word == "I":
        return False
    return not sentence_start or word.lower() not in _OPENERS


def _sentence_start(text: str, position: int) -> bool:
    """Whether a word at ``position`` opens a sentence (or a line); looks back a little only,
    so long prompts stay linear."""
    tail = text[max(0, position - 64) : position]
    stripped = tail.rstrip()
    if not stripped:
        return True
    return stripped[-1] in ".!?:;" or "\n" in tail[len(stripped) :]


def _named_entities(text: str) -> set[str]:
    found: set[str] = set()
    run: list[str] = []
    run_end = -1
    for match in _WORD.finditer(text):
        word = _POSSESSIVE.sub("", match.group(0))
        possessive = word != match.group(0)
        start = _sentence_start(text, match.start())
        if run and (match.start() != run_end + 1 or text[run_end] != " "):
            found.add(" ".join(run))  # a run of capitalised words ends at anything but a space
            run = []
        if word[0].isalpha() and _is_named(word, start):
            run.append(word)
            run_end = -2 if possessive else match.end()  # "Japan's GDP": two entities
        elif run:
            found.add(" ".join(run))
            run = []
    if run:
        found.add(" ".join(run))
    return found


def _entities(text: str) -> set[str]:
    found = _named_entities(text)
    for match in _QUOTED.finditer(text):
        found.add(next(group for group in match.groups() if group))
    found.update(match.group(0) for match in _IDENTIFIER.finditer(text))
    normalised = {_normalise(entity) for entity in found}
    return {entity for entity in normalised if entity and not _only_numbers(entity)}


def _only_numbers(entity: str) -> bool:
    return all(_NUMBER.fullmatch(part) for part in entity.split())


# -- opposites --------------------------------------------------------------------------------

_ANTONYMS = (
    ("enable enabled enabling activate activated", "disable disabled disabling deactivate"),
    ("increase increased increasing raise", "decrease decreased decreasing reduce lower"),
    ("upload uploaded uploading", "download downloaded downloading"),
    ("import imported importing", "export exported exporting"),
    ("add added adding", "remove removed removing delete deleted deleting"),
    ("install installed installing", "uninstall uninstalled uninstalling"),
    ("upgrade upgraded upgrading", "downgrade downgraded downgrading"),
    ("encrypt encrypted encrypting", "decrypt decrypted decrypting"),
    ("lock locked locking", "unlock unlocked unlocking"),
    ("subscribe subscribed", "unsubscribe unsubscribed"),
    ("connect connected connecting", "disconnect disconnected disconnecting"),
    ("login log-in signin sign-in", "logout log-out signout sign-out"),
    ("show showing shown", "hide hiding hidden"),
    ("allow allowed allowing", "block blocked blocking deny denied"),
    ("include included including", "exclude excluded excluding"),
    ("accept accepted", "reject rejected decline declined"),
    ("start started starting", "stop stopped stopping"),
    ("open opened opening", "close closed closing"),
    ("buy bought buying purchase", "sell sold selling"),
    ("send sent sending", "receive received receiving"),
    ("before", "after"),
    ("maximum max largest biggest highest", "minimum min smallest lowest"),
    ("more", "less fewer"),
    ("faster quicker", "slower"),
    ("cheapest cheaper", "expensive pricier"),
    ("first", "last"),
    ("public", "private"),
    ("input", "output"),
    ("inbound incoming", "outbound outgoing"),
    ("pros advantages benefits", "cons disadvantages drawbacks"),
    ("hot warm", "cold cool"),
    ("success successful succeeded", "failure failed failing fails"),
    ("online", "offline"),
    ("same", "different"),
    ("good better best", "bad worse worst"),
    ("ascending", "descending"),
    ("early earlier", "late later"),
    ("join joined joining", "leave left leaving"),
    ("mute muted", "unmute unmuted"),
    ("true", "false"),
    ("light", "dark"),
)
_OPPOSITE_OF = {
    word: f"{pair}:{side}"
    for pair, sides in enumerate(_ANTONYMS)
    for side, words in enumerate(sides)
    for word in words.split()
}


def _opposites(words: list[str]) -> set[str]:
    return {_OPPOSITE_OF[word] for word in words if word in _OPPOSITE_OF}


# -- public -----------------------------------------------------------------------------------


def features(text: str) -> PromptFeatures:
    """The negations, numbers, dates, entities and antonyms of one prompt.

    Args:
        text: The prompt as it will be embedded.

    Returns:
        Its features; :func:`compatible` compares two of them.
    """
    text = text.translate(_APOSTROPHES)
    dates, rest = _dates(text)
    words = [w.lower() for w in _WORD.findall(text)]
    rest_words = [w.lower() for w in _WORD.findall(rest)]
    numbers = _digit_numbers(rest) | _word_numbers(rest_words)
    return PromptFeatures(
        negations=_negations(words),
        numbers=frozenset(numbers),
        dates=frozenset(dates),
        entities=frozenset(_entities(rest)),
        opposites=frozenset(_opposites(words)),
        normalized=_normalise(text),
    )


def _mentions(text: str, entities: frozenset[str]) -> bool:
    padded = f" {text} "
    return all(f" {entity} " in padded for entity in entities)


def _opposed(a: frozenset[str], b: frozenset[str]) -> bool:
    """One prompt uses a side of an antonym pair and the other only its other side."""
    pairs = {item.split(":")[0] for item in a} & {item.split(":")[0] for item in b}
    for pair in pairs:
        sides_a = {item for item in a if item.startswith(f"{pair}:")}
        sides_b = {item for item in b if item.startswith(f"{pair}:")}
        if not sides_a & sides_b:
            return True
    return False


def compatible(a: PromptFeatures, b: PromptFeatures) -> bool:
    """Whether two prompts may share an answer as far as their features tell.

    True when both carry the same number of negations, the same numbers and dates, each names
    every entity of the other, and neither uses an antonym of a word only the other uses.
    """
    return (
        a.negations == b.negations
        and a.numbers == b.numbers
        and a.dates == b.dates
        and _mentions(b.normalized, a.entities)
        and _mentions(a.normalized, b.entities)
        and not _opposed(a.opposites, b.opposites)
    )
