"""Promotion and rollback of production versions, through the promotion gates, blue-green.

**Promote** (:meth:`Promoter.promote`): the candidate is loaded in this server and warmed
(:func:`~modelhost.registry.gates.warm`), then judged by the gates of
:mod:`modelhost.registry.gates` (golden set, schema compatibility with the current
production). A failed gate refuses the promotion with
:class:`~modelhost.errors.GateRefused`, whose report names every number and breaking change,
and writes ``promote.refused`` to the deployment history. ``force`` overrides failed gates
(never a failed load: a version that cannot load cannot serve); the promotion is then written
as ``promote.forced`` with the gates it skipped and their report. Only then does the switch
happen: the registry's stage (:meth:`~modelhost.registry.Registry.set_stage`, which archives
the former production) and the deployment's lineage (the former production first in
``previous``; the canary cleared when it is the promoted version).

**Blue-green**: the switch is a database change every replica applies on its next refresh;
this server applies it at once. The new version is ready here before the switch, and every
replica's router keeps sending requests to the former production until the new version is
ready on that replica, so no request meets a version that is still loading. The former
production stays loaded (``rollouts.keep_warm``) and requests already running on it finish
there: a switch loses no in-flight request.

**Rollback** (:meth:`Promoter.rollback`): production returns to the newest former production
version (``previous[0]``), or to ``to`` when it is one of the former production versions.
It skips the golden and compatibility gates (the target served production before), but the
target is loaded and warmed before the switch, and the rollback is written to the history
with what it skipped. The version rolled back *from* becomes ``previous[0]``, so a second
rollback undoes the first (and that version stays warm for it); ``previous`` keeps the
newest :data:`~modelhost.registry.deployments.KEEP_PREVIOUS` former versions, the newest
``rollouts.keep_warm`` of them loaded, so a rollback switches in well under a second, and a
colder one costs one model load.

Both are idempotent: promoting the production version, or rolling back to it, changes
nothing and says so (``changed`` is False). Promotions of one model are serialised in a
process; across replicas, the last switch wins and both are in the history.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import Conflict, GateRefused, RuntimeFailure, VersionNotFound
from modelhost.inference import InferenceRequest, new_id
from modelhost.registry import DeploymentSpec, Registry, RolloutState, Stage, VersionInfo
from modelhost.registry.deployments import KEEP_PREVIOUS
from modelhost.registry.gates import (
    GateReport,
    GateResult,
    Predict,
    load_result,
    run_gates,
    warm,
    warmup_inputs,
)
from modelhost.registry.golden import GoldenSet, GoldenStore, golden_of
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.models import Deployment, ModelState
from modelhost.serving.router import Arm, Route

#: The gates a rollback does not run (the target was production before).
ROLLBACK_SKIPS = ("golden", "compatibility")
#: The ``protocol`` of the requests the gates run (never live traffic).
GATE_PROTOCOL = "gate"


@dataclass(slots=True)
class PromotionReport:
    """What a promotion or rollback did."""

    model: str
    version: str
    """The production version now."""
    previous: str | None
    """The production version before (``version`` itself when nothing changed; None when
    the model had none)."""
    action: str
    """``promote`` or ``rollback``."""
    gates: dict[str, Any] = field(default_factory=dict)
    """The :class:`~modelhost.registry.gates.GateReport` as JSON (empty when nothing
    changed)."""
    forced: bool = False
    """Whether ``force`` overrode a failed gate."""
    skipped: list[str] = field(default_factory=list)
    """Gates whose verdict did not count: the failed gates a forced promotion overrode, or
    the gates a rollback does not run."""
    changed: bool = True
    """False when ``version`` was production already (nothing was done)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "model": self.model,
            "version": self.version,
            "previous": self.previous,
            "action": self.action,
            "gates": self.gates,
            "forced": self.forced,
            "skipped": self.skipped,
            "changed": self.changed,
        }


