"""The model call and its answer: ONNX Runtime session, top-k with labels.

No torch: this is what the serving image runs.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from imgserve import config

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"  # uint8, (batch, channels, height, width), RGB or gray; written by imgserve.importing.convert
OUTPUT_NAME = "probabilities"  # float32, (batch, classes), rows sum to 1


def providers() -> list[str]:
    """CUDA when the GPU build of ONNX Runtime is installed and sees a GPU, else CPU."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return chosen or ["CPUExecutionProvider"]


def open_session(onnx_path: str | bytes, threads: int = config.MODEL_THREADS) -> ort.InferenceSession:
    """A session with the served options, of a stored model's file (or a graph's bytes, at import)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # a CNN is one chain of ops: nothing to run side by side
    # ALL, not EXTENDED: its NCHWc layout makes the convolutions 3-6x faster on CPU (bench/ort_options.py).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ONNX Runtime threads sleep instead of spinning: the model shares the cores with the
    # decoding threads, and a spinning thread takes a core they need for no gain in model
    # time (README "Performance").
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_path, sess_options=opts, providers=providers())
    log.info("ONNX Runtime %s on %s, %d threads", ort.__version__, session.get_providers()[0], threads)
    return session


def run(session: ort.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """Probabilities for a uint8 batch; one row per input, checked.

    A graph whose batch dimension is fixed (a torch.export model exported for one image) runs the
    batch's images one after another.
    """
    if isinstance(session.get_inputs()[0].shape[0], int) and len(pixels) > 1:
        probs = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in pixels])
    else:
        probs = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    if len(probs) != len(pixels):
        raise RuntimeError(f"model returned {len(probs)} rows for {len(pixels)} images")
    return probs


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """The k most probable labels for one image, highest first."""
    k = min(k, len(probs))
    best = np.argpartition(-probs, k - 1)[:k]
    best = best[np.argsort(-probs[best], kind="stable")]
    return [{"label": labels[i], "score": float(probs[i])} for i in best]
