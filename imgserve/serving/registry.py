"""The served models: each its card, its own ONNX session, batcher and queue bound; `GET /models`.

$CLASSIFIER_MODELS names them, the default first (imgserve/config.py). Every model is batched on
its own: a slow model's queue never holds a fast one's images, and a full queue sheds only the
requests for its own model. A request picks a model by its name or its exact tag (name:version).
The list is checked once, at start: a malformed list or a model missing from the store stops the
server with a message, before it is ready.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bentoml
from pydantic import BaseModel, Field

from imgserve import config
from imgserve.serving import predict, store
from imgserve.serving.batcher import Batcher
from imgserve.serving.errors import quoted
from imgserve.serving.store import ModelCard

LATEST = "latest"


class UnknownModel(LookupError):
    """A request named a model this server does not serve; the message names those it does."""


@dataclass
class Served:
    card: ModelCard
    default: bool
    opened: Batcher | None = None  # set by Registry.open, in the serving worker

    @property
    def batcher(self) -> Batcher:
        if self.opened is None:
            raise RuntimeError(f"{self.card.tag} is not loaded: Registry.open() loads the models in the serving worker")
        return self.opened

    @property
    def name(self) -> str:
        return self.card.tag.split(":", 1)[0]


def exact_tag(tag: str) -> str:
    """The stored model's name:version that a tag names ('latest', case and all), or the tag as written
    when it names none (the list's own problems then say so)."""
    try:
        return str(bentoml.models.get(tag).tag)
    except (ValueError, bentoml.exceptions.BentoMLException):
        return tag


class Registry:
    def __init__(self, cards: list[ModelCard]) -> None:
        self.models = [Served(card, default=i == 0) for i, card in enumerate(cards)]
        self.default = self.models[0]
        self.max_classes = max(len(m.card.labels) for m in self.models)
        # `name:latest` in a request: the newest version of that name served, as `latest` in the list means the
        # newest stored; a bare name is the first listed. (Both were the first listed: with
        # "cells:v1,cells:latest", model=cells:latest was answered by v1.)
        names = [m.name for m in self.models]
        self.newest = {m.name: m for m in reversed(self.models)}
        for name in {n for n in names if names.count(n) > 1}:
            versions = [m for m in self.models if m.name == name]
            self.newest[name] = max(versions, key=lambda m: bentoml.models.get(m.card.tag).creation_time)

    @classmethod
    def from_config(cls) -> Registry:
        """The configured models' cards, read from the store; every problem of the list in one message."""
        tags = config.model_tags()
        cards, problems = [], []
        for tag in tags:
            try:
                bentoml.Tag.from_str(tag)
            except (ValueError, bentoml.exceptions.BentoMLException):
                problems.append(f"{tag!r} is not a model-store tag (name or name:version)")
                continue
            try:
                cards.append(store.load_card(tag))
            except (bentoml.exceptions.NotFound, store.NotImported) as e:
                problems.append(str(e))
        exact = [c.tag for c in cards]
        problems += [f"{tag} is listed twice" for i, tag in enumerate(exact) if tag in exact[:i]]
        if (one := config.default_also_named()) and exact_tag(one) != exact_tag(tags[0]):
            problems.insert(0, config.models_disagree(one))
        if problems:
            raise config.ModelListError(f"cannot serve {', '.join(tags)}: " + "; ".join(problems))
        return cls(cards)

    def __iter__(self) -> Iterator[Served]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def open(self, on_batch: Callable[[str, int, float], None]) -> None:
        """Load each model into ONNX Runtime behind a batcher of its own; `on_batch(tag, images, seconds)`."""
        for m in self.models:
            session = predict.open_session(bentoml.models.get(m.card.tag).path_of(store.ONNX_FILE))
            m.opened = Batcher(
                functools.partial(predict.run, session),
                config.MAX_BATCH_SIZE,
                config.MAX_LATENCY_MS / 1000,
                on_batch=functools.partial(on_batch, m.card.tag),
            )

    def get(self, requested: str | None) -> Served:
        """The model a request names (its name or exact tag; nothing: the default)."""
        wanted = (requested or "").strip().lower()
        if not wanted:
            return self.default
        name, _, version = wanted.partition(":")
        for m in self.models:  # an exact tag first, then the first listed of that name
            if m.card.tag == wanted:
                return m
        if version == LATEST and name in self.newest:
            return self.newest[name]
        for m in self.models:
            if m.name == name and not version:
                return m
        raise UnknownModel(f"unknown model {quoted(requested or '')}: this server serves {self.served()}")

    def served(self) -> str:
        return ", ".join(f"{m.card.tag}{' (default)' if m.default else ''}" for m in self.models)


# --- GET /models


class PreprocessingInfo(BaseModel):
    transforms: str = Field(description="the recipe in torchvision's words, as stored at import")
    resize: int | list[int] = Field(description="a number: the shorter side resized to it; [h, w]: the exact size")
    crop: int | list[int] = Field(description="then the centre crop: the model's input size ([h, w] or a square)")
    mean: list[float] = Field(description="per input channel, pixels scaled to 0..1 first")
    std: list[float]
    interpolation: str
    channels: int = Field(description="the model's input channels: 3 (RGB) or 1 (gray)")
    grayscale: bool = Field(description="photos are made gray first")


class ModelInfo(BaseModel):
    name: str = Field(description="what the `model` field of /classify takes")
    tag: str = Field(description="the exact store tag, name:version, as each answer's `model` says")
    classes: int = Field(description="number of classes; top_k goes up to it")
    title: str
    description: str
    preprocessing: PreprocessingInfo
    default: bool = Field(description="answers when a request names no model")
    quantization: str | None = Field(
        None, description="an int8 model only: how its answers agree with its fp32 model's (import's gate)"
    )


def info(m: Served) -> ModelInfo:
    c = m.card
    return ModelInfo(
        name=m.name,
        tag=c.tag,
        classes=len(c.labels),
        title=c.title,
        description=c.description,
        preprocessing=PreprocessingInfo(transforms=c.preprocessing.transforms(), **c.preprocessing.to_dict()),
        default=m.default,
        quantization=c.quantization or None,
    )


def models_api(registry: Registry):
    """`GET /models` as a FastAPI app that service.py mounts: BentoML lists a mounted FastAPI
    app's routes in its OpenAPI docs, and serves only those routes from it (BentoML 1.4's
    PassiveMount), so mounting at the root takes no other path."""
    from fastapi import FastAPI

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # BentoML's own docs list the route

    @app.get(
        config.MODELS_PATH,
        response_model=list[ModelInfo],
        response_model_exclude_none=True,  # `quantization` only where there is one
        tags=["Service APIs"],  # next to /classify in BentoML's docs
        summary="The served models",
    )
    def models() -> list[ModelInfo]:
        """The models this server serves, the default first; `/classify` takes one in its `model` field."""
        return [info(m) for m in registry]

    # HEAD too, as for every GET (RFC 9110; a monitor's check): FastAPI's GET routes refuse it with 405.
    app.add_api_route(config.MODELS_PATH, models, methods=["HEAD"], include_in_schema=False)
    return app
