"""The manifest's ``guards`` section: the prompt-injection policy a model version declares."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelhost.security.injection import Action
from modelhost.security.policy import GuardsConfig


def test_the_injection_policy_defaults_to_flag_at_one_half() -> None:
    guards = GuardsConfig.model_validate({"prompt_injection": {}})
    assert guards.prompt_injection is not None
    assert guards.prompt_injection.action is Action.FLAG
    assert guards.prompt_injection.threshold == 0.5
    assert GuardsConfig().prompt_injection is None


def test_a_declared_policy_is_kept() -> None:
    guards = GuardsConfig.model_validate(
        {"prompt_injection": {"action": "block", "threshold": 0.7}}
    )
    assert guards.prompt_injection is not None
    assert (guards.prompt_injection.action, guards.prompt_injection.threshold) == (
        Action.BLOCK,
        0.7,
    )


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"action": "drop"}, "action"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"strength": 3}, "strength"),
    ],
)
def test_a_wrong_policy_is_refused_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GuardsConfig.model_validate({"prompt_injection": bad})
    assert caught.value.errors()[0]["loc"] == ("prompt_injection", field)
