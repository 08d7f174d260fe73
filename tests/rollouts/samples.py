"""What the statistics tests count: one moment, inference events, shadow comparisons and
disagreement examples."""

from __future__ import annotations

import time

from modelhost.inference import InferenceEvent, InferenceRequest
from modelhost.registry import VersionInfo
from modelhost.rollouts.stats import PERIOD_S, ShadowExample, ShadowStats, period_of

#: The middle of the current period, so moments a few seconds around it share its period.
NOW = period_of(time.time()) + PERIOD_S / 2


def event(
    info: VersionInfo | None,
    seconds: float = 0.01,
    error: BaseException | None = None,
    replay_of: str | None = None,
) -> InferenceEvent:
    request = InferenceRequest(model="flowers", inputs=[[1.0, 2.0, 3.0, 4.0]], replay_of=replay_of)
    return InferenceEvent(request, info, NOW, seconds, error=error)


def example(n: int, at: float, version: str = "2.0.0", replica: str = "a") -> ShadowExample:
    return ShadowExample(
        model="iris",
        version=version,
        primary_version="1.0.0",
        request_id=f"r{n}",
        at=at,
        item=0,
        input=[n, 1.5],
        primary={"label": "setosa"},
        shadow={"label": "virginica"},
        replica=replica,
    )


def count(stats: ShadowStats, at: float, *, agree: bool, shadow_s: float, primary_s: float) -> None:
    tally = stats.tally("iris", "2.0.0", at)
    tally.compared += 1
    tally.items += 1
    tally.items_agreed += agree
    tally.agreed += agree
    tally.shadow.add(shadow_s)
    tally.primary.add(primary_s)
