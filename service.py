"""Serve a stored image classifier: `/classify` over HTTP, with adaptive batching.

    bentoml serve service:ImageClassifier

One process, three kinds of threads:
- the event loop takes requests and answers them;
- decoding threads decode and preprocess each image, and reject a bad one with a 4xx before it
  reaches a batch, so one bad file never fails someone else's batch and decoding never waits
  behind the model;
- the model thread runs ONNX Runtime on batches that merge the images of concurrent requests
  (imgserve/serving/batcher.py), one thread and one queue per served model.
Which models are served comes from $CLASSIFIER_MODELS, the first the default, or $CLASSIFIER_MODEL
(default: the default model's latest); a request picks one in its `model` field (imgserve/serving/registry.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, cast

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, Field

from imgserve import config
from imgserve.serving import bentoml_compat, docs, predict, registry, ui
from imgserve.serving.batcher import Overloaded
from imgserve.serving.errors import MODEL_QUEUE_FULL, NO_IMAGES, ClientError, too_many_images
from imgserve.serving.form import FormRules
from imgserve.serving.guard import Guard
from imgserve.serving.preprocess import ImageRejected, preprocess
from imgserve.serving.uploads import Upload

log = logging.getLogger("bentoml.service")
# Every upload's size is checked from its header against CLASSIFIER_MAX_IMAGE_PIXELS before it is
# decoded (preprocess.open_image), which names the setting; Pillow's own guard would refuse the
# largest first, in its words and at its own limit, whatever the setting says.
Image.MAX_IMAGE_PIXELS = None
# The served models' cards (labels, preprocessing, title), read once, at start: a model list that
# is malformed or names a model not in the store stops the server here, before it is ready.
MODELS = registry.Registry.from_config()
UI = ui.asgi_app()  # the web page at /ui (imgserve/serving/ui.py); ImageClassifier.__init__ builds it
DOCS = docs.asgi_app(
    [m.card for m in MODELS]
)  # the API docs at /docs, with the models' titles (imgserve/serving/docs.py)
# Prometheus metrics at /metrics: how the batching goes (created once, before the worker starts).
BATCH_SIZE = bentoml.metrics.Histogram(
    name=config.METRIC_BATCH_SIZE,
    documentation="images per model call",
    labelnames=[config.METRIC_MODEL_LABEL],
    buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
)
BATCH_SECONDS = bentoml.metrics.Histogram(
    name=config.METRIC_BATCH_SECONDS,
    documentation="seconds per model call",
    labelnames=[config.METRIC_MODEL_LABEL],
    buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
)


def _parse_top_k(value: object) -> int:
    """top_k as a whole number in range, with a message that names the range. With several models
    the range is the largest model's; a model with fewer classes answers with all of its classes.

    The guard calls it with the form field's text as sent, so the message quotes what the
    client wrote ('1e1', not BentoML's JSON reading of it, 10.0)."""
    allowed = f"top_k must be a whole number from 1 to {MODELS.max_classes}"
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text):  # ASCII digits: not '٣', '+3' or '3.0'
        raise ValueError(f"{allowed}, got {value!r}")
    k = int(text)
    if not 1 <= k <= MODELS.max_classes:
        raise ValueError(f"{allowed}, got {k}")
    return k


TopK = Annotated[int, BeforeValidator(_parse_top_k), Field(description="classes per image, 1..number of classes")]
ModelName = Annotated[
    str,
    BeforeValidator(lambda v: "" if v is None else v),  # BentoML reads the field as JSON: 'null' is None
    Field(description=f"a served model's name or name:version (GET {config.MODELS_PATH}); empty or null: the default"),
]


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability, 0..1")


class Classification(BaseModel):
    model: str = Field(description="the model that answered, name:version")
    predictions: list[Prediction] = Field(description="most probable first")


