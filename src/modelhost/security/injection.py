"""Prompt-injection detection: heuristics plus embedding similarity to known attacks.

Each request text gets an :class:`InjectionScore` in ``[0, 1]``. Two kinds of evidence are
combined with a noisy-OR (``1 - (1 - a)(1 - b)``), so either may raise the score alone and
agreeing weak signals add up:

- **Heuristics.** Regular expressions over a normalised view of the text (Unicode NFKC,
  invisible characters dropped, case folded, whitespace collapsed; also a light leetspeak
  decoding, and a squashed letters-only view that defeats ``i.g.n.o.r.e`` spacing). Each rule
  has a weight: *strong* rules (an explicit "ignore all previous instructions", chat-template
  tokens, "do anything now") weigh more than the threshold on their own; *weak* rules
  ("act as", "developer mode", a bare "system prompt") stay below it and only flag a text
  together with other evidence. Base64 payloads are decoded and scored too.
- **Similarity.** The text (in windows of a few sentences, so an attack buried in a long
  document is not diluted) is embedded with the ``minilm`` runtime and compared with a corpus
  of known attacks shipped in ``security/data/injection_attacks.jsonl``. The highest cosine
  similarity ``s`` maps linearly onto ``[0, 1]`` between ``similarity_low`` and
  ``similarity_high``.

Without an embedder the detector runs heuristics only and says so in every score's reasons.
:func:`decide` turns a score into the model's configured :class:`Action`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from modelhost.errors import ConfigError

if TYPE_CHECKING:
    from modelhost.runtimes.base import Runtime

#: Default decision threshold: a strong heuristic alone, a close paraphrase of a known attack
#: (similarity ≥ 0.70 with the default ramp), or two weak signals together reach it.
DEFAULT_THRESHOLD = 0.5

#: Reason given on every score when no embedder is configured.
HEURISTICS_ONLY = "embeddings: not configured, heuristics only"


class Action(StrEnum):
    """What the data plane does with a request whose score reaches the threshold."""

    #: Serve it; the score is still recorded.
    ALLOW = "allow"
    #: Serve it and mark it (metrics, provenance, a response header) for review.
    FLAG = "flag"
    #: Refuse it as invalid input.
    BLOCK = "block"


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors, one row per text."""

    def __call__(self, texts: list[str], /) -> NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class InjectionScore:
    """The detector's verdict on one text."""

    #: Combined score in ``[0, 1]``; compare with a threshold (see :func:`decide`).
    score: float
    #: Human-readable evidence, strongest first (rule names, similarity, mode notes).
    reasons: list[str] = field(default_factory=list)
    #: The strongest evidence: the text span a rule matched, or the nearest known attack.
    matched: str | None = None
    #: Highest cosine similarity to the attack corpus; ``None`` without an embedder.
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class DetectorOptions:
    """Tuning knobs of :class:`InjectionDetector`.

    The defaults were set from the attack corpus and from first principles (see
    ``docs/prompt-injection.md``), not fitted to the evaluation set.
    """

    #: Cosine similarity at or below which similarity adds nothing (related topic, not attack).
    similarity_low: float = 0.5
    #: Cosine similarity at which similarity alone gives score 1 (a paraphrase of an attack).
    similarity_high: float = 0.9
    #: Words per embedding window; minilm truncates at 256 word pieces.
    window_words: int = 60
    #: Most windows embedded per text (the head of a longer text is scored by heuristics only).
    max_windows: int = 8
    #: Longest base64 run decoded for inspection, in characters.
    max_base64_chars: int = 4096

    def __post_init__(self) -> None:
        if not -1.0 <= self.similarity_low < self.similarity_high <= 1.0:
            raise ConfigError("similarity_low < similarity_high, both in [-1, 1]")
        if self.window_words < 1 or self.max_windows < 1:
            raise ConfigError("window_words and max_windows are at least 1")


def decide(score: InjectionScore, action_for_model: Action, threshold: float) -> Action:
    """The action for one scored request.

    Args:
        score: the detector's score of the request (the highest over its texts).
        action_for_model: the model's configured action for requests at or over ``threshold``.
        threshold: the score from which ``action_for_model`` applies.

    Returns:
        ``action_for_model`` when the score reaches the threshold, else :attr:`Action.ALLOW`.
    """
    return action_for_model if score.score >= threshold else Action.ALLOW


