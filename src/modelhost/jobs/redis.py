"""The scale-out queue backend: job records in SQL, dispatch through Redis Streams.

Records (the request, its state, its lease, its history, batches, webhooks) stay in the SQL
tables of :class:`~modelhost.jobs.sql.SqlQueue`, which remain the one source of truth: every
claim is still the SQL compare-and-set. Redis only tells workers which job to try next, so no
worker scans the jobs table:

- three streams, one per priority band — ``{prefix}:high`` (priority above 0), ``:normal``
  (0) and ``:low`` (below 0) — read by one consumer group; a claim reads high, then normal,
  then low, oldest entry first;
- a delivered entry stays pending in the group until its job ends (``XACK``); an entry idle
  longer than the visibility timeout (its worker stopped heartbeating) is taken over with
  ``XAUTOCLAIM``;
- retries wait in the sorted set ``{prefix}:delayed`` (score = ``run_at``) until they are due.

Priorities are coarse here: within a band, jobs run oldest first whatever their priority.

Delivery is at least once: an entry may be duplicated (a republish, a retry of a lost
write), and the SQL compare-and-set decides who runs the job. An entry whose job cannot be
claimed is acknowledged and dropped; when that job is still alive (running under a live lease
elsewhere, or waiting out a backoff) a member of the delayed set brings it back when the
lease or the backoff ends, so every unfinished job keeps a way back to a worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import and_, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from modelhost.errors import MissingDependencyError, ServiceError
from modelhost.jobs.base import Batch, Job, JobStatus, NewBatch, NewJob, Retry
from modelhost.jobs.sql import SqlQueue
from modelhost.jobs.tables import BatchRow, EventRow, JobRow

try:
    import redis
    from redis.exceptions import RedisError, ResponseError
    from redis.typing import EncodableT, FieldT, StreamIdT
except ImportError as exc:  # the redis extra is optional
    raise MissingDependencyError("redis", extra="redis") from exc

log = logging.getLogger("modelhost.jobs")

_QUEUED_VALUE = JobStatus.QUEUED.value
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: Stream name suffixes, in the order claims read them.
BANDS = ("high", "normal", "low")
#: How many times one claim reads again when every entry it got was stale.
_CLAIM_TRIES = 5
#: Idle time given to entries handed back unrun: past any visibility timeout, so the next
#: ``XAUTOCLAIM`` of any worker takes them (in stream order) at once.
_HANDBACK_IDLE_MS = 10**11
#: Due retries moved to their stream per claim.
_PROMOTE_LIMIT = 100
#: Rows per pipeline or statement when publishing many jobs.
_CHUNK = 1000
#: A consumer without pending entries and idle this long belongs to a stopped worker.
_DEAD_CONSUMER_MS = 3600 * 1000

#: Move due members of the delayed set (KEYS[1]) to their band's stream (KEYS[2..4]) in one
#: atomic step: a member leaves the set and enters a stream together, and once only.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local m = cjson.decode(member)
  if m[4] == cjson.null then
    redis.call('XADD', KEYS[m[1] + 2], '*', 'job', m[2], 'model', m[3])
  else
    redis.call('XADD', KEYS[m[1] + 2], '*', 'job', m[2], 'model', m[3], 'version', m[4])
  end
end
return #due
"""


def band_of(priority: int) -> int:
    """Index in :data:`BANDS` of the stream a job of ``priority`` goes to."""
    if priority > 0:
        return 0
    return 1 if priority == 0 else 2


def _band_where(band: int) -> ColumnElement[bool]:
    if band == 0:
        return JobRow.priority > 0
    return JobRow.priority == 0 if band == 1 else JobRow.priority < 0


class _Dispatch(NamedTuple):
    """What Redis needs to know of a job to dispatch it."""

    id: str
    model: str
    version: str | None
    priority: int


class _Entry(NamedTuple):
    """One stream entry delivered to this consumer."""

    stream: str
    entry_id: str
    job: str
    model: str
    version: str | None


#: A job and when it may next be claimed (``None``: now).
_Due = tuple[_Dispatch, float | None]

#: The columns dispatching needs.
_DUE = select(
    JobRow.id,
    JobRow.model,
    JobRow.version,
    JobRow.priority,
    JobRow.status,
    JobRow.run_at,
    JobRow.lease_until,
)


def _due(row: Any) -> _Due:
    """A job and when it is due: a queued one at ``run_at``, a running one when its lease
    ends."""
    due = row.run_at if row.status == _QUEUED_VALUE else row.lease_until
    return _Dispatch(row.id, row.model, row.version, row.priority), due


