"""Shadow versions: copies of answered live requests, run off the hot path and compared.

A deployment may name *shadow* versions (``DeploymentSpec.shadows``). After the data plane
answered a live request routed to a model with shadows, it hands a copy to the
:class:`ShadowRunner` (:meth:`ShadowRunner.offer`), which only appends it to a bounded queue:
when the queue is full the copy is dropped and counted, never waited for. The caller's
response is built and sent before, and nothing of the shadow's ever reaches it.

Consumer tasks take copies from the queue. For each copy and each shadow version, the runner

1. waits for slack: shadows run on spare capacity only (see below);
2. skips it (counted by reason) when the shadow is not loaded here (and starts loading it),
   or when the shadow's own schema or limits refuse the request;
3. runs the shadow's runtime on the inputs the primary ran on, in the runner's own thread
   pool (``workers`` threads), under the shadow's timeout: a slow or hung shadow can only
   occupy its own threads, never the inference pool that callers wait on; the shadow's output
   guard applies, as it would in production;
4. compares each item's result with the primary's (:func:`items_agree`): labels for
   classification, closeness for numbers and vectors, canonical JSON otherwise; and keeps
   the runtime seconds of both sides.

Not waiting for a shadow is not enough to leave callers' latency alone: the shadow's model
shares the replica's CPU and, for Python models, its GIL, so a caller whose request arrives
while a shadow call runs waits for it, and on a busy replica callers pay for the shadow's
whole cost. Two limits keep shadows on spare capacity:

* a budget: shadow calls take at most ``max_share`` of the replica's time (their wall time,
  refilled continuously), so at most about that share of callers can overlap one;
* a wait for slack: the runner measures how long the event loop takes to come back to it (a
  hop to its thread and back, and the return of every shadow call; a moving average), which
  is how long a caller's next step would wait now. Above ``max_lag_s`` the next call waits,
  probing less and less often, up to ``hold_s``, then runs anyway (a saturated replica still
  samples about one copy a second per worker).

Meanwhile the queue fills and further copies are dropped and counted: a quiet replica shadows
every copy, a busy one samples, and the report's ``dropped`` says how much.

A shadow call emits no :class:`~modelhost.inference.InferenceEvent`: it is not a
request, so provenance, usage, drift, rollout guards and budgets never count it, and nobody
is charged for it. Counts go to :class:`~modelhost.rollouts.stats.ShadowStats` and,
every ``rollouts.stats_flush_s``, to the tables every replica shares, where
:meth:`ShadowRunner.report` (and ``modelhost deploy status``) sums them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import numbers
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter

from modelhost.components import Component
from modelhost.config import RolloutSettings
from modelhost.errors import InferenceTimeout, InvalidInput, ModelhostError, PayloadTooLarge
from modelhost.manifest import Task
from modelhost.registry import VersionInfo
from modelhost.rollouts.stats import (
    PERIOD_S,
    ShadowExample,
    ShadowReport,
    ShadowStats,
    default_replica,
)
from modelhost.rollouts.store import ShadowStore
from modelhost.runtimes import Prediction, Runtime
from modelhost.serving.batching import CallObserver, observed_predict
from modelhost.serving.models import Deployment, ModelState
from modelhost.serving.router import Route, ShadowSink

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from modelhost.inference import InferenceRequest
    from modelhost.serving.dataplane import DataPlane

log = logging.getLogger("modelhost.shadow")

#: Vectors (two or more numbers) agree when their cosine similarity is at least this...
COSINE_MIN = 0.999
#: ... and their lengths differ by at most this share of the longer one.
NORM_REL_TOL = 0.01
#: Scalars agree within this relative tolerance ...
REL_TOL = 1e-3
#: ... or this absolute one (for numbers near zero).
ABS_TOL = 1e-9
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class ShadowOutcome(StrEnum):
    """What became of one copy on one shadow version (the ``outcome`` metrics label)."""

    AGREE = "agree"  #: the shadow answered and every item agreed with the primary
    DISAGREE = "disagree"  #: the shadow answered and at least one item differed
    ERROR = "error"  #: the shadow failed (raised, timed out, its output guard blocked)
    DROPPED = "dropped"  #: never run: the queue was full, or the process stopped first
    SKIPPED = "skipped"  #: not run: the shadow was not ready or refused the input


# -- comparison -------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Arrays as lists (a runtime may answer with numpy values)."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _vectors_close(a: list[Any], b: list[Any]) -> bool:
    dot = math.fsum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    norm_a = math.sqrt(math.fsum(float(x) ** 2 for x in a))
    norm_b = math.sqrt(math.fsum(float(y) ** 2 for y in b))
    longer = max(norm_a, norm_b)
    if longer <= ABS_TOL:
        return True  # both (nearly) zero
    if abs(norm_a - norm_b) > NORM_REL_TOL * longer:
        return False
    return dot / (norm_a * norm_b) >= COSINE_MIN if norm_a and norm_b else False


def _sequences_close(a: list[Any] | tuple[Any, ...], b: list[Any] | tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    if len(a) >= 2 and all(map(_number, a)) and all(map(_number, b)):
        return _vectors_close(list(a), list(b))
    return all(close(x, y) for x, y in zip(a, b, strict=True))


def close(a: Any, b: Any) -> bool:
    """Whether two results (or parts of them) mean the same: scalars within :data:`REL_TOL`,
    vectors of numbers by cosine (:data:`COSINE_MIN`) and length, mappings and sequences part
    by part, anything else as canonical JSON."""
    a, b = _plain(a), _plain(b)
    if _number(a) and _number(b):
        return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return _sequences_close(a, b)
    try:
        return orjson.dumps(a, option=_CANONICAL) == orjson.dumps(b, option=_CANONICAL)
    except TypeError:  # not JSON: only equal objects agree
        return bool(a == b)


def items_agree(task: Task, primary: Any, shadow: Any) -> bool:
    """Whether a shadow's result for one item agrees with the primary's: the same ``label``
    for classification (scores may move), :func:`close` otherwise."""
    if (
        task is Task.CLASSIFICATION
        and isinstance(primary, dict)
        and isinstance(shadow, dict)
        and "label" in primary
        and "label" in shadow
    ):
        return bool(primary["label"] == shadow["label"])
    return close(primary, shadow)


def compare(task: Task, primary: list[Any], shadow: list[Any]) -> list[bool]:
    """One verdict per primary item; a shadow that answered a different number of items
    disagrees on every one (its items cannot be matched)."""
    if len(primary) != len(shadow):
        return [False] * len(primary)
    return [items_agree(task, p, s) for p, s in zip(primary, shadow, strict=True)]


# -- the runner -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Copy:
    """One answered live request, as the shadows get it."""

    route: Route
    request: InferenceRequest
    inputs: list[Any]
    results: list[Any]
    seconds: float
    """The primary's runtime call."""


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """How the runner uses the replica's capacity."""

    workers: int = 1
    """Consumers, and threads shadow calls run in (apart from the inference pool, so a shadow
    never takes a thread a caller waits for)."""
    drain_s: float = 2.0
    """Seconds :meth:`ShadowRunner.stop` lets queued copies finish before dropping the rest."""
    max_share: float = 0.005
    """Most of the replica's wall time shadow calls may take (what they took is paid back
    before the next one starts)."""
    max_lag_s: float = 0.0005
    """Event-loop lag (moving average) above which the next shadow call waits for slack."""
    hold_s: float = 1.0
    """Longest wait for slack before a shadow call runs anyway."""


