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
import os
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import aiohttp
import bentoml
import httpx
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from pydantic import BaseModel, BeforeValidator, Field

from imgserve import config, predict, store, ui
from imgserve.guard import Guard, refuse_text_for_files
from imgserve.preprocess import ImageRejected, preprocess

log = logging.getLogger("bentoml.service")
MODEL = bentoml.models.BentoModel(config.model_tag())
CARD = store.load_card(MODEL.tag)  # labels, preprocessing, title: read once, at start
UI = ui.asgi_app()  # the web page at /ui (imgserve/ui.py); ImageClassifier.__init__ builds it


def _parse_top_k(value: object) -> int:
    """top_k as a whole number in range, with a message that names the range."""
    allowed = f"top_k must be a whole number from 1 to {len(CARD.labels)}"
    try:
        k = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{allowed}, got {value!r}") from None
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
        batchable=config.MAX_BATCH_SIZE > 1,  # $CLASSIFIER_MAX_BATCH_SIZE=1: one request per call
        batch_dim=0,
        max_batch_size=max(2, config.MAX_BATCH_SIZE),  # BentoML refuses 1 even when not batching
        max_latency_ms=config.MAX_LATENCY_MS,
    )
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return predict.run(self.session, pixels)


@bentoml.asgi_app(UI, path=config.UI_PATH)  # the web page, in this process
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
        self.card = CARD
        self.decoders = ThreadPoolExecutor(config.DECODE_THREADS, thread_name_prefix="decode")
        log.info("serving %s (%d classes)", self.card.tag, len(self.card.labels))
        # The web page calls classify's own code in-process (.local: not over HTTP, where the API
        # key would be asked again), so its images are checked alike and join the model's batches.
        ui.mount(UI, self.card, self.classify.local)

    def _pixels(self, path: Path, index: int) -> np.ndarray:
        try:
            return preprocess(path.read_bytes(), self.card.preprocessing)
        except ImageRejected as e:
            raise BentoMLException(f"image {index + 1}: {e}", error_code=HTTPStatus(e.status)) from None

    async def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The batched model call; a model that is restarting or shedding load is a 503, not a 500."""
        # Chunks no larger than a model batch, so one big request cannot exceed max_batch_size.
        chunks = [batch[i : i + config.MAX_BATCH_SIZE] for i in range(0, len(batch), config.MAX_BATCH_SIZE)]
        return np.concatenate(await asyncio.gather(*(self._predict(c) for c in chunks)))

    async def _predict(self, pixels: np.ndarray) -> np.ndarray:
        for attempt in range(2):
            try:
                return await self.model.to_async.predict(pixels)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                # A pooled connection the model service closed a moment ago: one fresh try.
                if attempt == 0:
                    continue
                log.warning("model service unreachable: %r", e)
            except (aiohttp.ClientError, httpx.HTTPError, OSError) as e:  # BentoML's internal client
                log.warning("model service unreachable: %r", e)
            except BentoMLException as e:
                if e.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                    raise ServiceUnavailable("server busy: the model queue is full, retry shortly") from None
                raise
            raise ServiceUnavailable("the model is restarting, retry shortly")
        raise AssertionError("unreachable")

    @bentoml.api(route="/classify")
    async def classify(self, images: list[Path], top_k: TopK = config.DEFAULT_TOP_K) -> list[Classification]:
        """Classify one or more images; one answer per image, in upload order. For people: [the web page](/ui)."""
        if not images:
            raise InvalidArgument("no images: send one or more files in the 'images' field")
        if len(images) > config.MAX_IMAGES_PER_REQUEST:
            raise InvalidArgument(
                f"too many images in one request: {len(images)}, limit is {config.MAX_IMAGES_PER_REQUEST} "
                f"({config.ENV_MAX_IMAGES})"
            )
        loop = asyncio.get_running_loop()
        pixels = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, self._pixels, p, i) for i, p in enumerate(images))
        )
        probs = await self._probabilities(np.stack(pixels))
        return [
            Classification(model=self.card.tag, predictions=predict.top_k(p, self.card.labels, top_k)) for p in probs
        ]


# The HTTP boundary: API key, body size, in-flight bound, Retry-After (imgserve/guard.py).
ImageClassifier.add_asgi_middleware(Guard, api_key=os.environ.get(config.ENV_API_KEY, ""))
# BentoML finds a response's media type by rebuilding the output's JSON schema for every response:
# 1.5 ms of CPU per /classify answer, 0.26 ms per model call (README "Performance"). Both are JSON.
for _api in (ImageClassifier.apis["classify"], Model.apis["predict"]):
    _api.output_spec.media_type = "application/json"
refuse_text_for_files()
