"""The in-process limit: the served model and preprocessing called directly, no HTTP, no server.

- `batch_curve`: the model alone at each batch size (what MAX_BATCH_SIZE is chosen from);
- `pipeline`: decode + preprocess in a thread pool feeding batched model calls in one process,
  the most a single Python process gets out of this machine for the same work;
- `single_latency`: one image at a time, decode to probabilities: the floor under one client's latency.
"""

from __future__ import annotations

import collections
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from imgserve.serving import predict
from imgserve.serving.preprocess import Preprocessing, preprocess


def batch_curve(session, crop: int, batches: list[int], seconds: float) -> list[dict]:
    """Median milliseconds per model call at each batch size, on random uint8 pixels."""
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).integers(0, 256, (batch, 3, crop, crop), np.uint8)
        predict.run(session, x)  # warm-up: the first call at a new shape allocates
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            predict.run(session, x)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        rows.append({"batch": batch, "ms_per_batch": round(ms, 2), "images_per_s": round(batch / ms * 1000, 1)})
    return rows


def pipeline(
    session, prep: Preprocessing, images: list[bytes], decode_threads: int, batch: int, seconds: float
) -> dict:
    """Images/s of decode + preprocess (`decode_threads` threads) overlapped with batched model calls."""
    done, i = 0, 0
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(decode_threads) as pool:

        def fill() -> None:
            nonlocal i
            while len(pending) < batch + 2 * decode_threads:
                pending.append(pool.submit(preprocess, images[i % len(images)], prep))
                i += 1

        fill()
        predict.run(session, np.stack([pending.popleft().result() for _ in range(batch)]))  # warm-up
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fill()
            pixels = np.stack([pending.popleft().result() for _ in range(batch)])
            fill()  # the next batch decodes while this one runs
            predict.run(session, pixels)
            done += batch
        elapsed = time.perf_counter() - t0
        for f in pending:
            f.cancel()
    return {"decode_threads": decode_threads, "batch": batch, "images_per_s": round(done / elapsed, 1)}


def single_latency(session, prep: Preprocessing, images: list[tuple[str, bytes]], rounds: int) -> dict:
    """Median milliseconds from bytes to probabilities for one image alone, overall and per kind."""
    times: dict[str, list[float]] = {"small": [], "large": []}
    for _, data in images[:2]:  # warm-up
        predict.run(session, preprocess(data, prep)[None])
    for _ in range(rounds):
        for kind, data in images:
            t0 = time.perf_counter()
            predict.run(session, preprocess(data, prep)[None])
            times[kind].append((time.perf_counter() - t0) * 1000)
    every = [t for ts in times.values() for t in ts]
    return {
        "p50_ms": round(statistics.median(every), 1),
        **{f"p50_{k}_ms": round(statistics.median(v), 1) for k, v in times.items() if v},
    }
