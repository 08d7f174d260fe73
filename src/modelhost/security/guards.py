"""Output guards: personal-data redaction and a blocked-content policy, per model.

An :class:`OutputGuard` is built once per model version from its :class:`OutputGuardConfig`
(the manifest's ``guards.output``) and applied to what the model returns:

- whole outputs: :meth:`OutputGuard.apply` on one text, :meth:`OutputGuard.apply_json` on a
  result of any JSON shape (every string inside is guarded, numbers are left alone), and
  :meth:`OutputGuard.enforce`, which raises :class:`ContentBlocked` instead of returning a
  blocked result;
- streams: :meth:`OutputGuard.stream` returns a :class:`StreamRedactor`, fed text pieces as they
  are generated. It holds back only the tail that could still become (part of) a match, so a
  card number or an address split across pieces is still redacted, and the concatenation of
  what it emits is exactly ``apply(full_text).text`` however the text was cut.

Both paths run the same left-to-right scan. Each detector (see :mod:`.pii`) has a bounded match
length and look-around, so whether a match starts at a position is decided once enough text has
arrived after it; ``apply`` is that scan with the whole text known. Overlapping matches of
different kinds are merged into one redaction, so no part of any detected value survives.

Results say what was redacted as counts by kind (``{"email": 2}``), never the values.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelhost.errors import ModelhostError
from modelhost.security.pii import PII_DETECTORS, Detector, PiiKind, compile_detector

if TYPE_CHECKING:  # runtimes import the manifest, which embeds OutputGuardConfig
    from modelhost.runtimes.base import StreamChunk

#: The ``redactions`` key counting blocked content replaced under ``on_blocked: redact``.
BLOCKED = "blocked"
#: Whitespace inside a blocked term matches this many whitespace characters.
_TERM_SPACE = r"\s{1,3}"
#: Blocked content wins over any personal data it overlaps when the redaction is labelled.
_BLOCKED_PRIORITY = 9


class OnBlocked(StrEnum):
    """What happens when the output contains blocked content."""

    BLOCK = "block"  #: withhold the whole output; the caller gets a ``content_blocked`` error
    REDACT = "redact"  #: replace each match like personal data, counted as ``blocked``


class ContentBlocked(ModelhostError):
    """The model's output matched its blocked-content policy and was withheld.

    Not the caller's mistake (the request was valid) and not a failure of the service, so it is
    neither a ``RequestError`` nor a ``ServiceError``. The message never quotes the content.
    """

    def __init__(
        self, message: str = "the model's output was withheld by its content policy"
    ) -> None:
        super().__init__(message)


def _term_source(terms: Iterable[str]) -> str:
    """One case-insensitive, whole-word alternation of every term, longest first."""
    parts = {_TERM_SPACE.join(re.escape(word) for word in term.split()) for term in terms}
    return r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)"


def _terms_detector(terms: Iterable[str]) -> Detector:
    """Matches consist of the terms' characters (in any case) and whitespace."""
    chars = {re.escape(char) for term in terms for char in term if not char.isspace()}
    return compile_detector(
        BLOCKED,
        _term_source(terms),
        flags=re.IGNORECASE,
        alphabet="".join(sorted(chars)) + r"\s",
        priority=_BLOCKED_PRIORITY,
    )


def _pattern_detector(source: str) -> Detector:
    return compile_detector(BLOCKED, source, priority=_BLOCKED_PRIORITY)


