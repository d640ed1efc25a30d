"""The in-process batcher (imgserve/serving/batcher.py) on its own: merging, bounds, shedding, failures.

The model is a fake that doubles its input, waits at a gate the test opens, and keeps its own clock
(`seconds_per_image` per image), so that every test orders its events by those gates, never by sleeps
or by how fast the machine is. The service's own use of the batcher is tested against a real server
in test_service.py and test_errors.py.
"""

from __future__ import annotations

import asyncio
import queue
import threading

import numpy as np
import pytest

from imgserve.serving.batcher import Batcher, Overloaded

WAIT_S = 30  # a bound on waiting for an event that must come; never reached when the code is right


class GatedModel:
    """Doubles its input. Each call reports its batch size, then waits until the test lets one call through."""

    def __init__(self, seconds_per_image: float = 0.2, fail_first: bool = False) -> None:
        self.seconds_per_image = seconds_per_image
        self.fail_first = fail_first
        self.now = 0.0  # the fake clock: advanced by each call as a real model's time would pass
        self.batches: list[int] = []
        self.started: queue.Queue[int] = queue.Queue()
        self.gate = threading.Semaphore(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        self.started.put(len(x))
        assert self.gate.acquire(timeout=WAIT_S), "the test never let this call through"
        self.now += self.seconds_per_image * len(x)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("model failed")
        return x * 2

    async def running(self) -> int:
        """Wait until the model is busy with a batch; its size."""
        return await asyncio.to_thread(self.started.get, True, WAIT_S)

    def let_through(self, calls: int = 1) -> None:
        self.gate.release(calls)


def batcher_of(model: GatedModel, max_batch_size: int = 8, max_latency_s: float = 10) -> Batcher:
    return Batcher(model, max_batch_size, max_latency_s, clock=lambda: model.now)


def images(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def run(coroutine):
    return asyncio.run(coroutine)


async def queued(batcher: Batcher, images: int) -> None:
    """Until `images` images wait in the queue (the tasks that add them have run their first step)."""
    for _ in range(10_000):  # turns of the event loop, not time: each task needs one
        if batcher.queued_images >= images:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{images} images never reached the queue ({batcher.queued_images} did)")


async def measured(model: GatedModel, batcher: Batcher) -> None:
    """One call through, so that the batcher knows the model's `seconds_per_image`."""
    model.let_through()
    await batcher(images(1))


async def one_running_one_queued(model: GatedModel, batcher: Batcher) -> tuple[asyncio.Task, asyncio.Task]:
    """One request held at the model's gate, one queued behind it."""
    running = asyncio.create_task(batcher(images(2)))
    await model.running()  # the model runs it; the queue is empty
    waiting = asyncio.create_task(batcher(images(3)))  # an empty queue admits anything
    await queued(batcher, 1)
    return running, waiting


def test_requests_arriving_while_the_model_runs_share_the_next_batch():
    model = GatedModel()
    batcher = batcher_of(model)

    async def main():
        first = asyncio.create_task(batcher(images(1)))
        assert await model.running() == 1  # the model is busy with the first request
        rest = [asyncio.create_task(batcher(images(v))) for v in (2, 3, 4, 5)]
        await queued(batcher, 4)
        model.let_through(2)
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert model.batches == [1, 4], "the four waiting requests did not share one batch"
    assert first.ravel().tolist() == [2]
    assert [r.ravel().tolist() for r in rest] == [[4], [6], [8], [10]], "answers went to the wrong requests"


def test_a_lone_request_does_not_wait_for_company():
    model = GatedModel()
    batcher = batcher_of(model)

    async def main():
        lone = asyncio.create_task(batcher(images(1)))
        assert await model.running() == 1  # dispatched alone, with nobody else queued
        model.let_through()
        return await lone

    assert run(main()).ravel().tolist() == [2]
    assert model.batches == [1]


def test_batches_never_exceed_the_maximum_and_multi_image_requests_stay_whole():
    model = GatedModel()
    batcher = batcher_of(model, max_batch_size=4)
    model.let_through(20)  # never blocks: at most 20 calls

    async def main():
        calls = [batcher(images(i, i + 100, i + 200)) if i % 2 else batcher(images(i)) for i in range(10)]
        return await asyncio.gather(*calls)

    answers = run(main())
    assert max(model.batches) <= 4 and sum(model.batches) == 20
    for i, answer in enumerate(answers):
        expected = [2 * i, 2 * (i + 100), 2 * (i + 200)] if i % 2 else [2 * i]
        assert answer.ravel().tolist() == expected


def test_a_call_larger_than_a_batch_is_refused():
    batcher = batcher_of(GatedModel(), max_batch_size=2)
    with pytest.raises(ValueError, match="1 to 2 allowed"):
        run(batcher(images(1, 2, 3)))


def test_work_past_the_latency_bound_is_shed_at_once_and_the_queue_recovers():
    model = GatedModel(seconds_per_image=0.2)
    batcher = batcher_of(model, max_latency_s=0.3)

    async def main():
        await measured(model, batcher)  # 0.2 s per image
        running, waiting = await one_running_one_queued(model, batcher)
        with pytest.raises(Overloaded, match=r"the bound is 0\.3 s"):
            await batcher(images(4, 5))  # 3 images x 0.2 s predicted: past the bound, refused while the model is held
        model.let_through(2)
        answered = [await running, await waiting]
        model.let_through()
        return [*answered, await batcher(images(6))]  # the queue drained: admitted again

    assert [r.ravel().tolist() for r in run(main())] == [[4], [6], [12]]
    assert model.batches == [1, 1, 1, 1], "the shed request reached the model"


def test_a_failing_model_call_fails_its_batch_only():
    model = GatedModel(fail_first=True)
    batcher = batcher_of(model)
    model.let_through(2)

    async def main():
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher(images(1))
        return await batcher(images(2))

    assert run(main()).ravel().tolist() == [4]


def test_a_caller_that_gave_up_is_dropped_and_the_others_are_answered():
    model = GatedModel()
    batcher = batcher_of(model)

    async def main():
        first = asyncio.create_task(batcher(images(1)))
        await model.running()  # held at the gate: whatever comes next must queue
        abandoned = asyncio.create_task(batcher(images(99)))
        await queued(batcher, 1)
        abandoned.cancel()  # the caller gives up while queued (a timeout, a closed connection)
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        kept = asyncio.create_task(batcher(images(2)))
        await queued(batcher, 2)
        model.let_through(2)
        return await first, await kept

    first, kept = run(main())
    assert (first.ravel().tolist(), kept.ravel().tolist()) == ([2], [4])
    assert sum(model.batches) == 2, "the abandoned request was still sent to the model"


def test_a_caller_can_ask_before_costly_work():
    """The service asks before decoding a request: a full queue refuses it without spending the CPU."""
    model = GatedModel(seconds_per_image=0.2)
    batcher = batcher_of(model, max_latency_s=0.3)

    async def main():
        await measured(model, batcher)  # 0.2 s per image
        batcher.check(32)  # an empty queue admits any request
        running, waiting = await one_running_one_queued(model, batcher)
        with pytest.raises(Overloaded):
            batcher.check(1)
        model.let_through(2)
        await asyncio.gather(running, waiting)
        batcher.check(1)  # drained: admitted again

    run(main())
