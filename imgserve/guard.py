"""The HTTP boundary, before BentoML parses a request: API key, body size, load shedding.

One ASGI middleware, added to the service. It answers:
- 401 when an API key is configured and the request does not carry it (health probes excepted);
- 413 for a body over the limit, from Content-Length when there is one, else as soon as the
  streamed body passes the limit: an oversized upload is never read whole;
- 503 with Retry-After when more requests are in flight than the service will hold;
and it adds Retry-After to every 429/503. A 503 from /classify itself means the model queue is
full; BentoML words every 5xx as "An unexpected error has occurred", so the guard says so instead.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from imgserve import config

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # probes must work without the key
SHED_PATHS = (config.CLASSIFY_PATH, config.UI_PATH)  # work that costs decoding and model time
BROWSER_PATHS = (config.UI_PATH,)  # pages people open in a browser
TOO_MANY_IN_FLIGHT = "server busy: too many requests in progress, retry shortly"
MODEL_QUEUE_FULL = "server busy: the model queue is full, retry shortly"
RETRY_AFTER = {"Retry-After": str(config.RETRY_AFTER_S)}  # on every 429/503


async def respond(send: Send, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def key_matches(authorization: str, key: str) -> bool:
    """`Bearer <key>` for programs, or HTTP Basic with the key as password for browsers."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.strip().encode(), key.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), key.encode())
    return False


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        api_key: str = "",
        max_request_bytes: int = config.MAX_REQUEST_BYTES,
        max_in_flight: int = config.MAX_CONCURRENT_REQUESTS,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        if self.api_key and path not in OPEN_PATHS and not key_matches(headers.get("authorization", ""), self.api_key):
            # Browsers prompt for a password only when Basic is the challenge; programs expect Bearer.
            challenge = 'Basic realm="imgserve"' if path.startswith(BROWSER_PATHS) else 'Bearer realm="imgserve"'
            message = f"missing or wrong API key: send 'Authorization: Bearer <{config.ENV_API_KEY}>'"
            return await respond(send, 401, message, {"WWW-Authenticate": challenge})

        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            return await respond(send, 413, too_large(self.max_request_bytes))

        shed = path.startswith(SHED_PATHS) and scope.get("method") == "POST"
        if shed and self.in_flight >= self.max_in_flight:
            return await respond(send, 503, TOO_MANY_IN_FLIGHT, RETRY_AFTER)
        self.in_flight += shed
        busy = MODEL_QUEUE_FULL if path == config.CLASSIFY_PATH else ""  # /classify's 503s come from its model queue
        exchange = Exchange(receive, send, self.max_request_bytes, busy_message=busy)
        try:
            await self.app(scope, exchange.receive, exchange.send)
            if exchange.over and not exchange.answered:  # the app gave up without answering
                await exchange.send({"type": "http.response.start", "status": 413})
        finally:
            self.in_flight -= shed


def too_large(limit: int) -> str:
    return f"request body too large: limit is {limit} bytes ({config.ENV_MAX_REQUEST_BYTES})"


class Exchange:
    """One request: its body cut off at the limit, its answer then replaced by a 413; a 503
    answer gets Retry-After and, if `busy_message`, that message in place of BentoML's."""

    def __init__(self, receive: Receive, send: Send, max_bytes: int, busy_message: str = "") -> None:
        self._receive, self._send, self.max_bytes = receive, send, max_bytes
        self.busy_message = busy_message
        self.seen = 0
        self.over = False
        self.answered = False
        self.rewording = False

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.max_bytes:
                self.over = True  # the app sees a disconnect and stops reading
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.over:
            if not self.answered:
                self.answered = True
                await respond(self._send, 413, too_large(self.max_bytes))
            return
        if self.rewording:  # the app's body of a reworded 503: ours was sent with its start
            return
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            if message["status"] == 503 and self.busy_message:
                self.rewording = True
                return await respond(self._send, 503, self.busy_message, RETRY_AFTER)
            headers = list(message.get("headers", []))
            if b"retry-after" not in {k.lower() for k, _ in headers}:
                message["headers"] = [*headers, (b"retry-after", RETRY_AFTER["Retry-After"].encode())]
        await self._send(message)


def refuse_text_for_files() -> None:
    """Make a text field where a file is expected a 400, not a fetch.

    BentoML 1.4 reads a multipart text field in a file-typed parameter as a URL and downloads
    it from the server: a server-side request forgery on a public service (or a 500 where
    uvloop is missing). Uploaded files are the only input we take.
    """
    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    async def ensure_file(obj: object) -> UploadFile:
        if not isinstance(obj, UploadFile):
            raise BadInput("images must be uploaded files (curl -F images=@photo.jpg), not text or URLs")
        return obj

    MultipartSerde.ensure_file = staticmethod(ensure_file)