class OutputGuardConfig(BaseModel):
    """The output guard of one model: what to redact and what to block."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    redact: list[PiiKind] = Field(default_factory=lambda: list(PiiKind))
    """Kinds of personal data replaced in every output; ``[]`` turns redaction off."""
    replacement: str = "[REDACTED:{kind}]"
    """Text put in place of each redacted span; ``{kind}`` becomes the kind (``email``, ...)."""
    blocked_terms: list[str] = Field(default_factory=list)
    """Words or phrases that must not appear: case-insensitive, whole words only, a space in a
    term matching one to three whitespace characters."""
    blocked_patterns: list[str] = Field(default_factory=list)
    """Regular expressions (Python syntax, case-sensitive unless ``(?i)``) of content that must
    not appear; each must match at most 256 characters and use no ``^``/``$`` anchors."""
    on_blocked: OnBlocked = OnBlocked.BLOCK
    """``block`` withholds the whole output (the caller gets ``content_blocked``); ``redact``
    replaces each blocked match like personal data."""

    @field_validator("replacement")
    @classmethod
    def _check_replacement(cls, value: str) -> str:
        try:
            value.format(kind="email")
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                "use {kind} as the only placeholder (write {{ and }} for literal braces)"
            ) from None
        return value

    @field_validator("blocked_terms")
    @classmethod
    def _check_terms(cls, value: list[str]) -> list[str]:
        for index, term in enumerate(value):
            if not term.strip():
                raise ValueError(f"item {index} is empty: remove it")
        if value:
            _terms_detector(value)
        return value

    @field_validator("blocked_patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        for index, source in enumerate(value):
            try:
                _pattern_detector(source)
            except ValueError as exc:
                raise ValueError(f"item {index} ({source!r}): {exc}") from None
        return value

    @property
    def active(self) -> bool:
        """True when the guard can change an output; an inactive guard may be skipped."""
        return bool(self.redact or self.blocked_terms or self.blocked_patterns)


@dataclass(frozen=True, slots=True)
class GuardResult:
    """One guarded text.

    Attributes:
        text: the text with every match replaced; empty when ``blocked``.
        redactions: how many spans of each kind were replaced, e.g. ``{"email": 1}``.
        blocked: the text matched blocked content under ``on_blocked: block`` and was withheld.
    """

    text: str
    redactions: dict[str, int] = field(default_factory=dict)
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class JsonGuardResult:
    """One guarded JSON value (a result object, a list of results, ...).

    Attributes:
        value: a copy with every string guarded (tuples become lists); ``None`` when blocked.
        redactions: counts by kind over all the strings.
        blocked: some string matched blocked content under ``on_blocked: block``.
    """

    value: Any
    redactions: dict[str, int] = field(default_factory=dict)
    blocked: bool = False


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Sum redaction counts by kind, e.g. of every result of a batch."""
    total: dict[str, int] = {}
    for one in counts:
        for kind, count in one.items():
            total[kind] = total.get(kind, 0) + count
    return total


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a guard compiled from its config, shared by every scan."""

    detectors: tuple[Detector, ...]
    replacements: Mapping[str, str]
    blocks: bool
    context: int


class OutputGuard:
    """The compiled output guard of one model; cheap to share between threads."""

    def __init__(self, config: OutputGuardConfig) -> None:
        self.config = config
        detectors = [PII_DETECTORS[kind] for kind in dict.fromkeys(config.redact)]
        if config.blocked_terms:
            detectors.append(_terms_detector(config.blocked_terms))
        detectors.extend(_pattern_detector(source) for source in config.blocked_patterns)
        self._plan = _Plan(
            detectors=tuple(detectors),
            replacements={d.kind: config.replacement.format(kind=d.kind) for d in detectors},
            blocks=config.on_blocked is OnBlocked.BLOCK,
            context=max((d.behind for d in detectors), default=0) + 1,
        )

    def apply(self, text: str) -> GuardResult:
        """Guard one whole text."""
        if not self._plan.detectors:
            return GuardResult(text)
        scan = _Scan(self._plan)
        guarded = scan.push(text, final=True)
        if scan.blocked:
            return GuardResult("", blocked=True)
        return GuardResult(guarded, scan.counts)

    def apply_json(self, value: Any) -> JsonGuardResult:
        """Guard every string inside ``value``; dict keys, numbers, booleans and null are kept."""
        counts: dict[str, int] = {}
        try:
            guarded = self._walk(value, counts)
        except ContentBlocked:
            return JsonGuardResult(None, blocked=True)
        return JsonGuardResult(guarded, counts)

    def enforce(self, value: Any) -> JsonGuardResult:
        """Like :meth:`apply_json`, for the request path: a blocked output raises.

        Raises:
            ContentBlocked: some string inside ``value`` matched blocked content and the
                policy is ``block``.
        """
        result = self.apply_json(value)
        if result.blocked:
            raise ContentBlocked()
        return result

    def stream(self) -> StreamRedactor:
        """A redactor for one streamed output."""
        return StreamRedactor(self)

    def _walk(self, value: Any, counts: dict[str, int]) -> Any:
        if isinstance(value, str):
            result = self.apply(value)
            if result.blocked:
                raise ContentBlocked()
            for kind, count in result.redactions.items():
                counts[kind] = counts.get(kind, 0) + count
            return result.text
        if isinstance(value, dict):
            return {key: self._walk(item, counts) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(item, counts) for item in value]
        return value


class StreamRedactor:
    """Guards one streamed output, piece by piece.

    ``feed`` returns the text that is safe to send now, ``finish`` the rest. Joined, they equal
    ``guard.apply(full_text).text`` for any cutting of the text. Under ``on_blocked: block``,
    once blocked content is seen nothing more is emitted and :attr:`blocked` turns true; what
    was emitted before is a prefix of the redacted output that stops before the blocked span.
    """

    def __init__(self, guard: OutputGuard) -> None:
        self._guard = guard
        self._scan = _Scan(guard._plan)
        self._finished = False

    @property
    def redactions(self) -> dict[str, int]:
        """Counts by kind of what was replaced in the text emitted so far."""
        return dict(self._scan.counts)

    @property
    def blocked(self) -> bool:
        """True once blocked content was seen under ``on_blocked: block``."""
        return self._scan.blocked

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` was called."""
        return self._finished

    def feed(self, piece: str) -> str:
        """Take the next piece of generated text; return what can be sent now (maybe ``""``).

        Raises:
            RuntimeError: called after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("StreamRedactor.feed() after finish()")
        return self._scan.push(piece, final=False)

    def finish(self) -> str:
        """The output is complete: return the text still held back."""
        if self._finished:
            return ""
        self._finished = True
        return self._scan.push("", final=True)

    def wrap(self, chunks: Iterable[StreamChunk]) -> Iterator[StreamChunk]:
        """Guard a runtime's chunks: the held-back tail rides on the chunk that finishes.

        Chunks whose text is held back entirely are dropped unless they carry a finish reason or
        usage. Run it where the runtime's iterator runs (a worker thread), not on the event loop.

        Raises:
            ContentBlocked: blocked content was seen; the chunks before it were yielded.
        """
        last: StreamChunk | None = None
        for chunk in chunks:
            last = chunk
            out = self._step(chunk)
            if out or chunk.finish_reason is not None or chunk.usage is not None:
                yield replace(chunk, text=out)
        tail = self.finish()
        self._check()
        if tail and last is not None:
            yield replace(last, text=tail, finish_reason=None, usage=None)

    async def awrap(self, chunks: AsyncIterable[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """:meth:`wrap` for an async iterator of chunks.

        Raises:
            ContentBlocked: blocked content was seen; the chunks before it were yielded.
        """
        last: StreamChunk | None = None
        async for chunk in chunks:
            last = chunk
            out = self._step(chunk)
            if out or chunk.finish_reason is not None or chunk.usage is not None:
                yield replace(chunk, text=out)
        tail = self.finish()
        self._check()
        if tail and last is not None:
            yield replace(last, text=tail, finish_reason=None, usage=None)

    def _step(self, chunk: StreamChunk) -> str:
        """Guard one chunk's text; a finishing chunk also flushes the tail."""
        if self._finished:  # text after the finishing chunk is guarded on its own
            result = self._guard.apply(chunk.text)
            self._scan.add(result.redactions)
            if result.blocked:
                raise ContentBlocked()
            return result.text
        out = self.feed(chunk.text)
        if chunk.finish_reason is not None:
            out += self.finish()
        self._check()
        return out

    def _check(self) -> None:
        if self.blocked:
            raise ContentBlocked()


