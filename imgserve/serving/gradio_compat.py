"""Gradio 6.31's gaps for a page mounted in another app rather than launched, each filled here, in one place.

A launched Gradio server sets its stop event and answers its own errors; mounted (imgserve/serving/ui.py),
its heartbeat streams outlived the server's stop, a call of an API name it lacks was a bare 500, a stream
for an unknown event was cut mid-answer, and a curl call with the photo alone got `{"error": null}`.
Check these against a new Gradio before moving its pin (tests/test_ui.py drives each one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.applications import Starlette

from imgserve import config
from imgserve.serving.errors import quoted

log = logging.getLogger("bentoml.service")


def answer_unknown_api_names(gradio_app: Any) -> None:
    """A call of an API name the page has none of (`POST /ui/gradio_api/call/predict`, as Gradio's docs
    write it for a gr.Interface) is a 404 that names the page's API, in the one error shape; a function
    index it has not, in the page script's own `queue/join`, a 400.

    Gradio 6.31 lets its FnIndexInferError escape the route: the caller got a bare 500 "Internal Server
    Error" and the log a traceback, twice."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from gradio.route_utils import FnIndexInferError

    api = f"POST {config.UI_PATH}/gradio_api/call/{config.UI_API_NAME} (its inputs: {config.UI_PATH}/?view=api)"

    async def unknown(request: Request, exc: Exception) -> JSONResponse:
        name = quoted(str(request.path_params.get("api_name", "")))
        return JSONResponse({"error": f"the web page has no API named {name}: call {api}"}, status_code=404)

    async def unknown_index(request: Request, exc: Exception) -> JSONResponse:
        """Gradio 6.31 looks a `queue/join`'s function index up unchecked: its KeyError was a 500 with a
        traceback. A KeyError elsewhere stays a bug."""
        if not request.url.path.endswith("/gradio_api/queue/join"):
            raise exc
        error = f"the web page has no function index {quoted(str(exc.args[0] if exc.args else ''))}"
        return JSONResponse({"error": f"{error}: programs call {api}"}, status_code=400)

    gradio_app.add_exception_handler(FnIndexInferError, unknown)
    gradio_app.add_exception_handler(KeyError, unknown_index)


class FillTheApisDefaults:
    """A call of the page's API with the photo alone, or the photo and top_k (`POST /ui/gradio_api/call/classify`
    with `{"data": [photo]}`), gets the other inputs' defaults, as the page's API view says it may leave them out;
    one with none, no photo.

    Gradio 6.31 runs only calls with every input: the caller read `event: error`, `data: {"error": null}`, and the
    log had a traceback. gradio_client fills them itself; curl and other HTTP clients do not."""

    MAX_BODY = 64 * 1024  # a call names uploaded files by path: a few hundred bytes; a larger body goes on as it is

    def __init__(self, app: Any, defaults: list[Any]) -> None:
        self.app, self.defaults = app, defaults
        self.path = f"{config.UI_PATH}/gradio_api/call/{config.UI_API_NAME}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more and len(body) <= self.MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if not more:
            body = self.filled(body)
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]}
            scope["headers"].append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replayed() -> Any:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}

        await self.app(scope, replayed, send)

    def filled(self, body: bytes) -> bytes:
        try:
            call = json.loads(body)
        except ValueError:
            return body  # Gradio's own 422 says what is wrong
        data = call.get("data") if isinstance(call, dict) else None
        every = [None, *self.defaults]  # no photo: the page's answer is cleared, as when its photo is removed
        if not isinstance(data, list) or len(data) >= len(every):
            return body
        call["data"] = data + every[len(data) :]
        return json.dumps(call).encode()


class EndStreamsThatFindNothing:
    """An event stream of Gradio's for an event or session it does not hold (`GET /ui/gradio_api/call/classify/<id>`
    with an id mistyped or from before a restart; `queue/data?session_hash=...`) ends after its `event: error`,
    with one log line.

    Gradio 6.31 sends that event and then raises its 404 inside the stream, after its 200 went out: the
    connection was cut mid-answer (curl: "transfer closed with outstanding read data remaining") and the log
    had a traceback for each."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        streaming = ended = False

        async def watched(message: Any) -> None:
            nonlocal streaming, ended
            if message["type"] == "http.response.start":
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"]
                )
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        from starlette.exceptions import HTTPException

        try:
            await self.app(scope, receive, watched)
        except RuntimeError as e:  # Starlette's "Caught handled exception, but response already started."
            refused = e.__cause__
            if not (streaming and not ended and isinstance(refused, HTTPException)):
                raise
            log.info(
                "%s %s: %d %s, the event stream ended",
                scope["method"],
                scope["path"],
                refused.status_code,
                refused.detail,
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def end_heartbeats_on_stop(app: Starlette, stop_event: asyncio.Event) -> None:
    """While `app` runs, the signal to stop (SIGTERM from the platform, Ctrl-C) first ends the page's
    heartbeat streams, then stops the server as before (uvicorn's handler).

    Each open page holds a stream that ends only when Gradio's `stop_event` is set, which Gradio does
    for a server it launched, never for a mounted app; uvicorn waits for every response to end before it
    exits, and BentoML gives it a day: one open page kept the server from stopping until the platform
    killed it (SIGKILL, after Kubernetes' 30 s). Requests in flight still finish."""
    entered = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[Any]:
        # Entered inside uvicorn's serve(), after it took the signals: its handlers are the ones chained.
        async with entered(a) as state:
            with _on_stop_signal(asyncio.get_running_loop(), stop_event.set):
                yield state

    app.router.lifespan_context = lifespan


@contextlib.contextmanager
def _on_stop_signal(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Iterator[None]:
    """Run `callback` in `loop` on SIGTERM or SIGINT, then the handler that was there; restored on exit.
    Only the main thread takes signals: elsewhere (an app run by a test client) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(sig: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)
        elif chained == signal.SIG_DFL:  # what the signal did before: usually, end the process
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