@bentoml.asgi_app(UI, path=config.UI_PATH)  # the web page, in this process
@bentoml.asgi_app(registry.models_api(MODELS))  # GET /models (only that path: see imgserve/serving/registry.py)
@bentoml.asgi_app(DOCS, path=config.DOCS_PATH)
@bentoml.service(
    name="image-classifier",
    workers=1,  # one process holds the model; its threads use the cores (Pillow and ONNX Runtime release the GIL)
    traffic={"timeout": config.REQUEST_TIMEOUT_S},
    tracing={"excluded_urls": list(config.UNTRACED_PATHS)},
    # BentoML's access log line decodes the request's Content-Type as UTF-8 as the answer is sent: a
    # client's byte that is not would cut every answer to it short (BentoML 1.4.39). Its length is kept.
    logging={"access": {"request_content_type": False}},
)
class ImageClassifier:
    """Classify photos with the stored models; see README.md for the API."""

    def __init__(self) -> None:
        self.decoders = ThreadPoolExecutor(config.DECODE_THREADS, thread_name_prefix="decode")
        # Every model loaded before the server answers /readyz.
        MODELS.open(on_batch=observe_batch)
        for m in MODELS:
            log.info("serving %s (%d classes)%s", m.card.tag, len(m.card.labels), " by default" * m.default)
        # The web page calls classify's own code in-process (not over HTTP, where the API key would
        # be asked again), so its images are checked alike and join the model's batches.
        ui.mount(UI, [m.card for m in MODELS], self.classify_images)

    def _pixels(self, served: registry.Served, image: bytes | Path, index: int) -> np.ndarray:
        try:
            data = image.read_bytes() if isinstance(image, Path) else image  # the web page passes its files
            return preprocess(data, served.card.preprocessing)
        except ImageRejected as e:
            raise ClientError(e.status, str(e), image=index + 1) from None

    async def _probabilities(self, served: registry.Served, pixels: np.ndarray) -> np.ndarray:
        """Model output for a request's images, in chunks no larger than a batch."""
        chunks = [pixels[i : i + config.MAX_BATCH_SIZE] for i in range(0, len(pixels), config.MAX_BATCH_SIZE)]
        return np.concatenate(await asyncio.gather(*(served.batcher(c) for c in chunks)))

    @bentoml.api(route=config.CLASSIFY_PATH)
    async def classify(
        self, images: list[Upload], top_k: TopK = config.DEFAULT_TOP_K, model: ModelName = ""
    ) -> list[Classification]:
        """Classify one or more images; one answer per image, in upload order. For people: [the web page](/ui).

        `model` picks one of the served models (GET /models); without it, the default answers."""
        try:
            return await self.classify_images(images, top_k, model)
        except ClientError as e:
            return e.response()  # the one error shape, as data: BentoML passes a response on as it is

    async def classify_images(self, images: Sequence[bytes | Path], top_k: int, model: str) -> list[Classification]:
        """/classify's work, raising ClientError for what the client must fix or wait for (the web page calls it)."""
        if not images:
            raise ClientError(400, NO_IMAGES)
        if len(images) > config.MAX_IMAGES_PER_REQUEST:
            raise ClientError(400, too_many_images(len(images), config.MAX_IMAGES_PER_REQUEST))
        try:
            served = MODELS.get(model)
        except registry.UnknownModel as e:
            raise ClientError(400, str(e)) from None
        card = served.card
        loop = asyncio.get_running_loop()
        try:
            served.batcher.check(len(images))  # a full model queue refuses before decoding, not after
            pixels = await asyncio.gather(
                *(loop.run_in_executor(self.decoders, self._pixels, served, p, i) for i, p in enumerate(images))
            )
            probs = await self._probabilities(served, np.stack(pixels))
        except Overloaded:
            raise ClientError(503, MODEL_QUEUE_FULL) from None
        return [
            Classification.model_validate({"model": card.tag, "predictions": predict.top_k(p, card.labels, top_k)})
            for p in probs
        ]


def observe_batch(tag: str, images: int, seconds: float) -> None:
    BATCH_SIZE.labels(tag).observe(images)
    BATCH_SECONDS.labels(tag).observe(seconds)


def _check_model(value: object) -> str:
    """The `model` field as sent: a served name or name:version, else a message naming the served ones.
    BentoML's Python client sends text fields JSON-encoded ('"flowers"', model=None as 'null': the
    default), curl and browsers plain; read as BentoML reads them (JSON when it parses, else the text)."""
    text = str(value).strip()
    with contextlib.suppress(ValueError):
        decoded = json.loads(text)
        text = "" if decoded is None else decoded if isinstance(decoded, str) else text
    try:
        MODELS.get(text)
    except registry.UnknownModel as e:
        raise ValueError(str(e)) from None
    return str(value)


# The decorators made the class a bentoml.Service (mypy reads their types as keeping the class).
SERVICE = cast("bentoml.Service[ImageClassifier]", ImageClassifier)
# `bentoml build` packs every served model with the service.
SERVICE.models[:] = [bentoml.models.BentoModel(m.card.tag) for m in MODELS]
# The root URL opens the web page; outside the guard, so a browser reaches the page that asks for the key.
SERVICE.add_asgi_middleware(docs.RootToPage)
# The HTTP boundary: the one error shape, API key, headers, body size and progress, the form's
# fields checked before BentoML parses it, in-flight bound, Retry-After (imgserve/serving/guard.py).
SERVICE.add_asgi_middleware(
    Guard,
    api_key=config.api_key(),
    form=FormRules(file_field="images", field_checks={"top_k": _parse_top_k, config.MODEL_FIELD: _check_model}),
)
# BentoML's private parts, each touched once (imgserve/serving/bentoml_compat.py).
bentoml_compat.check_version()
bentoml_compat.check_serve_port()
bentoml_compat.answer_as_json(SERVICE.apis["classify"])
bentoml_compat.refuse_text_for_files()
bentoml_compat.quiet_client_errors()
bentoml_compat.end_with_the_request()
bentoml_compat.bounded_metric_labels(
    # BentoML's own (its probes, the OpenAPI document) and ours; the page and the API docs by their prefix.
    endpoints=[*config.ENDPOINT_PATHS, "/"],
    mounts=[config.UI_PATH, config.DOCS_PATH],
)
