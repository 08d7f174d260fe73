from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from modelhost.errors import ModelhostError, RequestError, ServiceError
from modelhost.inference import Usage
from modelhost.runtimes.base import StreamChunk
from modelhost.security.guards import (
    BLOCKED,
    ContentBlocked,
    GuardResult,
    OnBlocked,
    OutputGuard,
    OutputGuardConfig,
    StreamRedactor,
    merge_counts,
)
from modelhost.security.pii import PiiKind

VALUES = {
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    "credit_card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "us_ssn": "123-45-6789",
}
MIXED = (
    f"Mail {VALUES['email']} or call {VALUES['phone']}. Card {VALUES['credit_card']}, "
    f"IBAN {VALUES['iban']}, SSN {VALUES['us_ssn']}."
)
TERMS = ["project falcon", "secret"]
PATTERNS = [r"ACME-[0-9]{4,6}", r"(?i)\bcode\s?red\b"]


def _guard(**options: object) -> OutputGuard:
    return OutputGuard(OutputGuardConfig.model_validate(options))


def _stream(guard: OutputGuard, pieces: list[str]) -> tuple[str, StreamRedactor]:
    redactor = guard.stream()
    out = [redactor.feed(piece) for piece in pieces]
    out.append(redactor.finish())
    return "".join(out), redactor


def _cut(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# --- configuration --------------------------------------------------------------------------


def test_default_config_redacts_every_kind_and_blocks() -> None:
    config = OutputGuardConfig()
    assert config.redact == list(PiiKind)
    assert config.replacement == "[REDACTED:{kind}]"
    assert config.on_blocked is OnBlocked.BLOCK
    assert config.active
    assert not OutputGuardConfig(redact=[]).active


def test_config_documents_every_field() -> None:
    for name, info in OutputGuardConfig.model_fields.items():
        assert info.description, name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"redact": ["passport"]}, "redact"),
        ({"replacement": "[{value}]"}, "only placeholder"),
        ({"replacement": "[{kind"}, "only placeholder"),
        ({"blocked_terms": ["  "]}, "item 0 is empty"),
        ({"blocked_patterns": ["ok", "secret.*"]}, "item 1 ('secret.*')"),
        ({"blocked_patterns": ["^secret"]}, "anchors"),
        ({"blocked_patterns": ["("]}, "not a valid regular expression"),
        ({"on_blocked": "warn"}, "on_blocked"),
        ({"redcat": ["email"]}, "redcat"),
    ],
)
def test_config_refuses_with_a_message(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        OutputGuardConfig.model_validate(options)


# --- whole texts ----------------------------------------------------------------------------


def test_apply_redacts_every_kind_and_counts_them() -> None:
    result = _guard().apply(MIXED)
    assert result == GuardResult(
        "Mail [REDACTED:email] or call [REDACTED:phone]. Card [REDACTED:credit_card], "
        "IBAN [REDACTED:iban], SSN [REDACTED:us_ssn].",
        {kind: 1 for kind in VALUES},
        blocked=False,
    )


def test_the_result_never_contains_a_value() -> None:
    result = _guard().apply(MIXED + " " + MIXED)
    assert result.redactions == {kind: 2 for kind in VALUES}
    for value in VALUES.values():
        for form in (value, value.replace(" ", ""), value.replace(" ", "").replace("-", "")):
            assert form not in repr(result)
            assert form not in str(result.redactions)


def test_only_the_configured_kinds_are_redacted() -> None:
    result = _guard(redact=["email", "us_ssn"]).apply(MIXED)
    assert result.redactions == {"email": 1, "us_ssn": 1}
    assert VALUES["credit_card"] in result.text
    assert VALUES["email"] not in result.text


def test_replacement_template() -> None:
    guard = _guard(replacement="<{kind} removed> {{x}}")
    assert guard.apply("write to a@example.com").text == "write to <email removed> {x}"
    assert _guard(replacement="***").apply("write to a@example.com").text == "write to ***"


def test_inactive_guard_returns_the_text() -> None:
    assert _guard(redact=[]).apply(MIXED) == GuardResult(MIXED)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"call \+[0-9]{2}", "please [REDACTED:phone] now"),  # the longer match names it
        (r"8 now", "please call [REDACTED:phone]"),  # one character in common is enough
        (r"please call \+44 20", "[REDACTED:blocked] now"),
    ],
)
def test_overlapping_matches_are_one_redaction(pattern: str, expected: str) -> None:
    guard = _guard(blocked_patterns=[pattern], on_blocked="redact")
    text = f"please call {VALUES['phone']} now"
    result = guard.apply(text)
    assert result.text == expected
    assert sum(result.redactions.values()) == 1
    assert _stream(guard, list(text))[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "Project Falcon starts",
        "about PROJECT FALCON.",
        "the project\nfalcon",
        "the project  falcon",
        "it's a SECRET",
        "the \u017fecret",  # long s: the same letter as s for case-insensitive matching
        "secret's",
        "code red!",
        "CodeRed now",
        "id ACME-12345.",
    ],
)
def test_blocked_content_is_found(text: str) -> None:
    redacting = _guard(blocked_terms=TERMS, blocked_patterns=PATTERNS, on_blocked="redact")
    result = redacting.apply(text)
    assert result.redactions == {BLOCKED: 1}
    assert "[REDACTED:blocked]" in result.text
    blocking = _guard(blocked_terms=TERMS, blocked_patterns=PATTERNS)
    assert blocking.apply(text) == GuardResult("", {}, blocked=True)


