"""The inference pools: one thread pool per :class:`~modelhost.runtimes.Lane`, and a call in
one of them under a timeout.

A call queues only behind calls of its own kind, so a cheap model never waits for a long
generation. A call that times out before a thread started it fails with
:class:`~modelhost.errors.QueueTimeout` (the server was busy: nothing is wrong with the model,
and the breaker does not count it); one that a thread started and that ran too long fails with
:class:`~modelhost.errors.InferenceTimeout` (the model's).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from asyncio import Future
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from modelhost.errors import InferenceTimeout, QueueTimeout
from modelhost.runtimes import Lane
from modelhost.serving.batching import settle


class _Call:
    """One call handed to an inference pool: started by a worker thread, or expired first.

    The worker thread and the loop's timer each flip their flag under one lock, so exactly one
    of them wins: a call either runs (and a timeout is the model's) or is never run (and the
    timeout is the queue's). Asyncio futures are not thread-safe, so the worker never asks the
    loop's future whether it is done."""

    __slots__ = ("_lock", "expired", "started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False
        self.expired = False

    def begin(self) -> bool:
        """Worker side: mark the call started; False when its caller already gave up."""
        with self._lock:
            if self.expired:
                return False
            self.started = True
            return True

    def expire(self) -> bool:
        """Timer side: mark the call expired; True when a worker had already started it."""
        with self._lock:
            self.expired = True
            return self.started


def _work(
    fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: Future[Any], call: _Call
) -> None:
    """Inference-thread side of :meth:`InferencePools.run`: call ``fn``, hand the outcome back.

    A call whose caller already timed out while it waited in the queue is skipped: nobody
    waits for it, and running it would only make the queue behind it longer."""
    if not call.begin():
        return
    outcome: Any
    try:
        outcome = fn()
    except BaseException as exc:  # handed to the awaiting caller, raised there
        outcome = exc
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(settle, future, outcome)


def _expire(future: Future[Any], ref: str, timeout: float, call: _Call) -> None:
    """Timer callback of :meth:`InferencePools.run`: fail the caller with a timeout, a
    :class:`QueueTimeout` when no worker thread had started the call yet."""
    if future.done():
        return
    if call.expire():
        future.set_exception(InferenceTimeout(f"{ref} did not answer within {timeout:.3g}s"))
        return
    future.set_exception(
        QueueTimeout(
            f"{ref} did not start within {timeout:.3g}s: the server is busy with other "
            "inference; retry later"
        )
    )


class InferencePools:
    """One thread pool per lane, sized by ``sizes``."""

    def __init__(self, sizes: Mapping[Lane, int]) -> None:
        self._pools = {
            lane: ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"modelhost-{lane}")
            for lane, size in sizes.items()
        }

    def executor(self, lane: Lane) -> Executor:
        """The thread pool of ``lane`` (streams run their generator in it)."""
        return self._pools[lane]

    async def run(self, fn: Callable[[], Any], ref: str, timeout: float, lane: Lane) -> Any:
        """Run ``fn`` in ``lane``'s pool; fail after ``timeout`` seconds (``ref`` names the
        version in the error).

        One loop future settled from the worker thread and one timer: cheaper than
        ``run_in_executor`` + ``wait_for`` (two chained futures, a waiter and a timer), which
        matters when the model itself answers in a fraction of a millisecond. On timeout the
        caller gets its error at once; the worker thread finishes the call and its result is
        dropped (as with ``wait_for``).

        Raises:
            InferenceTimeout: it took longer than the timeout (the caller gets 504).
            QueueTimeout: no thread of the lane started it within the timeout.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call = _Call()
        self._pools[lane].submit(_work, fn, loop, future, call)
        timer = loop.call_later(timeout, _expire, future, ref, timeout, call)
        try:
            return await future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop every pool (calls still queued are cancelled)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
