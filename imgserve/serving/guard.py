"""The HTTP boundary: one ASGI middleware in front of BentoML that lets out only the one error shape.

For each request, from its headers: a trailing slash on an endpoint's path dropped (`/classify/`); 431
for headers over MAX_HEADER_BYTES; 401 without the API key (access.py); 413 for a declared body over the
limit; 503 when no more work can be held (admission.py); for POST /classify, how its body will be
checked (form.py). Then, as the body streams in: 413 the moment it passes the limit (an oversized upload
is never read whole), 408 when it makes no progress for BODY_TIMEOUT_S (a stalled client frees its
place), the form's 400s, and admission once it has arrived.
A request refused mid-body looks to the app like a client that left; the guard answers in its place,
after reading and dropping the rest of the body (up to config.DRAIN_BYTES; not a stalled one), so that the
answer is not lost to a reset connection. A client that leaves after its body, before its answer, has
its work cancelled.
On the way out, an error answer of the app that is not yet in the one shape is reworded (errors.py),
Retry-After goes on every 429/503, and the OpenAPI document gets the real error answers. The web page
under /ui keeps Gradio's own answers, which its page reads; the guard's own refusals of the page's script
(PAGE_SCRIPT_PATH) are the sentence as text, which the page shows. Each client error is one INFO line in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from imgserve import config
from imgserve.serving import access, admission
from imgserve.serving.errors import (
    INTERNAL_ERROR,
    RETRY_AFTER,
    ClientError,
    from_app,
    in_shape,
    too_large,
    with_error_answers,
)
from imgserve.serving.form import FormCheck, FormRules, body_check

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("bentoml.service.guard")

# On a refusal whose body is left unread (too large, stalled): the connection ends with the answer,
# so a keep-alive client does not send its next request behind a body the server will not read.
CLOSE = {"Connection": "close"}
OPENAPI_PATH = "/docs.json"  # BentoML's OpenAPI document: the guard adds the real error answers
# The web page's script calls these (an upload, joining the queue). Where it shows a refusal itself, it shows
# "HTTP <status>: " and the body as it is: a visitor would read JSON ('{"error": ...}'), so it gets the sentence.
PAGE_SCRIPT_PATH = f"{config.UI_PATH}/gradio_api/"


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        api_key: str = "",
        max_request_bytes: int = config.MAX_REQUEST_BYTES,
        max_in_flight: int = config.MAX_CONCURRENT_REQUESTS,
        max_uploads: int = config.MAX_UPLOADS,
        body_timeout_s: float = config.BODY_TIMEOUT_S,
        form: FormRules | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.admission = admission.Admission(max_in_flight, max_uploads)
        self.body_timeout_s = body_timeout_s
        self.form = form or FormRules()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = endpoint_path(scope)
        try:
            scope, receive, form = self.admit_headers(scope, receive)
        except ClientError as e:
            if e.status < 500:  # a client's mistake; a 503 is load, counted in /metrics, not logged each time
                log.info("%s %s: %d %s", scope.get("method"), scope["path"], e.status, e)
            if e.status == 413 and not expects_continue(scope):  # from its Content-Length: the body is on its way
                await drain(receive, self.body_timeout_s)
            return await e.send(send, plain=scope["path"].startswith(PAGE_SCRIPT_PATH))
        exchange = Exchange(self, scope, receive, send, form)
        try:
            await exchange.run(self.app, scope)
            await exchange.finish()
        except Exception:
            if exchange.started:
                raise
            # A bug of ours, or a library's, before any answer: logged with its traceback, answered at
            # once in the one shape (escaping, it would hold the client until BentoML's request timeout).
            log.exception("%s %s: unexpected error", exchange.method, exchange.path)
            await exchange.answer(ClientError(500, INTERNAL_ERROR))
        finally:
            exchange.upload_ended()
            if exchange.watcher is not None:
                exchange.watcher.cancel()
            self.admission.in_flight -= exchange.admitted

    def admit_headers(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive, FormCheck | None]:
        """Refuse from the headers alone, or say how the body will be checked."""
        path: str = scope["path"]
        method: str = scope.get("method", "")
        if sum(len(k) + len(v) for k, v in scope["headers"]) > config.MAX_HEADER_BYTES:
            raise ClientError(431, f"request headers too large: limit is {config.MAX_HEADER_BYTES} bytes")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        access.check_key(path, headers, self.api_key)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_request_bytes:
            raise ClientError(413, too_large(self.max_request_bytes), headers=CLOSE)
        if admission.costs_work(method, path):
            self.admission.check_upload()  # known before the upload: spare it
        if path != config.CLASSIFY_PATH or method != "POST":
            return scope, receive, None
        return body_check(scope, receive, self.form)


class Exchange:
    """One request as it passes the guard. Its body: counted against the limit, checked by its
    FormCheck, timed for progress; once it has all arrived, admitted as work or refused with 503.
    Its answer: an app's error reworded into the one shape, a 503 given Retry-After. A request the
    guard refuses mid-body looks to the app like a client that left; the app's answer to that is
    dropped and the guard's own is sent."""

    def __init__(self, guard: Guard, scope: Scope, receive: Receive, send: Send, form: FormCheck | None) -> None:
        self.guard, self._receive, self._send, self.form = guard, receive, send, form
        self.method, self.path = scope.get("method", ""), scope["path"]
        self.work = admission.costs_work(self.method, self.path)
        self.reword = not self.path.startswith(config.UI_PATH)  # Gradio's page reads Gradio's answers
        self.seen = 0
        self.body_done = False
        self.arrived = False  # the body's last chunk has been received (checked or not)
        self.admitted = 0  # 1 while the request counts against the in-flight bound
        self.uploading = int(self.work)  # 1 while it counts against the uploads bound
        guard.admission.uploading += self.uploading
        self.refusal: ClientError | None = None
        self.gone = False  # the client left
        self.started = False  # the answer (the app's or ours) has begun
        self.held: Message | None = None  # the app's answer start, while its body is read to be reworded
        self.held_body = b""
        self.task: asyncio.Future | None = None  # the app on a form, in a task of its own
        self.watcher: asyncio.Future | None = None  # after the form's body: listens for the client leaving
        self.left = False  # the client left after its body, before its answer: the work was cancelled

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        """The app on this request. A form (POST /classify) runs in a task of its own, cancelled if its
        client leaves after the body and before the answer: its images leave the model's queue
        (batcher.py drops a cancelled request's) instead of being computed for nobody."""
        if self.form is None:
            return await app(scope, self.receive, self.send)
        self.task = asyncio.ensure_future(app(scope, self.receive, self.send))
        try:
            await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self.left or (current is not None and current.cancelling()):
                raise  # the server's own cancelling (a shutdown), not ours
            log.info("%s %s: the client left before its answer; its work was dropped", self.method, self.path)

    async def watch(self) -> None:
        """After the whole body, until the answer: the client leaving cancels the work."""
        while (await self._receive())["type"] == "http.request":
            pass  # the body's end, told again
        if not self.started and self.held is None and self.task is not None:
            self.left = self.gone = True
            self.task.cancel()

    def upload_ended(self) -> None:
        self.guard.admission.uploading -= self.uploading
        self.uploading = 0

    def refuse(self, refusal: ClientError) -> Message:
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
                error = f"{stalled} ({config.ENV_BODY_TIMEOUT_S}): send the whole body"
                return self.refuse(ClientError(408, error, headers=CLOSE))
            if message["type"] != "http.request":
                self.gone = True
                self.upload_ended()
                if self.method not in ("GET", "HEAD"):  # a page's event stream ends so: no upload was cut short
                    log.info("%s %s: the client left before its body was read", self.method, self.path)
                return message
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            self.arrived = not more
            self.seen += len(chunk)
            if self.seen > self.guard.max_request_bytes:
                return self.refuse(ClientError(413, too_large(self.guard.max_request_bytes), headers=CLOSE))
            if self.form is not None:
                try:
                    self.form.feed(chunk, final=not more)
                except ClientError as e:
                    return self.refuse(e)
                if self.form.counting and more:
                    continue  # past the image limit: read on to count, pass nothing on
            if not more:
                self.body_done = True
                self.upload_ended()
                if self.form is not None:
                    self.watcher = asyncio.ensure_future(self.watch())
                if self.work:
                    try:
                        self.guard.admission.admit()
                    except ClientError as e:
                        return self.refuse(e)
                    self.admitted = 1
            return message

    async def answer(self, error: ClientError) -> None:
        self.started = True
        if 400 <= error.status < 500:
            log.info("%s %s: %d %s", self.method, self.path, error.status, error)
        await error.send(self._send, plain=self.path.startswith(PAGE_SCRIPT_PATH))

    async def finish(self) -> None:
        """After the app: send the guard's refusal if it has one (the app's answer was dropped), after
        the rest of the body unless it stalled."""
        if self.refusal and not self.started and not self.gone:
            if self.refusal.status != 408 and not self.arrived:
                await drain(self._receive, self.guard.body_timeout_s)
            await self.answer(self.refusal)

    async def send(self, message: Message) -> None:
        if self.refusal or self.gone:
            return  # the app's answer to the disconnect it was shown: finish() answers
        if message["type"] == "http.response.start":
            status = message["status"]
            if (status >= 400 and self.reword) or (status == 200 and self.path == OPENAPI_PATH):
                self.held, self.held_body = message, b""
                return
            self.started = True
            if status in (429, 503):
                message["headers"] = with_retry_after(message.get("headers", []))
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
            return await send_json(self._send, start, json.dumps(with_error_answers(json.loads(body))).encode())
        if in_shape(body):  # the service's own error answer: as it is
            self.started = True
            if 400 <= status < 500:
                log.info("%s %s: %d %s", self.method, self.path, status, json.loads(body)["error"])
            if status in (429, 503):
                start["headers"] = with_retry_after(start.get("headers", []))
            return await send_json(self._send, start, body)
        error = from_app(status, body, self.method, self.path)
        if allow := header(start, b"allow"):  # a 405 names the methods the endpoint takes (RFC 9110)
            error.headers["Allow"] = with_head(allow)
        await self.answer(error)