@pytest.mark.parametrize(
    "text",
    [
        "secretary and secrets",
        "projects falcon",
        "project falconry",
        "acme-12345 is lower case",
        "ACME-123 is too short",
        "barcode redirect",
    ],
)
def test_blocked_content_is_whole_words_only(text: str) -> None:
    guard = _guard(blocked_terms=TERMS, blocked_patterns=PATTERNS)
    assert guard.apply(text) == GuardResult(text)


def test_blocked_output_withholds_everything() -> None:
    result = _guard(blocked_terms=TERMS).apply(f"{MIXED} The secret is out.")
    assert result == GuardResult("", {}, blocked=True)


# --- JSON results ---------------------------------------------------------------------------


def test_apply_json_guards_every_string_and_keeps_the_rest() -> None:
    value = {
        "text": f"mail {VALUES['email']}",
        "score": 0.93,
        "tokens": 4111111111111111,
        "ok": True,
        "none": None,
        "choices": [{"text": VALUES["us_ssn"]}, (VALUES["email"], 3)],
        VALUES["email"]: "keys are kept",
    }
    result = _guard().apply_json(value)
    assert result.value == {
        "text": "mail [REDACTED:email]",
        "score": 0.93,
        "tokens": 4111111111111111,
        "ok": True,
        "none": None,
        "choices": [{"text": "[REDACTED:us_ssn]"}, ["[REDACTED:email]", 3]],
        VALUES["email"]: "keys are kept",
    }
    assert result.redactions == {"email": 2, "us_ssn": 1}
    assert not result.blocked
    assert value["text"] == f"mail {VALUES['email']}"  # the input is not changed


def test_apply_json_blocks_the_whole_value() -> None:
    guard = _guard(blocked_terms=TERMS)
    result = guard.apply_json([{"text": "fine"}, {"text": "the secret"}])
    assert (result.value, result.redactions, result.blocked) == (None, {}, True)
    with pytest.raises(ContentBlocked) as caught:
        guard.enforce([{"text": "fine"}, {"text": "the secret"}])
    assert "secret" not in caught.value.message
    assert guard.enforce(["fine", 3]).value == ["fine", 3]


def test_merge_counts() -> None:
    assert merge_counts({"email": 1}, {}, {"email": 2, "phone": 1}) == {"email": 3, "phone": 1}
    assert merge_counts() == {}


def test_content_blocked_is_neither_the_callers_nor_the_services_fault() -> None:
    exc = ContentBlocked()
    assert isinstance(exc, ModelhostError)
    assert not isinstance(exc, RequestError | ServiceError)
    assert exc.message


# --- streaming ------------------------------------------------------------------------------

