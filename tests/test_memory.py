from __future__ import annotations

import asyncio

import pytest

from modelhost import memory
from modelhost.components import Component
from modelhost.config import Settings


def test_settings_reach_glibc_and_the_trimmer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append(("mallopt", (param, value)))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("malloc_trim", (pad,)))
            return 1

    monkeypatch.setattr(memory, "_glibc", FakeLibc)
    monkeypatch.setenv("MODELHOST_INFERENCE__MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("MODELHOST_INFERENCE__MALLOC_TRIM_INTERVAL_S", "5")
    trimmer = memory.build_memory(Settings())
    assert calls == [("mallopt", (memory.M_ARENA_MAX, 2))]
    assert isinstance(trimmer, memory.MallocTrimmer)
    assert trimmer.interval == 5
    asyncio.run(trimmer.tick())
    assert calls[-1] == ("malloc_trim", (0,))


def test_defaults_trim_every_30_s_and_leave_the_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.inference.malloc_arena_max is None
    assert settings.inference.malloc_trim_interval_s == 30
    monkeypatch.setenv("MODELHOST_INFERENCE__MALLOC_TRIM_INTERVAL_S", "0")
    component = memory.build_memory(Settings())
    assert type(component) is Component  # no trims


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.malloc_trim() is False
    assert memory.set_malloc_arena_max(2) is False
    assert type(memory.build_memory(Settings())) is Component


def test_real_trim_and_arena_cap_run_on_this_libc() -> None:
    assert memory._glibc() is not None  # the machines this project runs on use glibc
    memory.malloc_trim()  # returns whether pages went back: either is fine
    assert memory.set_malloc_arena_max(64) is True
