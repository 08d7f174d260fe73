"""``modelhost jobs …`` and ``modelhost batch …``: async jobs and batches of a running server,
over HTTP (``--url`` / ``MODELHOST_URL``, ``--api-key`` / ``MODELHOST_API_KEY``).

Every command talks to the REST API only, so it works against any server it can reach. An
error answer prints the server's message and exits 1. Heavy imports (httpx, the polling
advice) happen inside the commands, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table

from modelhost.cli.common import (
    DEFAULT_URL,
    ApiKey,
    Remote,
    Timeout,
    Url,
    err,
    fail,
    print_json,
    print_table,
    say,
)

if TYPE_CHECKING:
    import httpx

jobs_app = typer.Typer(
    help="Async jobs of a running server: list, show, cancel.", no_args_is_help=True
)
batch_app = typer.Typer(
    help="Batch jobs of a running server: submit a JSONL file, follow it, download results, "
    "cancel.",
    no_args_is_help=True,
)

#: Batch statuses after which nothing changes any more.
_OVER = frozenset({"completed", "cancelled"})


def register(app: typer.Typer) -> None:
    """Add ``modelhost jobs`` and ``modelhost batch`` to the command line."""
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(batch_app, name="batch")


class Priority(StrEnum):
    """A batch's priority; its items run at low = -50, normal = 0, high = 50."""

    LOW = "low"  #: after interactive jobs (which run at 0)
    NORMAL = "normal"  #: like interactive jobs
    HIGH = "high"  #: before interactive jobs


