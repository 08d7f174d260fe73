"""``modelhost predict``: the real command against the session server."""

from __future__ import annotations

import json

from tests.cli.test_models import one_line_error
from tests.conftest import Server, run_cli


def test_predict_against_a_running_server(server: Server) -> None:
    flower = '{"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}'
    result = run_cli(
        server.home, "predict", "iris", flower, "--url", server.url, "--api-key", server.api_key
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["results"][0]["label"] == "virginica"
    assert body["version"] == "1.0.0"


def test_predict_errors_are_one_line(server: Server) -> None:
    one_line_error(
        run_cli(
            server.home, "predict", "ghost", "[1]", "--url", server.url, "--api-key", server.api_key
        ),
        "404 not_found_error",
    )
    one_line_error(
        run_cli(
            server.home,
            "predict",
            "iris",
            "{oops",
            "--url",
            server.url,
            "--api-key",
            server.api_key,
        ),
        "not valid JSON",
    )
    one_line_error(
        run_cli(server.home, "predict", "iris", "[1]", "--url", "http://127.0.0.1:9"),
        "cannot reach",
    )
