"""Serve a stored image classifier: `/classify` over HTTP, with adaptive batching.

    bentoml serve service:ImageClassifier

One process, three kinds of threads:
- the event loop takes requests and answers them;
- decoding threads decode and preprocess each image, and reject a bad one with a 4xx before it
  reaches a batch, so one bad file never fails someone else's batch and decoding never waits
  behind the model;
- the model thread runs ONNX Runtime on batches that merge the images of concurrent requests
  (imgserve/batcher.py).
Which model is served comes from $CLASSIFIER_MODEL (default: the default model's latest).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from pydantic import BaseModel, BeforeValidator, Field

from imgserve import config, predict, store, ui
from imgserve.batcher import Batcher, Overloaded
from imgserve.guard import (
    MODEL_QUEUE_FULL,
    NO_IMAGES,
    Guard,
    image_error,
    quiet_client_errors,
    refuse_text_for_files,
    too_many_images,
)
from imgserve.preprocess import ImageRejected, preprocess

log = logging.getLogger("bentoml.service")
MODEL = bentoml.models.BentoModel(config.model_tag())
CARD = store.load_card(MODEL.tag)  # labels, preprocessing, title: read once, at start
UI = ui.asgi_app()  # the web page at /ui (imgserve/ui.py); ImageClassifier.__init__ builds it
# Prometheus metrics at /metrics: how the batching goes (created once, before the worker starts).
BATCH_SIZE = bentoml.metrics.Histogram(
    name=config.METRIC_BATCH_SIZE,
    documentation="images per model call",
    buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
)
BATCH_SECONDS = bentoml.metrics.Histogram(
    name=config.METRIC_BATCH_SECONDS,
    documentation="seconds per model call",
    buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
)


def _parse_top_k(value: object) -> int:
    """top_k as a whole number in range, with a message that names the range.

    The guard calls it with the form field's text as sent, so the message quotes what the
    client wrote ('1e1', not BentoML's JSON reading of it, 10.0)."""
    allowed = f"top_k must be a whole number from 1 to {len(CARD.labels)}"
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text):  # ASCII digits: not '٣', '+3' or '3.0'
        raise ValueError(f"{allowed}, got {value!r}")
    k = int(text)
    if not 1 <= k <= len(CARD.labels):
        raise ValueError(f"{allowed}, got {k}")
    return k


TopK = Annotated[int, BeforeValidator(_parse_top_k), Field(description="classes per image, 1..number of classes")]


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability, 0..1")


class Classification(BaseModel):
    model: str = Field(description="the model that answered, name:version")
    predictions: list[Prediction] = Field(description="most probable first")


@bentoml.asgi_app(UI, path=config.UI_PATH)  # the web page, in this process
@bentoml.service(
    name="image-classifier",
    workers=1,  # one process holds the model; its threads use the cores (Pillow and ONNX Runtime release the GIL)
    traffic={"timeout": config.REQUEST_TIMEOUT_S},
    tracing={"excluded_urls": list(config.UNTRACED_PATHS)},
)
class ImageClassifier:
    """Classify photos with the stored model; see README.md for the API."""

    entry = MODEL  # `bentoml build` packs this model with the service

    def __init__(self) -> None:
        self.card = CARD
        self.decoders = ThreadPoolExecutor(config.DECODE_THREADS, thread_name_prefix="decode")
        session = predict.open_session(self.entry.path_of(store.ONNX_FILE))
        self.batcher = Batcher(
            lambda pixels: predict.run(session, pixels),
            config.MAX_BATCH_SIZE,
            config.MAX_LATENCY_MS / 1000,
            on_batch=lambda images, seconds: (BATCH_SIZE.observe(images), BATCH_SECONDS.observe(seconds)),
        )
        log.info("serving %s (%d classes)", self.card.tag, len(self.card.labels))
        # The web page calls classify's own code in-process (.local: not over HTTP, where the API
        # key would be asked again), so its images are checked alike and join the model's batches.
        ui.mount(UI, self.card, self.classify.local)

    def _pixels(self, path: Path, index: int) -> np.ndarray:
        try:
            return preprocess(path.read_bytes(), self.card.preprocessing)
        except ImageRejected as e:
            raise BentoMLException(image_error(index, str(e)), error_code=HTTPStatus(e.status)) from None

    async def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Model output for a request's images, in chunks no larger than a batch."""
        chunks = [pixels[i : i + config.MAX_BATCH_SIZE] for i in range(0, len(pixels), config.MAX_BATCH_SIZE)]
        return np.concatenate(await asyncio.gather(*(self.batcher(c) for c in chunks)))

    @bentoml.api(route=config.CLASSIFY_PATH)
    async def classify(self, images: list[Path], top_k: TopK = config.DEFAULT_TOP_K) -> list[Classification]:
        """Classify one or more images; one answer per image, in upload order. For people: [the web page](/ui)."""
        if not images:
            raise InvalidArgument(NO_IMAGES)
        if len(images) > config.MAX_IMAGES_PER_REQUEST:
            raise InvalidArgument(too_many_images(len(images), config.MAX_IMAGES_PER_REQUEST))
        loop = asyncio.get_running_loop()
        try:
            self.batcher.check(len(images))  # a full model queue refuses before decoding, not after
            pixels = await asyncio.gather(
                *(loop.run_in_executor(self.decoders, self._pixels, p, i) for i, p in enumerate(images))
            )
            probs = await self._probabilities(np.stack(pixels))
        except Overloaded:
            raise ServiceUnavailable(MODEL_QUEUE_FULL) from None  # the guard words the answer
        return [
            Classification(model=self.card.tag, predictions=predict.top_k(p, self.card.labels, top_k)) for p in probs
        ]


# The HTTP boundary: the one error shape, API key, headers, body size and progress, the form's
# fields checked before BentoML parses it, in-flight bound, Retry-After (imgserve/guard.py).
ImageClassifier.add_asgi_middleware(
    Guard, api_key=os.environ.get(config.ENV_API_KEY, ""), file_field="images", field_checks={"top_k": _parse_top_k}
)
# BentoML finds a response's media type by rebuilding the output's JSON schema for every response:
# 1.5 ms of CPU per /classify answer (README "Performance"). It is JSON.
ImageClassifier.apis["classify"].output_spec.media_type = "application/json"
refuse_text_for_files()
quiet_client_errors()
