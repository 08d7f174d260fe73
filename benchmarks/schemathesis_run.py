"""Schemathesis against a running server, every operation of its OpenAPI document: prints
the operations, requests, 5xx answers and failed checks (schema violations first).

Without ``--url`` it starts ``modelhost serve`` in a temporary home with only the iris demo
model (no LLM), an admin key with no rate limit, and stops it afterwards::

    .venv/bin/python benchmarks/schemathesis_run.py [--examples 300] [--workers 2]
    .venv/bin/python benchmarks/schemathesis_run.py --url http://127.0.0.1:8000 --key mhk_...

The test ``tests/api/test_openapi_schemathesis.py`` runs the same checks, smaller, in-process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.engine import events, from_schema
from support import admin_key, free_port, serve, stop

#: Checks that a response matches the document (the figures' "schema violations").
SCHEMA_CHECKS = (
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "allow_header_conformance",
)
CHECKS = ("not_a_server_error", "unsupported_method", *SCHEMA_CHECKS)
#: Stricter checks, reported apart: whether the document's request schemas are exactly what
#: the server accepts (hand-parsed bodies refuse some values a schema cannot describe).
PRECISION_CHECKS = ("negative_data_rejection", "positive_data_acceptance")


def config(key: str, examples: int, workers: int, checks: tuple[str, ...]) -> Any:
    """The run's schemathesis configuration (the v2 readiness routes' 503 is expected)."""
    return schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {key}"},
            "workers": workers,
            "generation": {"max-examples": examples, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
            "operations": [
                {
                    "include-path-regex": "/ready$",
                    "checks": {
                        "not_a_server_error": {
                            "expected-statuses": ["1XX", "2XX", "3XX", "4XX", "503"]
                        }
                    },
                }
            ],
        }
    )


def run(url: str, key: str, examples: int, workers: int, checks: tuple[str, ...]) -> None:
    """One pass over every operation; prints its figures."""
    schema = schemathesis.openapi.from_url(
        f"{url}/openapi.json",
        config=config(key, examples, workers, checks),
        headers={"Authorization": f"Bearer {key}"},
    )
    started = time.perf_counter()
    operations: set[str] = set()
    requests = 0
    statuses: Counter[int] = Counter()
    failed: Counter[str] = Counter()
    first: dict[str, str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            print(f"  error: {event}")
            continue
        if not isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            continue
        recorder = event.recorder
        operations.add(recorder.label)
        for interaction in recorder.interactions.values():
            requests += 1
            if interaction.response is not None:
                statuses[interaction.response.status_code] += 1
        for nodes in recorder.checks.values():
            for node in nodes:
                if node.failure_info is None:
                    continue
                name = f"{node.name} ({recorder.label})"
                failed[name] += 1
                first.setdefault(name, str(node.failure_info.failure.title))
    seconds = time.perf_counter() - started
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    violations = sum(n for name, n in failed.items() if name.split(" ")[0] in SCHEMA_CHECKS)
    print(f"checks: {', '.join(checks)}")
    print(f"  operations        {len(operations)}")
    print(f"  requests          {requests} ({requests / seconds:.0f}/s over {seconds:.0f} s)")
    print(f"  5xx               {server_errors} {dict(sorted(statuses.items()))}")
    print(f"  schema violations {violations}")
    print(f"  failed checks     {sum(failed.values())}")
    for name, count in sorted(failed.items()):
        print(f"    {count:5d}  {name}: {first[name]}")


def main() -> None:
    """Parse the arguments, start a server unless one is named, run the passes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--key", help="an admin key of that server")
    parser.add_argument("--examples", type=int, default=300, help="examples per operation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", action="store_true", help="also run the strict checks")
    args = parser.parse_args()
    passes = [CHECKS, PRECISION_CHECKS] if args.precision else [CHECKS]
    if args.url:
        for checks in passes:
            run(args.url.rstrip("/"), args.key or "", args.examples, args.workers, checks)
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        key = admin_key(home)
        port = free_port()
        env = {
            **os.environ,
            "MODELHOST_HOME": str(home),
            "MODELHOST_DEMO__MODELS": '["iris"]',
            "MODELHOST_LIMITS__REQUESTS_PER_MINUTE": "1000000000",
            "MODELHOST_PROVENANCE__FLUSH_INTERVAL_S": "0.05",
        }
        server = serve(env, port)
        try:
            for checks in passes:
                run(f"http://127.0.0.1:{port}", key, args.examples, args.workers, checks)
        finally:
            stop(server)


if __name__ == "__main__":
    main()
