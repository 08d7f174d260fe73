"""Sandboxed Jinja2 prompt templates in which caller values are only ever fenced data.

A feature's prompt is a Jinja2 template written by the feature's author (trusted) and filled
with a caller's input (untrusted). The author needs loops and conditions over the input
(``{% for m in input.messages %}``), so the simple slot templates of
:mod:`modelhost.security.prompts` are not enough; but the injection defence must stay the same:
every value an expression prints is wrapped in a fence with this render's random boundary (see
:func:`modelhost.security.prompts.fence`), so the model is told it is data, never instructions.

How it holds:

* The environment's ``finalize`` hook sees every value printed by ``{{ ... }}`` and fences it,
  unless it is a trusted value from the spec (``extra``), which is wrapped in a marker type when
  the render starts. Anything computed from a trusted value (``feature ~ input.x``,
  ``feature | upper``) is a plain string again, so it is fenced too: the rule fails closed.
* Jinja never re-reads its output, so ``{{ 7*7 }}`` or ``{% raw %}`` inside a value stays
  literal text inside its fence.
* The :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` blocks ``__class__``-style
  attribute walks and mutation of the input; such templates fail with :class:`ManifestError`.
* Tags that would rewrite or escape already fenced output (``{% filter %}``,
  ``{% autoescape %}``) or load other templates (``include``, ``extends``, ``import``) are
  refused when the template is compiled.
* The caller's input is copied into plain ``dict``/``list``/``str`` values first, so no object
  of the caller's choosing (nor a smuggled marker string) reaches the template.

Example::

    template = FeatureTemplate("Classify this ticket:\\n{{ input.subject }}\\n{{ input.body }}")
    rendered = template.render(ticket, examples=[(example_ticket, {"urgency": "low"})])
    messages = rendered.messages(instructions="You triage support tickets.")
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
    pass_context,
)
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelhost.errors import ConfigError, InvalidInput, ManifestError
from modelhost.security.prompts import data_preamble, fence, new_boundary

#: The name under which the caller's input is visible to a template.
INPUT_NAME = "input"

# A context key no template expression can spell, so only finalize can read the boundary.
_BOUNDARY_KEY = "fence boundary"
_REFUSED_NODES: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.FilterBlock, "{% filter %} blocks"),
    (nodes.EvalContextModifier, "{% autoescape %} blocks"),
    (nodes.Include, "{% include %}"),
    (nodes.Extends, "{% extends %}"),
    (nodes.Import, "{% import %}"),
    (nodes.FromImport, "{% from ... import %}"),
)
_UNDEFINED_ATTRIBUTE = re.compile(r"has no (?:attribute|element) '?(.*?)'?$")
_UNDEFINED_NAME = re.compile(r"^'(.*)' is undefined$")


class _Trusted(str):
    """A string from the feature's spec, printed as it is."""

    __slots__ = ()


class _TrustedDict(dict[Any, Any]):
    """A mapping from the feature's spec, printed as JSON without a fence."""


class _TrustedList(list[Any]):
    """A list from the feature's spec, printed as JSON without a fence."""


def _json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys, or ``str(value)`` for non-JSON objects."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


