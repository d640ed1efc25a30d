"""Serve a stored image classifier: `/classify` over HTTP, with adaptive batching.

    bentoml serve service:ImageClassifier

Two services, two processes:
- `ImageClassifier` (the entry point) takes requests, decodes and preprocesses each image in
  a thread, rejects bad ones with a 4xx, and only then sends the good pixels on, so one bad
  file never fails someone else's batch and decoding never waits behind the model;
- `Model` runs ONNX Runtime; BentoML's adaptive batcher merges the pixels of concurrent
  requests into one model call.
Which model is served comes from $CLASSIFIER_MODEL (default: the default model's latest).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument
from pydantic import BaseModel, Field

from imgserve import config, predict, store
from imgserve.preprocess import ImageRejected, preprocess

log = logging.getLogger("bentoml.service")
MODEL = bentoml.models.BentoModel(config.model_tag())


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability, 0..1")


class Classification(BaseModel):
    model: str = Field(description="the model that answered, name:version")
    predictions: list[Prediction] = Field(description="most probable first")


@bentoml.service(
    workers=1,  # one process holds the model; ONNX Runtime threads use the cores
    traffic={"timeout": config.REQUEST_TIMEOUT_S},
)
class Model:
    """The batched model call: uint8 pixels in, probabilities out."""

    entry = MODEL

    def __init__(self) -> None:
        self.session = predict.open_session(self.entry.path_of(store.ONNX_FILE))

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=config.MAX_BATCH_SIZE,
        max_latency_ms=config.MAX_LATENCY_MS,
    )
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return predict.run(self.session, pixels)


@bentoml.service(
    name="image-classifier",
    workers=1,  # decoding runs in this process's threads (Pillow releases the GIL)
    traffic={"timeout": config.REQUEST_TIMEOUT_S},
)
class ImageClassifier:
    """Classify photos with the stored model; see README.md for the API."""

    model = bentoml.depends(Model)
    entry = MODEL

    def __init__(self) -> None:
        self.card = store.ModelCard.from_stored(self.entry)
        log.info("serving %s (%d classes)", self.card.tag, len(self.card.labels))

    def _pixels(self, path: Path, index: int) -> np.ndarray:
        try:
            return preprocess(path.read_bytes(), self.card.preprocessing)
        except ImageRejected as e:
            raise BentoMLException(f"image {index + 1}: {e}", error_code=HTTPStatus(e.status)) from None

    @bentoml.api(route="/classify")
    async def classify(self, images: list[Path], top_k: int = config.DEFAULT_TOP_K) -> list[Classification]:
        """Classify one or more images; one answer per image, in upload order."""
        n_classes = len(self.card.labels)
        if not 1 <= top_k <= n_classes:
            raise InvalidArgument(f"top_k must be between 1 and {n_classes}, got {top_k}")
        if not images:
            raise InvalidArgument("no images: send one or more files in the 'images' field")
        if len(images) > config.MAX_IMAGES_PER_REQUEST:
            raise InvalidArgument(
                f"too many images in one request: {len(images)}, limit is {config.MAX_IMAGES_PER_REQUEST}"
            )
        pixels = await asyncio.gather(*(asyncio.to_thread(self._pixels, p, i) for i, p in enumerate(images)))
        batch = np.stack(pixels)
        # Chunks no larger than a model batch, so one big request cannot exceed max_batch_size.
        chunks = [batch[i : i + config.MAX_BATCH_SIZE] for i in range(0, len(batch), config.MAX_BATCH_SIZE)]
        probs = np.concatenate(await asyncio.gather(*(self.model.to_async.predict(c) for c in chunks)))
        return [
            Classification(model=self.card.tag, predictions=predict.top_k(p, self.card.labels, top_k)) for p in probs
        ]
