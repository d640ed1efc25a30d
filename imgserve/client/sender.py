"""Talking to the server: one httpx.AsyncClient, retries by tenacity, each image's row from the answers.

Errors are data: the server answers every error as `{"error": "<message>", "image": N}` (N, 1-based,
only when one image of the request is at fault). It is read once into a ServerError (status,
message, image, Retry-After) and decided on from its fields, never parsed back out of the sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import logging
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from imgserve import config
from imgserve.client.files import local_problem
from imgserve.client.results import Row

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overload, or a proxy in front that lost the server
# A one-image request refused so is refused for its file (over the server's body limit, which may be
# lower than this client's): that file's error row, never a reason to stop the run.
FILE_STATUSES = frozenset({413})
BACKOFF_FIRST_S = 0.5  # without Retry-After: 0.5, 1, 2, 4 ... seconds, plus up to 0.5 s so clients spread out
BACKOFF_MAX_S = 30.0
BACKOFF = wait_exponential_jitter(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S, jitter=BACKOFF_FIRST_S)
TIMEOUT_S = config.REQUEST_TIMEOUT_S + 15  # longer than the server's own limit, so its 504 arrives first
SCHEMA_TIMEOUT_S = 10  # the first check: a server that takes the connection but never answers is asked again
FOREIGN_MESSAGE_CHARS = 200  # of another program's error page: its gist, on one line of the error column
SCHEMA_PATH = "/schema.json"  # BentoML's description of the service's endpoints: the first check asks for it
IMAGES_FIELD, TOP_K_FIELD = "images", "top_k"  # the /classify form (service.py); config.MODEL_FIELD picks a model


class Fatal(Exception):
    """The run cannot go on (unreachable server, refused key, every request refused): stop, keep the rows."""


class ServerError(Exception):
    """An error answer as data: HTTP status, the server's message, the image at fault (1-based), Retry-After."""

    def __init__(self, status: int, message: str, image: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.image, self.retry_after = status, message, image, retry_after


def read_error(response: httpx.Response) -> ServerError:
    """The server's `{"error", "image"}` body; any other body (a proxy's page) is the message as it stands."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message, image = data["error"], data.get("image")
    else:
        message, image = foreign_message(response), None
    image = image if type(image) is int else None  # not a bool, not a string: the field is an integer
    return ServerError(response.status_code, message, image, retry_after_s(response.headers.get("retry-after")))


def foreign_message(response: httpx.Response) -> str:
    """A body that is not the server's JSON, as from a proxy in front of it (ingress-nginx's 413 page for a
    photo over its 1 MB, a 502 page while the server restarts): its title or text, on one line, saying so."""
    text = response.text
    if "html" in response.headers.get("content-type", "") or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, flags=re.IGNORECASE | re.DOTALL)
        text = html.unescape(title.group(1) if title else re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split())
    summary = text if len(text) <= FOREIGN_MESSAGE_CHARS else text[: FOREIGN_MESSAGE_CHARS - 3] + "..."
    return f"{summary or 'no message'} (not the classifier's own answer: from a proxy in front of it?)"


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def read_answers(response: httpx.Response, images: int) -> list[dict[str, Any]]:
    """/classify's 200: one `{"model", "predictions": [{"label", "score"}]}` per image, in upload order.
    Anything else (a proxy's or a login page, another service at --url) stops the run: rows made of it
    would be wrong, not missing."""
    try:
        answers = response.json()
    except ValueError:
        answers = None
    if not (isinstance(answers, list) and all(map(is_answer, answers))):
        kind = response.headers.get("content-type", "no Content-Type").split(";")[0]
        kind = kind if response.content else "an empty body"
        raise Fatal(
            f"{response.url} answered HTTP {response.status_code} with {kind}, not the classifier's answers: "
            "is --url the classifier's, with nothing in between that answers for it?"
        )
    if len(answers) != images:
        raise Fatal(f"the server answered {len(answers)} results for {images} images")
    return answers


def is_answer(answer: object) -> bool:
    if not (isinstance(answer, dict) and isinstance(answer.get("model"), str)):
        return False
    predictions = answer.get("predictions")
    return isinstance(predictions, list) and all(
        isinstance(p, dict) and isinstance(p.get("label"), str) and type(p.get("score")) in (int, float)
        for p in predictions
    )


def redirected(response: httpx.Response, url: str, path: str) -> Fatal:
    """A redirect is not followed (a POST's images would not go with it, the API key might go elsewhere):
    the run stops naming the --url to give, as for http:// to a server that takes https:// only."""
    target = response.url.join(response.headers.get("location", ""))
    if target.path.endswith(path) and not target.query:  # the same endpoint elsewhere: that is the server
        new = str(target.copy_with(path=target.path.removesuffix(path))).rstrip("/")
        return Fatal(f"{url} redirects to {new} (HTTP {response.status_code}): give --url {new}")
    return Fatal(f"{url}{path} redirects to {target} (HTTP {response.status_code}): is --url the classifier's?")


def url_problem(url: str) -> str | None:
    """What is wrong with --url, said before anything is sent: without a scheme, httpx's UnsupportedProtocol
    was retried for --retry-for (five minutes) and then taken for a server not running; a port past 65535
    was an OverflowError traceback."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if url and "://" not in url:
        return f"give the scheme too: http://{url}"
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        return "give the server's address, http:// or https://, e.g. http://localhost:3000"
    if parsed.port is not None and not 1 <= parsed.port <= config.MAX_PORT:
        return f"{parsed.port} is not a TCP port: give one from 1 to {config.MAX_PORT}"
    return None


def key_message(status: int, sent_key: bool) -> str:
    if sent_key:
        return f"the server refused the API key in ${config.ENV_API_KEY} (HTTP {status})"
    return f"the server needs an API key (HTTP {status}): set ${config.ENV_API_KEY}"


def connect(url: str, api_key: str | None, concurrency: int) -> httpx.AsyncClient:
    """One connection pool for the run, a connection per request in flight, the key on every request."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, headers=headers, limits=pool, timeout=TIMEOUT_S)


def retryable(error: BaseException) -> bool:
    """Overload, a lost proxy, or a connection refused, reset or timed out: worth asking again."""
    return isinstance(error, httpx.TransportError) or (
        isinstance(error, ServerError) and error.status in RETRY_STATUSES
    )


def retry_wait(state: RetryCallState) -> float:
    """What Retry-After asks, never sooner (plus up to a fifth, so clients told alike spread out); else backoff."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, ServerError) and error.retry_after is not None:
        return error.retry_after + random.uniform(0, max(0.2 * error.retry_after, 0.1))
    return BACKOFF(state)


def problem(error: object) -> str:
    if isinstance(error, ServerError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__  # a timeout says nothing


def upload_name(path: Path) -> str:
    """The part's filename. The server reads only the bytes; a name that is not UTF-8 must not stop the upload."""
    return path.name.encode(errors="replace").decode()


class Sender:
    """Classify batches over one client; every image's row goes to `on_row` as soon as it is known."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        on_row: Callable[[Row], None],
        top_k: int,
        retry_for: float,
        max_bytes: int = config.MAX_REQUEST_BYTES,
        model: str | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.client, self.on_row, self.retry_for, self.max_bytes = client, on_row, retry_for, max_bytes
        self.url = str(client.base_url).rstrip("/")
        self.top_k = top_k
        self.fields = {TOP_K_FIELD: str(top_k)} | ({config.MODEL_FIELD: model} if model else {})  # else the default
        self.some_ok = False  # until one request succeeds, a refusal is taken as every request's fate
        # Images per request: halved each time the server refuses a request as a whole (more images or
        # bytes than its limits, which may be lower than this client's), so later requests fit at once.
        self.max_batch = sys.maxsize
        self.retries = 0
        self.policy = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=retry_wait,
            stop=stop_before_delay(retry_for),  # never sleep past --retry-for
            before_sleep=self._note_retry,
            retry_error_callback=self._give_up,
            sleep=sleep,
        )

    async def check_server(self) -> None:
        """One request before the work: a wrong URL or key stops here, with a message that says which.
        Nothing listening, and no host taking the connection at all (a wrong URL or address, a firewalled
        port, a server not started), stops at once; a server that answers busy (429, 502-504) or not at all
        is asked again for --retry-for, as every request is."""
        wrong = (httpx.ConnectError, httpx.ConnectTimeout)
        there = retry_if_exception(lambda e: retryable(e) and not isinstance(e, wrong))
        try:
            r: httpx.Response = await self.policy.copy(retry=there, retry_error_callback=None)(self._schema_once)
        except (httpx.HTTPError, ServerError, RetryError) as e:
            cause = e.last_attempt.exception() if isinstance(e, RetryError) else e
            raise Fatal(f"cannot reach {self.url} ({problem(cause)}): is the server running? (make serve)") from None
        if r.status_code in (401, 403):
            raise Fatal(key_message(r.status_code, "authorization" in self.client.headers))
        if r.is_redirect:
            raise redirected(r, self.url, SCHEMA_PATH)
        try:
            r.raise_for_status()
            routes = {route["name"] for route in r.json()["routes"]}
        except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
            answer = f"{self.url}{SCHEMA_PATH} answered HTTP {r.status_code}"
            if (server := self.url.removesuffix(config.CLASSIFY_PATH)) != self.url:  # the curl examples' URL
                raise Fatal(f"{answer}: --url is the server's address, not its endpoint: give --url {server}") from None
            raise Fatal(f"{answer} without a BentoML schema: wrong URL?") from None
        if "classify" not in routes:
            raise Fatal(f"{self.url} serves no /classify endpoint: is this the image classifier's URL?")
        await self.check_top_k()

    async def check_top_k(self) -> None:
        """A --top-k past the classes of every served model stops here, as the server would refuse it, but
        before the output is begun: --top-k 100000000 (a slip of the finger) began a CSV header of 200
        million names, minutes and gigabytes before the first request's refusal."""
        try:
            r = await self.client.get(config.MODELS_PATH, timeout=SCHEMA_TIMEOUT_S)
            most = max(int(model["classes"]) for model in r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            most = None
        if most is not None and self.top_k > most:  # else the first request's answer says what is wrong
            raise Fatal(f"--top-k {self.top_k}: the server's models have at most {most} classes: give 1 to {most}")

    async def _schema_once(self) -> httpx.Response:
        r = await self.client.get(SCHEMA_PATH, timeout=SCHEMA_TIMEOUT_S)
        if r.status_code in RETRY_STATUSES:
            raise read_error(r)
        return r

    async def send_all(self, work: Iterable[list[Path]], concurrency: int) -> None:
        """Every batch, `concurrency` requests at a time; a Fatal cancels the requests in flight (no rows)."""
        todo = list(work)
        batches = iter(todo)

        async def worker() -> None:
            for batch in batches:  # shared: each batch goes to the next free worker
                await self.classify(batch)

        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(min(concurrency, len(todo))):  # --concurrency 1000000 starts no idle million
                    workers.create_task(worker())
        except* Fatal as stopped:
            raise stopped.exceptions[0] from None

    async def classify(self, paths: list[Path]) -> None:
        """Rows for `paths`: a rejected image gets its error row and the others are sent again."""
        pending = []
        for path in paths:
            if local := local_problem(path, self.max_bytes):
                self.on_row(Row(str(path), error=local))
            else:
                pending.append(path)
        if len(pending) > self.max_batch:
            return await self.classify_in_parts(pending, self.max_batch)
        while pending:
            try:
                answers = await self.post(pending)
            except ServerError as e:
                if e.image is not None and 1 <= e.image <= len(pending):  # the row names the file, not its place
                    # Servers before the `image` field was the only index also wrote it into the message.
                    self.on_row(Row(str(pending.pop(e.image - 1)), error=e.message.removeprefix(f"image {e.image}: ")))
                    continue
                if len(pending) > 1:  # about the request, not one image (e.g. too many): sent again in halves
                    # Too many images: later requests are kept to the half. Too many bytes (413) may be one
                    # file's doing, found by the halving; it lowers nothing for the rest of the run.
                    if e.status not in FILE_STATUSES and len(pending) // 2 < self.max_batch:
                        self.max_batch = len(pending) // 2
                        log.warning("the server refused %d images in one request (%s): sending at most %d "
                                    "per request", len(pending), e.message, self.max_batch)  # fmt: skip
                    return await self.classify_in_parts(pending, min(self.max_batch, (len(pending) + 1) // 2))
                if not self.some_ok and e.status not in FILE_STATUSES:  # every request would fail alike
                    raise Fatal(f"the server refused the first requests (HTTP {e.status}): {e.message}") from None
                self.on_row(Row(str(pending[0]), error=e.message))
                return
            except OSError as e:  # a file gone or locked since it was checked: find which, one at a time
                if len(pending) > 1:
                    for path in pending:
                        await self.classify([path])
                else:
                    self.on_row(Row(str(pending[0]), error=f"cannot read the file: {e.strerror or e}"))
                return
            self.some_ok = True
            for path, answer in zip(pending, answers, strict=True):
                self.on_row(Row(str(path), model=answer["model"], predictions=answer["predictions"]))
            return

    async def classify_in_parts(self, paths: list[Path], size: int) -> None:
        """`paths` in requests of `size` (fixed here: a refusal of one part lowers max_batch for the next)."""
        for start in range(0, len(paths), size):
            await self.classify(paths[start : start + size])

    async def post(self, paths: list[Path]) -> list[dict[str, Any]]:
        """One /classify request for `paths`, sent again after overload or a dropped connection."""
        return await self.policy.copy()(self._post_once, paths)

    async def _post_once(self, paths: list[Path]) -> list[dict[str, Any]]:
        with contextlib.ExitStack() as opened:  # each attempt opens the files afresh and closes them after
            files = [(IMAGES_FIELD, (upload_name(p), opened.enter_context(p.open("rb")))) for p in paths]
            response = await self.client.post(config.CLASSIFY_PATH, data=self.fields, files=files)
        if response.status_code in (401, 403):
            raise Fatal(key_message(response.status_code, "authorization" in self.client.headers))
        if response.is_redirect:
            raise redirected(response, self.url, config.CLASSIFY_PATH)
        if response.is_error:
            raise read_error(response)
        return read_answers(response, len(paths))

    def _note_retry(self, state: RetryCallState) -> None:
        self.retries += 1
        log.debug("%s; retrying in %.1f s", problem(state.outcome and state.outcome.exception()), state.upcoming_sleep)

    def _give_up(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        tried = f"{state.attempt_number} attempts (--retry-for {self.retry_for:g} s)"
        raise Fatal(f"gave up after {tried}: {problem(error)}")
