"""Classify a folder: send every image under PATH... to a running server, one row per image.

    python client.py photos/ --out results.csv
    python client.py photos/ --out results.csv --resume     # after Ctrl-C or a crash
    python client.py photos/ --model flowers                # one of the server's models (GET /models)

Folders are walked recursively for image extensions (other files are skipped with a note);
a file named on the command line is sent whatever its name, since the server reads the
format from the bytes. Images go in batches (--batch-size) over --concurrency parallel
requests, through BentoML's Python client. A bad image becomes an error row, never a crash:
when the server rejects a batch it names the image ("image N: ..."), that image gets its
row and the rest are sent again. Overload (429/503, honouring Retry-After) and dropped
connections are retried with backoff; when that runs out, or the key is refused, the run
stops without writing rows for images the server never judged, so --resume (which skips
every path already in the output) sends them later. Rows are flushed as they complete, in
completion order. A progress bar shows on a terminal; in a pipe only notes and the summary.
Exit code: 0 all classified, 1 some images failed, 2 the run stopped (server unreachable,
refused key, bad option), 130 Ctrl-C. With $CLASSIFIER_API_KEY set, every request carries
"Authorization: Bearer <key>".
"""

from __future__ import annotations

import argparse
import email.utils
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bentoml
import httpx
from bentoml.exceptions import BentoMLException
from PIL import Image
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from imgserve import config
from imgserve.client.results import Results, ResultsError, Row

log = logging.getLogger("client")
T = TypeVar("T")

DEFAULT_URL = "http://localhost:3000"  # where `make serve` listens
# 8 images per request fill exactly one model batch (config.MAX_BATCH_SIZE); 4 requests in
# flight keep the server's decoding and its model busy at once. On the shared 2-core machine
# (120 photos, client and server together, other jobs running) 4 x 8 was at or near the best
# of 1-8 x 4-16 in two runs, 17-29 images/s; the runs were too noisy to rank the rest.
DEFAULT_BATCH_SIZE = config.MAX_BATCH_SIZE
DEFAULT_CONCURRENCY = 4
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # overload, or a proxy in front that lost the server
BACKOFF_FIRST_S = 0.5  # without Retry-After: 0.5, 1, 2, 4 ... seconds, jittered so clients spread out
BACKOFF_MAX_S = 30.0
DEFAULT_RETRY_FOR_S = 300.0  # a restarting or busy server gets five minutes before the run stops
TIMEOUT_S = config.REQUEST_TIMEOUT_S + 15  # longer than the server's own limit, so its 504 arrives first
# Folder walks pick files by extension: those Pillow registers for the formats the server accepts.
Image.init()
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in config.ACCEPTED_FORMATS
)
EXIT_OK, EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 130


class Fatal(Exception):
    """The run cannot go on (unreachable server, refused key, wrong option): stop, keep the rows."""


