"""The in-process batcher (imgserve/batcher.py) on its own: merging, bounds, shedding, failures.

The model is a small function that doubles its input and sleeps like a model would; the service's
own use of the batcher is tested against a real server in test_service.py and test_errors.py.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from imgserve.batcher import Batcher, Overloaded


class SlowModel:
    """Doubles its input after `seconds_per_image` per image; records every batch size it saw."""

    def __init__(self, seconds_per_image: float = 0.02, fail_once: bool = False) -> None:
        self.seconds_per_image = seconds_per_image
        self.fail_once = fail_once
        self.batches: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        time.sleep(self.seconds_per_image * len(x))
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("model failed")
        return x * 2


def images(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def run(coroutine):
    return asyncio.run(coroutine)


def test_requests_arriving_while_the_model_runs_share_the_next_batch():
    model = SlowModel(seconds_per_image=0.2)  # long enough that a busy machine still queues the rest behind it
    batcher = Batcher(model, max_batch_size=8, max_latency_s=10)

    async def main():
        first = asyncio.create_task(batcher(images(1)))
        await asyncio.sleep(0.01)  # the model is busy with the first request
        rest = [batcher(images(v)) for v in (2, 3, 4, 5)]
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert model.batches == [1, 4], "the four waiting requests did not share one batch"
    assert first.ravel().tolist() == [2]
    assert [r.ravel().tolist() for r in rest] == [[4], [6], [8], [10]], "answers went to the wrong requests"


def test_a_lone_request_does_not_wait_for_company():
    model = SlowModel(seconds_per_image=0)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=10)
    started = time.perf_counter()
    run(batcher(images(1)))
    assert model.batches == [1]
    assert time.perf_counter() - started < 0.5


def test_batches_never_exceed_the_maximum_and_multi_image_requests_stay_whole():
    model = SlowModel(seconds_per_image=0.005)
    batcher = Batcher(model, max_batch_size=4, max_latency_s=10)

    async def main():
        calls = [batcher(images(i, i + 100, i + 200)) if i % 2 else batcher(images(i)) for i in range(10)]
        return await asyncio.gather(*calls)

    answers = run(main())
    assert max(model.batches) <= 4 and sum(model.batches) == 20
    for i, answer in enumerate(answers):
        expected = [2 * i, 2 * (i + 100), 2 * (i + 200)] if i % 2 else [2 * i]
        assert answer.ravel().tolist() == expected


def test_a_call_larger_than_a_batch_is_refused():
    batcher = Batcher(SlowModel(), max_batch_size=2, max_latency_s=10)
    with pytest.raises(ValueError, match="1 to 2 allowed"):
        run(batcher(images(1, 2, 3)))


def test_work_past_the_latency_bound_is_shed_at_once_and_the_queue_recovers():
    model = SlowModel(seconds_per_image=0.2)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=0.3)

    async def main():
        await batcher(images(1))  # measures >= 0.2 s per image
        running = asyncio.create_task(batcher(images(2)))
        await asyncio.sleep(0.02)  # the model runs it; the queue is empty
        queued = asyncio.create_task(batcher(images(3)))  # an empty queue admits anything
        await asyncio.sleep(0)
        shed_at = time.perf_counter()
        with pytest.raises(Overloaded, match=r"the bound is 0\.3 s"):
            await batcher(images(4, 5))  # 3 images x 0.2 s predicted: past the bound
        assert time.perf_counter() - shed_at < 0.1, "shedding waited (>= 0.2 s) instead of answering at once"
        answered = [await running, await queued]
        return [*answered, await batcher(images(6))]  # the queue drained: admitted again

    assert [r.ravel().tolist() for r in run(main())] == [[4], [6], [12]]
    assert model.batches == [1, 1, 1, 1], "the shed request reached the model"


def test_a_failing_model_call_fails_its_batch_only():
    model = SlowModel(fail_once=True)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=10)

    async def main():
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher(images(1))
        return await batcher(images(2))

    assert run(main()).ravel().tolist() == [4]


def test_a_caller_that_gave_up_is_dropped_and_the_others_are_answered():
    model = SlowModel(seconds_per_image=0.3)
    batcher = Batcher(model, max_batch_size=8, max_latency_s=10)

    async def main():
        first = asyncio.create_task(batcher(images(1)))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher(images(99)), timeout=0.001)  # gives up while queued
        kept = await batcher(images(2))
        return await first, kept

    first, kept = run(main())
    assert (first.ravel().tolist(), kept.ravel().tolist()) == ([2], [4])
    assert sum(model.batches) == 2, "the abandoned request was still sent to the model"


def test_a_caller_can_ask_before_costly_work():
    """The service asks before decoding a request: a full queue refuses it without spending the CPU."""
    batcher = Batcher(SlowModel(seconds_per_image=0.2), max_batch_size=8, max_latency_s=0.3)

    async def main():
        await batcher(images(1))  # measures >= 0.2 s per image
        batcher.check(32)  # an empty queue admits any request
        running = asyncio.create_task(batcher(images(2)))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(batcher(images(3)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            batcher.check(1)
        await asyncio.gather(running, queued)
        batcher.check(1)  # drained: admitted again

    run(main())
