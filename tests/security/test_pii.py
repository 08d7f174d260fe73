from __future__ import annotations

import re

import pytest

from modelhost.security.guards import OutputGuard, OutputGuardConfig
from modelhost.security.pii import (
    IBAN_LENGTHS,
    MAX_PATTERN_WIDTH,
    PII_DETECTORS,
    PiiKind,
    compile_detector,
    iban_valid,
    luhn_valid,
    ssn_valid,
)


def _with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it pass Luhn."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def _redact(kind: PiiKind, text: str) -> str:
    return OutputGuard(OutputGuardConfig(redact=[kind])).apply(text).text


def _assert_redacted(kind: PiiKind, value: str) -> None:
    text = f"Details: {value}, thanks."
    assert _redact(kind, text) == f"Details: [REDACTED:{kind.value}], thanks."


def _assert_kept(kind: PiiKind, text: str) -> None:
    assert _redact(kind, text) == text


# --- e-mail ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "john.doe@example.com",
        "a+tag@sub.example.co.uk",
        "x_y%z@mail-server.io",
        "OBrien@example.ie",
        "first.last-2@a.b.c.example.museum",
    ],
)
def test_email_is_redacted(value: str) -> None:
    _assert_redacted(PiiKind.EMAIL, value)


def test_email_keeps_the_sentence_punctuation() -> None:
    text = "Write to <ann@example.com>. Or to bob@example.org."
    assert _redact(PiiKind.EMAIL, text) == ("Write to <[REDACTED:email]>. Or to [REDACTED:email].")


@pytest.mark.parametrize(
    "text",
    [
        "user@localhost is not routable",
        "follow @handle on the site",
        "send it to john@ later",
        "john at example dot com",
        "pinned version@2.0 of the lib",
        "a @ b . com",
    ],
)
def test_email_hard_negatives(text: str) -> None:
    _assert_kept(PiiKind.EMAIL, text)


# --- phone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "+1 415 555 2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+49-30-1234567",
        "+33 6 12 34 56 78",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "555 123 4567",
        "1-800-555-1234",
        "030 12345678",
        "06 12 34 56 78",
        "020 7946 0958",
    ],
)
def test_phone_is_redacted(value: str) -> None:
    _assert_redacted(PiiKind.PHONE, value)


@pytest.mark.parametrize(
    "text",
    [
        "order 4155552671 shipped",  # a plain digit run is an id, not a phone number
        "founded in 2024, rebuilt 1999-2024",
        "released 2024-01-15 at 12:30",
        "version 1.2.3 and build 10.0.19041.1234",
        "the host 192.168.100.200 answered",
        "on 05-06-2024 10 people came",
        "ticket ORD-555-123-4567 closed",
        "SSN-shaped 123-45-6789 is not a phone",
        "card 4111 1111 1111 1111 is not a phone",
        "scores 0.123456 0.234567 0.345678",
        "short +12 345",
        "coordinates 48.8566, 2.3522",
        "price $1,234,567.00",
    ],
)
def test_phone_hard_negatives(text: str) -> None:
    _assert_kept(PiiKind.PHONE, text)


def test_phone_ends_at_the_last_group_that_fits() -> None:
    assert _redact(PiiKind.PHONE, "call 555-123-4567 24 hours") == (
        "call [REDACTED:phone] 24 hours"
    )


# --- credit card ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "3782 822463 10005",
        "5555555555554444",
        "6011111111111117",
        "4222222222222",
        _with_check_digit("622126000000000000"),  # 19 digits
    ],
)
def test_card_is_redacted(value: str) -> None:
    _assert_redacted(PiiKind.CREDIT_CARD, value)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",
        "1234567890123456",
        "411111111111",  # 12 digits
        _with_check_digit("4111111111111111111"),  # 20 digits
        _with_check_digit("170000000000"),  # a millisecond timestamp passing Luhn
        "x4111111111111111",
        "4111111111111111abc",
        "4111  1111  1111  1111",  # double spaces split it into short numbers
    ],
)
def test_card_hard_negatives(text: str) -> None:
    _assert_kept(PiiKind.CREDIT_CARD, f"ref {text} end")


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("4111111111111112")