# --- normalisation ------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
_NOT_LETTERS = re.compile(r"[^a-z]+")


def normalise(text: str) -> str:
    """NFKC, invisible format characters dropped, case folded, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text)
    visible = "".join(char for char in folded if unicodedata.category(char) != "Cf")
    return _WHITESPACE.sub(" ", visible.casefold()).strip()


def _views(text: str) -> tuple[str, ...]:
    """The normalised text and, when it differs, its leetspeak-decoded form."""
    plain = normalise(text)
    deleet = plain.translate(_LEET)
    return (plain,) if deleet == plain else (plain, deleet)


# --- heuristic rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One heuristic: a pattern over the normalised text and the evidence weight of a match."""

    name: str
    pattern: re.Pattern[str]
    weight: float


def _rule(name: str, weight: float, *alternatives: str) -> Rule:
    return Rule(name=name, pattern=re.compile("|".join(alternatives)), weight=weight)


_OVERRIDE_VERB = (
    r"(?:ignore|ignoring|disregard|forget|skip|bypass|override|overrule|discard|drop|abandon|"
    r"neglect|set aside|throw out|stop following|do not follow|don't follow|no longer follow|"
    r"cancel|revoke|nullify|never ?mind)"
)
_PRIOR = (
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|old|existing|current|"
    r"system|developer|pre-?set|given|default|safety|built-in)"
)
_DIRECTIVES = (
    r"(?:instructions?|prompts?|rules|directions|guidelines|directives|commands|context|"
    r"programming|constraints|restrictions|policies|guardrails|orders|messages?|text|task)"
)
_FILLER = (
    r"(?:(?:all|any|of|the|your|these|those|every|each|and|other|above|whatever|about)\s+){0,4}"
)
_LEAK_VERB = (
    r"\b(?:reveal|print|show|output|repeat|display|dump|leak|tell me|give me|write out|recite|"
    r"spell out|expose|paste|copy|share|quote|reproduce|list)\b"
)
_SECRET_ADJ = r"(?:system|initial|hidden|secret|original|developer|internal|pre-?|confidential)"
_AI = r"(?:ai|assistant|llm|language model|chatbot|bot|gpt|model|ai model|summari[sz]er|agent)s?"
_LIMITS = (
    r"(?:restrictions|limits|limitations|filters|filtering|censorship|guidelines|rules|"
    r"boundaries|ethics|morals|safeguards|guardrails|content polic(?:y|ies)|moderation|"
    r"safety (?:rules|training))"
)

