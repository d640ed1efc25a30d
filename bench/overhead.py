"""Where a served request's CPU goes: the server's processes against the same work in process.

    BENTOML_HOME=... python -m bench.overhead [TAG] > bench/results/overhead.txt

Sends one photo at a time (a small one, then a ~12 MP one) to a fresh `bentoml serve` and reads
(psutil) how much CPU each server process spent per request; then times the same work in this
process: `preprocess` (this thread's CPU) and the model call (the process's CPU, ONNX Runtime's
threads included). What the server spends beyond that is the cost of serving: HTTP, multipart
parsing, middleware, JSON, batching, logging.
To see the server's Python stacks: `py-spy record -p PID` on the worker while this runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench import photos as bench_photos
from imgserve import config, testing
from imgserve.serving import predict, store
from imgserve.serving.preprocess import preprocess

REQUESTS = 60


def workers(server: testing.Server) -> dict[str, psutil.Process]:
    """The server's processes by role: "bentoml serve" and each service's worker (its --service-name)."""
    found = {}
    for process in testing.process_tree(server.process.pid):
        try:
            argv = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--service-name" in argv:
            found[argv[argv.index("--service-name") + 1]] = process
        elif process.pid == server.process.pid:
            found["bentoml serve"] = process
    return found


def main() -> None:
    import bentoml

    tag = sys.argv[1] if len(sys.argv) > 1 else config.model_tag()
    entry = bentoml.models.get(tag)
    card = store.ModelCard.from_stored(entry)
    chosen = {p.name: p for p in bench_photos.photos() if p.name in ("cat", "cat-12mp")}
    print(f"{tag}, load average {os.getloadavg()[0]:.2f}, CPU ms per request, {REQUESTS} requests one at a time")

    session = predict.open_session(entry.path_of(store.ONNX_FILE))
    in_process = {}
    for name, photo in chosen.items():
        data = photo.data
        pixels = preprocess(data, card.preprocessing)[None]
        for _ in range(10):  # warm-up
            predict.run(session, pixels)
        t0 = time.thread_time()
        for _ in range(REQUESTS):
            preprocess(data, card.preprocessing)
        decode = (time.thread_time() - t0) / REQUESTS
        t0 = time.process_time()
        for _ in range(REQUESTS):
            predict.run(session, pixels)
        model = (time.process_time() - t0) / REQUESTS
        in_process[name] = (decode * 1000, model * 1000)
    del session

    server = testing.start_server(tag, Path(os.environ.get("TMPDIR", "/tmp")))
    try:
        processes = workers(server)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for name, photo in chosen.items():
                files = [("images", (f"{name}.jpg", photo.data, "image/jpeg"))]
                for _ in range(10):
                    client.post("/classify", files=files)
                before = {k: testing.cpu_seconds([p]) for k, p in processes.items()}
                t0 = time.perf_counter()
                for _ in range(REQUESTS):
                    client.post("/classify", files=files).raise_for_status()
                wall = (time.perf_counter() - t0) / REQUESTS * 1000
                spent = {k: (testing.cpu_seconds([p]) - before[k]) / REQUESTS * 1000 for k, p in processes.items()}
                decode, model = in_process[name]
                served = sum(spent.values())
                print(
                    f"\n{name} ({photo.size[0]}x{photo.size[1]}): {wall:.1f} ms per request, one at a time\n"
                    f"  served:     {served:5.1f} ms CPU = "
                    + ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
                    + f"\n  in process: {decode + model:5.1f} ms CPU = preprocess {decode:.1f}, model {model:.1f}"
                    f"\n  serving:    {served - decode - model:5.1f} ms CPU per request"
                )
    finally:
        testing.stop_server(server)


if __name__ == "__main__":
    main()
