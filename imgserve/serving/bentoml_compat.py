"""Every touch of BentoML's private parts, in one place, written for one BentoML version.

BentoML's private modules (`_bentoml_impl`, `bentoml._internal`) change without notice. The project
pins BentoML (requirements/serve.txt); this file is where a BentoML upgrade is checked: it says at start
when the running version is not the one these touches were written for, and each touch fails loudly,
naming this file, if what it patches is gone. Tests and the benchmark import the private values they
need from here too.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml

from imgserve import config

WRITTEN_FOR = "1.4.39"

log = logging.getLogger("bentoml.service")


class BentoMLChanged(RuntimeError):
    """A private part of BentoML that this file touches is not where it was."""


def check_version() -> None:
    if bentoml.__version__ != WRITTEN_FOR:
        log.warning(
            "BentoML %s: imgserve/serving/bentoml_compat.py was written for %s; check its touches",
            bentoml.__version__,
            WRITTEN_FOR,
        )


def _changed(what: str) -> BentoMLChanged:
    return BentoMLChanged(
        f"BentoML {bentoml.__version__} has no {what}; imgserve/serving/bentoml_compat.py was written for {WRITTEN_FOR}"
    )


# A part without a filename is text to Starlette: text typed where a file belongs, or a file's bytes sent
# without one (Node's form-data given a Buffer, requests given (None, data)): the answer fits both.
TEXT_FOR_FILE = (
    "images must be uploaded files: each 'images' part needs a filename, as curl -F images=@photo.jpg sends "
    "(a part without one is text, and text or a URL is never read as an image)"
)


def refuse_text_for_files() -> None:
    """Make a text field where a file is expected a 400, not a fetch.

    BentoML 1.4 reads a multipart text field in a file-typed parameter as a URL and downloads it from
    the server (`_bentoml_impl.serde.MultipartSerde.ensure_file`): a server-side request forgery on a
    public service. Uploaded files are the only input we take.
    """
    try:
        from _bentoml_impl.serde import MultipartSerde
    except ImportError as e:
        raise _changed("_bentoml_impl.serde.MultipartSerde") from e
    if not hasattr(MultipartSerde, "ensure_file"):
        raise _changed("MultipartSerde.ensure_file")
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    async def ensure_file(obj: object) -> UploadFile:
        if not isinstance(obj, UploadFile):
            raise BadInput(TEXT_FOR_FILE)
        return obj

    MultipartSerde.ensure_file = staticmethod(ensure_file)


def quiet_client_errors() -> None:
    """Drop BentoML's ERROR traceback for a client's mistake: the guard logs it as one INFO line.

    BentoML 1.4 logs every exception of an API call with its traceback (logger
    `bentoml._internal.server.http_app`), a wrong top_k as loudly as a bug. Kept: anything
    unexpected (a 500 keeps its traceback).
    """
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    def expected(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError | ClientDisconnect):
            return True
        return isinstance(error, BentoMLException) and error.error_code != HTTPStatus.INTERNAL_SERVER_ERROR

    logging.getLogger("bentoml._internal.server.http_app").addFilter(lambda record: not expected(record))
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # warns of each malformed form


def answer_as_json(api: Any) -> None:
    """Tell an API's output spec that its answers are JSON.

    BentoML finds a response's media type by rebuilding the output's JSON schema for every response
    (`output_spec.media_type`, unset): 1.5 ms of CPU per /classify answer (README "Performance").
    """
    if not hasattr(api, "output_spec"):
        raise _changed("APIMethod.output_spec")
    api.output_spec.media_type = "application/json"


def end_with_the_request() -> None:
    """End BentoML's request timeout with the request, not only with its answer.

    BentoML 1.4's `TimeoutMiddleware` waits for the app's first message out or for the request timeout
    (60 s). A request that ends with no answer, as one does whose client left mid-upload, was held for
    the whole timeout: counted in progress in /metrics, its memory kept (16,000 clients that left within
    20 s: 16,000 in progress and +177 MB, for a minute). Here the wait also ends when the app does;
    the rest is BentoML's (its 504 after the timeout; its timer is cancelled once the request is done).
    """
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError as e:
        raise _changed("bentoml._internal.server.http.traffic.TimeoutMiddleware") from e
    if not all(hasattr(TimeoutMiddleware, a) for a in ("__call__", "_set_timer_out")):
        raise _changed("TimeoutMiddleware.__call__ and ._set_timer_out")
    from starlette.responses import JSONResponse

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        def answering(*_: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)

        async def _send(message: Any) -> None:
            answering()
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        fut.add_done_callback(answering)  # the one change: a request that ends unanswered ends the wait
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                error = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(error, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    TimeoutMiddleware.__call__ = call  # type: ignore[method-assign]


OTHER_ENDPOINT = "other"  # the /metrics label of every path that is no endpoint


def bounded_metric_labels(endpoints: Iterable[str], mounts: Iterable[str]) -> None:
    """Count HTTP requests in /metrics under a bounded set of `endpoint` labels.

    BentoML 1.4 labels its request metrics (`RunnerTrafficMetricsMiddleware`) by the URL path as sent,
    so every new path adds series for the life of the process: each 404 a scanner makes up, and each
    photo the web page shows (its own /ui/gradio_api/file=... URL). 5,000 made-up paths took /metrics
    to 20 MB and 9 s to scrape. Here a path is its own label when it is one of `endpoints`, the mount's
    prefix under one of `mounts`, else OTHER_ENDPOINT; the request itself goes on with its own path.
    """
    try:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Metrics
    except ImportError as e:
        raise _changed("bentoml._internal.server.http.instruments.RunnerTrafficMetricsMiddleware") from e
    if not all(hasattr(Metrics, a) for a in ("__call__", "_setup")):
        raise _changed("RunnerTrafficMetricsMiddleware.__call__ and ._setup")
    exact, prefixes = frozenset(endpoints), tuple(mounts)
    count = Metrics.__call__

    def label(path: str) -> str:
        if path in exact:
            return path
        return next((m for m in prefixes if path == m or path.startswith(f"{m}/")), OTHER_ENDPOINT)

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        named = label(scope.get("path", ""))
        if named == scope.get("path"):
            return await count(self, scope, receive, send)
        if not self._is_setup:
            self._setup()  # on the middleware itself: its series are registered once
        app = self.app

        async def with_its_own_path(_labelled: Any, receive: Any, send: Any) -> None:
            await app(scope, receive, send)

        counter = copy.copy(self)  # this request's: counts under the label, passes the request on unchanged
        counter.app = with_its_own_path
        await count(counter, {**scope, "path": named}, receive, send)

    Metrics.__call__ = call  # type: ignore[method-assign]  # the one patch, named in the docstring


def check_serve_port() -> None:
    """Stop `bentoml serve` with a port that is no TCP port, in click's words, before it binds one.

    BentoML 1.4 takes any integer for `--port` (or $BENTOML_PORT, which the image's entrypoint sets from
    $PORT): 80800, a typo of 8080, was bound as 15264 (getaddrinfo keeps the low 16 bits) while the log
    said "listening on http://localhost:80800", and -1 ended in a socket.gaierror traceback. `serve`
    imports the service in its own command, so the command's arguments are at hand; elsewhere (its
    worker processes, the tests) there is no port to check.
    """
    import click

    ctx = click.get_current_context(silent=True)
    port = ctx.params.get("port") if ctx is not None else None
    if ctx is None or not isinstance(port, int) or 1 <= port <= config.MAX_PORT:
        return
    option = next((p for p in ctx.command.params if p.name == "port"), None)
    if option is None:
        raise _changed("a --port option of `bentoml serve`")
    raise click.BadParameter(f"{port} is not a TCP port: give one from 1 to {config.MAX_PORT}", ctx=ctx, param=option)


def model_store_dir() -> Path:
    """Where the model store is: the benchmark links it into each server's own BentoML home."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def serving_port() -> int:
    """The port `bentoml serve` listens on in the image (its Dockerfile EXPOSEs it)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return int(BentoMLContainer.http.port.get())


def bento_uid() -> int:
    """The non-root user BentoML's generated Dockerfile creates and runs as."""
    from bentoml._internal.container.generate import DEFAULT_BENTO_ENVS

    uid: int = DEFAULT_BENTO_ENVS["uid_gid"]  # type: ignore[assignment]  # a dict of mixed values
    return uid
