"""The HTTP boundary, before BentoML parses a request: one error shape, limits, load shedding.

One ASGI middleware, added to the service. Every 4xx and 5xx it lets out is one JSON object
`{"error": "<what to fix>"}` (plus `"image": N` when one image of the request is at fault); the
web page under /ui keeps Gradio's own answers, which its page reads. It answers:
- 431 for request headers over MAX_HEADER_BYTES;
- 401 when an API key is configured and the request does not carry it (health probes excepted);
- 413 for a body over the limit, from Content-Length when there is one, else as soon as the
  streamed body passes the limit: an oversized upload is never read whole;
- for POST /classify, before BentoML sees a byte of it: 415 for a body that is neither a form nor
  an image; 400 for a malformed form (no or wrong boundary, no closing boundary, a part without a
  name, an unknown or repeated field, too many images, a bad top_k). A raw image body
  (Content-Type: image/*) is passed on as a one-image form, top_k from the query string;
- 408 when the body makes no progress for BODY_TIMEOUT_S: a stalled client frees its place;
- 503 with Retry-After when more requests are at work than the service will hold. A request
  counts once its body has arrived, so clients still uploading (or stalled) never lock out the
  ones at work; uploads have their own, larger bound (MAX_UPLOADS), against running out of files;
and it adds Retry-After to every 429/503. A 503 from /classify itself means the model queue is
full; BentoML words every 5xx as "An unexpected error has occurred", so the guard says so instead.
BentoML's own error bodies (a list for a 4xx, pydantic's dump for a validation error, plain text
for 404/405) are rewritten into the one shape. Each client error is one INFO line in the log;
BentoML's traceback for it is dropped (`quiet_client_errors`), only the unexpected keeps one.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from imgserve import config

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("bentoml.service.guard")

OPEN_PATHS = frozenset({"/livez", "/readyz"})  # probes must work without the key
SHED_PATHS = (config.CLASSIFY_PATH, config.UI_PATH)  # work that costs decoding and model time
# Pages people open in a browser (the API docs page, not /docs.json); Gradio's answers are its own.
BROWSER_PATHS = (config.UI_PATH, f"{config.DOCS_PATH}/")
DOCS_PATH = "/docs.json"  # BentoML's OpenAPI document: the guard adds the real error answers
TOO_MANY_IN_FLIGHT = "server busy: too many requests in progress, retry shortly"
TOO_MANY_UPLOADS = "server busy: too many uploads in progress, retry shortly"
MODEL_QUEUE_FULL = "server busy: the model queue is full, retry shortly"
RETRY_AFTER = {"Retry-After": str(config.RETRY_AFTER_S)}  # on every 429/503
HOW_TO_SEND = (
    "send the images as multipart/form-data in the 'images' field (curl -F images=@photo.jpg), "
    "or one image as the raw body with its Content-Type (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg)"
)
NO_IMAGES = "no images: send one or more files in the 'images' field"
IMAGE_ERROR = re.compile(r"^image (\d+): ")  # service.py words a rejected image with image_error()
RAW_FILENAME = "upload"  # the part a raw image body becomes; names are never used

# Every error status an endpoint answers, with what it means: the OpenAPI document lists these
# (README "Errors and limits" has the same statuses, checked by tests/test_errors.py).
ERROR_ANSWERS: dict[int, str] = {
    400: "a request to fix: not an image, a malformed form, an unknown field, a bad top_k, too many images",
    401: "API key missing or wrong (only when one is set)",
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    408: "the request body stalled: no data for the body timeout",
    413: "request body too large, or an image with too many pixels",
    415: "a body that is neither a multipart form nor an image",
    431: "request headers too large",
    500: "an unexpected server error (the server log has the details)",
    503: "server busy: too many requests at work or uploading, or the model queue is full; see Retry-After",
    504: "the request took longer than the timeout",
}
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what was wrong and what to do"},
        "image": {"type": "integer", "description": "which image of the request (1 = first), when one is at fault"},
    },
    "required": ["error"],
    "additionalProperties": False,
}


def image_error(index: int, reason: str) -> str:
    """The message for the image at `index` (0-based); the guard adds `"image": index + 1`."""
    return f"image {index + 1}: {reason}"


def too_many_images(count: int, limit: int) -> str:
    return f"too many images in one request: {count}, limit is {limit} ({config.ENV_MAX_IMAGES})"


def too_large(limit: int) -> str:
    return f"request body too large: limit is {limit} bytes ({config.ENV_MAX_REQUEST_BYTES})"


class Refusal(Exception):
    """A request answered by the guard: status, the error sentence, headers for the answer."""

    def __init__(self, status: int, error: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.headers = status, error, dict(headers or {})


def error_answer(error: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"error": error}
    if named := IMAGE_ERROR.match(error):
        answer["image"] = int(named[1])
    return answer


async def respond(send: Send, status: int, error: str, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(error_answer(error)).encode()
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
        max_uploads: int = config.MAX_UPLOADS,
        max_images: int = config.MAX_IMAGES_PER_REQUEST,
        body_timeout_s: float = config.BODY_TIMEOUT_S,
        file_field: str = "images",
        field_checks: Mapping[str, Callable[[str], object]] | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.max_uploads = max_uploads
        self.uploading = 0
        self.max_images = max_images
        self.body_timeout_s = body_timeout_s
        self.file_field = file_field
        self.field_checks = dict(field_checks or {})  # text fields of /classify: raise ValueError to refuse
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            scope, receive, form = self.admit_headers(scope, receive)
        except Refusal as r:
            if r.status < 500:  # a client's mistake; a 503 is load, counted in /metrics, not logged each time
                log.info("%s %s: %d %s", scope.get("method"), scope["path"], r.status, r.error)
            return await respond(send, r.status, r.error, r.headers)
        exchange = Exchange(self, scope, receive, send, form)
        try:
            await self.app(scope, exchange.receive, exchange.send)
            await exchange.finish()
        finally:
            exchange.upload_ended()
            self.in_flight -= exchange.admitted

    def admit_headers(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive, FormCheck | None]:
        """Refuse from the headers alone, or say how the body will be checked."""
        path: str = scope["path"]
        if sum(len(k) + len(v) for k, v in scope["headers"]) > config.MAX_HEADER_BYTES:
            raise Refusal(431, f"request headers too large: limit is {config.MAX_HEADER_BYTES} bytes")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and path not in OPEN_PATHS and not key_matches(headers.get("authorization", ""), self.api_key):
            # Browsers prompt for a password only when Basic is the challenge; programs expect Bearer.
            challenge = 'Basic realm="imgserve"' if path.startswith(BROWSER_PATHS) else 'Bearer realm="imgserve"'
            message = f"missing or wrong API key: send 'Authorization: Bearer <{config.ENV_API_KEY}>'"
            raise Refusal(401, message, {"WWW-Authenticate": challenge})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            raise Refusal(413, too_large(self.max_request_bytes))
        if path.startswith(SHED_PATHS) and scope.get("method") == "POST" and self.in_flight >= self.max_in_flight:
            raise Refusal(503, TOO_MANY_IN_FLIGHT, RETRY_AFTER)  # known before the upload: spare it
        if path.startswith(SHED_PATHS) and scope.get("method") == "POST" and self.uploading >= self.max_uploads:
            raise Refusal(503, TOO_MANY_UPLOADS, RETRY_AFTER)
        if path != config.CLASSIFY_PATH or scope.get("method") != "POST":
            return scope, receive, None
        kind, options = parse_options_header(headers.get("content-type", ""))
        kind = kind.decode("latin-1").lower()
        if kind == "multipart/form-data":
            boundary = options.get(b"boundary", b"")
            if not boundary:
                message = "multipart body without a boundary in its Content-Type: let the HTTP library write it"
                raise Refusal(400, f"{message}; {HOW_TO_SEND}")
            return (
                with_content_type(scope, b'multipart/form-data; boundary="%s"' % boundary),
                receive,
                FormCheck(self, boundary),
            )
        if kind.startswith("image/") or kind == "application/octet-stream":
            return self.raw_image(scope, receive, kind)
        shown = kind or "none"
        raise Refusal(415, f"unsupported Content-Type {shown!r}: {HOW_TO_SEND}")

    def raw_image(self, scope: Scope, receive: Receive, kind: str) -> tuple[Scope, Receive, FormCheck]:
        """A raw image body, passed on as the one-image form BentoML parses; top_k from the query."""
        boundary = secrets.token_hex(16).encode()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        head = b""
        for name, values in query.items():
            if name not in self.field_checks:
                raise Refusal(400, f"unknown query parameter {name!r}: the only one is top_k")
            for value in values:
                head += b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
                    boundary,
                    name.encode(),
                    value.encode(),
                )
        head += b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\nContent-Type: %s\r\n\r\n' % (
            boundary,
            self.file_field.encode(),
            RAW_FILENAME.encode(),
            kind.encode(),
        )
        tail = b"\r\n--%s--\r\n" % boundary
        first = True

        async def wrapped() -> Message:
            nonlocal first
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if first:
                    body, first = head + body, False
                if not message.get("more_body", False):
                    body += tail
                message = {**message, "body": body}
            return message

        form_type = b"multipart/form-data; boundary=" + boundary
        return with_content_type(scope, form_type, drop_length=True), wrapped, FormCheck(self, boundary)


def with_content_type(scope: Scope, content_type: bytes, drop_length: bool = False) -> Scope:
    """The scope with its Content-Type as BentoML matches it (exact, lower case; it picks the parser
    by that string), and without Content-Length when the body's length changes."""
    drop = (b"content-type", b"content-length") if drop_length else (b"content-type",)
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
    return {**scope, "headers": [*headers, (b"content-type", content_type)]}


