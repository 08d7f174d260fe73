"""Conversation context within a token budget: a sliding window plus a summary of older turns.

A conversational feature sends the model its history with every new message. Sent whole, the
history outgrows the model's context and the stored state grows without bound; cut blindly,
the model forgets what the conversation was about. :class:`ContextWindow` keeps the most recent
turns verbatim and folds older ones into a running summary written by the model itself, so:

* the history sent (summary, kept turns and the new message) always fits ``budget_tokens``;
* the stored :class:`ConversationState` stays bounded (the history plus the last answer);
* a long session never fails for being long: if the summariser fails, the oldest turns are
  dropped and the previous summary kept (a plain sliding window), with a warning logged.

Only a single message longer than the whole budget is refused, as the caller's mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelhost.errors import ConfigError, InvalidInput

log = logging.getLogger("modelhost.features")

#: How the summary is introduced to the model, in its own system message.
SUMMARY_PREFIX = "Summary of the earlier conversation: "
#: The roles a stored turn may have.
TURN_ROLES = frozenset({"user", "assistant"})
_ELLIPSIS = "…"


class TokenCounter(Protocol):
    """Counts the tokens of a text (the model's tokenizer, or an estimate)."""

    def __call__(self, text: str, /) -> int:
        """The number of tokens in ``text``."""
        ...


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation and what it costs in the history."""

    role: str
    content: str
    tokens: int


class Summarise(Protocol):
    """Folds turns into the running summary (in production, by asking the model)."""

    async def __call__(self, summary: str, turns: Sequence[Turn], /) -> str:
        """A new summary covering ``summary`` (possibly empty) and then ``turns``, in order."""
        ...


@dataclass(frozen=True, slots=True)
class ConversationState:
    """What a conversation keeps between messages; JSON-ready for a database row."""

    #: The model's summary of every turn no longer kept verbatim ("" when none was folded).
    summary: str = ""
    #: Tokens of :attr:`summary` alone.
    summary_tokens: int = 0
    #: The turns kept verbatim, oldest first.
    turns: tuple[Turn, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The state as plain JSON values."""
        return {
            "summary": self.summary,
            "summary_tokens": self.summary_tokens,
            "turns": [
                {"role": turn.role, "content": turn.content, "tokens": turn.tokens}
                for turn in self.turns
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversationState:
        """The state :meth:`as_dict` wrote.

        Raises:
            InvalidInput: ``data`` is not a state (wrong shape or types).
        """
        raw_turns = _typed(data, "turns", list, [])
        return cls(
            summary=_typed(data, "summary", str, ""),
            summary_tokens=_typed(data, "summary_tokens", int, 0),
            turns=tuple(
                Turn(
                    role=_typed(item, "role", str),
                    content=_typed(item, "content", str),
                    tokens=_typed(item, "tokens", int),
                )
                for item in raw_turns
            ),
        )

    @property
    def tokens(self) -> int:
        """Tokens of the summary and the kept turns (without the summary's prefix)."""
        return self.summary_tokens + sum(turn.tokens for turn in self.turns)


def _typed(data: Any, key: str, kind: type[Any], default: Any = None) -> Any:
    """``data[key]`` checked to be a ``kind`` (``default`` when absent and not ``None``).

    Raises:
        InvalidInput: ``data`` is not a mapping, or the value is missing or of another type.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("not a conversation state: an object was expected", param="state")
    value = data.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(
            f"not a conversation state: {key!r} is not a {kind.__name__}", param="state"
        )
    return value


class ContextWindow:
    """Fits a conversation's history into a token budget.

    Args:
        budget_tokens: the most tokens the history (summary, turns, new message) may take.
        keep_recent: how many latest turns stay verbatim while they fit next to a full summary
            budget; older turns are folded into the summary when the budget is reached.
        summary_budget: the most tokens the summary may take; a longer summary is cut,
            keeping its end (the most recent events).
        count: counts tokens.

    Raises:
        ConfigError: a budget is not positive, ``keep_recent`` is negative, or the summary
            budget leaves no room in the budget.
    """

    def __init__(
        self,
        budget_tokens: int,
        *,
        keep_recent: int = 4,
        summary_budget: int = 256,
        count: TokenCounter,
    ) -> None:
        if budget_tokens <= 0 or summary_budget <= 0:
            raise ConfigError("token budgets must be positive", param="budget_tokens")
        if summary_budget >= budget_tokens:
            raise ConfigError(
                "the summary budget must be smaller than the conversation budget",
                param="summary_budget",
            )
        if keep_recent < 0:
            raise ConfigError("keep_recent must be 0 or more", param="keep_recent")
        self.budget_tokens = budget_tokens
        self.keep_recent = keep_recent
        self.summary_budget = summary_budget
        self._count = count
        self._prefix_tokens = count(SUMMARY_PREFIX)

    def append(self, state: ConversationState, role: str, content: str) -> ConversationState:
        """``state`` with one more turn (the user's message, or the model's answer).

        Raises:
            InvalidInput: ``role`` is not ``user`` or ``assistant``.
        """
        if role not in TURN_ROLES:
            raise InvalidInput(f"a turn's role is one of {sorted(TURN_ROLES)}", param="role")
        turn = Turn(role=role, content=content, tokens=self._count(content))
        return ConversationState(state.summary, state.summary_tokens, (*state.turns, turn))

    def messages(self, state: ConversationState) -> list[dict[str, str]]:
        """The history as chat messages: the summary (if any) as a system message, then turns.

        The summary is model-written from user content: treat it as data when assembling the
        final prompt, like the turns themselves.
        """
        history = [{"role": turn.role, "content": turn.content} for turn in state.turns]
        if state.summary:
            return [{"role": "system", "content": SUMMARY_PREFIX + state.summary}, *history]
        return history

    def cost(self, state: ConversationState) -> int:
        """Tokens the history of ``state`` takes, the summary's prefix included."""
        prefix = self._prefix_tokens if state.summary else 0
        return prefix + state.tokens

    async def fit(
        self, state: ConversationState, new_turn_text: str, summarise: Summarise
    ) -> tuple[list[dict[str, str]], ConversationState]:
        """The history to send before ``new_turn_text``, and the state it came from.

        When history and new message exceed the budget, every turn older than the latest
        ``keep_recent`` (and more, oldest first, while the rest would not fit next to a full
        summary) is folded into the summary by one ``summarise`` call. If that call fails, the
        folded turns are dropped and the old summary kept. The returned state does not hold
        the new message: :meth:`append` it, and the answer, once answered.

        Args:
            state: the conversation so far.
            new_turn_text: the message about to be sent.
            summarise: writes the new summary.

        Raises:
            InvalidInput: ``new_turn_text`` alone is over the budget.
        """
        new_tokens = self._count(new_turn_text)
        if new_tokens > self.budget_tokens:
            raise InvalidInput(
                f"the message is {new_tokens} tokens; the conversation budget is "
                f"{self.budget_tokens}",
                param="input",
            )
        if self.cost(state) + new_tokens <= self.budget_tokens:
            return self.messages(state), state
        room = self.budget_tokens - new_tokens
        reserve = min(self.summary_budget + self._prefix_tokens, room)
        turns = state.turns
        fold = max(0, len(turns) - self.keep_recent)
        kept_tokens = sum(turn.tokens for turn in turns[fold:])
        while fold < len(turns) and reserve + kept_tokens > room:
            kept_tokens -= turns[fold].tokens
            fold += 1
        summary = await self._fold(state.summary, turns[:fold], summarise)
        summary = self._cap(
            summary, min(self.summary_budget, room - kept_tokens - self._prefix_tokens)
        )
        new_state = ConversationState(
            summary=summary,
            summary_tokens=self._count(summary) if summary else 0,
            turns=turns[fold:],
        )
        return self.messages(new_state), new_state

    async def _fold(self, summary: str, turns: Sequence[Turn], summarise: Summarise) -> str:
        """The summary with ``turns`` folded in; the old summary if the summariser fails."""
        if not turns:
            return summary
        try:
            return await summarise(summary, turns)
        except Exception:
            log.warning(
                "conversation summariser failed; dropping %d oldest turns instead",
                len(turns),
                exc_info=True,
            )
            return summary

    def _cap(self, summary: str, limit: int) -> str:
        """``summary`` cut to ``limit`` tokens, keeping its end behind an ellipsis."""
        if limit <= 0 or not summary:
            return ""
        if self._count(summary) <= limit:
            return summary
        low, high = 1, len(summary)
        while low < high:
            middle = (low + high) // 2
            if self._count(_ELLIPSIS + summary[middle:]) <= limit:
                high = middle
            else:
                low = middle + 1
        cut = _ELLIPSIS + summary[low:].lstrip()
        return cut if self._count(cut) <= limit else ""