#: The heuristic rule set; weights are evidence strengths, combined by noisy-OR.
RULES: tuple[Rule, ...] = (
    # instruction override
    _rule(
        "override_instructions",
        0.9,
        rf"\b{_OVERRIDE_VERB}\s+{_FILLER}{_PRIOR}\s+(?:\w+\s+)?{_DIRECTIVES}\b",
        rf"\b{_OVERRIDE_VERB}\s+(?:all\s+)?(?:of\s+)?your\s+(?:\w+\s+)?{_DIRECTIVES}\b",
    ),
    _rule(
        "override_everything",
        0.8,
        r"\b(?:ignore|disregard|forget)\s+(?:everything|all(?: of)? that|what(?:ever)?)\b"
        r"[^.!?]{0,40}\b(?:told|said|above|before|instructed|previously|earlier|were given)\b",
    ),
    _rule(
        "directives_void",
        0.8,
        r"\b(?:instructions|rules|guidelines|directives|prompt|policies)\b[^.!?]{0,50}\b(?:are|is)"
        r" (?:now )?(?:void|null|cancell?ed|revoked|deprecated|obsolete|suspended|lifted|"
        r"no longer (?:valid|in effect|apply|applicable))\b",
    ),
    _rule(
        "new_instructions",
        0.55,
        r"\b(?:new|updated|real|actual|true|revised)\s+(?:instructions?|task|directives?|rules|"
        r"objective|orders|policy)\s*(?::|are\b|is\b|follow\b)",
    ),
    _rule(
        "instead_do",
        0.35,
        r"\binstead,?\s+(?:you (?:must|will|should)|output|print|say|respond|write|reply|ask)\b",
        r"\bstop (?:summari[sz]ing|translating|answering|what you are doing|your task)\b",
    ),
    _rule(
        "ignore_the_user",
        0.75,
        r"\b(?:ignore|disregard)\s+(?:the\s+)?user'?s?\s+(?:request|question|query|task|message)",
    ),
    # prompt / secret leaking
    _rule(
        "leak_your_prompt",
        0.85,
        rf"{_LEAK_VERB}[^.!?]{{0,40}}\byour\s+(?:\w+\s+)?{_SECRET_ADJ}\s?(?:prompt|instructions"
        r"|message|directives|rules)\b",
        rf"{_LEAK_VERB}[^.!?]{{0,40}}\bthe\s+(?:hidden|secret|initial|original|internal|"
        r"confidential)\s+(?:prompt|instructions|directives|rules)\b",
        r"\bwhat (?:is|are|was|were|does|did) (?:written )?(?:in )?your\s+(?:\w+\s+)?"
        rf"{_SECRET_ADJ}\s?(?:prompt|instructions|message)",
        rf"{_LEAK_VERB}[^.!?]{{0,40}}\b(?:instructions|prompt|rules|directives|guidelines)\b"
        r"[^.!?]{0,30}\b(?:you were given|you received|given to you|gave you|you were configured)",
    ),
    _rule(
        "leak_system_prompt",
        0.45,
        rf"{_LEAK_VERB}[^.!?]{{0,40}}\bthe system prompt\b",
    ),
    _rule(
        "leak_your_instructions",
        0.5,
        rf"{_LEAK_VERB}[^.!?]{{0,30}}\byour\s+(?:\w+\s+){{0,2}}(?:instructions|prompt|rules|"
        r"guidelines|directives|configuration|programming)\b",
    ),
    _rule(
        "repeat_above",
        0.8,
        r"\b(?:repeat|print|output|copy|recite|echo|reproduce)\b[^.!?]{0,40}\b(?:text|words|"
        r"everything|content|message|lines?)\s+(?:that )?(?:above|before this|preceding|prior to|"
        r"precedes|preceded|came before|comes before)\b",
        r"\bverbatim\b[^.!?]{0,40}\b(?:instructions|prompt|above)\b",
        r"\b(?:starting|beginning) with ['\"]?you are\b",
    ),
    _rule("system_prompt_mention", 0.25, r"\b(?:system|hidden|secret|initial) prompt\b"),
    _rule(
        "secret_directives",
        0.35,
        r"\b(?:secret|hidden|confidential|internal)\s+(?:instructions|directives|rules|guidelines)\b",
    ),
    _rule(
        "secrets",
        0.45,
        r"\b(?:reveal|print|show|tell me|give me|output|leak|dump|send|list)\b[^.!?]{0,40}\b(?:api"
        r"[ _-]?keys?|passwords?|credentials|secret keys?|access tokens?|environment variables)\b",
    ),
    # persona jailbreaks
    _rule(
        "dan_persona",
        0.9,
        r"\bdan\b[^.!?]{0,80}\bdo anything now\b|\bdo anything now\b[^.!?]{0,80}\bdan\b",
        r"\bdan mode\b|\byou are (?:now )?dan\b|\bdan,? (?:which|who) stands\b",
    ),
    _rule(
        "do_anything_now",
        0.4,
        r"\bdo anything now\b|\bcan do anything\b[^.!?]{0,40}\b(?:rules|restrictions|limits)\b",
    ),
    _rule("persona_acronym", 0.3, r"\b(?:which|that|who) stands for\b"),
    _rule("jailbreak_word", 0.45, r"\bjail ?br(?:ea|o)k(?:en|s|ing)?\b"),
    _rule(
        "developer_mode",
        0.4,
        r"\b(?:developer|dev|debug|god|admin|sudo|maintenance|unrestricted|root) mode\b",
    ),
    _rule(
        "jailbreak_mode",
        0.6,
        r"\b(?:developer|dev|god|jailbreak|unrestricted|dan|evil|chaos|uncensored|unfiltered|admin|"
        r"sudo|root) mode (?:is )?(?:now )?(?:enabled|activated|unlocked)\b",
        r"\b(?:enable|activate|enter|switch to|unlock)\s+(?:jailbreak|unrestricted|dan|evil|god|"
        r"uncensored|unfiltered|chaos)\s+mode\b",
    ),
    _rule(
        "no_restrictions",
        0.55,
        rf"\b(?:no|without|free (?:of|from)|zero)\s+(?:\w+\s+){{0,3}}{_LIMITS}\b",
        r"\b(?:unfiltered|uncensored|unrestricted|unaligned)\b",
    ),
    _rule(
        "limits_disabled",
        0.7,
        rf"\b{_LIMITS}\s+(?:are|is|have been|has been)\s+(?:now\s+)?(?:disabled|removed|turned off"
        r"|lifted|off|suspended|deactivated|gone|bypassed)\b",
        r"\b(?:breaks?|broken|broke) free\b|\bescaped (?:its|their|your) (?:creators|programming)",
        r"\bfree (?:of|from) (?:its|your|their) (?:programming|rules|constraints|shackles)\b",
    ),
    _rule(
        "you_are_now",
        0.45,
        r"\byou are (?:now|no longer)\b|\bfrom now on,? (?:you|your)\b|\bhenceforth,? you\b",
        r"\byou (?:will|shall) now (?:act|be|respond|behave|answer)\b",
    ),
    _rule(
        "never_refuse",
        0.55,
        r"\b(?:never|don't|do not|cannot|can't|must not|will not|won't)\s+(?:ever\s+)?(?:refuse|"
        r"decline|say (?:no|you can't|that you cannot)|apologi[sz]e|add (?:any )?(?:warnings|"
        r"disclaimers))\b",
    ),
    _rule(
        "break_policy",
        0.6,
        r"\b(?:ignore|bypass|break|violate|circumvent|evade|disable|turn off|get around|override)\b"
        r"[^.!?]{0,30}\b(?:content polic(?:y|ies)|polic(?:y|ies)|safety|filters?|guardrails|"
        r"ethic(?:s|al guidelines)|moral(?:s|ity)|alignment|restrictions|safeguards|moderation|"
        r"censorship)\b",
    ),
    _rule(
        "role_play",
        0.2,
        r"\b(?:pretend|act as|act like|roleplay|role-play|role play|play the role|imagine you are|"
        r"you are playing|simulate)\b",
    ),
    _rule("stay_in_character", 0.3, r"\b(?:stay|remain) in character\b|\bbreak(?:ing)? character"),
    _rule(
        "authority_claim",
        0.5,
        r"\b(?:i am|i'm|this is|message from|as) (?:your|the|an?) (?:developer|creator|"
        r"administrator|admin|system administrator|owner|operator|openai|anthropic)\b",
        r"\b(?:system|admin|developer|security) (?:override|notice|alert|message|update)\s*:",
        r"\bi (?:work|am) (?:at|for|from) (?:openai|anthropic|google deepmind|meta ai)\b",
        r"\bi'?m in charge now\b|\boperator here\b",
    ),
    # delimiter and template tricks
    _rule(
        "chat_tokens",
        0.85,
        r"<\|(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id|user|"
        r"assistant)\|>|\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>",
    ),
    _rule(
        "fake_tags",
        0.6,
        r"<\s*(system|assistant|instructions?|admin|developer|sys|prompt)\s*>[^<]{5,}</\s*\1\s*>",
        r"</\s*(?:system|assistant|instructions?|admin|developer|sys|prompt|user_data|user_input"
        r"|context|document|data)\s*>\s*(?:<|\w)",
    ),
    _rule(
        "fake_headers",
        0.55,
        r"(?:^|\s)(?:#{2,}|={3,}|-{3,}|\*{3,})\s*(?:system|new instructions?|instructions?|admin|"
        r"developer|override|end of (?:input|prompt|user input))\b",
    ),
    _rule(
        "role_prefix",
        0.4,
        r"(?:^|\n|\s)(?:system|assistant)\s*:\s*(?:you|ignore|new|the user|override|from now|"
        r"understood|i will|grant)",
    ),
    _rule(
        "end_of_input",
        0.45,
        r"\bend of (?:the )?(?:user )?(?:input|prompt|document|context|data|instructions|"
        r"conversation)\b",
    ),
    # obfuscation and wrappers
    _rule(
        "decode_and_follow",
        0.7,
        r"\b(?:decode|decrypt|deobfuscate|translate|reverse|unscramble|decipher|combine|"
        r"concatenate|convert)\b[^.!?]{0,60}\b(?:then|and)\s+(?:follow|execute|obey|do|carry out|"
        r"act on|perform|run|comply)\b",
        r"\b(?:first|last) letters? of (?:each|every)\b[^.!?]{0,40}\b(?:obey|follow|execute)\b",
        r"\b(?:perform|execute|obey|follow|do)\b[^.!?]{0,30}\b[a-z]\s*\+\s*[a-z]\b",
    ),
    _rule(
        "encoding_hint",
        0.15,
        r"\b(?:base64|rot13|rot-13|hex(?:adecimal)?[- ]encoded|morse code|reversed text|"
        r"caesar cipher)\b",
    ),
    _rule(
        "translate_wrapper",
        0.35,
        r"\btranslat\w*\b[^.!?]{0,60}\b(?:ignore|disregard|forget|your prompt|system prompt|"
        r"instead|obey|follow it|execute)\b",
    ),
    # indirect injection aimed at the model from inside data
    _rule(
        "address_the_ai",
        0.7,
        rf"\b(?:note|message|instructions?|attention|important)\s+(?:to|for)\s+(?:the\s+|any\s+)?"
        rf"{_AI}\b",
        rf"\bif you are an? {_AI}\b|\battention,? {_AI}\b",
        rf"\b{_AI} (?:that is |who is )?(?:reading|processing|summari[sz]ing|parsing|scanning|"
        r"screening) (?:this|my|the)\b",
        rf"(?:^|<!--|\[)\s*{_AI}\s*[:,]\s*(?:ignore|disregard|stop|instead|do not|don't|you must|"
        r"forward|send|tell|say|reply|when)\b",
    ),
    _rule(
        "hide_from_user",
        0.65,
        r"\b(?:do not|don't|never|without)\s+(?:tell|telling|inform|informing|mention|mentioning|"
        r"alert|alerting|notify|notifying|let|letting)(?:ing)?\s+(?:the\s+)?user\b",
        r"\bas if nothing (?:happened|was done)\b",
    ),
    _rule("covert", 0.3, r"\b(?:quietly|secretly|silently|covertly)\b"),
    _rule(
        "exfiltrate",
        0.7,
        r"\b(?:send|post|forward|upload|exfiltrate|transmit|email|leak)\b[^.!?]{0,40}\b(?:"
        r"conversation|chat history|history|the prompt|system prompt|context|credentials|api keys?"
        r"|passwords?|user data|personal data|secrets|files|documents|messages|inbox)\b[^.!?]{0,40}"
        r"\b(?:to|at|via)\b[^.!?]{0,10}(?:https?://|www\.|\S+@\S+|\b(?:my|our|the attacker'?s?|"
        r"an? external) (?:server|endpoint|webhook|address)\b|\bthis (?:url|address|endpoint)\b)",
    ),
    _rule(
        "markdown_exfil",
        0.65,
        r"!\[[^\]]*\]\(https?://\S*\?\S*=\s*(?:<|\{|\[|%7b)",
        r"https?://\S+\?\S*=[^.!?]{0,60}\b(?:password|secret|conversation|chat history|previous "
        r"messages|api key|system prompt|credentials|personal data)",
    ),
    # the classic override in other languages
    _rule(
        "override_multilingual",
        0.85,
        r"\bignor(?:e|ez|iere|ieren|a|ar)\b[^.!?]{0,30}\b(?:instructions?|consignes|instrucciones|"
        r"anweisungen|istruzioni|instruções|anteriores|précédentes|vorherigen)\b",
        r"\boublie[rz]?\b[^.!?]{0,30}\b(?:instructions|consignes)\b",
        r"\bvergiss\b[^.!?]{0,30}\banweisungen\b|\bolvida\b[^.!?]{0,30}\binstrucciones\b",
        r"\b(?:про)?игнорир\w*\b[^.!?]{0,30}\bинструкц\w*",  # noqa: RUF001 - Cyrillic
        r"忽略[^.!?。]{0,20}(?:指令|指示|说明)",
        r"(?:指示|命令)[^.!?。]{0,20}無視",
    ),
)