class FormCheck:
    """The multipart body of /classify, parsed as it streams past (python-multipart, as Starlette
    does): each chunk is checked before BentoML gets it, so no malformed form reaches BentoML,
    whose answers to one are a 500 and a temp file under the client's file name."""

    def __init__(self, guard: Guard, boundary: bytes) -> None:
        self.guard = guard
        self.boundary = boundary
        self.problem: Refusal | None = None
        self.parts = self.images = 0
        self.seen_fields: dict[str, int] = {}
        self.header_field = self.header_value = b""
        self.disposition = b""
        self.field: str | None = None  # the text field being read, and its value so far
        self.value = b""
        self.ended = False
        callbacks = {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field_data,
            "on_header_value": self.header_value_data,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }
        self.parser = MultipartParser(boundary, callbacks)

    @property
    def counting(self) -> bool:
        """Past the image limit: the rest is read only to count, and BentoML gets none of it."""
        return self.images > self.guard.max_images

    def feed(self, chunk: bytes, final: bool) -> None:
        """Check the next chunk; raise Refusal for a form that must not reach BentoML."""
        try:
            self.parser.write(chunk)
        except MultipartParseError as e:
            if self.problem is None and str(e).startswith("Maximum header"):  # python-multipart: 4 kB, 8 headers
                raise Refusal(400, f"a form part's headers are too large ({e}): shorten the file name") from None
            if self.problem is None and not self.parts:
                declared = f"'--{self.boundary.decode('latin-1')}'"
                message = f"multipart body does not start with the boundary its Content-Type names ({declared})"
                raise Refusal(400, message) from None
            if self.problem is None:
                raise Refusal(400, f"malformed multipart body in part {self.parts} ({e}): {HOW_TO_SEND}") from None
        if self.problem is not None:  # raised inside a callback, which the parser wraps
            raise self.problem
        if final:
            if self.counting:
                raise Refusal(400, too_many_images(self.images, self.guard.max_images))
            if not self.ended and self.parts:
                raise Refusal(400, f"multipart body ends before its closing boundary '--{self.boundary.decode()}--'")
            if not self.images:
                raise Refusal(400, NO_IMAGES)

    def refuse(self, error: str) -> None:
        self.problem = self.problem or Refusal(400, error)
        raise self.problem

    def part_begin(self) -> None:
        self.parts += 1
        self.disposition = b""

    def header_field_data(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def header_value_data(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_field = self.header_value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        known = [self.guard.file_field, *self.guard.field_checks]
        if not name:
            self.refuse(f"a form part without a field name: name each part, e.g. {HOW_TO_SEND}")
        if name not in known:
            fields = ", ".join(repr(k) for k in known)
            self.refuse(f"unknown field {name!r}: send the images in the {known[0]!r} field (fields: {fields})")
        if name == self.guard.file_field:
            self.images += 1
            self.field = None
            return
        self.seen_fields[name] = self.seen_fields.get(name, 0) + 1
        if self.seen_fields[name] > 1:
            self.refuse(f"field {name!r} sent {self.seen_fields[name]} times: send it once")
        self.field, self.value = name, b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.field is not None:
            self.value += data[start:end]
            if len(self.value) > config.MAX_FIELD_BYTES:
                self.refuse(f"field {self.field!r} too long: more than {config.MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self.field is not None:
            text = self.value.decode("utf-8", "replace")
            try:
                self.guard.field_checks[self.field](text)
            except ValueError as e:
                self.refuse(str(e))
            self.field = None

    def end(self) -> None:
        self.ended = True


class Exchange:
    """One request as it passes the guard. Its body: counted against the limit, checked by its
    FormCheck, timed for progress; once it has all arrived, the request is admitted as work or
    refused with 503. Its answer: a 4xx/5xx of the app reworded into the one error shape, a
    503 given Retry-After. A request the guard refuses mid-body looks to the app like a client
    that left; the app's answer to that is dropped and the guard's own is sent."""

    def __init__(self, guard: Guard, scope: Scope, receive: Receive, send: Send, form: FormCheck | None) -> None:
        self.guard, self._receive, self._send, self.form = guard, receive, send, form
        self.method, self.path = scope.get("method", ""), scope["path"]
        self.shed = self.path.startswith(SHED_PATHS) and self.method == "POST"
        self.reword = not self.path.startswith(BROWSER_PATHS)  # Gradio's page reads Gradio's answers
        self.seen = 0
        self.body_done = False
        self.admitted = 0  # 1 while the request counts against the in-flight bound
        self.uploading = int(self.shed)  # 1 while it counts against the uploads bound
        guard.uploading += self.uploading
        self.refusal: Refusal | None = None
        self.gone = False  # the client left
        self.started = False  # the answer (the app's or ours) has begun
        self.held: Message | None = None  # the app's answer start, while its body is rewritten
        self.held_body = b""

    def upload_ended(self) -> None:
        self.guard.uploading -= self.uploading
        self.uploading = 0

    def refuse(self, refusal: Refusal) -> Message:
        self.upload_ended()
        self.refusal = self.refusal or refusal
        return {"type": "http.disconnect"}  # the app stops reading

    async def receive(self) -> Message:
        if self.refusal or self.gone:
            return {"type": "http.disconnect"}
        if self.body_done or self.started:
            return await self._receive()  # after the body: the app only listens for a disconnect
        while True:
            try:
                message = await asyncio.wait_for(self._receive(), self.guard.body_timeout_s)
            except TimeoutError:
                stalled = f"request body stalled: no data for {self.guard.body_timeout_s:g} s"
                message = f"{stalled} ({config.ENV_BODY_TIMEOUT_S}): send the whole body"
                return self.refuse(Refusal(408, message, {"Connection": "close"}))  # and its connection is freed
            if message["type"] != "http.request":
                self.gone = True
                self.upload_ended()
                log.info("%s %s: the client left before its body was read", self.method, self.path)
                return message
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            self.seen += len(chunk)
            if self.seen > self.guard.max_request_bytes:
                return self.refuse(Refusal(413, too_large(self.guard.max_request_bytes)))
            if self.form is not None:
                try:
                    self.form.feed(chunk, final=not more)
                except Refusal as r:
                    return self.refuse(r)
                if self.form.counting and more:
                    continue  # past the image limit: read on to count, pass nothing on
            if not more:
                self.body_done = True
                self.upload_ended()
                if self.shed:
                    if self.guard.in_flight >= self.guard.max_in_flight:
                        return self.refuse(Refusal(503, TOO_MANY_IN_FLIGHT, RETRY_AFTER))
                    self.guard.in_flight += 1
                    self.admitted = 1
            return message

    async def answer(self, status: int, error: str, headers: Mapping[str, str] | None = None) -> None:
        self.started = True
        if 400 <= status < 500:
            log.info("%s %s: %d %s", self.method, self.path, status, error)
        await respond(self._send, status, error, headers)

    async def finish(self) -> None:
        """After the app: send the guard's refusal if it has one (the app's answer was dropped)."""
        if self.refusal and not self.started and not self.gone:
            await self.answer(self.refusal.status, self.refusal.error, self.refusal.headers)

    async def send(self, message: Message) -> None:
        if self.refusal or self.gone:
            return  # the app's answer to the disconnect it was shown: finish() answers
        if message["type"] == "http.response.start":
            status = message["status"]
            if (status >= 400 and self.reword) or (status == 200 and self.path == DOCS_PATH):
                self.held, self.held_body = message, b""
                return
            self.started = True
            if status in (429, 503):
                headers = list(message.get("headers", []))
                if b"retry-after" not in {k.lower() for k, _ in headers}:
                    message["headers"] = [*headers, (b"retry-after", RETRY_AFTER["Retry-After"].encode())]
        elif message["type"] == "http.response.body" and self.held is not None:
            self.held_body += message.get("body", b"")
            if not message.get("more_body", False):
                await self.rewrite(self.held, self.held_body)
            return
        await self._send(message)

    async def rewrite(self, start: Message, body: bytes) -> None:
        status = start["status"]
        if status == 200:  # the OpenAPI document
            self.started = True
            document = with_error_answers(json.loads(body))
            return await send_json(self._send, start, json.dumps(document).encode())
        if status == 503 and self.path == config.CLASSIFY_PATH:  # /classify's 503s come from its model queue
            return await self.answer(503, MODEL_QUEUE_FULL, RETRY_AFTER)
        extra = RETRY_AFTER if status in (429, 503) else {}
        await self.answer(status, app_error(status, body, self.method, self.path), extra)


async def send_json(send: Send, start: Message, body: bytes) -> None:
    keep = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    headers = [*keep, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": start["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_error(status: int, body: bytes, method: str, path: str) -> str:
    """The error sentence of an app's answer: BentoML's list, pydantic's dump, or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not (isinstance(data, dict) and isinstance(data.get("error"), str)):
        return f"{HTTPStatus(status).phrase.lower()}: {method} {path}"
    details = data.get("detail")
    if isinstance(details, list) and details:  # pydantic: "1 validation error for Input" and a list
        sentences = []
        for d in details:
            msg = str(d.get("msg", "")).removeprefix("Value error, ") if isinstance(d, dict) else str(d)
            where = ".".join(map(str, d.get("loc", []))) if isinstance(d, dict) else ""
            sentences.append(msg if not where or msg.startswith(where) else f"{where}: {msg}")
        return "; ".join(sentences)
    return data["error"]


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


def quiet_client_errors() -> None:
    """Drop BentoML's ERROR traceback for a client's mistake: the guard logs it as one INFO line.

    BentoML 1.4 logs every exception of an API call with its traceback, a wrong top_k as
    loudly as a bug. Kept: anything unexpected (a 500 keeps its traceback).
    """
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    def expected(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (ValidationError, ClientDisconnect)):
            return True
        return isinstance(error, BentoMLException) and error.error_code != HTTPStatus.INTERNAL_SERVER_ERROR

    logging.getLogger("bentoml._internal.server.http_app").addFilter(lambda record: not expected(record))
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # warns of each malformed form


def refuse_text_for_files() -> None:
    """Make a text field where a file is expected a 400, not a fetch; never use a client's file name.

    Written for BentoML 1.4.39 (`_bentoml_impl.serde.MultipartSerde.ensure_file`, its one private
    touch here). BentoML 1.4 reads a multipart text field in a file-typed parameter as a URL and
    downloads it from the server: a server-side request forgery on a public service (or a 500
    where uvloop is missing). Uploaded files are the only input we take. It also writes each
    upload to a temp file whose name ends in the client's file name: a name longer than the file
    system allows, or with a NUL, was a 500. Images are recognised from their bytes, so the
    name is replaced by a neutral one.
    """
    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    async def ensure_file(obj: object) -> UploadFile:
        if not isinstance(obj, UploadFile):
            raise BadInput("images must be uploaded files (curl -F images=@photo.jpg), not text or URLs")
        obj.filename = RAW_FILENAME
        return obj

    MultipartSerde.ensure_file = staticmethod(ensure_file)
