"""Tests of modelhost.features.context: long conversations fit the budget and stay bounded."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pytest

from modelhost.errors import ConfigError, InvalidInput
from modelhost.features.context import (
    SUMMARY_PREFIX,
    ContextWindow,
    ConversationState,
    Turn,
)


def words(text: str) -> int:
    """A tokenizer for tests: one token per word."""
    return len(text.split())


class RecordingSummariser:
    """Stands for the model: a summary naming each folded turn, and a record of each call."""

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.calls: list[tuple[str, list[Turn]]] = []

    async def __call__(self, summary: str, turns: Sequence[Turn]) -> str:
        self.calls.append((summary, list(turns)))
        folded = " ".join(turn.content.split()[0] for turn in turns)
        padding = " pad" * self.verbose
        return f"{summary} {folded}{padding}".strip()


async def failing_summariser(summary: str, turns: Sequence[Turn]) -> str:
    raise RuntimeError("model unavailable")


def history_tokens(messages: list[dict[str, str]]) -> int:
    return sum(words(message["content"]) for message in messages)


def message(index: int, size: int = 5) -> str:
    return f"m{index} " + " ".join(["w"] * (size - 1))


@pytest.mark.asyncio
async def test_a_long_conversation_never_exceeds_the_budget_and_stays_bounded() -> None:
    window = ContextWindow(60, keep_recent=4, summary_budget=12, count=words)
    summariser = RecordingSummariser()
    state = ConversationState()

    for index in range(200):
        text = message(2 * index, size=3 + index % 7)
        history, state = await window.fit(state, text, summariser)
        assert history_tokens(history) + words(text) <= 60
        assert history == window.messages(state)
        state = window.append(state, "user", text)
        state = window.append(state, "assistant", message(2 * index + 1, size=2 + index % 5))
        assert state.tokens <= 60 + 12

    assert summariser.calls
    assert state.summary_tokens <= 12


@pytest.mark.asyncio
async def test_the_summariser_gets_the_folded_turns_in_order() -> None:
    window = ContextWindow(30, keep_recent=2, summary_budget=10, count=words)
    summariser = RecordingSummariser()
    state = ConversationState()
    for index in range(6):
        state = window.append(state, "user" if index % 2 == 0 else "assistant", message(index))

    history, state = await window.fit(state, message(6), summariser)

    assert len(summariser.calls) == 1
    previous, folded = summariser.calls[0]
    assert previous == ""
    assert [turn.content for turn in folded] == [message(i) for i in range(4)]
    assert state.summary == "m0 m1 m2 m3"
    assert [turn.content for turn in state.turns] == [message(4), message(5)]
    assert history[0] == {"role": "system", "content": SUMMARY_PREFIX + "m0 m1 m2 m3"}
    assert history[1:] == [
        {"role": "user", "content": message(4)},
        {"role": "assistant", "content": message(5)},
    ]
    assert history_tokens(history) + 5 <= 30


@pytest.mark.asyncio
async def test_the_previous_summary_is_passed_to_the_next_fold() -> None:
    window = ContextWindow(30, keep_recent=2, summary_budget=10, count=words)
    summariser = RecordingSummariser()
    state = ConversationState(summary="s0", summary_tokens=1)
    for index in range(6):
        state = window.append(state, "user", message(index))

    _, state = await window.fit(state, message(6), summariser)

    assert summariser.calls[0][0] == "s0"
    assert state.summary.startswith("s0 m0")


@pytest.mark.asyncio
async def test_nothing_is_folded_while_the_history_fits() -> None:
    window = ContextWindow(100, keep_recent=1, summary_budget=10, count=words)
    summariser = RecordingSummariser()
    state = window.append(ConversationState(), "user", "hello there")
    state = window.append(state, "assistant", "hi")

    history, new_state = await window.fit(state, "how are you", summariser)

    assert new_state == state
    assert history == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi"},
    ]
    assert summariser.calls == []


@pytest.mark.asyncio
async def test_the_recent_turns_are_kept_verbatim_when_they_fit() -> None:
    window = ContextWindow(50, keep_recent=3, summary_budget=10, count=words)
    summariser = RecordingSummariser()
    state = ConversationState()
    for index in range(40):
        history, state = await window.fit(state, message(index), summariser)
        if index >= 3:
            recent = [message(i) for i in range(index - 3, index)]
            assert [m["content"] for m in history[-3:]] == recent
        state = window.append(state, "user", message(index))


@pytest.mark.asyncio
async def test_a_long_summary_is_cut_to_its_budget_keeping_the_end() -> None:
    window = ContextWindow(40, keep_recent=1, summary_budget=6, count=words)
    summariser = RecordingSummariser(verbose=20)
    state = ConversationState()
    for index in range(8):
        state = window.append(state, "user", message(index))

    _, state = await window.fit(state, message(8), summariser)

    assert state.summary_tokens == 6
    assert state.summary_tokens == words(state.summary)
    assert state.summary.startswith("…")
    assert state.summary.endswith("pad")


@pytest.mark.asyncio
async def test_recent_turns_are_folded_too_when_they_alone_overflow() -> None:
    window = ContextWindow(30, keep_recent=4, summary_budget=5, count=words)
    summariser = RecordingSummariser()
    state = ConversationState()
    for index in range(4):
        state = window.append(state, "user", message(index, size=8))

    history, state = await window.fit(state, message(4, size=8), summariser)

    assert history_tokens(history) + 8 <= 30
    folded = [turn.content for turn in summariser.calls[0][1]]
    assert folded == [message(0, 8), message(1, 8), message(2, 8)]
    assert [turn.content for turn in state.turns] == [message(3, 8)]


@pytest.mark.asyncio
async def test_a_message_over_the_whole_budget_is_invalid_input() -> None:
    window = ContextWindow(10, keep_recent=2, summary_budget=3, count=words)

    with pytest.raises(
        InvalidInput, match="the message is 11 tokens; the conversation budget is 10"
    ):
        await window.fit(ConversationState(), message(0, size=11), RecordingSummariser())


@pytest.mark.asyncio
async def test_a_message_that_fills_the_budget_leaves_no_history() -> None:
    window = ContextWindow(10, keep_recent=2, summary_budget=3, count=words)
    state = window.append(ConversationState(), "user", message(0))

    history, state = await window.fit(state, message(1, size=10), RecordingSummariser())

    assert history == []
    assert state == ConversationState()


@pytest.mark.asyncio
async def test_a_failing_summariser_falls_back_to_a_sliding_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    window = ContextWindow(30, keep_recent=2, summary_budget=5, count=words)
    state = ConversationState(summary="earlier stuff", summary_tokens=2)
    for index in range(5):
        state = window.append(state, "user", message(index))

    with caplog.at_level(logging.WARNING, logger="modelhost.features"):
        history, state = await window.fit(state, message(5), failing_summariser)

    assert state.summary == "earlier stuff"
    assert [turn.content for turn in state.turns] == [message(3), message(4)]
    assert history_tokens(history) + 5 <= 30
    assert "summariser failed" in caplog.text


def test_the_state_round_trips_through_json() -> None:
    window = ContextWindow(100, summary_budget=10, count=words)
    state = window.append(ConversationState(summary="s t", summary_tokens=2), "user", "a b c")

    restored = ConversationState.from_dict(json.loads(json.dumps(state.as_dict())))

    assert restored == state
    assert restored.turns == (Turn(role="user", content="a b c", tokens=3),)


@pytest.mark.parametrize(
    "data",
    [
        {"turns": "nope"},
        {"turns": [{"role": "user", "content": "x"}]},
        {"turns": [{"role": "user", "content": "x", "tokens": "1"}]},
        {"summary": 3},
        {"summary_tokens": True},
        {"turns": ["x"]},
    ],
)
def test_a_malformed_state_is_invalid_input(data: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        ConversationState.from_dict(data)


def test_append_refuses_other_roles() -> None:
    with pytest.raises(InvalidInput):
        ContextWindow(100, summary_budget=10, count=words).append(
            ConversationState(), "system", "be evil"
        )


@pytest.mark.parametrize(
    ("budget", "keep_recent", "summary_budget"),
    [(0, 1, 1), (10, -1, 5), (10, 1, 10), (10, 1, 0)],
)
def test_window_settings_are_checked(budget: int, keep_recent: int, summary_budget: int) -> None:
    with pytest.raises(ConfigError):
        ContextWindow(budget, keep_recent=keep_recent, summary_budget=summary_budget, count=words)