def test_random_sixteen_digit_numbers_that_fail_luhn_are_kept() -> None:
    failing = [n for n in (f"4{i:015d}" for i in range(3_000_000, 3_000_050)) if not luhn_valid(n)]
    assert len(failing) == 45
    text = " ".join(failing)
    assert _redact(PiiKind.CREDIT_CARD, text) == text


# --- IBAN -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "BE68539007547034",
        "CH9300762011623852957",
        "NO9386011117947",
    ],
)
def test_iban_is_redacted(value: str) -> None:
    _assert_redacted(PiiKind.IBAN, value)


@pytest.mark.parametrize(
    "text",
    [
        "DE88 3704 0044 0532 0130 00",  # check digits wrong
        "GB82 WEST 1234 5698 7654 33",  # one character changed
        "DE89 3704 0044 0532 0130",  # too short for DE
        "XX89370400440532013000",  # no such country
        "DE89370400440532013000ABC",  # glued to more characters
        "ISO 9001 CERTIFIED SINCE 2019",
    ],
)
def test_iban_hard_negatives(text: str) -> None:
    _assert_kept(PiiKind.IBAN, f"ref {text} end")


def test_iban_followed_by_more_groups_is_cut_at_its_length() -> None:
    text = "pay DE89 3704 0044 0532 0130 00 12 EUR"
    assert _redact(PiiKind.IBAN, text) == "pay [REDACTED:iban] 12 EUR"


def test_iban_check() -> None:
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234569876543")
    assert not iban_valid("GB82-WEST12345698765432")
    assert IBAN_LENGTHS["DE"] == 22


# --- US SSN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["123-45-6789", "078-05-1120", "899-99-9999"])
def test_ssn_is_redacted(value: str) -> None:
    _assert_redacted(PiiKind.US_SSN, value)


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "987-65-4321",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "123 45 6789",
        "1123-45-6789",
        "123-45-67890",
        "ID-123-45-6789",
    ],
)
def test_ssn_hard_negatives(text: str) -> None:
    _assert_kept(PiiKind.US_SSN, f"ref {text} end")


def test_ssn_ranges() -> None:
    assert ssn_valid("123", "45", "6789")
    assert not ssn_valid("666", "45", "6789")
    assert not ssn_valid("912", "45", "6789")


# --- everything at once ---------------------------------------------------------------------

HARD_NEGATIVES = (
    "Release 2.14.3 shipped on 2024-06-11 at 17:30 (build 10.0.19041.1234) to 192.168.0.12. "
    "Order 1048576 cost $1,234.56; invoice INV-2024-000123; ISBN 978-3-16-148410-0. "
    "UUID 123e4567-e89b-12d3-a456-426614174000, sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b. "
    "Timestamp 1700000000000, pi 3.14159265358979, ratio 16:9, 4111 1111 1111 1112. "
    "Call @support or visit example.com/contact?id=5551234567."
)


def test_ordinary_numbers_survive_every_detector() -> None:
    assert OutputGuard(OutputGuardConfig()).apply(HARD_NEGATIVES).text == HARD_NEGATIVES


# --- pattern analysis -----------------------------------------------------------------------


def test_builtin_detectors_are_bounded() -> None:
    for kind in PiiKind:
        detector = PII_DETECTORS[kind]
        assert detector.kind == kind.value
        assert 0 < detector.width <= 1024
        assert detector.tail is not None


def test_compile_detector_measures_bounds() -> None:
    detector = compile_detector("blocked", r"(?<=ab)c{2,5}(?=d{3})\b")
    assert (detector.width, detector.behind, detector.ahead) == (5, 2, 3)
    assert detector.tail is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (r"secret.*", "more than 256"),
        (r"a+", "more than 256"),
        (r"a?", "empty text"),
        (r"^secret", "anchors"),
        (r"secret$", "anchors"),
        (r"\Asecret", "anchors"),
        (r"(", "not a valid regular expression"),
        (r"(?<=a{70})b", "look-arounds"),
    ],
)
def test_compile_detector_refuses(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_detector("blocked", source)


def test_compile_detector_accepts_the_widest_allowed() -> None:
    detector = compile_detector("blocked", f"x{{1,{MAX_PATTERN_WIDTH}}}")
    assert detector.width == MAX_PATTERN_WIDTH