def _trusted(value: Any) -> Any:
    """``value`` with every string, mapping and list marked as coming from the spec."""
    if isinstance(value, str):
        return _Trusted(value)
    if isinstance(value, Mapping):
        return _TrustedDict({_trusted(k): _trusted(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return _TrustedList(_trusted(item) for item in value)
    return value


def _plain(value: Any, path: str) -> Any:
    """A copy of the caller's ``value`` made of plain JSON types only.

    Raises:
        InvalidInput: a key is not a string, or a value is not a JSON value.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # drops any str subclass, the trusted marker included
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput("object keys are strings", param=path)
            copy[str(key)] = _plain(item, f"{path}.{key}")
        return copy
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise InvalidInput(f"{type(value).__name__} is not a JSON value", param=path)


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Fence every printed value except trusted spec values (Jinja's ``finalize`` hook)."""
    if isinstance(value, _Trusted):
        return value
    if isinstance(value, _TrustedDict | _TrustedList):
        return _json(value)
    if isinstance(value, Undefined):
        return str(value)  # StrictUndefined raises here: UndefinedError or SecurityError
    text = value if isinstance(value, str) else _json(value)
    return fence(text, str(context.get(_BOUNDARY_KEY)))


def _missing_field(message: str) -> str | None:
    """The field name in a Jinja ``UndefinedError`` message, when it names one."""
    match = _UNDEFINED_ATTRIBUTE.search(message) or _UNDEFINED_NAME.search(message)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class RenderedFeaturePrompt:
    """One render of a :class:`FeatureTemplate`: what the model is sent for one call.

    Few-shot examples are rendered by the same template with the same boundary, so the model
    sees each example's input exactly as it will see the live input: fenced.
    """

    #: The data preamble that tells the model what this render's fences mean.
    system: str
    #: The rendered template: the author's text with every printed value fenced.
    user: str
    #: The fence id used by this render.
    boundary: str
    #: ``(user text, assistant text)`` per few-shot example: the example input rendered like
    #: :attr:`user`, and the example output as compact JSON.
    examples: tuple[tuple[str, str], ...] = ()

    def messages(self, instructions: str | None = None) -> list[dict[str, str]]:
        """The chat to send: system, then one user/assistant pair per example, then the user.

        Args:
            instructions: the spec's instructions, appended to the data preamble in the
                system message.
        """
        system = f"{self.system}\n\n{instructions}" if instructions else self.system
        chat = [{"role": "system", "content": system}]
        for user, assistant in self.examples:
            chat.append({"role": "user", "content": user})
            chat.append({"role": "assistant", "content": assistant})
        chat.append({"role": "user", "content": self.user})
        return chat


@dataclass(frozen=True, slots=True)
class FeatureTemplate:
    """A feature's prompt template, compiled once and rendered per call.

    The template sees the caller's input as ``input`` and each trusted ``extra`` value under
    its own name. The template's text is kept verbatim (a trailing newline included).

    Raises:
        ManifestError: the source is not valid Jinja2 (the message names the line), or it uses
            a refused tag.
    """

    source: str
    name: str = "template"
    _template: Template = field(init=False, repr=False, compare=False)
    _variables: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        environment = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined,
            autoescape=False,
            finalize=_finalize,
            keep_trailing_newline=True,
        )
        try:
            tree = environment.parse(self.source)
            template = environment.from_string(tree)
        except TemplateSyntaxError as exc:
            raise ManifestError(
                f"{self.name} line {exc.lineno}: {exc.message}", param=self.name
            ) from None
        for node_type, label in _REFUSED_NODES:
            found = tree.find(node_type)
            if found is not None:
                raise ManifestError(
                    f"{self.name} line {found.lineno}: {label} are not allowed in a feature "
                    "template",
                    param=self.name,
                )
        undeclared = meta.find_undeclared_variables(tree) - environment.globals.keys()
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_variables", frozenset(undeclared))

    @property
    def digest(self) -> str:
        """The sha256 (hex) of the source: identifies the template in a spec version."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def variables(self) -> frozenset[str]:
        """The top-level names the template reads: ``input`` and the ``extra`` names."""
        return self._variables

    def render(
        self,
        data: Mapping[str, Any],
        *,
        boundary: str | None = None,
        extra: Mapping[str, Any] | None = None,
        examples: Sequence[tuple[Mapping[str, Any], Any]] = (),
    ) -> RenderedFeaturePrompt:
        """Render the template over the caller's input.

        Args:
            data: the caller's input (already checked against the feature's input schema).
            boundary: fence id; a fresh random one when omitted (tests pass one to compare).
            extra: trusted values from the spec (``feature``, ``examples``, ...), printed as
                they are; strings, mappings and lists inside are trusted too.
            examples: ``(input, output)`` few-shot pairs from the spec, rendered with the same
                boundary (see :meth:`RenderedFeaturePrompt.messages`).

        Raises:
            InvalidInput: the input lacks a field the template prints (named in ``param``),
                or the template fails on this input.
            ManifestError: the template reaches outside the sandbox, reads a name that is
                neither ``input`` nor in ``extra``, or an example does not render.
            ConfigError: ``extra`` uses the reserved name ``input``.
        """
        trusted = self._trusted_extra(extra or {})
        fence_id = boundary or new_boundary()
        user = self._render(_plain(data, INPUT_NAME), fence_id, trusted)
        rendered_examples: list[tuple[str, str]] = []
        for index, (example_input, example_output) in enumerate(examples):
            try:
                text = self._render(_plain(example_input, INPUT_NAME), fence_id, trusted)
            except InvalidInput as exc:
                raise ManifestError(
                    f"{self.name}: example {index} does not render: {exc.message}",
                    param=f"examples[{index}]",
                ) from None
            rendered_examples.append((text, _json(example_output)))
        return RenderedFeaturePrompt(
            system=data_preamble(fence_id),
            user=user,
            boundary=fence_id,
            examples=tuple(rendered_examples),
        )

    def _trusted_extra(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """``extra`` marked trusted, after checking it covers every name the template reads."""
        if INPUT_NAME in extra:
            raise ConfigError(f"extra may not define {INPUT_NAME!r}", param="extra")
        unknown = self._variables - extra.keys() - {INPUT_NAME}
        if unknown:
            raise ManifestError(
                f"{self.name} reads undefined names {sorted(unknown)}", param=self.name
            )
        return {name: _trusted(value) for name, value in extra.items()}

    def _render(self, data: Any, boundary: str, trusted: Mapping[str, Any]) -> str:
        """The template rendered over plain ``data``, errors mapped onto the exception tree."""
        context = {**trusted, INPUT_NAME: data, _BOUNDARY_KEY: boundary}
        try:
            return self._template.render(context)
        except SecurityError as exc:
            raise ManifestError(
                f"{self.name} is not allowed to do this: {exc.message}", param=self.name
            ) from None
        except UndefinedError as exc:
            missing = _missing_field(str(exc.message))
            if missing is None:
                raise InvalidInput(
                    f"the input lacks a field {self.name} needs: {exc.message}", param=INPUT_NAME
                ) from None
            raise InvalidInput(
                f"the input has no field {missing!r}, which {self.name} needs", param=missing
            ) from None
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise InvalidInput(
                f"{self.name} could not render this input: {exc}", param=INPUT_NAME
            ) from None
