"""ONNX Runtime session options, measured: which ones change the model's speed on this machine?

    BENTOML_HOME=... python -m bench.ort_options [TAG] > bench/results/ort_options.txt
    python -m bench.ort_options int8.onnx   # an ONNX file not (or not yet) in the store, 224 x 224 input

For each option set: milliseconds per model call at batch 1, 4 and 8 (median wall time), and the
CPU time the process spent per call (user + system, all threads). Spinning threads show up as
CPU time without wall-time gain; on a busy machine they take cores from everything else.
Also prints the optimized graph's operators at each optimization level (what became of the
exporter's Pad ops and the uint8 -> float prologue) and how long a session takes to open.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from imgserve import config
from imgserve.serving import predict, store

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
REPEATS = 30
BATCHES = (1, 4, 8)


def session(path: str, threads: int, level: str = "all", spinning: bool = True, **entries: str):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = LEVELS[level]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def timed(sess, x: np.ndarray) -> tuple[float, float]:
    """Median wall ms and mean process CPU ms per call."""
    sess.run(None, {predict.INPUT_NAME: x})
    walls = []
    cpu0 = time.process_time()
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        sess.run(None, {predict.INPUT_NAME: x})
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / REPEATS
    return statistics.median(walls) * 1000, cpu * 1000


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else config.model_tag()
    path, crop = store.onnx_file(tag)
    print(f"{tag}, ONNX Runtime {ort.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    stored = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    print(f"\nstored graph: {dict(stored.most_common())}")
    with tempfile.TemporaryDirectory() as tmp:
        for level in LEVELS:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = LEVELS[level]
            opts.optimized_model_filepath = str(Path(tmp) / f"{level}.onnx")
            ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
            print(f"optimized, {level}: {dict(ops.most_common())}")

    t0 = time.perf_counter()
    predict.open_session(path)
    print(f"\nopening the served session: {time.perf_counter() - t0:.2f} s")

    variants = {
        "served (predict.open_session)": lambda: predict.open_session(path),
        "2 threads, all, spinning": lambda: session(path, 2, spinning=True),
        "2 threads, all, no spinning": lambda: session(path, 2, spinning=False),
        "2 threads, extended, no spinning": lambda: session(path, 2, "extended", spinning=False),
        "2 threads, basic, no spinning": lambda: session(path, 2, "basic", spinning=False),
        "2 threads, all, no spinning, denormals as zero": lambda: session(
            path, 2, spinning=False, **{"session.set_denormal_as_zero": "1"}
        ),
        "1 thread, all": lambda: session(path, 1),
        "1 thread, extended": lambda: session(path, 1, "extended"),
    }
    rng = np.random.default_rng(0)
    inputs = {b: rng.integers(0, 256, (b, 3, crop, crop), np.uint8) for b in BATCHES}
    print(f"\n{'options':48s} " + "  ".join(f"b={b}: wall ms  CPU ms  img/s" for b in BATCHES))
    for name, make in variants.items():
        sess = make()
        cells = []
        for b in BATCHES:
            wall, cpu = timed(sess, inputs[b])
            cells.append(f"b={b}: {wall:7.1f}  {cpu:6.1f}  {b / wall * 1000:5.0f}")
        print(f"{name:48s} " + "  ".join(cells), flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