FRAGMENTS = [
    *VALUES.values(),
    "4111-1111-1111-1111",
    "4111 1111 1111 1112",
    "378282246310005",
    "(555) 123-4567",
    "555-123-4567",
    "+14155552671",
    "06 12 34 56 78",
    "GB82 WEST 1234 5698 7654 32",
    "DE88 3704 0044 0532 0130 00",
    "666-12-3456",
    "a.b+c@mail.example.co.uk",
    "2024-01-15",
    "1.2.3",
    "Project Falcon",
    "secret",
    "secretary",
    "ACME-12345",
    "code red",
    " ",
    "  ",
    "\n",
    ", ",
    ". ",
    "the answer is ",
    "@",
    "-",
    "+",
    "(",
    ")",
]
TEXTS = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(alphabet="0123456789 -.@+()abXY\n", max_size=6),
    ),
    max_size=25,
).map("".join)
REDACTING = _guard(blocked_terms=TERMS, blocked_patterns=PATTERNS, on_blocked="redact")
BLOCKING = _guard(blocked_terms=TERMS, blocked_patterns=PATTERNS)


@settings(max_examples=400, deadline=None, database=None)
@given(text=TEXTS, data=st.data())
def test_stream_equals_apply_for_any_cutting(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1))
    whole = REDACTING.apply(text)
    streamed, redactor = _stream(REDACTING, _cut(text, cuts))
    assert streamed == whole.text
    assert redactor.redactions == whole.redactions
    assert not redactor.blocked


@settings(max_examples=300, deadline=None, database=None)
@given(text=TEXTS, data=st.data())
def test_blocked_stream_stops_before_the_blocked_content(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1))
    streamed, redactor = _stream(BLOCKING, _cut(text, cuts))
    assert redactor.blocked == BLOCKING.apply(text).blocked
    if not redactor.blocked:
        assert streamed == BLOCKING.apply(text).text
        return
    redacted = REDACTING.apply(text).text  # blocked content replaced, maybe merged with PII
    assert redacted.startswith(streamed)
    assert len(streamed) < len(redacted)  # the replacement covering the blocked span is not sent


def test_stream_equals_apply_for_every_single_cut_and_per_character() -> None:
    guard = _guard(blocked_terms=TERMS, on_blocked="redact")
    text = f"{MIXED} The Project Falcon file, +1 (555) 123-4567, 4111111111111111."
    expected = guard.apply(text)
    for cut in range(len(text) + 1):
        assert _stream(guard, [text[:cut], text[cut:]])[0] == expected.text
    streamed, redactor = _stream(guard, list(text))
    assert streamed == expected.text
    assert redactor.redactions == expected.redactions


def test_stream_equals_apply_over_seeded_random_cuttings() -> None:
    rng = random.Random(20240611)
    for _ in range(200):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30)))
        cuts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 12))]
        assert _stream(REDACTING, _cut(text, cuts))[0] == REDACTING.apply(text).text


def test_stream_redacts_a_value_split_across_pieces() -> None:
    guard = _guard()
    redactor = guard.stream()
    sent = [redactor.feed(p) for p in ("Card 4111 11", "11 1111 1", "111 and mail jo", "e@exa")]
    sent += [redactor.feed("mple.com"), redactor.finish()]
    assert "".join(sent) == "Card [REDACTED:credit_card] and mail [REDACTED:email]"
    assert redactor.redactions == {"credit_card": 1, "email": 1}
    assert not any(digit in "".join(sent) for digit in "14")


PROSE = "The quick brown fox jumps over the lazy dog, again and again. " * 8


def test_stream_holds_back_only_a_short_tail() -> None:
    redactor = _guard().stream()
    sent = redactor.feed(PROSE)
    assert prose_tail(sent) == "again. "  # the last word might still become an address
    assert redactor.feed("Call +1 415 555") == "again. Call"  # " +1..." may be a number
    assert redactor.feed(" 2671 now. ") == " [REDACTED:phone] "
    assert redactor.finish() == "now. "


def prose_tail(sent: str) -> str:
    assert PROSE.startswith(sent)
    return PROSE[len(sent) :]