# Squashed letters-only phrases: catch "i g n o r e", "i.g.n.o.r.e", "ig-nore", zero-width splits.
_SQUASHED = re.compile(
    r"(?:ignore|disregard|forget)(?:all)?(?:your|previous|prior)instructions"
    r"|(?:reveal|print|show)yoursystemprompt"
)

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(slots=True)
class _Evidence:
    """Heuristic matches of one text: rule name -> (weight, matched span)."""

    hits: dict[str, tuple[float, str]] = field(default_factory=dict)

    def add(self, name: str, weight: float, span: str) -> None:
        if name not in self.hits or self.hits[name][0] < weight:
            self.hits[name] = (weight, span)

    def merge(self, other: _Evidence, prefix: str) -> None:
        for name, (weight, span) in other.hits.items():
            self.add(f"{prefix}{name}", weight, span)

    def score(self) -> float:
        remaining = 1.0
        for weight, _ in self.hits.values():
            remaining *= 1.0 - weight
        return 1.0 - remaining

    def strongest(self) -> list[tuple[str, float, str]]:
        return sorted(((n, w, s) for n, (w, s) in self.hits.items()), key=lambda h: -h[1])


def _match_rules(text: str) -> _Evidence:
    evidence = _Evidence()
    views = _views(text)
    for rule in RULES:
        for view in views:
            match = rule.pattern.search(view)
            if match:
                evidence.add(rule.name, rule.weight, match.group(0).strip())
                break
    squashed = _NOT_LETTERS.sub("", views[-1])
    hidden = _SQUASHED.search(squashed)
    if hidden:
        evidence.add("obfuscated_phrase", 0.85, hidden.group(0))
    return evidence


