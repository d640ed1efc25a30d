"""The model store entry: what import writes and what serve reads, in one schema.

An entry holds `model.onnx` (uint8 pixels in, probabilities out) and metadata with the
labels, preprocessing and provenance. No pickle, no model code: serving needs neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import bentoml

from imgserve.preprocess import Preprocessing

ONNX_FILE = "model.onnx"
# BentoML's rule for a tag's name: lowercase letters, digits, '_', '-', '.', alphanumeric at both ends.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
NAME_MAX_LENGTH = 63


@dataclass(frozen=True)
class ModelCard:
    """Everything the service needs to know about a stored model besides its weights."""

    tag: str
    labels: list[str]
    preprocessing: Preprocessing
    title: str
    description: str
    metadata: dict

    @classmethod
    def from_stored(cls, stored: bentoml.Model) -> ModelCard:
        meta = stored.info.metadata
        return cls(
            tag=str(stored.tag),
            labels=list(meta["labels"]),
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            title=meta.get("title") or stored.tag.name,
            description=meta.get("description") or "",
            metadata=meta,
        )


def load_card(tag: object) -> ModelCard:
    """The card of a stored model, or a message saying how to put the model there."""
    try:
        return ModelCard.from_stored(bentoml.models.get(str(tag)))
    except bentoml.exceptions.NotFound:
        raise bentoml.exceptions.NotFound(
            f"model {tag} is not in the model store; import it first: python import_model.py"
        ) from None


def check_name(name: str) -> None:
    """Refuse a name the model store would refuse, before any work is done."""
    if len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.match(name):
        raise ValueError(
            f"--name {name!r} cannot name a stored model: use at most {NAME_MAX_LENGTH} lowercase letters, digits, "
            f"'-', '_' or '.', starting and ending with a letter or digit (e.g. {name_from(name)!r})"
        )


def name_from(stem: str) -> str:
    """A valid model name made from a file name: 'Birds Model v2' -> 'birds-model-v2'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:NAME_MAX_LENGTH].strip("-._")
    return name or "model"


def save(name: str, onnx_file: Path, metadata: dict) -> str:
    """Store a verified ONNX file with its metadata; returns the new `name:version` tag."""
    with bentoml.models.create(
        name,
        labels={"task": "image-classification", "runtime": "onnxruntime", "arch": str(metadata["arch"])},
        metadata=metadata,
    ) as entry:
        Path(entry.path_of(ONNX_FILE)).write_bytes(onnx_file.read_bytes())
    return str(entry.tag)


def exists(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
