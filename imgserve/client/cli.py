"""Classify a folder: send every image under PATH... to a running server, one row per image.

    python client.py photos/ --out results.csv
    python client.py photos/ --out results.csv --resume     # after Ctrl-C or a crash
    python client.py photos/ --model flowers                # one of the server's models (GET /models)

Folders are walked recursively for image extensions (other files are skipped with a note);
a file named on the command line is sent whatever its name, since the server reads the
format from the bytes (files.py). Images go in batches (--batch-size) over --concurrency
parallel requests on one httpx connection pool (sender.py). A bad image becomes an error row,
never a crash: when the server rejects a batch it names the image (`"image": N` in its error
body), that image gets its row and the rest are sent again. Overload (429/503, honouring
Retry-After) and dropped connections are retried with backoff; when that runs out, or the key
is refused, the run stops without writing rows for images the server never judged, so
--resume (which skips every path already in the output) sends them later. Rows are flushed as
they complete, in completion order (results.py). A progress bar shows on a terminal; in a pipe
only notes and the summary. Exit code: 0 all classified, 1 some images failed, 2 the run
stopped (server unreachable, refused key, bad option), 130 Ctrl-C. With $CLASSIFIER_API_KEY
set, every request carries "Authorization: Bearer <key>".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from imgserve import config
from imgserve.client.files import NoSuchPath, batches, find_images
from imgserve.client.results import Results, ResultsError, Row
from imgserve.client.sender import Fatal, Sender, connect, url_problem

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:3000"  # where `make serve` listens
# 8 images per request fill exactly one model batch (config.MAX_BATCH_SIZE); 4 requests in
# flight keep the server's decoding and its model busy at once. On the shared 2-core machine
# (120 photos, client and server together, other jobs running) 4 x 8 was at or near the best
# of 1-8 x 4-16 in two runs, 17-29 images/s; the runs were too noisy to rank the rest.
DEFAULT_BATCH_SIZE = config.MAX_BATCH_SIZE
DEFAULT_CONCURRENCY = 4
DEFAULT_RETRY_FOR_S = 300.0  # a restarting or busy server gets five minutes before the run stops
EXIT_OK, EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    package = logging.getLogger("imgserve.client")  # this module's notes and sender.py's retries
    package.handlers[:] = [handler]
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.propagate = False


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


async def run(args: argparse.Namespace, tally: Tally, console: Console, live: bool) -> None:
    """Walk, skip what is done, send the rest; rows are written as they arrive."""
    images, tally.skipped = find_images(args.paths)
    if tally.skipped.total():
        log.info("note: skipped, not images: %s", ", ".join(f"{k} {n}" for k, n in sorted(tally.skipped.items()) if n))
    results = Results(args.out, args.top_k, args.resume)
    todo = [p for p in images if not results.is_done(p)]
    if done := len(images) - len(todo):
        tally.skipped["done"] = done
        log.info("note: %d image%s already in %s", done, "s" * (done != 1), results.name)
    if not todo:
        return
    progress = progress_bar(console, live)
    task = progress.add_task("classify", total=len(todo), failed=0, retries=0)

    def write(row: Row) -> None:
        try:
            results.write(row)
        except ResultsError as e:  # a resumed file of another model or top-k: stop, nothing mixed in
            raise Fatal(str(e)) from None
        if row.error:
            tally.failed += 1
        else:
            tally.ok += 1
        progress.update(task, advance=1, failed=tally.failed, retries=sender.retries)

    api_key = os.environ.get(config.ENV_API_KEY, "").strip() or None  # a key pasted with its newline
    if api_key and not (api_key.isascii() and api_key.isprintable()):
        raise Fatal(f"${config.ENV_API_KEY} holds characters an HTTP header cannot carry: set the key alone")
    async with connect(args.url.rstrip("/"), api_key, args.concurrency) as client:
        sender = Sender(client, write, args.top_k, args.retry_for, config.MAX_REQUEST_BYTES, args.model)
        await sender.check_server()  # before the output is touched: a wrong URL or key leaves no file behind
        with results, progress:
            await sender.send_all(batches(todo, args.batch_size, config.MAX_REQUEST_BYTES), args.concurrency)
    if (missing := len(todo) - tally.ok - tally.failed) > 0:
        raise Fatal(f"{missing} images got no answer")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("top_k", "concurrency", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    if problem := url_problem(args.url):
        parser.error(f"--url {args.url}: {problem}")
    if not args.retry_for >= 0:  # nan too, with which retries never stopped
        parser.error(f"--retry-for must be 0 or more seconds, got {args.retry_for:g}")
    console = Console(stderr=True)
    live = console.is_terminal and not (args.out == "-" and sys.stdout.isatty())  # the bar never overwrites rows
    setup_logging(console, live, args.verbose)
    tally = Tally()
    try:
        asyncio.run(run(args, tally, console, live))
    except KeyboardInterrupt:
        log.info("interrupted, rows so far are kept (rerun with --resume to go on): %s", tally.summary())
        return EXIT_INTERRUPTED
    except (Fatal, NoSuchPath, ResultsError) as e:
        log.error("error: %s", e)
        log.info("stopped: %s", tally.summary())
        return EXIT_FATAL
    log.info("%s", tally.summary())
    return EXIT_FAILED if tally.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
