"""Adaptive batching in the serving process: the images of concurrent requests share model calls.

The model runs in one thread of its own. While it runs, arriving images queue; the moment it is
free it takes everything waiting (up to `max_batch_size` images) as its next batch. A lone request
never waits for company, and under load the batch grows with the queue: the batch size follows
the load with no timer to tune. A request whose predicted wait (images queued x measured seconds
per image) passes `max_latency_s` is refused at once with `Overloaded`, so the queue stays bounded;
`check` asks the same before costly work (the service asks before decoding a request's images).

Why not BentoML's batcher (a second service behind `bentoml.depends`): that puts the model in
another process, and every request then pays a second HTTP hop, pickled pixels and a second
server's middleware. On 2 cores, measured side by side, this batcher serves ~20% more images/s
with the same answers (README "Performance").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

EWMA_WEIGHT = 0.2  # weight of the newest batch in the seconds-per-image estimate


class Overloaded(Exception):
    """The queue already holds more work than the latency bound allows."""


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_s: float,
        on_batch: Callable[[int, float], None] = lambda images, seconds: None,
        clock: Callable[[], float] = time.perf_counter,  # the tests' model keeps its own time
    ) -> None:
        self.run = run  # pixels (n, ...) -> one output row per image
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.on_batch = on_batch  # told each batch's size and seconds (metrics)
        self.clock = clock
        self.queue: deque[_Job] = deque()
        self.queued_images = 0
        self.seconds_per_image = 0.0  # moving average over measured batches; 0 until the first
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.worker: asyncio.Task | None = None

    def check(self, images: int) -> None:
        """Raise Overloaded if `images` more would wait past the bound; callers ask before costly work."""
        wait = (self.queued_images + images) * self.seconds_per_image
        if self.queue and wait > self.max_latency_s:
            raise Overloaded(f"the model queue holds ~{wait:.1f} s of work, the bound is {self.max_latency_s} s")

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The model's output for `pixels` (at most max_batch_size images), computed in some batch."""
        if not 0 < len(pixels) <= self.max_batch_size:
            raise ValueError(f"{len(pixels)} images in one call: 1 to {self.max_batch_size} allowed")
        self.check(len(pixels))
        job = _Job(pixels, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.queued_images += len(pixels)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await job.future

    def _next_batch(self) -> list[_Job]:
        """Waiting jobs in arrival order, as many as fit in one batch; jobs whose caller left are dropped."""
        jobs, size = [], 0
        while self.queue and size + len(self.queue[0].pixels) <= self.max_batch_size:
            job = self.queue.popleft()
            size += len(job.pixels)
            jobs.append(job)
        self.queued_images -= size
        return [j for j in jobs if not j.future.done()]  # e.g. a request past its timeout

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            jobs = self._next_batch()
            if not jobs:
                continue
            batch = np.concatenate([j.pixels for j in jobs]) if len(jobs) > 1 else jobs[0].pixels
            started = self.clock()
            try:
                outputs = await loop.run_in_executor(self.model_thread, self.run, batch)
                self._measured(len(batch), self.clock() - started)
            except Exception as e:  # the model failed: each request of this batch hears why, the next batch runs
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            offset = 0
            for j in jobs:
                n = len(j.pixels)
                if not j.future.done():
                    j.future.set_result(outputs[offset : offset + n])
                offset += n

    def _measured(self, images: int, seconds: float) -> None:
        per_image = seconds / images
        if self.seconds_per_image:
            per_image = (1 - EWMA_WEIGHT) * self.seconds_per_image + EWMA_WEIGHT * per_image
        self.seconds_per_image = per_image
        self.on_batch(images, seconds)
