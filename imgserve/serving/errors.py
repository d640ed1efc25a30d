"""The API's one error shape, and errors carried as data from where they are found to where they are answered.

Every 4xx and 5xx of the API is one JSON object: `{"error": "<what to fix>"}`, plus `"image": N` (1 = the
first) when one image of the request is at fault. A `ClientError` holds the status, the sentence, the
image and the headers of such an answer; the service returns it as a response and the guard sends it,
so nothing is worded in one place and read back from the words in another. BentoML's own error bodies
(a list for a 4xx, pydantic's dump for a validation error, plain text for 404/405) are reworded into the
shape by `from_app`. The OpenAPI document lists every status (`with_error_answers`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any

from imgserve import config

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

RETRY_AFTER = {"Retry-After": str(config.RETRY_AFTER_S)}  # on every 429/503
TOO_MANY_IN_FLIGHT = "server busy: too many requests in progress, retry shortly"
TOO_MANY_UPLOADS = "server busy: too many uploads in progress, retry shortly"
MODEL_QUEUE_FULL = "server busy: the model queue is full, retry shortly"
NO_IMAGES = "no images: send one or more files in the 'images' field"
INTERNAL_ERROR = "An unexpected error has occurred, please check the server log."  # BentoML's own 500 says so

# Every error status an endpoint answers, with what it means: the OpenAPI document lists these
# (README "Errors and limits" has the same statuses, checked by tests/test_errors.py).
ERROR_ANSWERS: dict[int, str] = {
    400: "a request to fix: not an image, a malformed form, an unknown field, a bad top_k, too many images",
    401: "API key missing or wrong (only when one is set)",
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    408: "the request body stalled: no data for the body timeout",
    413: "request body too large, or an image with too many pixels",
    415: "a body that is neither a multipart form nor an image, or a compressed one (Content-Encoding)",
    431: "request headers too large",
    500: "an unexpected server error (the server log has the details)",
    503: "server busy: too many requests at work or uploading, or the model queue is full; see Retry-After",
    504: "the request took longer than the timeout",
}
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what was wrong and what to do"},
        "image": {"type": "integer", "description": "which image of the request (1 = first), when one is at fault"},
    },
    "required": ["error"],
    "additionalProperties": False,
}


class ClientError(Exception):
    """An answer with an error status: its status, its sentence, the image at fault (1-based), its headers."""

    def __init__(
        self, status: int, message: str, image: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.image = status, message, image
        self.headers = {**(RETRY_AFTER if status in (429, 503) else {}), **(headers or {})}

    def body(self) -> dict[str, Any]:
        if self.image is None:
            return {"error": self.message}
        return {"error": f"image {self.image}: {self.message}", "image": self.image}

    def encoded(self) -> bytes:
        return json.dumps(self.body()).encode()

    def response(self) -> Any:
        """The answer as a Starlette response, which a BentoML API may return as it is."""
        from starlette.responses import Response

        return Response(self.encoded(), self.status, self.headers, media_type="application/json")

    async def send(self, send: Send, plain: bool = False) -> None:
        """The answer through an ASGI `send`: what the guard answers before or instead of the app.
        `plain`: the sentence alone, as text (for a reader that shows the body as it is)."""
        body = str(self).encode() if plain else self.encoded()
        kind = b"text/plain; charset=utf-8" if plain else b"application/json"
        raw = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def __str__(self) -> str:
        return self.body()["error"]


def quoted(text: str) -> str:
    """What the client sent, quoted for a message (and the log line), cut at config.MAX_QUOTED_CHARS."""
    return repr(text if len(text) <= config.MAX_QUOTED_CHARS else text[: config.MAX_QUOTED_CHARS] + "...")


def too_many_images(count: int | str, limit: int) -> str:
    return f"too many images in one request: {count}, limit is {limit} ({config.ENV_MAX_IMAGES})"


def too_large(limit: int) -> str:
    return f"request body too large: limit is {limit} bytes ({config.ENV_MAX_REQUEST_BYTES})"


def in_shape(body: bytes) -> bool:
    """Is this answer already one error object (the service's own ClientError, or BentoML's 5xx)?"""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("error"), str)
        and set(data) <= set(ERROR_SCHEMA["properties"])
        and isinstance(data.get("image", 0), int)
    )


def from_app(status: int, body: bytes, method: str, path: str) -> ClientError:
    """An app's error answer in the one shape: BentoML's list, pydantic's dump, or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not (isinstance(data, dict) and isinstance(data.get("error"), str)):
        return ClientError(status, f"{HTTPStatus(status).phrase.lower()}: {method} {path}")
    details = data.get("detail")
    if isinstance(details, list) and details:  # pydantic: "1 validation error for Input" and a list
        sentences = []
        for d in details:
            msg = str(d.get("msg", "")).removeprefix("Value error, ") if isinstance(d, dict) else str(d)
            where = ".".join(map(str, d.get("loc", []))) if isinstance(d, dict) else ""
            sentences.append(msg if not where or msg.startswith(where) else f"{where}: {msg}")
        return ClientError(status, "; ".join(sentences))
    return ClientError(status, data["error"])


def with_error_answers(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with /classify's real error answers in place of BentoML's three."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    operation = document.get("paths", {}).get(config.CLASSIFY_PATH, {}).get("post")
    if operation is not None:
        ok = {k: v for k, v in operation.get("responses", {}).items() if not str(k).startswith(("4", "5"))}
        errors = {str(s): {"description": d, "content": ref} for s, d in ERROR_ANSWERS.items()}
        operation["responses"] = {**ok, **errors}
    return document
