"""Detectors of personal data in model output, and the pattern analysis streaming relies on.

Each :class:`PiiKind` has one :class:`Detector`: a precompiled regular expression that finds
*candidates* and a validator that accepts or rejects each one (Luhn and a major network's
first digit for card numbers, ISO 13616 mod-97 and the country's length for IBANs, the issued
ranges for US SSNs, a shape rule for phone numbers). The exact rules are in
``docs/output-guards.md``.

Every detector pattern has a bounded match length and bounded look-around, measured from the
parsed pattern by :func:`compile_detector`. That bound is what lets a stream decide, while text
is still arriving, which positions can no longer start a match, and so hold back only a short
tail. A pattern that could match text of any length (``.*``), the empty string, or that is
anchored to the start or end of the whole output (``^``, ``$``, ``\\A``, ``\\Z``) is refused.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # typeshed describes the parser under its old, deprecated name
    import sre_parse as _parser
else:  # the same module; importing ``sre_parse`` itself warns since Python 3.11
    _parser = importlib.import_module("re._parser")

#: Longest match a detector pattern may have; user patterns above it are refused.
MAX_PATTERN_WIDTH = 256
#: Most characters a detector's look-arounds may inspect beyond its match.
MAX_LOOKAROUND = 64

_ANCHORS = frozenset(
    {_parser.AT_BEGINNING, _parser.AT_BEGINNING_STRING, _parser.AT_END, _parser.AT_END_STRING}
)


class PiiKind(StrEnum):
    """A kind of personal data the output guard can redact."""

    EMAIL = "email"  #: an e-mail address
    PHONE = "phone"  #: a phone number, international (+CC) or with national separators
    CREDIT_CARD = "credit_card"  #: a payment card number of 13-19 digits passing Luhn
    IBAN = "iban"  #: an IBAN passing the ISO 13616 mod-97 check
    US_SSN = "us_ssn"  #: a US social security number AAA-GG-SSSS in the issued ranges


#: Accepts a candidate match: returns where the accepted span ends, or ``None`` to reject it.
Validator = Callable[[re.Match[str]], int | None]


@dataclass(frozen=True, slots=True)
class Detector:
    """One precompiled pattern with its validator and the bounds streaming needs.

    Attributes:
        kind: the name counted in ``redactions`` (a :class:`PiiKind` value or ``"blocked"``).
        pattern: finds candidates.
        validate: accepts a candidate (returning its end) or rejects it.
        width: the longest text a match can span.
        behind: how far before a match start the pattern may look.
        ahead: how far past a match end the pattern may look.
        tail: finds the run of characters a match may contain (the detector's alphabet) that
            ends a text, or ``None`` when any character may appear: a stream holds back a
            candidate only while that run is still open.
        priority: breaks ties when overlapping matches are merged into one redaction.
    """

    kind: str
    pattern: re.Pattern[str]
    validate: Validator
    width: int
    behind: int
    ahead: int
    tail: re.Pattern[str] | None
    priority: int


def _accept(match: re.Match[str]) -> int | None:
    return match.end()


def _subpatterns(value: Any) -> Iterator[_parser.SubPattern]:
    """Every sub-pattern nested directly in an opcode argument."""
    if isinstance(value, _parser.SubPattern):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subpatterns(item)


def _reach(sub: _parser.SubPattern) -> tuple[int, int]:
    """How far (behind, ahead) the look-arounds in ``sub`` may read past a match's ends.

    A look-around sits at a position inside the match, so each reaches at most its own width
    (plus what look-arounds nested in it reach) past the match start or end.

    Raises:
        ValueError: ``sub`` is anchored to the start or end of the whole text.
    """
    behind = ahead = 0
    for op, arg in sub.data:
        if op is _parser.AT:
            if cast(object, arg) in _ANCHORS:
                raise ValueError("anchors ^, $, \\A and \\Z are not allowed: use \\b instead")
            behind, ahead = max(behind, 1), max(ahead, 1)  # \b, \B, per-line ^ $ see 1 char
        elif op is _parser.ASSERT or op is _parser.ASSERT_NOT:
            direction, inner = cast(tuple[int, _parser.SubPattern], arg)
            inner_behind, inner_ahead = _reach(inner)
            width = inner.getwidth()[1]
            if direction < 0:
                behind, ahead = max(behind, width + inner_behind), max(ahead, inner_ahead)
            else:
                behind, ahead = max(behind, inner_behind), max(ahead, width + inner_ahead)
        else:
            for inner in _subpatterns(arg):
                inner_behind, inner_ahead = _reach(inner)
                behind, ahead = max(behind, inner_behind), max(ahead, inner_ahead)
    return behind, ahead


def compile_detector(
    kind: str,
    source: str,
    validate: Validator = _accept,
    *,
    flags: int = 0,
    alphabet: str | None = None,
    priority: int = 0,
    max_width: int = MAX_PATTERN_WIDTH,
) -> Detector:
    """Compile ``source`` and measure its bounds.

    ``alphabet``, when given, is the body of a character class (regex syntax, read with
    ``flags``) holding every character a match can contain; with it a stream holds back less.

    Raises:
        ValueError: the pattern is invalid, may match the empty string, has no bounded
            length within ``max_width``, looks around further than
            :data:`MAX_LOOKAROUND`, or is anchored to the start or end of the text.
    """
    try:
        pattern = re.compile(source, flags)
        parsed = _parser.parse(source, flags)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    shortest, longest = parsed.getwidth()
    if shortest == 0:
        raise ValueError("the pattern can match empty text: make every part required")
    if longest > max_width:
        raise ValueError(
            f"the pattern can match more than {max_width} characters: bound every "
            "repeat, e.g. {0,40} instead of * or +"
        )
    behind, ahead = _reach(parsed)
    if max(behind, ahead) > MAX_LOOKAROUND:
        raise ValueError(f"look-arounds may inspect at most {MAX_LOOKAROUND} characters")
    return Detector(
        kind=str(kind),
        pattern=pattern,
        validate=validate,
        width=longest,
        behind=behind,
        ahead=ahead,
        tail=None if alphabet is None else re.compile(f"[^{alphabet}][{alphabet}]*\\Z", flags),
        priority=priority,
    )


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII digits only) passes the Luhn check of card numbers."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


#: IBAN length per country (SWIFT IBAN registry); countries not listed are not detected.
IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """True when ``iban`` (no spaces) has its country's length and passes ISO 13616 mod-97."""
    if not iban.isascii() or not iban.isalnum() or len(iban) != IBAN_LENGTHS.get(iban[:2]):
        return False
    rearranged = (iban[4:] + iban[:4]).upper()
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """True unless the SSN parts fall in a range never issued (000, 666, 9xx; 00; 0000)."""
    return (
        area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


# --- validators -----------------------------------------------------------------------------

#: Major card networks (Mastercard 2/5, Amex, Diners and JCB 3, Visa 4, Discover, UnionPay and
#: Maestro 6) issue numbers starting with 2-6; this keeps e.g. 13-digit millisecond timestamps
#: (starting with 1) that happen to pass Luhn from being redacted.
_CARD_FIRST_DIGITS = frozenset("23456")


def _card(match: re.Match[str]) -> int | None:
    digits = match.group().replace(" ", "").replace("-", "")
    if digits[0] not in _CARD_FIRST_DIGITS:
        return None
    return match.end() if luhn_valid(digits) else None


def _ssn(match: re.Match[str]) -> int | None:
    area, group, serial = match.group(1, 2, 3)
    return match.end() if ssn_valid(area, group, serial) else None


def _iban(match: re.Match[str]) -> int | None:
    """Accept the first ``length`` characters of the candidate if they end a group."""
    text = match.group()
    length = IBAN_LENGTHS.get(text[:2])
    if length is None:
        return None
    seen = 0
    for index, char in enumerate(text):
        seen += char != " "
        if seen == length:
            end = index + 1
            if end < len(text) and text[end] != " ":
                return None  # the IBAN would end inside a group of the text
            return match.start() + end if iban_valid(text[:end].replace(" ", "")) else None
    return None


_DIGIT_RUN = re.compile(r"[0-9]+")
_PAREN_OK = re.compile(r"^[^()]*(?:\([0-9]{1,4}\)[^()]*)?$")
_NANP = ([3, 3, 4], [1, 3, 3, 4])
_PHONE_MIN_DIGITS = 8  # the fewest any phone rule accepts


def _phone_shape(text: str, groups: list[int], separators: list[str]) -> bool:
    """The phone rule for one candidate prefix, given its digit groups and the separators
    between them (the rules are listed in ``docs/output-guards.md``)."""
    if ("(" in text or ")" in text) and not _PAREN_OK.match(text):
        return False
    digits = sum(groups)
    if text[0] == "+":
        return 8 <= digits <= 15
    if len(groups) < 2:
        return False  # plain digit runs (ids, years, timestamps) are never phone numbers
    if groups in _NANP:
        return groups[0] != 1 or text[0] == "1"
    return _trunk_shape(text, groups, digits, separators)


def _trunk_shape(text: str, groups: list[int], digits: int, separators: list[str]) -> bool:
    """National numbers with a trunk prefix 0, e.g. ``030 1234567``, ``06 12 34 56 78``."""
    if text[0] != "0" or text[:2] == "00" or not 9 <= digits <= 12 or min(groups) < 2:
        return False
    if groups[:3] == [2, 2, 4]:
        return False  # a date, DD-MM-YYYY
    return len(set(separators)) == 1 and separators[0] in (" ", "-", ".")


def _phone(match: re.Match[str]) -> int | None:
    """Accept the longest prefix of the candidate, ending after a digit group, that fits."""
    text = match.group()
    groups = [len(run) for run in _DIGIT_RUN.findall(text)]
    if sum(groups) < _PHONE_MIN_DIGITS:
        return None
    gaps = _DIGIT_RUN.split(text)  # [before the first group, between groups..., after the last]
    ends = []
    end = len(gaps[0])
    for size, gap in zip(groups, gaps[1:], strict=True):
        end += size
        ends.append(end)
        end += len(gap)
    for count in range(len(groups), 0, -1):
        prefix_groups = groups[:count]
        if sum(prefix_groups) < _PHONE_MIN_DIGITS:
            break
        prefix = text[: ends[count - 1]]
        if _phone_shape(prefix, prefix_groups, gaps[1:count]):
            return match.start() + ends[count - 1]
    return None


# --- patterns -------------------------------------------------------------------------------
# A look-behind placed after the first character (``[0-9](?<!x[0-9])``) means the same as one
# before it, but lets the regex engine skip quickly to candidate first characters.

_EMAIL = (
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,63}"
    r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"
)
_PHONE = (
    r"(?<![0-9A-Za-z_+(.\-/])(?<![0-9][ .\-])(?:\+|\()?[0-9]"
    r"(?:[0-9]|[ .\-]\(?(?=[0-9])|\((?=[0-9])|\)[ .\-]?(?=[0-9])){5,24}"
    r"(?![0-9A-Za-z_]|[ .\-]\(?[0-9]|\([0-9]|\)[ .\-]?[0-9])"
)
_CARD = (
    r"[0-9](?<![0-9A-Za-z_][0-9])(?<![0-9][ \-][0-9])(?:[ \-]?[0-9]){12,18}"
    r"(?![0-9A-Za-z_]|[ \-][0-9])"
)
_IBAN = r"[A-Z](?<![0-9A-Za-z_][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]){11,30}(?![0-9A-Za-z_])"
_SSN = (
    r"([0-9](?<![0-9A-Za-z_\-][0-9])[0-9]{2})-([0-9]{2})-([0-9]{4})"
    r"(?![0-9A-Za-z_]|-[0-9])"
)

#: The detector of each kind; priorities order kinds when overlapping matches are merged.
PII_DETECTORS: Mapping[PiiKind, Detector] = {
    PiiKind.CREDIT_CARD: compile_detector(
        PiiKind.CREDIT_CARD, _CARD, _card, alphabet=r"0-9 \-", priority=5
    ),
    PiiKind.IBAN: compile_detector(PiiKind.IBAN, _IBAN, _iban, alphabet="A-Z0-9 ", priority=4),
    PiiKind.US_SSN: compile_detector(PiiKind.US_SSN, _SSN, _ssn, alphabet=r"0-9\-", priority=3),
    PiiKind.PHONE: compile_detector(
        PiiKind.PHONE, _PHONE, _phone, alphabet=r"0-9 .\-()+", priority=2
    ),
    PiiKind.EMAIL: compile_detector(
        PiiKind.EMAIL,
        _EMAIL,
        alphabet=r"A-Za-z0-9._%+\-@",
        priority=1,
        max_width=1024,  # 64 + @ + 8 labels; a stream holds back only the open run of these
    ),
}