def endpoint_path(scope: Scope) -> Scope:
    """An endpoint's path with a trailing slash (`/classify/`) as the endpoint's. Starlette would answer
    307 to a URL built from the Host header: curl's POST printed nothing, and behind a proxy the
    redirect could lead to the pod's own address."""
    path: str = scope["path"]
    if path.endswith("/") and (bare := path.rstrip("/")) in config.ENDPOINT_PATHS:
        return {**scope, "path": bare, "raw_path": bare.encode()}
    return scope


def expects_continue(scope: Scope) -> bool:
    """The client waits for "100 Continue" before its body: refused before reading, it sends none."""
    return any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in scope["headers"])


async def drain(receive: Receive, timeout_s: float, limit: int = config.DRAIN_BYTES) -> None:
    """Read and drop the rest of a refused body, up to `limit` bytes and `timeout_s` in all, so that the
    refusal is read by the client, not lost to a connection reset (config.DRAIN_BYTES). Bounded in time
    too: a refused client that trickles its body holds its connection no longer than a stalled one."""
    read = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while read <= limit:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                read += len(message.get("body", b""))


def with_head(allow: str) -> str:
    """An Allow list with HEAD wherever it has GET: every GET endpoint answers HEAD (FastAPI's routes, as
    /models, name GET alone, though registry.py answers HEAD there too)."""
    methods = [m.strip() for m in allow.split(",") if m.strip()]
    return ", ".join([*methods, "HEAD"]) if "GET" in methods and "HEAD" not in methods else allow


def header(message: Message, name: bytes) -> str:
    """A header of an answer's start, or ''."""
    return next((v.decode("latin-1") for k, v in message.get("headers", []) if k.lower() == name), "")


def with_retry_after(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if b"retry-after" in {k.lower() for k, _ in headers}:
        return headers
    return [*headers, (b"retry-after", RETRY_AFTER["Retry-After"].encode())]


async def send_json(send: Send, start: Message, body: bytes) -> None:
    keep = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    headers = [*keep, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": start["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
