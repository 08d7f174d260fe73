"""What every router shares: reading and decoding request bodies, the headers of an answer,
pinned versions and cache control, async submission of a predict body, and the route class
of the hot paths.

Routers import these from here (never from one another): ``api/v1.py`` holds only the v1
routes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from modelhost.api.auth import principal_of
from modelhost.api.openapi import error_responses
from modelhost.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelhost.inference import InferenceResponse
from modelhost.security.keys import Principal

_JSON = "application/json"
#: What a JSON route reads (``+json`` types are accepted too).
JSON_MEDIA = ("application/json",)
#: What an inference answers besides 200 (401/403 come from the authentication middleware).
INFER_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503, 504)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Encode with orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type=_JSON,
        headers=headers,
    )


def check_media(request: Request, accepted: tuple[str, ...]) -> None:
    """Refuse a body whose Content-Type the route does not read (no header is accepted).

    Raises:
        UnsupportedMediaType: 415, naming the type to send.
    """
    value = request.headers.get("content-type")
    if not value:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media in accepted or media.endswith("+json"):
        return
    raise UnsupportedMediaType(
        f"content type {media!r} is not accepted here; send {' or '.join(accepted)}",
        param="content-type",
    )


async def read_body(request: Request, limit: int, accepted: tuple[str, ...] = JSON_MEDIA) -> bytes:
    """The request body, refused with 415 for a content type the route does not read and with
    413 as soon as it passes ``limit`` bytes.

    Reads the ASGI ``receive`` channel directly: a single-message body (the usual case) is
    returned as is, without joining chunks.
    """
    check_media(request, accepted)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body is {declared} bytes; this model accepts at most {limit}", param="body"
        )
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client went away
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"request body is over {limit} bytes, the most this model accepts", param="body"
            )
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; a malformed one is the caller's 400."""
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object", param="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", param="body") from None


def no_cache(request: Request) -> bool:
    """Whether the caller sent ``Cache-Control: no-cache`` (or ``no-store``): the response
    cache must not answer it."""
    value = request.headers.get("cache-control", "").lower()
    return "no-cache" in value or "no-store" in value


def answer_headers(response: InferenceResponse) -> dict[str, str]:
    """``X-Model-Version``, and ``X-Cache`` when the response cache was asked."""
    headers = {"X-Model-Version": response.version}
    if response.cache is not None:
        headers["X-Cache"] = response.cache
    return headers


def version_header(model: str, request: Request) -> str | None:
    """``X-Model-Version``: ``1.1.0``, or the seed's ``name-1.1.0`` form."""
    value = request.headers.get("x-model-version")
    if not value:
        return None
    base = model.partition("@")[0]
    return value.removeprefix(f"{base}-")


class LeanRoute(APIRoute):
    """An API route documented like any other, whose endpoint reads the raw request.

    FastAPI builds the OpenAPI entry from the endpoint's signature and the route's arguments
    as usual, but a request skips dependency solving, parameter and response validation: the
    endpoint gets the path parameters from the request and returns a finished ``Response``.
    Used for the predict hot path, whose body is parsed and checked by the data plane.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Call the endpoint with its path parameters and the request."""
        endpoint = cast(Callable[..., Coroutine[Any, Any, Response]], self.endpoint)

        async def handler(request: Request) -> Response:
            return await endpoint(request=request, **request.path_params)

        return handler


#: Queues a predict body sent with ``"async": true`` as a job (``api.jobs.Submitter.submit``).
SubmitJob = Callable[[dict[str, Any], Principal], Coroutine[Any, Any, Response]]


def wants_async(payload: dict[str, Any]) -> bool:
    """Whether a predict body asks to run as a job (``"async": true``); removes the flag."""
    flag = payload.pop("async", False)
    if not isinstance(flag, bool):
        raise InvalidInput("'async' must be true or false", param="async")
    return flag


async def submit_async(
    submit_job: SubmitJob | None,
    payload: dict[str, Any],
    model: str,
    version: str | None,
    request: Request,
) -> Response:
    """Queue a predict body as a job for the model (pinned as the call pinned it)."""
    if submit_job is None:
        raise InvalidInput("async jobs are not available on this server", param="async")
    name, _, pinned = model.partition("@")
    reference = f"{name}@{version or pinned}" if version or pinned else name
    return await submit_job({**payload, "model": reference}, principal_of(request.scope))
