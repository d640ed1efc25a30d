"""Time the stored model alone at each batch size: the curve MAX_BATCH_SIZE and MAX_LATENCY_MS come from.

    BENTOML_HOME=... python -m bench.batch_times [TAG]
    python -m bench.batch_times int8.onnx   # an ONNX file not (or not yet) in the store, 224 x 224 input

Prints median milliseconds per batch and images/s for batch sizes 1..32 with ONNX Runtime,
as the service runs it (same session options, same threads).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from imgserve import config
from imgserve.serving import predict, store

REPEATS = 15


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else config.model_tag()
    path, crop = store.onnx_file(tag)
    session = predict.open_session(path)
    sys.stdout.write(f"{tag}, {config.MODEL_THREADS} threads\nbatch  ms/batch  img/s\n")
    for batch in (1, 2, 4, 8, 16, 32):
        x = np.random.default_rng(0).integers(0, 256, (batch, 3, crop, crop), np.uint8)
        predict.run(session, x)  # warm-up
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            predict.run(session, x)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        sys.stdout.write(f"{batch:5d}  {ms:8.1f}  {batch / ms * 1000:5.0f}\n")


if __name__ == "__main__":
    main()
