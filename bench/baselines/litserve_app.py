"""Baseline: LitServe serving the same ONNX model with the same preprocessing, its batching on.

    BENTOML_HOME=... python -m bench.baselines.litserve_app TAG PORT [MAX_BATCH_SIZE]

LitServe's own shape: one inference worker process whose loop collects requests into a batch,
calls `decode_request` on each (here: imgserve.serving.preprocess), `batch`, `predict` (the same ONNX
Runtime session options as the service), `unbatch` and `encode_response`.
"""

from __future__ import annotations

import sys

import bentoml
import litserve as ls
import numpy as np
from fastapi import HTTPException

from imgserve import config
from imgserve.serving import predict, store
from imgserve.serving.preprocess import ImageRejected, preprocess

BATCH_TIMEOUT_S = 0.01  # how long LitServe waits to fill a batch; 10 ms, as in its examples


class ClassifierAPI(ls.LitAPI):
    def __init__(self, tag: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tag = tag

    def setup(self, device: str) -> None:
        entry = bentoml.models.get(self.tag)
        self.card = store.ModelCard.from_stored(entry)
        self.session = predict.open_session(entry.path_of(store.ONNX_FILE))

    def decode_request(self, request) -> np.ndarray:
        try:
            return preprocess(request["images"].file.read(), self.card.preprocessing)
        except ImageRejected as e:
            raise HTTPException(e.status, str(e)) from None

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return predict.run(self.session, pixels)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probs: np.ndarray) -> list[dict]:
        return [{"model": self.card.tag, "predictions": predict.top_k(probs, self.card.labels, config.DEFAULT_TOP_K)}]


def main() -> None:
    tag, port = sys.argv[1], int(sys.argv[2])
    max_batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else config.MAX_BATCH_SIZE
    api = ClassifierAPI(tag, max_batch_size=max_batch_size, batch_timeout=BATCH_TIMEOUT_S, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=config.REQUEST_TIMEOUT_S)
    server.run(port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
