"""Overload and faults against a real `bentoml serve`: shed, don't collapse; recover from a killed worker.

Slow by design (a minute or more each): marked `soak`, run by `make test` and so by CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from imgserve import config
from imgserve.testing import running, tree_rss_bytes
from tests.helpers import DATA, ROOT

pytestmark = [pytest.mark.serve, pytest.mark.soak]

SOAK_CLIENTS = 64
SOAK_SECONDS = 60
WINDOW_S = 10  # memory is compared between the first and the last window
MAX_MEMORY_GROWTH = 0.10
PHOTOS = sorted(DATA.glob("*.jpg"))
CLIENT_TIMEOUT_S = config.REQUEST_TIMEOUT_S + 5  # a client waiting past this is a hang


@dataclass
class Load:
    """Closed-loop clients, each sending its own photo and checking the answer is that photo's."""

    url: str
    expected: dict[str, str]  # photo name -> its top-1 label, asked alone before the load
    statuses: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    failures: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # status and body of any other answer

    async def client(self, i: int, until: float) -> None:
        photo = PHOTOS[i % len(PHOTOS)]
        data = photo.read_bytes()
        async with httpx.AsyncClient(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as c:
            while time.monotonic() < until:
                t0 = time.monotonic()
                try:
                    r = await c.post(
                        "/classify", files=[("images", (photo.name, data, "image/jpeg"))], data={"top_k": "1"}
                    )
                except httpx.TimeoutException:
                    self.failures["timeout"] += 1
                    continue
                except httpx.TransportError as e:  # a killed worker drops its connections
                    self.failures[type(e).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                finally:
                    self.longest_s = max(self.longest_s, time.monotonic() - t0)
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    label = r.json()[0]["predictions"][0]["label"]
                    if label != self.expected[photo.name]:
                        self.wrong.append(f"{photo.name} -> {label}")
                elif r.status_code in (429, 503):
                    assert r.headers.get("retry-after"), "a 429/503 without Retry-After"
                    await asyncio.sleep(float(r.headers["retry-after"]))
                else:
                    self.unexpected.append(f"{r.status_code} {r.text[:300]}")

    async def run(self, clients: int, seconds: float) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self.client(i, until) for i in range(clients)))


def record(name: str, result: dict) -> None:
    """Measurements for the README, kept as a test artifact (test-artifacts/ is not committed)."""
    out = ROOT / "test-artifacts" / "load-results.json"
    out.parent.mkdir(exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[name] = result
    out.write_text(json.dumps(results, indent=2) + "\n")


def expected_answers(url: str) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=60) as c:
        return {
            p.name: c.post("/classify", files=[("images", (p.name, p.read_bytes(), "image/jpeg"))]).json()[0][
                "predictions"
            ][0]["label"]
            for p in PHOTOS
        }


def worker_pid(server_pid: int, service_name: str) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"_bentoml_impl.worker.service" in argv and service_name.encode() in argv:
            pid = int(cmdline.parent.name)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(server_pid):
                return pid
    raise LookupError(f"no worker of {service_name} under {server_pid}")


@pytest.fixture
def fresh_server(default_model, tmp_path):
    with running(default_model, tmp_path) as server:
        yield server


def test_soak_64_clients_for_a_minute(fresh_server):
    load = Load(fresh_server.url, expected_answers(fresh_server.url))
    samples: list[tuple[float, int]] = []

    async def sample_memory(until: float) -> None:
        start = time.monotonic()
        while time.monotonic() < until:
            samples.append((time.monotonic() - start, tree_rss_bytes(fresh_server.process.pid)))
            await asyncio.sleep(1)

    async def main() -> None:
        until = time.monotonic() + SOAK_SECONDS
        await asyncio.gather(load.run(SOAK_CLIENTS, SOAK_SECONDS), sample_memory(until))

    asyncio.run(main())
    first = statistics.median(rss for t, rss in samples if t < WINDOW_S)
    last = statistics.median(rss for t, rss in samples if t > SOAK_SECONDS - WINDOW_S)
    record(
        "soak",
        {"clients": SOAK_CLIENTS, "seconds": SOAK_SECONDS, "statuses": dict(load.statuses),
         "memory_first_MiB": round(first / 2**20), "memory_last_MiB": round(last / 2**20),
         "longest_request_s": round(load.longest_s, 2), "loadavg": os.getloadavg()},
    )  # fmt: skip
    assert load.statuses[200] > SOAK_CLIENTS, load.statuses
    assert set(load.statuses) <= {200, 429, 503}, (load.statuses, load.unexpected[:3])
    assert not load.failures, load.failures
    assert not load.wrong, f"answers mixed up between requests: {load.wrong[:5]}"
    assert last <= first * (1 + MAX_MEMORY_GROWTH), f"memory grew from {first / 2**20:.0f} to {last / 2**20:.0f} MiB"


def test_kill_9_of_the_worker_under_load_recovers(fresh_server):
    """The worker (HTTP, decoding and model in one process) dies mid-load: BentoML starts another."""
    load = Load(fresh_server.url, expected_answers(fresh_server.url))
    ready_after: list[float] = []

    async def kill_and_watch() -> None:
        await asyncio.sleep(3)
        os.kill(worker_pid(fresh_server.process.pid, "image-classifier"), signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() - killed < 60:
                try:
                    if (await c.get(f"{fresh_server.url}/readyz")).status_code == 200:
                        ready_after.append(time.monotonic() - killed)
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)

    async def main() -> None:
        await asyncio.gather(load.run(8, 25), kill_and_watch())

    asyncio.run(main())
    record(
        "kill -9 of the worker",
        {"ready_after_s": round(ready_after[0], 1) if ready_after else None, "statuses": dict(load.statuses),
         "longest_request_s": round(load.longest_s, 2), "failures": dict(load.failures)},
    )  # fmt: skip
    assert ready_after and ready_after[0] <= 30, "not ready 30 s after kill -9 of the worker"
    assert load.longest_s <= CLIENT_TIMEOUT_S and not load.failures.get("timeout"), load.longest_s
    assert set(load.statuses) <= {200, 429, 503}, (load.statuses, load.unexpected[:3])
    assert not load.wrong, load.wrong[:5]
    with httpx.Client(base_url=fresh_server.url, timeout=30) as c:  # and it answers right afterwards
        photo = PHOTOS[0]
        r = c.post("/classify", files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert r.status_code == 200 and r.json()[0]["predictions"][0]["label"] == load.expected[photo.name]