def _fields(job: _Dispatch) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {"job": job.id, "model": job.model}
    if job.version is not None:
        fields["version"] = job.version
    return fields


def _member(job: _Dispatch) -> str:
    """The job's member of the delayed set: the same for every write about one job, so a
    job waits there once however many times it is scheduled."""
    return json.dumps([band_of(job.priority), job.id, job.model, job.version])


def _dispatch(job: Job) -> _Dispatch:
    return _Dispatch(job.id, job.model, job.version, job.priority)


def _in(order: dict[str, int]) -> Callable[[Job], int]:
    """Sort key: a job's place in ``order`` (the order its entries were read)."""
    return lambda job: order[job.id]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unavailable(exc: Exception) -> ServiceError:
    return ServiceError(f"the job queue (Redis) is unavailable: {exc}", retry_after=1.0)


class RedisQueue(SqlQueue):
    """Job records in SQL (as :class:`SqlQueue`), dispatch through Redis Streams consumer
    groups, so any number of workers on any number of machines share one queue.

    Methods are synchronous and thread-safe (one connection pool); a worker's name is its
    consumer name in the group.

    Args:
        engine: the database holding the job records.
        redis_url: e.g. ``redis://host:6379/0``.
        prefix: the keys' prefix: the streams are ``{prefix}:high|normal|low`` and retries wait
            in ``{prefix}:delayed``.
        group: the consumer group every worker of this queue reads in.
        clock: seconds since the epoch (run_at and leases); stream idle times are Redis's own.

    Raises:
        ServiceError: Redis cannot be reached to set up the consumer group.
    """

    def __init__(
        self,
        engine: Engine,
        redis_url: str,
        *,
        prefix: str = "modelhost:jobs",
        group: str = "workers",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(engine, clock=clock)
        self.prefix = prefix
        self.group = group
        self.streams = tuple(f"{prefix}:{band}" for band in BANDS)
        self.delayed = f"{prefix}:delayed"
        self.redis = redis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
        )
        self._promote = self.redis.register_script(_PROMOTE)
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, str]] = {}
        """job id → (stream, entry id) of the entries this instance's workers hold."""
        self._cursors = dict.fromkeys(self.streams, "0-0")
        """Where each stream's next ``XAUTOCLAIM`` scan starts."""
        try:
            self._recover()
        except RedisError as exc:
            self.close()
            raise _unavailable(exc) from exc

    def close(self) -> None:
        """Close the Redis connection pool."""
        self.redis.close()
        self.redis.connection_pool.disconnect()

    # -- submitting --------------------------------------------------------------------------

    def enqueue(self, new: NewJob) -> tuple[Job, bool]:
        """Store the job, then publish it to its band's stream.

        Raises:
            ServiceError: Redis is unreachable; the job was not kept.
        """
        job, created = super().enqueue(new)
        if created:
            try:
                self.redis.xadd(self.streams[band_of(job.priority)], _fields(_dispatch(job)))
            except RedisError as exc:
                self._forget(JobRow.id == job.id)
                raise _unavailable(exc) from exc
        return job, created

    def enqueue_batch(self, batch: NewBatch, items: list[NewJob]) -> tuple[Batch, bool]:
        """Store the batch, then publish its items (pipelined, in input order).

        Raises:
            ServiceError: Redis is unreachable; the batch was not kept.
        """
        stored, created = super().enqueue_batch(batch, items)
        if not created:
            return stored, False
        jobs = self._dispatchable(JobRow.batch_id == stored.id, order=JobRow.item)
        try:
            self._publish(jobs)
        except RedisError as exc:
            self._forget(JobRow.batch_id == stored.id, batch_id=stored.id)
            raise _unavailable(exc) from exc
        return stored, True

    # -- claiming ----------------------------------------------------------------------------

    def claim_many(self, worker: str, visibility_timeout: float, limit: int) -> list[Job]:
        """Take over entries idle longer than ``visibility_timeout`` (a stopped worker's), then
        read new ones, band by band; lease (in SQL) those of the first entry's model and
        version, hand the others back unrun and drop the entries of jobs that cannot run.

        Raises:
            ServiceError: Redis is unreachable.
        """
        limit = max(1, limit)
        try:
            try:
                return self._claim(worker, visibility_timeout, limit)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._recover()  # Redis lost its data: set the groups up again and republish
                return self._claim(worker, visibility_timeout, limit)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def _claim(self, worker: str, visibility_timeout: float, limit: int) -> list[Job]:
        for _ in range(_CLAIM_TRIES):
            entries = self._fetch(worker, visibility_timeout, limit)
            if not entries:
                return []
            jobs = self._take(worker, visibility_timeout, entries)
            if jobs:
                return jobs
        return []

    def _fetch(self, worker: str, visibility_timeout: float, limit: int) -> list[_Entry]:
        """Up to ``limit`` entries of the first band that has any, reclaimed ones first."""
        idle_ms = max(1, int(visibility_timeout * 1000))
        pipe = self.redis.pipeline(transaction=False)
        self._promote(keys=[self.delayed, *self.streams], args=self._due_args(), client=pipe)
        with self._lock:
            cursors = [self._cursors[stream] for stream in self.streams]
        for stream, cursor in zip(self.streams, cursors, strict=True):
            pipe.xautoclaim(stream, self.group, worker, idle_ms, cursor, count=limit)
        _, *answers = pipe.execute()
        reclaimed: list[_Entry] = []
        for stream, (cursor, entries, *_deleted) in zip(self.streams, answers, strict=True):
            with self._lock:
                self._cursors[stream] = cursor
            reclaimed.extend(self._parse(stream, entries))
        return self._first_band(worker, reclaimed, limit)

    def _first_band(self, worker: str, reclaimed: list[_Entry], limit: int) -> list[_Entry]:
        """Reclaimed entries of the best band that has work, topped up with new entries of
        that band; reclaimed entries of lower bands are handed back."""
        for stream in self.streams:
            mine = [e for e in reclaimed if e.stream == stream]
            if len(mine) < limit:
                read = self.redis.xreadgroup(
                    self.group, worker, {stream: ">"}, count=limit - len(mine)
                )
                for _, entries in cast("list[Any]", read or []):
                    mine.extend(self._parse(stream, entries))
            if mine:
                self._hand_back(worker, [e for e in reclaimed if e.stream != stream])
                return mine
        return []

    def _take(self, worker: str, visibility_timeout: float, entries: list[_Entry]) -> list[Job]:
        """Lease the jobs of the entries of the first entry's model and version, in the order
        their entries were read."""
        first = entries[0]
        chosen: dict[str, _Entry] = {}
        stale: list[_Entry] = []
        others: list[_Entry] = []
        for entry in entries:
            if (entry.model, entry.version) != (first.model, first.version):
                others.append(entry)
            elif entry.job in chosen or not entry.job:
                stale.append(entry)
            else:
                chosen[entry.job] = entry
        self._hand_back(worker, others)
        order = {job_id: n for n, job_id in enumerate(chosen)}
        jobs = sorted(self.claim_ids(worker, visibility_timeout, list(chosen)), key=_in(order))
        won = {job.id for job in jobs}
        with self._lock:
            for job in jobs:
                entry = chosen[job.id]
                self._entries[job.id] = (entry.stream, entry.entry_id)
        stale.extend(entry for job_id, entry in chosen.items() if job_id not in won)
        try:
            self._settle(stale)
        except RedisError:  # the stale entries stay pending and come back: keep what we won
            if not jobs:
                raise
            log.warning("could not drop stale stream entries", exc_info=True)
        return jobs

    def _parse(self, stream: str, entries: Iterable[Any]) -> list[_Entry]:
        parsed = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                continue
            job = str(fields.get("job", ""))
            parsed.append(
                _Entry(stream, entry_id, job, str(fields.get("model", "")), fields.get("version"))
            )
        return parsed

    def _hand_back(self, worker: str, entries: Sequence[_Entry]) -> None:
        """Give delivered entries back unrun, keeping their place: set their idle time past
        any visibility timeout, so the next ``XAUTOCLAIM`` takes them."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream in {e.stream for e in entries}:
            ids: list[StreamIdT] = [e.entry_id for e in entries if e.stream == stream]
            pipe.xclaim(stream, self.group, worker, 0, ids, idle=_HANDBACK_IDLE_MS, justid=True)
        pipe.execute()
        with self._lock:
            for stream in {e.stream for e in entries}:
                self._cursors[stream] = "0-0"

    def _settle(self, entries: Sequence[_Entry]) -> None:
        """Acknowledge entries whose job was not claimed; schedule the jobs among them that
        are still alive to come back when their lease or backoff ends."""
        if not entries:
            return
        alive = self._alive({e.job for e in entries if e.job})
        now = self.clock()
        pipe = self.redis.pipeline(transaction=True)
        for entry in entries:
            pipe.xack(entry.stream, self.group, entry.entry_id)
        for job, at in alive:
            pipe.zadd(self.delayed, {_member(job): max(at, now)})
        pipe.execute()

    # -- working -----------------------------------------------------------------------------

    def heartbeat(self, job_id: str, worker: str, visibility_timeout: float) -> bool:
        """Extend the SQL lease and reset the entry's idle time, so nobody reclaims it."""
        held = super().heartbeat(job_id, worker, visibility_timeout)
        if not held:
            self._finish(job_id, worker, done=False)
            return False
        ref = self._ref(job_id)
        if ref is not None:
            try:
                self.redis.xclaim(ref[0], self.group, worker, 0, [ref[1]], justid=True)
            except RedisError:  # the SQL lease holds; the entry is reclaimed at worst
                log.warning("could not renew the stream entry of job %s", job_id, exc_info=True)
        return True

    def complete(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Succeed the job in SQL, then acknowledge its entry."""
        done = super().complete(job_id, worker, result)
        self._finish(job_id, worker, done)
        return done

    def complete_many(self, worker: str, results: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Succeed the jobs in one SQL transaction, then acknowledge their entries in one
        round trip."""
        done = super().complete_many(worker, results)
        held = set(done)
        refs: list[tuple[str, str]] = []
        for job_id, _ in results:
            if job_id in held:
                ref = self._pop(job_id)
                if ref is not None:
                    refs.append(ref)
            else:
                self._finish(job_id, worker, done=False)
        if refs:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for stream, entry in refs:
                    pipe.xack(stream, self.group, entry)
                pipe.execute()
            except RedisError:  # the entries are reclaimed later, found finished, and dropped
                log.warning("could not acknowledge %d stream entries", len(refs), exc_info=True)
        return done

    def fail(
        self, job_id: str, worker: str, error: dict[str, Any], retry: Retry | None = None
    ) -> Job | None:
        """Record the failed attempt in SQL; a retry waits in the delayed set until its
        ``run_at``."""
        job = super().fail(job_id, worker, error, retry)
        if job is None or job.status is not JobStatus.QUEUED:
            self._finish(job_id, worker, done=job is not None)
            return job
        ref = self._pop(job_id)
        try:  # one transaction: if it fails the entry stays pending and is reclaimed
            pipe = self.redis.pipeline(transaction=True)
            if ref is not None:
                pipe.xack(ref[0], self.group, ref[1])
            pipe.zadd(self.delayed, {_member(_dispatch(job)): job.run_at})
            pipe.execute()
        except RedisError:
            log.warning("could not schedule the retry of job %s", job_id, exc_info=True)
        return job

    def release(self, job_id: str, worker: str) -> bool:
        """Queue the job again in SQL, then publish it again at once."""
        released = super().release(job_id, worker)
        if not released:
            self._finish(job_id, worker, done=False)
            return False
        ref = self._pop(job_id)
        job = self._get(job_id)
        try:
            pipe = self.redis.pipeline(transaction=True)
            if ref is not None:
                pipe.xack(ref[0], self.group, ref[1])
            if job is not None:
                pipe.xadd(self.streams[band_of(job.priority)], _fields(_dispatch(job)))
            pipe.execute()
        except RedisError:
            log.warning("could not publish released job %s", job_id, exc_info=True)
        return True

    def cancel(self, tenant: str, job_id: str) -> Job | None:
        """Cancel in SQL; the job's entry is dropped by whoever reads or holds it next."""
        job = super().cancel(tenant, job_id)
        if job is not None and job.status.terminal:
            self._ack(self._pop(job_id))
        return job

    def _finish(self, job_id: str, worker: str, done: bool) -> None:
        """Forget this instance's entry of a job its worker stopped working on, and
        acknowledge it unless another worker now holds the same job (and perhaps the same
        entry, taken over by ``XAUTOCLAIM``)."""
        ref = self._pop(job_id)
        if ref is None:
            return
        if not done:
            job = self._get(job_id)
            if job is not None and not job.status.terminal:
                return
        self._ack(ref)

    def _ack(self, ref: tuple[str, str] | None) -> None:
        if ref is None:
            return
        try:
            self.redis.xack(ref[0], self.group, ref[1])
        except RedisError:  # the entry is reclaimed later, found finished, and dropped
            log.warning("could not acknowledge stream entry %s", ref[1], exc_info=True)

    def _ref(self, job_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._entries.get(job_id)

    def _pop(self, job_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._entries.pop(job_id, None)

    # -- upkeep ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Set the consumer group up again if Redis lost it (republishing every unfinished
        job), and move due retries to their streams.

        Raises:
            ServiceError: Redis is unreachable.
        """
        try:
            self._recover()
            self._promote(keys=[self.delayed, *self.streams], args=self._due_args())
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def purge(self, retention: float) -> int:
        """Purge the SQL records (as :class:`SqlQueue`), then trim acknowledged entries from
        the streams and forget consumers of workers gone for an hour."""
        changed = super().purge(retention)
        try:
            for stream in self.streams:
                self._trim(stream)
        except RedisError:
            log.warning("could not trim the job streams", exc_info=True)
        return changed

    def _trim(self, stream: str) -> None:
        """Drop entries older than both the group's oldest pending entry and its last
        delivered one: every such entry was delivered and acknowledged."""
        # typed Any: redis-py's annotations of these replies differ between its versions
        info: Any = self.redis.xinfo_groups(stream)
        groups = [g for g in info if g["name"] == self.group]
        if not groups:
            return
        floor = str(groups[0]["last-delivered-id"])
        pending: Any = self.redis.xpending(stream, self.group)
        if pending["pending"]:
            floor = min(floor, str(pending["min"]), key=_entry_order)
        if floor != "0-0":
            self.redis.xtrim(stream, minid=floor, approximate=False)
        consumers: Any = self.redis.xinfo_consumers(stream, self.group)
        for consumer in consumers:
            if not consumer["pending"] and consumer["idle"] > _DEAD_CONSUMER_MS:
                self.redis.xgroup_delconsumer(stream, self.group, consumer["name"])

    def _recover(self) -> None:
        """Create the consumer group on every stream that lacks it; a band whose group had to
        be created (a fresh or emptied Redis) gets every unfinished job of its band again."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, self.group, id="0", mkstream=True)
        created = []
        for band, answer in enumerate(pipe.execute(raise_on_error=False)):
            if not isinstance(answer, Exception):
                created.append(band)
            elif not isinstance(answer, ResponseError) or "BUSYGROUP" not in str(answer):
                raise answer
        for band in created:
            published = self._republish(band)
            if published:
                log.info("republished %d jobs to %s", published, self.streams[band])

    def _due_args(self) -> list[str]:
        return [repr(self.clock()), str(_PROMOTE_LIMIT)]

    # -- SQL ---------------------------------------------------------------------------------

    def _dispatchable(self, where: ColumnElement[bool], order: Any) -> list[_Due]:
        """The jobs ``where`` selects, with when each is due."""
        with Session(self.engine) as session:
            return [_due(row) for row in session.execute(_DUE.where(where).order_by(order))]

    def _republish(self, band: int) -> int:
        """Publish every unfinished job of ``band`` (streamed from the database in chunks)."""
        where = and_(JobRow.status.in_(_UNFINISHED), _band_where(band))
        query = _DUE.where(where).order_by(JobRow.created_at, JobRow.id)
        count = 0
        with Session(self.engine) as session:
            result = session.execute(query.execution_options(yield_per=_CHUNK))
            for rows in result.partitions():
                count += self._publish([_due(row) for row in rows])
        return count

    def _publish(self, jobs: Sequence[_Due]) -> int:
        """Put due jobs on their streams and the others in the delayed set until they are
        due (pipelined). Returns how many jobs there were."""
        now = self.clock()
        for chunk in _chunks(jobs):
            pipe = self.redis.pipeline(transaction=False)
            for job, due in chunk:
                if due is None or due <= now:
                    pipe.xadd(self.streams[band_of(job.priority)], _fields(job))
                else:
                    pipe.zadd(self.delayed, {_member(job): due})
            pipe.execute()
        return len(jobs)

    def _alive(self, ids: set[str]) -> list[tuple[_Dispatch, float]]:
        """The unfinished jobs among ``ids``, with when they may next be claimed."""
        if not ids:
            return []
        found = self._dispatchable(
            and_(JobRow.id.in_(sorted(ids)), JobRow.status.in_(_UNFINISHED)),
            order=JobRow.id,
        )
        return [(job, due if due is not None else self.clock()) for job, due in found]

    def _forget(self, where: ColumnElement[bool], batch_id: str | None = None) -> None:
        """Delete jobs that could not be published (and their events, and their batch)."""
        with Session(self.engine) as session, session.begin():
            ids = select(JobRow.id).where(where).scalar_subquery()
            session.execute(delete(EventRow).where(EventRow.job_id.in_(ids)))
            session.execute(delete(JobRow).where(where))
            if batch_id is not None:
                session.execute(delete(BatchRow).where(BatchRow.id == batch_id))


def _entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


__all__ = ["BANDS", "RedisQueue", "band_of"]