def _lineage(
    spec: DeploymentSpec, target: str, leaving: str | None, former: list[str]
) -> dict[str, Any]:
    """The deployment fields a switch to ``target`` changes: ``leaving`` (the production it
    replaces) first in ``previous``, ``target`` out of it, the canary cleared when it is
    ``target``."""
    kept = [v for v in former if v not in (target, leaving)]
    previous = ([leaving] if leaving is not None else []) + kept
    changes: dict[str, Any] = {"previous": tuple(previous[:KEEP_PREVIOUS])}
    if spec.canary == target:
        changes.update(
            canary=None,
            weight=0.0,
            ramp=None,
            ramp_step=0,
            state=RolloutState.STABLE,
            reason=None,
        )
    return changes


class Promoter:
    """Moves versions into production: load and warm first, gate, then switch.

    Args:
        registry: stages, versions and deployments.
        plane: runs the warm-up and the golden set on the loaded candidate (its manager
            loads it).
    """

    def __init__(self, registry: Registry, plane: DataPlane) -> None:
        self.registry = registry
        self.plane = plane
        self.golden = GoldenStore(registry.engine)
        """Registered golden sets (``PUT .../golden``; see
        :func:`~modelhost.registry.golden.register_golden`)."""
        self._locks: dict[str, asyncio.Lock] = {}

    # -- public --------------------------------------------------------------------------

    async def check(self, model: str, version: str) -> GateReport:
        """Load and warm ``model@version`` and run every gate, without switching anything
        (what a promotion would decide now).

        Raises:
            ModelNotFound, VersionNotFound: no such version.
        """
        info, production, _ = await self._state(model, version)
        return await self._gates(info, production)

    async def promote(
        self, model: str, version: str, *, actor: str, force: bool = False
    ) -> PromotionReport:
        """Gate ``version`` and make it production (see module docstring).

        Raises:
            ModelNotFound, VersionNotFound: no such version.
            GateRefused: a gate failed (and ``force`` is off), or the version does not load.
        """
        async with self._lock(model):
            info, production, spec = await self._state(model, version)
            if production is not None and production.version == version:
                return PromotionReport(model, version, version, "promote", changed=False)
            report = await self._gates(info, production)
            await self._refuse_unless(report, force=force, actor=actor)
            forced = not report.passed
            skipped = report.failed if forced else []
            detail = {
                "version": version,
                "from": production.version if production else None,
                "forced": forced,
                "force_requested": force,
                "skipped": skipped,
                "report": report.as_dict(),
            }
            leaving = production.version if production else None
            former = await self._former(model, spec, leaving)
            action = "promote.forced" if forced else "promote"
            await self._switch(
                info, spec, leaving, former, actor=actor, action=action, detail=detail
            )
            return PromotionReport(
                model,
                version,
                leaving,
                "promote",
                gates=report.as_dict(),
                forced=forced,
                skipped=skipped,
            )

    async def rollback(self, model: str, *, actor: str, to: str | None = None) -> PromotionReport:
        """Return production to the previous production version (or ``to``, one of the
        former production versions).

        Raises:
            ModelNotFound: no such model.
            Conflict: no production version, no former production version, or ``to`` never
                was production.
            GateRefused: the target does not load or does not answer its warm-up.
        """
        async with self._lock(model):
            info = await asyncio.to_thread(self.registry.get_model, model)
            production = info.stage_version(Stage.PRODUCTION)
            if production is None:
                raise Conflict(
                    f"model {model!r} has no production version, so there is nothing to roll "
                    "back; promote a version first",
                    param="model",
                )
            spec = await asyncio.to_thread(self.registry.deployments.get, model)
            former = await self._former(model, spec, production.version)
            target = self._target(model, production.version, former, to)
            if target == production.version:
                return PromotionReport(model, target, target, "rollback", changed=False)
            candidate = next((v for v in info.versions if v.version == target), None)
            if candidate is None:
                raise VersionNotFound(
                    f"model {model!r} has no version {target!r} any more", param="to"
                )
            report = GateReport(model, target, production.version)
            dep, loaded = await self._load(candidate)
            report.results.append(loaded)
            if loaded.passed:
                golden = await self._golden_quietly(candidate)
                report.results.append(
                    await warm(self._predictor(dep), warmup_inputs(candidate, golden))
                )
            if not report.passed:
                await self._record(model, "rollback.refused", actor, target, report)
                raise GateRefused(
                    f"cannot roll {model} back to {target}: {self._reasons(report)}; "
                    f"production stays {production.version}",
                    report=self._body(report),
                )
            detail = {
                "version": target,
                "from": production.version,
                "skipped": list(ROLLBACK_SKIPS),
                "report": report.as_dict(),
            }
            await self._switch(
                candidate,
                spec,
                production.version,
                former,
                actor=actor,
                action="rollback",
                detail=detail,
            )
            return PromotionReport(
                model,
                target,
                production.version,
                "rollback",
                gates=report.as_dict(),
                skipped=list(ROLLBACK_SKIPS),
            )

    # -- steps ---------------------------------------------------------------------------

    def _lock(self, model: str) -> asyncio.Lock:
        lock = self._locks.get(model)
        if lock is None:
            lock = self._locks[model] = asyncio.Lock()
        return lock

    async def _state(
        self, model: str, version: str
    ) -> tuple[VersionInfo, VersionInfo | None, DeploymentSpec]:
        """The candidate, the current production version and the deployment."""
        found = await asyncio.to_thread(self.registry.get_model, model)
        candidate = next((v for v in found.versions if v.version == version), None)
        if candidate is None:
            candidate = await asyncio.to_thread(self.registry.get_version, model, version)
        spec = await asyncio.to_thread(self.registry.deployments.get, model)
        return candidate, found.stage_version(Stage.PRODUCTION), spec

    async def _load(self, info: VersionInfo) -> tuple[Deployment, GateResult]:
        """Load ``info`` in this server (waiting for it) and the load gate's verdict."""
        started = time.perf_counter()
        dep = await self.plane.manager.load(info)
        ready = dep.state is ModelState.READY and dep.runtime is not None
        seconds = time.perf_counter() - started
        return dep, load_result(info.ref, ready, seconds, dep.error)

    def _predictor(self, dep: Deployment) -> Predict:
        """Runs inputs on ``dep`` as a request would: validated, then through the plane (its
        batcher and timeout), with no observers (gate runs are not live traffic). A cascade or
        feature version runs through the whole request path, pinned to the candidate (its
        stages or model are other versions); its run is recorded with protocol ``gate``,
        which usage, drift and rollout statistics leave out."""
        plane = self.plane

        async def predict(inputs: list[Any], parameters: dict[str, Any]) -> list[Any]:
            info = dep.info
            request = InferenceRequest(
                model=info.model,
                inputs=inputs,
                parameters=parameters,
                version=info.version,
                request_id=new_id(GATE_PROTOCOL),
                protocol=GATE_PROTOCOL,
            )
            if info.manifest.runtime in plane.handlers:  # composite: its work is other requests
                request.route = Route(info, Arm.PINNED)  # the candidate, loaded or not listed
                return list((await plane.infer(request)).results)
            merged = plane.validate(info, dep, request)
            prediction = await plane.predict(dep, inputs, merged)
            if len(prediction.results) != len(inputs):
                raise RuntimeFailure(
                    f"{info.ref} gave {len(prediction.results)} results for {len(inputs)} inputs"
                )
            return list(prediction.results)

        return predict

    async def _golden_quietly(self, info: VersionInfo) -> GoldenSet | None:
        """The golden set for warming up a rollback target; a broken one does not matter."""
        try:
            return await asyncio.to_thread(golden_of, self.registry, self.golden, info)
        except Exception:  # the rollback warms with what it has; gates do not run
            return None

    async def _gates(self, info: VersionInfo, production: VersionInfo | None) -> GateReport:
        """Load and warm the candidate, then run the golden and compatibility gates."""
        dep, loaded = await self._load(info)
        if not loaded.passed:
            against = production.version if production else None
            return GateReport(info.model, info.version, against, [loaded])
        golden: GoldenSet | None = None
        golden_error: GateResult | None = None
        try:
            golden = await asyncio.to_thread(golden_of, self.registry, self.golden, info)
        except Exception as exc:  # a broken golden set fails its gate; it is not a crash
            message = getattr(exc, "message", None) or repr(exc)
            golden_error = GateResult(
                "golden", False, f"the golden set cannot be read: {message}", failures=[message]
            )
        predict = self._predictor(dep)
        warmed = await warm(predict, warmup_inputs(info, golden))
        report = await run_gates(predict, info, golden, production, before=[loaded, warmed])
        if golden_error is not None:
            report.results = [golden_error if r.gate == "golden" else r for r in report.results]
        return report

    async def _refuse_unless(self, report: GateReport, *, force: bool, actor: str) -> None:
        """Raise :class:`GateRefused` (after writing ``promote.refused``) when a gate failed
        and ``force`` does not override it; a failed load is never overridden."""
        if report.passed:
            return
        loaded = report.result("load")
        unloadable = loaded is not None and not loaded.passed
        if force and not unloadable:
            return
        ref = f"{report.model}@{report.version}"
        await self._record(report.model, "promote.refused", actor, report.version, report)
        hint = (
            "--force does not skip loading: a version that cannot load cannot serve"
            if unloadable
            else "fix the version, or promote with --force (audited) to override"
        )
        raise GateRefused(
            f"{ref} may not become production: {self._reasons(report)}\n{report.text()}\n{hint}",
            report=self._body(report),
            param="version",
        )

    async def _former(self, model: str, spec: DeploymentSpec, current: str | None) -> list[str]:
        """Former production versions, newest first: the deployment's lineage, else (for a
        model switched with ``set_stage`` alone) the registry's stage history."""
        former = [v for v in spec.previous if v != current]
        if former:
            return former
        history = await asyncio.to_thread(self.registry.history, model, 500)
        for entry in history:
            if entry.action != "stage" or entry.from_value != Stage.PRODUCTION.value:
                continue
            if entry.version and entry.version != current and entry.version not in former:
                former.append(entry.version)
        return former[:KEEP_PREVIOUS]

    @staticmethod
    def _target(model: str, current: str, former: list[str], to: str | None) -> str:
        """Where a rollback goes: ``to``, else the newest former production version.

        Raises:
            Conflict: nowhere, or ``to`` never was production.
        """
        if to is None:
            if not former:
                raise Conflict(
                    f"model {model!r} has no former production version to roll back to "
                    f"(production is {current}, and nothing was production before it)",
                    param="model",
                )
            return former[0]
        if to != current and to not in former:
            raise Conflict(
                f"{model}@{to} is not a former production version (former: "
                f"{', '.join(former) or 'none'}); promote it through the gates instead",
                param="to",
            )
        return to

    async def _switch(
        self,
        target: VersionInfo,
        spec: DeploymentSpec,
        leaving: str | None,
        former: list[str],
        *,
        actor: str,
        action: str,
        detail: dict[str, Any],
    ) -> None:
        """Make ``target`` production, update the lineage (writing ``action`` to the
        history), and apply the change in this server at once."""
        model = target.model
        await asyncio.to_thread(
            self.registry.set_stage, model, target.version, Stage.PRODUCTION, actor=actor
        )
        changes = _lineage(spec, target.version, leaving, former)
        await asyncio.to_thread(
            lambda: self.registry.deployments.change(
                model, actor=actor, action=action, detail=detail, **changes
            )
        )
        await self.plane.manager.refresh()

    async def _record(
        self, model: str, action: str, actor: str, version: str, report: GateReport
    ) -> None:
        detail = {"version": version, "failed": report.failed, "report": report.as_dict()}
        await asyncio.to_thread(
            self.registry.deployments.record, model, action, actor=actor, detail=detail
        )

    @staticmethod
    def _reasons(report: GateReport) -> str:
        failed = [r for r in report.results if not r.passed]
        return "; ".join(f"{r.gate}: {r.failures[0] if r.failures else r.summary}" for r in failed)

    @staticmethod
    def _body(report: GateReport) -> dict[str, object]:
        return {**report.as_dict(), "text": report.text()}
