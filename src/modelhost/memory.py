"""Native memory of a server process: glibc's malloc settings and trims (docs/operations.md,
"Memory").

Python's own heap stays flat under load; what grows is native: glibc keeps freed memory in its
per-thread arenas instead of giving it back, and onnxruntime keeps its CPU arena at the largest
batch it saw. :func:`set_malloc_arena_max` caps glibc's arenas (call it before threads start),
and :class:`MallocTrimmer` calls ``malloc_trim(0)`` every ``inference.malloc_trim_interval_s``
so free pages go back to the OS. Off glibc (musl, macOS) both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from functools import cache
from typing import Any

from modelhost.components import Component, PeriodicComponent
from modelhost.config import Settings

log = logging.getLogger("modelhost.memory")

#: ``mallopt`` parameter of the most arenas glibc creates (``M_ARENA_MAX`` in malloc.h).
M_ARENA_MAX = -8


@cache
def _glibc() -> Any:
    """glibc, or None when this process's C library is another one."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def set_malloc_arena_max(arenas: int) -> bool:
    """Let glibc create at most ``arenas`` malloc arenas (threads beyond share them); arenas
    that exist already stay. Returns whether glibc took it."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def malloc_trim() -> bool:
    """Give the free pages of every glibc arena back to the OS. Returns whether any was."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)


class MallocTrimmer(PeriodicComponent):
    """Calls :func:`malloc_trim` every ``interval`` seconds, in a thread (a trim walks every
    arena, holding its lock: milliseconds, not on the event loop)."""

    async def tick(self) -> None:
        """One trim."""
        await asyncio.to_thread(malloc_trim)


def build_memory(settings: Settings) -> Component:
    """Apply ``inference.malloc_arena_max`` now (before the inference threads start) and return
    the periodic trimmer (a component that does nothing when the interval is 0)."""
    arenas = settings.inference.malloc_arena_max
    if arenas is not None and not set_malloc_arena_max(arenas):
        log.info("inference.malloc_arena_max: not glibc, left as it is")
    interval = settings.inference.malloc_trim_interval_s
    if interval <= 0 or _glibc() is None:
        return Component()
    return MallocTrimmer(interval)