def _when(stamp: str | None) -> str:
    """An ISO time from the server in local time, to the second; empty for None."""
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- jobs ----------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only jobs in this status: queued, running, succeeded, failed, ..."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only jobs on this model.")] = None,
    limit: Annotated[int, typer.Option(help="How many (1 to 100), newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """List your tenant's jobs (not batch items), newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if model:
        params["model"] = model
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", "/v1/jobs", params=params)
    job_column = Column("job", no_wrap=True, min_width=28)
    table = Table(job_column, "status", "model", "priority", "attempts", "created", "error")
    for job in body["data"]:
        error = job.get("error") or {}
        table.add_row(
            job["job_id"],
            job["status"],
            job["model"] + (f"@{job['version']}" if job.get("version") else ""),
            str(job["priority"]),
            f"{job['attempts']}/{job['max_attempts']}",
            _when(job["created_at"]),
            error.get("type", ""),
        )
    print_table(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job id (job_…).")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Print a job (status, result or error) as JSON."""
    with Remote(url, api_key, timeout) as remote:
        print_json(remote.json("GET", f"/v1/jobs/{job_id}"))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="The job id (job_…).")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Cancel a queued or running job; a finished job is left as it is."""
    with Remote(url, api_key, timeout) as remote:
        job = remote.json("DELETE", f"/v1/jobs/{job_id}")
    say(f"job {job['job_id']}: {job['status']}")


# -- batches -------------------------------------------------------------------------------------


def _next_poll(response: httpx.Response, elapsed: float) -> float:
    """Seconds to the next poll: the polling advice for the batch's age, never more than the
    server's ``Retry-After``."""
    from modelhost.protocol.jobs import poll_after

    wait = poll_after(elapsed)
    header = response.headers.get("retry-after", "")
    return min(wait, float(header)) if header.isdigit() else wait


def _follow(remote: Remote, batch_id: str, total: int) -> dict[str, Any]:
    """Poll the batch with a progress bar (on stderr) until it is over; its last view."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(batch_id, total=total, failed=0)
        while True:
            response = remote.call("GET", f"/v1/batch/{batch_id}")
            view: dict[str, Any] = response.json()
            progress = view["progress"]
            done = progress["completed"] + progress["failed"]
            bar.update(task, completed=done, failed=progress["failed"])
            if view["status"] in _OVER:
                return view
            time.sleep(_next_poll(response, time.monotonic() - started))


def _summary(view: dict[str, Any], seconds: float) -> str:
    progress = view["progress"]
    return (
        f"batch {view['batch_id']} {view['status']} in {seconds:.1f}s: "
        f"{progress['completed']} succeeded, {progress['failed']} failed "
        f"({progress.get('cancelled', 0)} cancelled) of {progress['total']}"
    )


@batch_app.command("submit")
def batch_submit(
    file: Annotated[
        Path,
        typer.Argument(
            help='JSONL file: one {"custom_id": ..., "input": ..., "parameters": {...}} a line.'
        ),
    ],
    model: Annotated[str, typer.Option(help="Model name, or name@version.")],
    priority: Annotated[Priority, typer.Option(help="low, normal or high.")] = Priority.LOW,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Submitting again with it returns the first batch.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow progress until the batch is over.")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Submit a JSONL file as a batch; with --wait, follow it and exit 1 if any item failed."""
    if not file.is_file():
        raise fail(f"no file {str(file)!r}")
    params = {"model": model, "priority": priority.value}
    if idempotency_key:
        params["idempotency_key"] = idempotency_key
    started = time.monotonic()
    with Remote(url, api_key, timeout) as remote:
        with file.open("rb") as handle:
            response = remote.call(
                "POST",
                "/v1/batch/predict",
                params=params,
                content=handle,
                headers={"Content-Type": "application/x-ndjson"},
            )
        view: dict[str, Any] = response.json()
        batch_id, total = view["batch_id"], view["progress"]["total"]
        verb = "submitted" if response.status_code == 202 else "found (same idempotency key)"
        say(f"{verb} {batch_id}: {total} items on {view['model']}, priority {view['priority']}")
        if not wait:
            return
        try:
            view = _follow(remote, batch_id, total)
        except KeyboardInterrupt:
            say(f"stopped following; the batch goes on: modelhost batch show {batch_id}", err)
            raise typer.Exit(code=130) from None
    say(_summary(view, time.monotonic() - started))
    if view["progress"]["failed"]:
        raise fail(f"some items did not succeed; see: modelhost batch results {batch_id}")


@batch_app.command("show")
def batch_show(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_…).")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Print a batch (status, progress, estimated completion) as JSON."""
    with Remote(url, api_key, timeout) as remote:
        print_json(remote.json("GET", f"/v1/batch/{batch_id}"))


@batch_app.command("list")
def batch_list(
    limit: Annotated[int, typer.Option(help="How many (1 to 100), newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """List your tenant's batches, newest first."""
    with Remote(url, api_key, timeout) as remote:
        body = remote.json("GET", "/v1/batch", params={"limit": limit})
    batch_column = Column("batch", no_wrap=True, min_width=30)
    table = Table(batch_column, "status", "model", "priority", "done", "failed", "created", "eta")
    for batch in body["data"]:
        progress = batch["progress"]
        done = progress["completed"] + progress["failed"]
        table.add_row(
            batch["batch_id"],
            batch["status"],
            batch["model"] + (f"@{batch['version']}" if batch.get("version") else ""),
            str(batch["priority"]),
            f"{done}/{progress['total']}",
            str(progress["failed"]),
            _when(batch["created_at"]),
            _when(batch["estimated_completion_at"]),
        )
    print_table(table)


@batch_app.command("cancel")
def batch_cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_…).")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
) -> None:
    """Cancel a batch: unfinished items are cancelled, finished ones keep their results."""
    with Remote(url, api_key, timeout) as remote:
        view = remote.json("DELETE", f"/v1/batch/{batch_id}")
    progress = view["progress"]
    say(
        f"batch {view['batch_id']} {view['status']}: {progress['completed']} succeeded "
        f"(kept), {progress.get('cancelled', 0)} cancelled, of {progress['total']}"
    )


@batch_app.command("results")
def batch_results(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_…).")],
    output: Annotated[
        Path | None, typer.Option(help="Write the JSONL here (default: standard output).")
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
) -> None:
    """Download every item's result (or error) as JSONL, in input order."""
    import sys

    params = {"format": "jsonl"}
    path = f"/v1/batch/{batch_id}/results"
    with Remote(url, api_key, timeout) as remote:
        if output is None:
            remote.download(path, params, sys.stdout.buffer)
            sys.stdout.flush()
            return
        partial = output.with_name(output.name + ".part")
        try:
            with partial.open("wb") as sink:
                lines = remote.download(path, params, sink)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(output)
    say(f"wrote {lines} results to {output}", err)