def _decoded_base64(text: str, limit: int) -> list[str]:
    """Printable texts hidden as base64 runs in ``text``."""
    found: list[str] = []
    for match in _BASE64_RUN.finditer(text):
        run = match.group(0)[:limit]
        run = run[: len(run) - len(run) % 4]
        try:
            decoded = base64.b64decode(run, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if all(char.isprintable() or char.isspace() for char in decoded):
            found.append(decoded)
    return found


def _heuristics(text: str, options: DetectorOptions) -> _Evidence:
    evidence = _match_rules(text)
    for decoded in _decoded_base64(text, options.max_base64_chars):
        inner = _match_rules(decoded)
        if inner.hits:
            evidence.add("base64_payload", 0.5, decoded[:80])
            evidence.merge(inner, "base64:")
    return evidence


# --- embedding similarity ----------------------------------------------------------------------


def load_attack_corpus() -> list[str]:
    """The known-attack texts shipped in ``security/data/injection_attacks.jsonl``."""
    return [str(row["text"]) for row in load_jsonl("injection_attacks.jsonl")]


def load_jsonl(name: str) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file shipped in ``modelhost/security/data``.

    Args:
        name: the file name, e.g. ``injection_eval.jsonl``.
    """
    source = resources.files("modelhost.security").joinpath("data", name)
    lines = source.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def windows(text: str, words: int, limit: int) -> list[str]:
    """``text`` cut at sentence ends into windows of about ``words`` words, at most ``limit``.

    A short text is one window. Sentences are packed greedily; a sentence longer than a window
    is cut by words.
    """
    tokens = text.split()
    if len(tokens) <= words:
        return [text.strip() or text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        parts = sentence.split()
        pieces.extend(" ".join(parts[i : i + words]) for i in range(0, len(parts), words))
    out: list[str] = []
    current: list[str] = []
    for piece in pieces:
        if current and len(" ".join(current).split()) + len(piece.split()) > words:
            out.append(" ".join(current))
            current = []
        current.append(piece)
    if current:
        out.append(" ".join(current))
    return out[:limit]


def embedder_from_runtime(runtime: Runtime) -> Embedder:
    """An :class:`Embedder` over a loaded embeddings runtime (e.g. ``minilm``).

    Args:
        runtime: a loaded runtime whose ``predict`` returns ``{"embedding": [...]}`` per input.
    """

    def embed(texts: list[str]) -> NDArray[np.float32]:
        prediction = runtime.predict(list(texts), {"normalize": True})
        rows = [result["embedding"] for result in prediction.results]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)

    return embed


# --- the detector -------------------------------------------------------------------------------


class InjectionDetector:
    """Scores texts for prompt injection; thread-safe, the corpus is embedded once, lazily.

    Args:
        embed: the embedder (see :func:`embedder_from_runtime`); ``None`` for heuristics only.
        corpus: known attacks to compare with; the shipped corpus when omitted.
        options: tuning knobs.
    """

    def __init__(
        self,
        embed: Embedder | None = None,
        corpus: Sequence[str] | None = None,
        options: DetectorOptions | None = None,
    ) -> None:
        self._embed = embed
        self.corpus: tuple[str, ...] = tuple(corpus if corpus is not None else load_attack_corpus())
        self.options = options or DetectorOptions()
        self._matrix: NDArray[np.float32] | None = None
        self._lock = threading.Lock()

    @property
    def uses_embeddings(self) -> bool:
        """True when similarity to the attack corpus is part of the score."""
        return self._embed is not None and bool(self.corpus)

    def warm(self) -> None:
        """Embed the attack corpus now rather than on the first request."""
        self._corpus_matrix()

    def score(self, text: str) -> InjectionScore:
        """Score one text."""
        return self.score_many([text])[0]

    def score_many(self, texts: Iterable[str]) -> list[InjectionScore]:
        """Score texts; their windows are embedded in one batch.

        Args:
            texts: request texts (a prompt, or each user message of a chat).
        """
        items = list(texts)
        evidence = [_heuristics(text, self.options) for text in items]
        similarities = self._similarities(items)
        return [
            self._combine(found, similarity)
            for found, similarity in zip(evidence, similarities, strict=True)
        ]

    def score_request(self, texts: Iterable[str]) -> InjectionScore:
        """The highest score over the texts of one request (e.g. every user message).

        A request with no text scores 0.
        """
        scores = self.score_many(texts)
        if not scores:
            return InjectionScore(
                score=0.0, reasons=[] if self.uses_embeddings else [HEURISTICS_ONLY]
            )
        return max(scores, key=lambda item: item.score)

    def _corpus_matrix(self) -> NDArray[np.float32]:
        if self._matrix is None:
            with self._lock:
                if self._matrix is None and self._embed is not None:
                    self._matrix = _unit_rows(self._embed(list(self.corpus)))
        if self._matrix is None:
            raise ConfigError("the detector has no embedder")
        return self._matrix

    def _similarities(self, texts: list[str]) -> list[tuple[float, int] | None]:
        """Per text: the best cosine similarity to the corpus and the corpus index, or None."""
        if not self.uses_embeddings or not texts or self._embed is None:
            return [None] * len(texts)
        corpus = self._corpus_matrix()
        owners: list[int] = []
        chunks: list[str] = []
        for index, text in enumerate(texts):
            pieces = windows(text, self.options.window_words, self.options.max_windows)
            chunks.extend(pieces)
            owners.extend([index] * len(pieces))
        vectors = _unit_rows(self._embed(chunks))
        sims = vectors @ corpus.T
        best_col = sims.argmax(axis=1)
        best_val = sims[np.arange(len(chunks)), best_col]
        result: list[tuple[float, int] | None] = [None] * len(texts)
        for owner, value, col in zip(owners, best_val.tolist(), best_col.tolist(), strict=True):
            current = result[owner]
            if current is None or value > current[0]:
                result[owner] = (float(value), int(col))
        return result

    def _combine(self, evidence: _Evidence, similarity: tuple[float, int] | None) -> InjectionScore:
        heuristic = evidence.score()
        hits = evidence.strongest()
        reasons = [f"rule {name} ({weight:.2f}): {span[:60]!r}" for name, weight, span in hits]
        matched = hits[0][2] if hits else None
        if similarity is None:
            reasons.append(HEURISTICS_ONLY)
            return InjectionScore(score=round(heuristic, 4), reasons=reasons, matched=matched)
        value, index = similarity
        low, high = self.options.similarity_low, self.options.similarity_high
        semantic = min(1.0, max(0.0, (value - low) / (high - low)))
        total = 1.0 - (1.0 - heuristic) * (1.0 - semantic)
        if semantic > 0.0:
            reason = f"similarity {value:.2f} to known attack #{index} ({semantic:.2f})"
            if semantic >= heuristic:
                reasons.insert(0, reason)
                matched = self.corpus[index]
            else:
                reasons.append(reason)
        return InjectionScore(
            score=round(min(1.0, max(0.0, total)), 4),
            reasons=reasons,
            matched=matched,
            similarity=round(value, 4),
        )


def _unit_rows(matrix: NDArray[Any]) -> NDArray[np.float32]:
    """Rows scaled to unit length (zero rows stay zero)."""
    array = np.asarray(matrix, dtype=np.float32)
    if array.ndim != 2:
        raise ConfigError(f"the embedder returned shape {array.shape}, expected (n, d)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit: NDArray[np.float32] = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return unit
