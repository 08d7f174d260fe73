"""Handlers of composite versions: versions whose work is other requests.

A ``runtime: cascade`` or ``runtime: feature`` version is routed, checked and validated like
any model by :meth:`DataPlane.prepare <modelhost.serving.dataplane.DataPlane.prepare>`; then,
instead of a runtime call, the handler registered for its runtime kind answers it, calling
models through the data plane as child requests. The data plane finishes the answer like any
other (metrics, the record, the response cache), so a handler only says what it answered.
Handlers are given to the data plane by the composition root; the data plane knows none of
them by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from modelhost.inference import Usage

if TYPE_CHECKING:
    from modelhost.manifest import RuntimeKind
    from modelhost.serving.dataplane import Admitted, DataPlane


@dataclass(slots=True)
class Composed:
    """What a handler answered."""

    results: list[Any]
    usage: Usage
    """What the caller is shown: the child calls' tokens and cost, with the handler's own."""
    decision: tuple[str, dict[str, Any]]
    """The decision the answer carries (``("cascade", {...})``, ``("feature", {...})``): in
    the response body and the provenance record."""
    recorded: Usage = field(default_factory=Usage)
    """The usage of the composite version's own record: the child calls carry their own
    cost in theirs, so nothing is counted twice."""
    prefix: str = "pred"
    """The prefix of the response id."""


class Handler(ABC):
    """Answers the requests of one composite runtime kind."""

    kind: ClassVar[RuntimeKind]
    """The runtime kind it answers."""
    screens: ClassVar[bool] = False
    """Whether the composite's own request passes the scope, limits, budget and input guards
    (False when every child request passes them anyway)."""

    def cache_parameters(self, admitted: Admitted) -> dict[str, Any] | None:
        """What the response cache keys an answer by, with the inputs (None: never cached).

        Called after screening (``admitted.principal`` is the caller's)."""
        return None

    @abstractmethod
    async def answer(self, plane: DataPlane, admitted: Admitted) -> Composed:
        """Answer an admitted request through ``plane`` (child requests).

        Raises:
            ModelhostError: as the caller would get it.
        """
