"""The JSON bodies of async jobs and batches (REST answers, webhook payloads, events)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modelhost.jobs.base import Job, JobEvent

#: The polling advice: first poll after 0.5 s, then double the wait, never more than 5 s.
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0


def poll_after(elapsed: float) -> float:
    """Seconds until the next poll of a job ``elapsed`` seconds old, following the advice
    (0.5, 1, 2, 4, 5, 5, … seconds between polls counted from submission)."""
    wait, waited = POLL_FIRST_S, 0.0
    while waited + wait <= elapsed and wait < POLL_MAX_S:
        waited += wait
        wait = min(POLL_MAX_S, wait * 2)
    return wait


def iso(stamp: float | None) -> str | None:
    """An ISO 8601 UTC time, or None."""
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


def job_view(job: Job) -> dict[str, Any]:
    """The JSON body describing a job."""
    link = f"/v1/jobs/{job.id}"
    body: dict[str, Any] = {
        "job_id": job.id,
        "object": "job",
        "status": job.status.value,
        "model": job.model,
        "version": job.version,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "next_attempt_at": iso(job.run_at) if job.attempts and not job.status.terminal else None,
        "result": job.result,
        "error": job.error,
        "callback_url": job.callback_url,
        "webhook": job.webhook,
        "links": {"self": link, "cancel": link, "events": f"{link}/events"},
    }
    if job.batch_id is not None:
        body["batch_id"] = job.batch_id
        body["item"] = job.item
        body["custom_id"] = job.custom_id
    return body


def event_view(event: JobEvent) -> dict[str, Any]:
    """One history event as sent over SSE."""
    return {
        "seq": event.seq,
        "job_id": event.job_id,
        "event": event.kind.value,
        "at": iso(event.at),
        "attempt": event.attempt,
        **event.detail,
    }
