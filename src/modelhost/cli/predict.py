"""``modelhost predict``: one predict request to a running server, over HTTP (``--url`` /
``MODELHOST_URL``, ``--api-key`` / ``MODELHOST_API_KEY``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from modelhost.cli.common import DEFAULT_URL, fail_markup, out


def register(app: typer.Typer) -> None:
    """Add ``modelhost predict`` to the command line."""
    app.command()(predict)


def predict(
    model: Annotated[str, typer.Argument(help="Model name, or name@version.")],
    body: Annotated[
        str,
        typer.Argument(help='JSON: an input, a list of inputs, or a full {"inputs": [...]} body.'),
    ],
    url: Annotated[str, typer.Option(envvar="MODELHOST_URL", help="Server URL.")] = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELHOST_API_KEY", help="API key (mhk_…).")
    ] = None,
) -> None:
    """Send one predict request to a running server and pretty-print the answer."""
    import httpx

    try:
        payload: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise fail_markup(f"the body is not valid JSON: {exc}") from None
    if not (isinstance(payload, dict) and "inputs" in payload):
        payload = {"inputs": payload if isinstance(payload, list) else [payload]}
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = httpx.post(
            f"{url}/v1/models/{model}/predict", json=payload, timeout=timeout, headers=headers
        )
    except httpx.HTTPError as exc:
        raise fail_markup(f"cannot reach {url}: {exc}") from None
    data = response.json()
    if response.status_code >= 400:
        error = data.get("error", {})
        raise fail_markup(f"{response.status_code} {error.get('type')}: {error.get('message')}")
    out.print_json(json.dumps(data))