class Rejected(Exception):
    """The server refused a request for a reason that retrying will not change."""

    def __init__(self, status: int | None, message: str, image: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.image = status, message, image  # image: 1-based, the one at fault


# --- Which files


def find_images(paths: list[Path]) -> tuple[list[Path], Counter[str]]:
    """Image files under `paths`, in walk order, each once; and what was skipped, by reason."""
    images: list[Path] = []
    skipped: Counter[str] = Counter()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if (resolved := path.resolve()) not in seen:
            seen.add(resolved)
            images.append(path)

    for arg in paths:
        if arg.is_file():
            add(arg)  # named on purpose: the server judges it by its bytes
        elif arg.is_dir():
            for folder, subfolders, files in os.walk(arg):
                skipped["hidden"] += sum(name.startswith(".") for name in subfolders)
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                for name in sorted(files):
                    suffix = Path(name).suffix.lower()
                    if name.startswith("."):  # .DS_Store, macOS "._photo.jpg" resource forks
                        skipped["hidden"] += 1
                    elif suffix not in IMAGE_EXTENSIONS:
                        skipped[suffix or "no extension"] += 1
                    else:
                        add(Path(folder, name))
        else:
            raise Fatal(f"no such file or folder: {arg}")
    return images, skipped


def batches(paths: list[Path], size: int, max_bytes: int) -> Iterator[list[Path]]:
    """Runs of at most `size` images whose bytes fit one request body of the server."""
    batch: list[Path] = []
    total = 0
    for path in paths:
        n = file_size(path) or 0
        if batch and (len(batch) == size or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(path)
        total += n
    if batch:
        yield batch


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def local_problem(path: Path, max_bytes: int) -> str | None:
    """Why `path` cannot be sent at all; such a file gets its error row without a request."""
    size = file_size(path)
    if size is None or not os.access(path, os.R_OK):
        return "cannot read the file"
    if size > max_bytes:
        return f"file too large: {size} bytes, a request holds at most {max_bytes} (${config.ENV_MAX_REQUEST_BYTES})"
    return None


# --- Talking to the server


def error_message(body: str) -> str:
    """The server's message from its JSON error body ({"error": ...}; older servers: a list, pydantic's "detail")."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:500] or "no message"
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict) or "error" not in data:
        return body.strip()[:500]
    details = [d.get("msg", "") for d in data.get("detail") or [] if isinstance(d, dict)]
    return "; ".join([str(data["error"]), *filter(None, details)])


def error_image(body: str) -> int | None:
    """Which image of the request the server refused: the `image` field of its error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    image = data.get("image") if isinstance(data, dict) else None
    return image if isinstance(image, int) and not isinstance(image, bool) else None


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


def key_message(status: int, api_key: str | None) -> str:
    if api_key:
        return f"the server refused the API key in ${config.ENV_API_KEY} (HTTP {status})"
    return f"the server needs an API key (HTTP {status}): set ${config.ENV_API_KEY}"


def check_server(url: str, api_key: str | None) -> None:
    """One request before the work: a wrong URL or key stops here, with a message that says which.

    Plain httpx: BentoML's client answers any error on /schema.json with "Failed to fetch
    schema", without the status that tells a refused key from a wrong URL.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{url}/schema.json", headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        raise Fatal(f"cannot reach {url} ({e}): is the server running? (make serve)") from None
    if r.status_code in (401, 403):
        raise Fatal(key_message(r.status_code, api_key))
    try:
        r.raise_for_status()
        routes = {route["name"] for route in r.json()["routes"]}
    except (httpx.HTTPStatusError, ValueError, KeyError, TypeError):
        raise Fatal(f"{url}/schema.json answered HTTP {r.status_code} without a BentoML schema: wrong URL?") from None
    if "classify" not in routes:
        raise Fatal(f"{url} serves no /classify endpoint: is this the image classifier's URL?")


class Sender:
    """Classify batches on `concurrency` threads; finished rows go to `rows`, one per image.

    Each thread has its own `bentoml.SyncHTTPClient`: the client closes every file it has
    opened after each call, so one client shared by concurrent calls would close the files
    of another call still uploading (the async client has the same shared file manager).
    The client raises `BentoMLException(body, error_code=status)` for an error and keeps no
    headers, so an httpx response hook on its connection reads Retry-After.
    """

    def __init__(
        self, url: str, api_key: str | None, top_k: int, retry_for: float, max_bytes: int, model: str | None = None
    ) -> None:
        self.url, self.api_key, self.top_k, self.retry_for, self.max_bytes = url, api_key, top_k, retry_for, max_bytes
        self.fields = {config.MODEL_FIELD: model} if model else {}  # no model named: the server's default answers
        self.local = threading.local()  # .retry_after: the header of this thread's last response
        self.rows: queue.Queue[Row | Fatal | None] = queue.Queue()  # None: a thread has finished
        self.stop = threading.Event()
        self.some_ok = threading.Event()
        self.retries = 0
        self.lock = threading.Lock()

    def start(self, work: list[list[Path]], concurrency: int) -> int:
        jobs: queue.SimpleQueue[list[Path]] = queue.SimpleQueue()
        for batch in work:
            jobs.put(batch)
        n = min(concurrency, len(work))
        for i in range(n):
            # Daemon threads: Ctrl-C returns at once, without waiting for uploads in flight.
            threading.Thread(target=self.run, args=(jobs,), name=f"send-{i}", daemon=True).start()
        return n

    def run(self, jobs: queue.SimpleQueue[list[Path]]) -> None:
        try:
            with self.connect() as client:
                while not self.stop.is_set():
                    try:
                        batch = jobs.get_nowait()
                    except queue.Empty:
                        break
                    for row in self.classify(client, batch):
                        self.rows.put(row)
        except Fatal as e:
            self.stop.set()
            self.rows.put(e)
        except Exception as e:  # a thread must not vanish with its images unwritten
            log.debug("sending failed", exc_info=True)
            self.stop.set()
            self.rows.put(Fatal(f"unexpected {type(e).__name__}: {e}"))
        finally:
            self.rows.put(None)

    def connect(self) -> bentoml.SyncHTTPClient:
        def remember(response: httpx.Response) -> None:
            self.local.retry_after = response.headers.get("retry-after")

        # server_ready_timeout=0: check_server has seen it answer, and the client's own
        # readiness wait polls /readyz in a loop without pausing.
        client = self.retrying(
            lambda: bentoml.SyncHTTPClient(self.url, token=self.api_key, timeout=TIMEOUT_S, server_ready_timeout=0)
        )
        client.client.event_hooks["response"].append(remember)
        return client

    def classify(self, client: bentoml.SyncHTTPClient, paths: list[Path]) -> Iterator[Row]:
        """Rows for `paths`: a rejected image gets an error row and the others are sent again."""
        pending = []
        for path in paths:
            if problem := local_problem(path, self.max_bytes):
                yield Row(str(path), error=problem)
            else:
                pending.append(path)
        while pending:
            try:
                answers = self.retrying(lambda: client.classify(images=pending, top_k=self.top_k, **self.fields))
            except (Rejected, OSError) as e:
                status, message = (e.status, e.message) if isinstance(e, Rejected) else (None, f"cannot read: {e}")
                image = e.image if isinstance(e, Rejected) else None
                if image is not None and 1 <= image <= len(pending):  # the row names the file, not its place
                    yield Row(str(pending.pop(image - 1)), error=message.removeprefix(f"image {image}: "))
                elif len(pending) > 1:  # about the request, not one image (e.g. too many): one at a time
                    for path in pending:
                        yield from self.classify(client, [path])
                    return
                elif not self.some_ok.is_set() and status is not None:  # every request would fail alike
                    raise Fatal(f"the server refused the first requests (HTTP {status}): {message}") from None
                else:
                    yield Row(str(pending[0]), error=message)
                    return
                continue
            if len(answers) != len(pending):
                raise Fatal(f"the server answered {len(answers)} results for {len(pending)} images")
            self.some_ok.set()
            for path, answer in zip(pending, answers, strict=True):
                yield Row(str(path), model=answer["model"], predictions=answer["predictions"])
            return

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()`, again after overload (429/503...) or a dropped connection, until --retry-for runs out."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            self.local.retry_after = None
            try:
                return call()
            except BentoMLException as e:
                status = int(e.error_code)
                if status in (401, 403):
                    raise Fatal(key_message(status, self.api_key)) from None
                if status not in RETRY_STATUSES:
                    raise Rejected(status, error_message(e.message), error_image(e.message)) from None
                problem, wait = f"HTTP {status}: {error_message(e.message)}", retry_after_s(self.local.retry_after)
            except httpx.TransportError as e:  # refused, reset, timed out
                problem, wait = f"{type(e).__name__}: {e}", None
            if wait is None:
                wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0)
            else:
                wait *= random.uniform(1.0, 1.2)  # never sooner than asked; spread the clients that were told alike
            if time.monotonic() + wait > deadline:
                raise Fatal(f"gave up after {attempt + 1} attempts (--retry-for {self.retry_for:g} s): {problem}")
            log.debug("%s; retrying in %.1f s", problem, wait)
            with self.lock:
                self.retries += 1
            if self.stop.wait(wait):
                raise Fatal("stopped")
            attempt += 1


# --- Progress and the command line


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} images/s" if task.speed else "- images/s", style="progress.data.speed")


def progress_bar(console: Console, enabled: bool) -> Progress:
    """Count, rate, ETA; failures and retries as they happen."""
    return Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[failed]} failed, {task.fields[retries]} retries"),
        console=console,
        disable=not enabled,
        redirect_stdout=False,  # rows may be going to stdout: never through the bar's console
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Classify image files and folders with a running imgserve server; one row per image.",
        epilog=f"Set ${config.ENV_API_KEY} when the server requires an API key.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and folders (walked recursively)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    p.add_argument("--top-k", type=int, default=config.DEFAULT_TOP_K, help="classes per image (default %(default)s)")
    p.add_argument(
        "--model",
        help="a model the server serves, by name or name:version (GET /models lists them; default: its default)",
    )
    p.add_argument("--out", default="-", help="results.csv or results.jsonl (default: CSV on stdout)")
    p.add_argument("--resume", action="store_true", help="skip the paths already in --out, append the rest")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight (%(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per request (%(default)s)")
    p.add_argument(
        "--retry-for",
        type=float,
        default=DEFAULT_RETRY_FOR_S,
        help="seconds to keep retrying one request (%(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    return p


def setup_logging(console: Console, live: bool, verbose: bool) -> None:
    """Notes above the progress bar on a terminal; plain lines on stderr in a pipe."""
    if live:
        handler: logging.Handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by reason: an extension, "hidden", "done"
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.ok + self.failed) / elapsed if elapsed else 0.0
        skipped = self.skipped.total()
        return f"{self.ok} ok, {self.failed} failed, {skipped} skipped in {elapsed:.1f} s ({rate:.1f} images/s)"


def run(args: argparse.Namespace, tally: Tally, console: Console, live: bool) -> None:
    """Walk, skip what is done, send the rest; rows are written as they arrive."""
    api_key = os.environ.get(config.ENV_API_KEY) or None
    url = args.url.rstrip("/")
    images, tally.skipped = find_images(args.paths)
    if tally.skipped.total():
        log.info("note: skipped, not images: %s", ", ".join(f"{k} {n}" for k, n in sorted(tally.skipped.items()) if n))
    results = Results(args.out, args.top_k, args.resume)
    todo = [p for p in images if not results.is_done(p)]
    if done := len(images) - len(todo):
        tally.skipped["done"] = done
        log.info("note: %d images already in %s", done, results.name)
    if not todo:
        return
    check_server(url, api_key)  # before the output is touched: a wrong URL or key leaves no file behind
    sender = Sender(url, api_key, args.top_k, args.retry_for, config.MAX_REQUEST_BYTES, args.model)
    running = sender.start(list(batches(todo, args.batch_size, config.MAX_REQUEST_BYTES)), args.concurrency)
    with results, progress_bar(console, live) as progress:
        task = progress.add_task("classify", total=len(todo), failed=0, retries=0)
        while running:
            item = sender.rows.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, Fatal):
                raise item
            results.write(item)
            if item.error:
                tally.failed += 1
            else:
                tally.ok += 1
            progress.update(task, advance=1, failed=tally.failed, retries=sender.retries)
    if (missing := len(todo) - tally.ok - tally.failed) > 0:
        raise Fatal(f"{missing} images got no answer")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("top_k", "concurrency", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    console = Console(stderr=True)
    live = console.is_terminal and not (args.out == "-" and sys.stdout.isatty())  # the bar never overwrites rows
    setup_logging(console, live, args.verbose)
    tally = Tally()
    try:
        run(args, tally, console, live)
    except KeyboardInterrupt:
        log.info("interrupted, rows so far are kept (rerun with --resume to go on): %s", tally.summary())
        return EXIT_INTERRUPTED
    except (Fatal, ResultsError) as e:
        log.error("error: %s", e)
        log.info("stopped: %s", tally.summary())
        return EXIT_FATAL
    log.info("%s", tally.summary())
    return EXIT_FAILED if tally.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