def test_stream_holds_back_at_most_the_longest_blocked_term() -> None:
    redactor = _guard(blocked_terms=TERMS).stream()
    held = prose_tail(redactor.feed(PROSE))
    assert 0 < len(held) <= len("project" + "   " + "falcon") + 2


def test_stream_knows_every_case_variant_of_a_term() -> None:
    guard = _guard(blocked_terms=TERMS, on_blocked="redact")
    text = "the \u017fecret x"
    assert guard.apply(text).text == "the [REDACTED:blocked] x"
    redactor = guard.stream()
    assert redactor.feed("the \u017f") == "th"  # "e \u017f" is held: it may become a term
    assert redactor.feed("ecret x") + redactor.finish() == "e [REDACTED:blocked] x"


def test_blocked_stream_emits_nothing_more() -> None:
    redactor = _guard(blocked_terms=TERMS).stream()
    # "The" cannot start a term ('h' is in none), " sec" can: only that is held back
    assert redactor.feed("All fine here and there.\nThe sec") == "All fine here and there.\nTh"
    assert redactor.feed("ret is ") == ""
    assert redactor.blocked
    assert redactor.feed("more text") == ""
    assert redactor.finish() == ""


def test_feed_after_finish_is_an_error() -> None:
    redactor = _guard().stream()
    assert redactor.finish() == ""
    assert redactor.finished
    assert redactor.finish() == ""
    with pytest.raises(RuntimeError, match="after finish"):
        redactor.feed("x")


def _chunks(*texts: str, usage: Usage | None = None) -> Iterator[StreamChunk]:
    for text in texts[:-1]:
        yield StreamChunk(text)
    yield StreamChunk(texts[-1], finish_reason="stop", usage=usage)


def test_wrap_flushes_the_tail_on_the_finishing_chunk() -> None:
    usage = Usage(input_tokens=3, output_tokens=9)
    chunks = list(_guard().stream().wrap(_chunks("Mail jo", "e@", "example.com", "", usage=usage)))
    assert "".join(c.text for c in chunks) == "Mail [REDACTED:email]"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is usage
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_wrap_without_finish_reason_yields_the_tail_last() -> None:
    source = [StreamChunk("call 555-123-"), StreamChunk("4567")]
    chunks = list(_guard().stream().wrap(source))
    assert [c.text for c in chunks] == ["call", " [REDACTED:phone]"]


def test_wrap_guards_text_after_the_finishing_chunk() -> None:
    source = [StreamChunk("ok", finish_reason="stop"), StreamChunk("a@example.com")]
    redactor = _guard().stream()
    assert [c.text for c in redactor.wrap(source)] == ["ok", "[REDACTED:email]"]
    assert redactor.redactions == {"email": 1}


def test_wrap_raises_content_blocked_after_the_safe_chunks() -> None:
    wrapped = (
        _guard(blocked_terms=TERMS).stream().wrap(_chunks("Hello world.\n\n", "The secret ", "x"))
    )
    sent = [next(wrapped).text, next(wrapped).text]
    with pytest.raises(ContentBlocked):
        next(wrapped)
    assert sent == ["Hello world", ".\n\nTh"]  # 'h' starts no term; "e secret" is withheld


def test_awrap_guards_an_async_stream() -> None:
    async def source() -> AsyncIterator[StreamChunk]:
        for chunk in _chunks("SSN 123-4", "5-6789 ok"):
            yield chunk

    async def collect() -> list[StreamChunk]:
        return [chunk async for chunk in _guard().stream().awrap(source())]

    chunks = asyncio.run(collect())
    assert "".join(c.text for c in chunks) == "SSN [REDACTED:us_ssn] ok"
    assert chunks[-1].finish_reason == "stop"


def test_awrap_raises_content_blocked() -> None:
    async def source() -> AsyncIterator[StreamChunk]:
        yield StreamChunk("code red")

    async def collect() -> list[StreamChunk]:
        return [chunk async for chunk in _guard(blocked_patterns=PATTERNS).stream().awrap(source())]

    with pytest.raises(ContentBlocked):
        asyncio.run(collect())