@dataclass(slots=True)
class _Span:
    """A validated match, or several overlapping ones merged, in absolute offsets."""

    start: int
    end: int
    kind: str
    rank: tuple[int, int]  # (length, priority): the label of a merge is its highest rank

    def absorb(self, other: _Span) -> None:
        self.end = max(self.end, other.end)
        if other.rank > self.rank:
            self.kind, self.rank = other.kind, other.rank


class _Scan:
    """The left-to-right scan behind ``apply`` (one final push) and streams (many pushes).

    Offsets are absolute in the whole output; ``_text`` holds it from ``_base`` on: the text not
    yet emitted plus ``context`` characters before it for look-behinds. Per detector, ``_next``
    is where its search resumes; every match starting before it is known. Matches starting
    before the smallest ``_next`` (the frontier) are resolved and emitted.
    """

    __slots__ = (
        "_base",
        "_emitted",
        "_next",
        "_open",
        "_pending",
        "_plan",
        "_text",
        "blocked",
        "counts",
    )

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._text = ""
        self._base = 0
        self._next = [0] * len(plan.detectors)
        self._pending: list[_Span] = []
        self._open: _Span | None = None
        self._emitted = 0
        self.counts: dict[str, int] = {}
        self.blocked = False

    def add(self, counts: Mapping[str, int]) -> None:
        """Count redactions made outside this scan."""
        self.counts = merge_counts(self.counts, counts)

    def push(self, piece: str, *, final: bool) -> str:
        """Append ``piece``; return the output that is decided (all of it when ``final``)."""
        if self.blocked:
            return ""
        self._text += piece
        end = self._base + len(self._text)
        for index, detector in enumerate(self._plan.detectors):
            self._search(index, detector, end, final)
            if self.blocked:
                return ""
        frontier = end if final else min(self._next, default=end)
        out = self._resolve(frontier, final)
        keep = self._emitted - self._plan.context
        if keep > self._base:
            self._text = self._text[keep - self._base :]
            self._base = keep
        return out

    def _search(self, index: int, detector: Detector, end: int, final: bool) -> None:
        """Find the matches of one detector whose outcome can no longer change."""
        text, base = self._text, self._base
        limit = end if final else self._undecided(detector, self._next[index], end)
        pos = self._next[index]
        while (match := detector.pattern.search(text, pos - base)) is not None:
            start = match.start() + base
            if start >= limit:
                break
            stop = detector.validate(match)
            if stop is None:
                pos = start + 1
                continue
            if detector.kind == BLOCKED and self._plan.blocks:
                self.blocked = True
                return
            stop += base
            self._pending.append(
                _Span(start, stop, detector.kind, (stop - start, detector.priority))
            )
            pos = stop
        self._next[index] = max(pos, limit)

    def _undecided(self, detector: Detector, start: int, end: int) -> int:
        """The first position from ``start`` on where a match could still depend on text
        not yet seen.

        A match attempt at ``p`` only moves over characters of the detector's alphabet, at most
        ``width`` of them, and from where it stands reads the next character and look-arounds
        up to ``ahead`` characters on. It is decided once everything it can read is here: when
        ``p`` is ``width + ahead`` characters before the end, or when a character outside the
        alphabet ends its run ``ahead`` characters before the end.
        """
        margin = max(detector.ahead, 1)
        lowest = max(start, end - detector.width - margin + 1)
        stop = end - margin + 1  # the run must reach ``end - margin`` to stay open
        if detector.tail is None or stop <= lowest:
            return lowest
        found = detector.tail.search(self._text, lowest - self._base, stop - self._base)
        return lowest if found is None else max(lowest, found.start() + 1 + self._base)

    def _resolve(self, frontier: int, final: bool) -> str:
        """Merge and replace the matches starting before ``frontier``; emit decided text."""
        ready = [span for span in self._pending if span.start < frontier]
        if ready:
            self._pending = [span for span in self._pending if span.start >= frontier]
            ready.sort(key=lambda span: (span.start, span.rank))
        out: list[str] = []
        for span in ready:
            if self._open is not None and span.start < self._open.end:
                self._open.absorb(span)
                continue
            self._close(out)
            self._open = span
        if self._open is not None and (final or self._open.end <= frontier):
            self._close(out)
        limit = frontier if self._open is None else self._open.start
        if limit > self._emitted:
            out.append(self._raw(self._emitted, limit))
            self._emitted = limit
        return "".join(out)

    def _close(self, out: list[str]) -> None:
        span = self._open
        if span is None:
            return
        out.append(self._raw(self._emitted, span.start))
        out.append(self._plan.replacements[span.kind])
        self.counts[span.kind] = self.counts.get(span.kind, 0) + 1
        self._emitted = span.end
        self._open = None

    def _raw(self, start: int, stop: int) -> str:
        return self._text[start - self._base : stop - self._base]