#: Weight of the newest lag sample in the moving average.
LAG_WEIGHT = 0.3
#: First pause between lag probes while the loop is busy; it doubles with each busy probe...
BACKOFF_S = 0.005
#: ... up to this, so a saturated replica spends next to nothing on probing.
MAX_BACKOFF_S = 0.1


def _timed_predict(
    runtime: Runtime, inputs: list[Any], parameters: dict[str, Any], observe: CallObserver
) -> tuple[Prediction, float]:
    """A shadow call in the runner's thread, with the moment it ended (to measure how long
    the loop takes to take the result)."""
    return observed_predict(runtime, inputs, parameters, observe), time.perf_counter()


@dataclass(frozen=True, slots=True)
class RunnerState:
    """Where this process's runner is (``finished`` and ``dropped`` count shadow runs: one
    copy with two shadows counts two)."""

    queued: int
    """Copies waiting in the queue."""
    running: int
    """Copies being run on their shadows now."""
    finished: int
    """Shadow runs that ended (agree, disagree, error or skipped) since the start."""
    dropped: int
    """Shadow runs dropped since the start."""
    lag_s: float
    """Moving average of the event loop's lag, as the runner last measured it."""


class ShadowRunner(ShadowSink, Component):
    """Runs the shadow versions of answered live requests and keeps their statistics.

    Args:
        plane: the data plane whose copies it takes (set ``plane.shadow`` to this runner,
            as :func:`build_shadow` does) and whose models it runs.
        store: the shared statistics tables.
        settings: the queue bound, examples kept, flush interval and retention.
        replica: this process's name in the shared rows (default:
            :func:`~modelhost.rollouts.stats.default_replica`).
        options: threads, draining and the use of spare capacity.
    """

    def __init__(
        self,
        plane: DataPlane,
        store: ShadowStore,
        settings: RolloutSettings,
        *,
        replica: str | None = None,
        options: RunnerOptions | None = None,
    ) -> None:
        self.plane = plane
        self.store = store
        self.settings = settings
        self.replica = replica or default_replica()
        self.stats = ShadowStats(self.replica, settings.shadow_examples)
        """This process's counts not yet written (and the current period's)."""
        self.options = options if options is not None else RunnerOptions()
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue(maxsize=settings.shadow_queue)
        self._accepting = True
        self._pool: ThreadPoolExecutor | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._running = 0
        self._finished = 0
        self._dropped = 0
        self._purged_at = 0.0
        self._lag = 0.0
        self._budget = 0.0
        self._budget_at = time.monotonic()

    # -- the hot path ----------------------------------------------------------------------

    def offer(
        self,
        route: Route,
        request: InferenceRequest,
        inputs: list[Any],
        parameters: dict[str, Any],
        results: list[Any],
        seconds: float,
    ) -> None:
        """Queue a copy for the route's shadows; drop and count it when the queue is full or
        the runner is stopping (``parameters`` are the primary's: each shadow merges its own
        defaults with the caller's)."""
        queue = self._queue
        if self._accepting and not queue.full():
            queue.put_nowait(_Copy(route, request, inputs, results, seconds))
            return
        self._drop(route.shadows)

    # -- background work -------------------------------------------------------------------

    @property
    def state(self) -> RunnerState:
        """Queue length, runs in progress, and what ended so far."""
        return RunnerState(
            self._queue.qsize(), self._running, self._finished, self._dropped, self._lag
        )

    async def drained(self) -> None:
        """Wait until every queued copy has been run (or dropped)."""
        await self._queue.join()

    async def start(self) -> None:
        """Start the consumers and the periodic flush."""
        if self._consumers:
            return
        self._accepting = True
        workers = max(1, self.options.workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="modelhost-shadow")
        self._consumers = [asyncio.create_task(self._consume()) for _ in range(workers)]
        self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        """Take no more copies, let the queued ones finish for up to ``drain_s``, drop (and
        count) the rest, stop the threads without waiting for a call still running, and
        write the last counts."""
        self._accepting = False
        consumers, self._consumers = self._consumers, []
        if consumers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.options.drain_s)
            for task in consumers:
                task.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
        while not self._queue.empty():
            self._drop(self._queue.get_nowait().route.shadows)
            self._queue.task_done()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        await self.flush()

    async def flush(self) -> int:
        """Write the counts that changed (and new examples) to the shared tables; purge
        rows past ``stats_retention_s`` once a period. Returns the rows written. On failure
        the counts stay for the next flush and the error is raised."""
        async with self._lock:
            now = time.time()
            batch = self.stats.take()
            if batch:
                try:
                    await asyncio.to_thread(self.store.write, batch, now)
                except BaseException:
                    self.stats.put_back(batch)
                    raise
            self.stats.settle(now)
            if now - self._purged_at >= PERIOD_S:
                self._purged_at = now
                await asyncio.to_thread(self.store.purge, now - self.settings.stats_retention_s)
            return len(batch.tallies)

    async def report(self, model: str, since: float) -> list[ShadowReport]:
        """Flush this process's counts, then sum every replica's since ``since`` (other
        processes' last ``stats_flush_s`` may not be there yet)."""
        await self.flush()
        return await asyncio.to_thread(self.store.report, model, since)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_flush_s)
            try:
                await self.flush()
            except Exception:  # the database may be back next time; the counts are kept
                log.exception("writing shadow statistics failed; will retry")

    async def _consume(self) -> None:
        while True:
            copy = await self._queue.get()
            self._running += 1
            try:
                await self._run(copy)
            except Exception:  # a bug here must not stop the consumer
                log.exception("running shadows of %s failed", copy.route.info.ref)
            finally:
                self._running -= 1
                self._queue.task_done()

    async def _run(self, copy: _Copy) -> None:
        """Run one copy on each of its shadows in turn; those not reached when the runner
        stops are counted as dropped."""
        pending = list(copy.route.shadows)
        try:
            while pending:
                await self._shadow(copy, pending[0])
                pending.pop(0)
                self._finished += 1
        except asyncio.CancelledError:
            self._drop(pending)
            raise

    async def _shadow(self, copy: _Copy, info: VersionInfo) -> None:
        await self._afford()
        await self._slack()
        dep = self._ready(info)
        if dep is None:
            return
        try:
            parameters = self.plane.validate(info, dep, copy.request)
        except PayloadTooLarge:
            self._skip(info, "too_large")
            return
        except InvalidInput:
            self._skip(info, "invalid_input")
            return
        tick = time.perf_counter()
        try:
            results = await self._predict(dep, copy.inputs, parameters)
        except Exception as exc:  # the shadow's failure is counted, never the caller's
            self._budget -= time.perf_counter() - tick
            self._error(info, exc)
            return
        seconds = time.perf_counter() - tick
        self._budget -= seconds
        self._compared(copy, info, results, seconds)

    def _ready(self, info: VersionInfo) -> Deployment | None:
        """The shadow's deployment if it serves here; else count a skip and, if it is not
        loaded (nor failed), start loading it."""
        manager = self.plane.manager
        dep = manager.deployment(info.ref)
        if dep is not None and dep.state is ModelState.READY and dep.runtime is not None:
            return dep
        if dep is None or dep.state is ModelState.UNLOADED:
            manager.start_loading(info)
        self._skip(info, ModelState.UNLOADED.value if dep is None else dep.state.value)
        return None

    async def _afford(self) -> None:
        """Wait until the budget of shadow time is positive: it grows by ``max_share`` of a
        second every second (up to that share of one second) and each call spends its
        duration."""
        share = max(self.options.max_share, 1e-6)
        while True:
            now = time.monotonic()
            self._budget = min(share, self._budget + (now - self._budget_at) * share)
            self._budget_at = now
            if self._budget > 0:
                return
            await asyncio.sleep(-self._budget / share)

    def _lagged(self, sample: float) -> None:
        self._lag += LAG_WEIGHT * (sample - self._lag)

    async def _slack(self) -> None:
        """Return once the event loop has slack (its lag is at most ``max_lag_s``), or after
        ``hold_s`` whatever the lag."""
        options, pool = self.options, self._pool
        assert pool is not None  # consumers run between start and stop, as the pool does
        if math.isinf(options.max_lag_s):
            return  # no limit: nothing to measure
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + options.hold_s
        pause = BACKOFF_S
        while True:
            tick = time.perf_counter()
            await loop.run_in_executor(pool, time.perf_counter)
            self._lagged(time.perf_counter() - tick)
            left = deadline - time.monotonic()
            if self._lag <= options.max_lag_s or left <= 0:
                return
            await asyncio.sleep(min(pause, left))
            pause = min(2 * pause, MAX_BACKOFF_S)

    async def _predict(
        self, dep: Deployment, inputs: list[Any], parameters: dict[str, Any]
    ) -> list[Any]:
        """The shadow's guarded results, from a call in the runner's pool under its timeout."""
        runtime, info, pool = dep.runtime, dep.info, self._pool
        assert runtime is not None  # checked by _ready, with no await since
        assert pool is not None  # consumers run between start and stop, as the pool does
        observe = self.plane.metrics.deployment(info.model, info.version).runtime_call
        timeout = self.plane.timeout(info)
        loop = asyncio.get_running_loop()
        dep.inflight += 1  # an unload waits for this call, as for a caller's
        try:
            call = loop.run_in_executor(pool, _timed_predict, runtime, inputs, parameters, observe)
            prediction, ended = await asyncio.wait_for(call, timeout)
            self._lagged(time.perf_counter() - ended)
        except TimeoutError:
            raise InferenceTimeout(f"{info.ref} did not answer within {timeout:.3g}s") from None
        finally:
            dep.inflight -= 1
        access = self.plane.access
        if access is None:
            return prediction.results
        return access.guard_results(info, prediction.results)[0]

    # -- counting --------------------------------------------------------------------------

    def _count(self, info: VersionInfo, outcome: ShadowOutcome) -> None:
        key = (info.model, info.version, outcome.value)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.plane.metrics.shadow_requests.labels(*key)
        counter.inc()

    def _drop(self, shadows: tuple[VersionInfo, ...] | list[VersionInfo]) -> None:
        now = time.time()
        for info in shadows:
            self.stats.tally(info.model, info.version, now).dropped += 1
            self._dropped += 1
            self._count(info, ShadowOutcome.DROPPED)

    def _skip(self, info: VersionInfo, reason: str) -> None:
        skipped = self.stats.tally(info.model, info.version, time.time()).skipped
        skipped[reason] = skipped.get(reason, 0) + 1
        self._count(info, ShadowOutcome.SKIPPED)

    def _error(self, info: VersionInfo, exc: Exception) -> None:
        tally = self.stats.tally(info.model, info.version, time.time())
        tally.errors += 1
        message = exc.message if isinstance(exc, ModelhostError) else repr(exc)
        tally.last_error = f"{type(exc).__name__}: {message}"[:500]
        self._count(info, ShadowOutcome.ERROR)

    def _compared(self, copy: _Copy, info: VersionInfo, results: list[Any], seconds: float) -> None:
        verdicts = compare(copy.route.info.manifest.task, copy.results, results)
        now = time.time()
        tally = self.stats.tally(info.model, info.version, now)
        agreed = sum(verdicts)
        tally.compared += 1
        tally.items += len(verdicts)
        tally.items_agreed += agreed
        tally.shadow.add(seconds)
        tally.primary.add(copy.seconds)
        if agreed == len(verdicts):
            tally.agreed += 1
            self._count(info, ShadowOutcome.AGREE)
            return
        self._count(info, ShadowOutcome.DISAGREE)
        item = verdicts.index(False)
        self.stats.example(
            ShadowExample(
                model=info.model,
                version=info.version,
                primary_version=copy.route.info.version,
                request_id=copy.request.request_id,
                at=now,
                item=item,
                input=copy.inputs[item] if item < len(copy.inputs) else None,
                primary=copy.results[item],
                shadow=results[item] if item < len(results) else None,
                replica=self.replica,
            )
        )


def build_shadow(plane: DataPlane, engine: Engine, rollouts: RolloutSettings) -> ShadowRunner:
    """The shadow runner of a server or worker process over ``plane`` (a component: the
    composition root attaches it to the plane as its shadow sink, starts and stops it)."""
    store = ShadowStore(engine, examples=rollouts.shadow_examples)
    options = RunnerOptions(max_share=rollouts.shadow_share, workers=rollouts.shadow_workers)
    return ShadowRunner(plane, store, rollouts, options=options)
