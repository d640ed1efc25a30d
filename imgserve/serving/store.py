"""The model store entry: what import writes and what serve reads, in one schema.

An entry holds `model.onnx` (uint8 pixels in, probabilities out), metadata with the
labels, preprocessing and provenance, and optionally `examples/`: a few photos of the
model's own classes for its web page. No pickle, no model code: serving needs neither.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

from imgserve import config
from imgserve.serving.preprocess import ImageRejected, Preprocessing, Size, open_image

ONNX_FILE = "model.onnx"
# BentoML's rule for a tag's name: lowercase letters, digits, '_', '-', '.', alphanumeric at both ends.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
NAME_MAX_LENGTH = 63
EXAMPLES_FOLDER = "examples"
# The bundle's photos (a cat, an espresso, a rocket): ImageNet classes, so the default model's
# examples when it has none of its own. Packed into the Bento by bentofile.yaml.


@dataclass(frozen=True)
class ModelCard:
    """Everything the service needs to know about a stored model besides its weights."""

    tag: str
    labels: list[str]
    preprocessing: Preprocessing
    title: str
    description: str
    metadata: dict
    examples: tuple[Path, ...] = ()  # photos for the web page, in name order

    @property
    def quantization(self) -> str:
        """One sentence on how an int8 model answers against its fp32 original; empty for fp32 models."""
        q = self.metadata.get("quantization")
        if not q:
            return ""
        held = q["held_back"]
        decided = (  # stored by imports since the field came; earlier int8 models lack it
            f" (on the {held['decided_views']} whose fp32 top-1 survives one grey level of noise, "
            f"{held['decided_top1_agreement']:.1%})"
            if "decided_views" in held
            else ""
        )
        return (
            f"int8 version of `{q['fp32_model']}` ({q['int8_layers']} of {q['of_layers']} layers in int8). "
            f"On {held['images']} views of {len(q['held_back_photos'])} photos that its calibration never saw, "
            f"its top-1 agrees with the fp32 model's on {held['top1_agreement']:.1%}{decided}; "
            f"largest probability difference {held['max_prob_diff']}."
        )

    @classmethod
    def from_stored(cls, stored: bentoml.Model) -> ModelCard:
        meta: dict[str, Any] = dict(stored.info.metadata)
        return cls(
            tag=str(stored.tag),
            labels=list(meta["labels"]),
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            title=meta.get("title") or stored.tag.name,
            description=meta.get("description") or "",
            metadata=meta,
            examples=examples_of(stored),
        )


def examples_of(stored: bentoml.Model) -> tuple[Path, ...]:
    """The entry's own example photos; else the bundle's for the default model, and none for any
    other: a flowers model's page must not offer a cat."""
    own = Path(stored.path) / EXAMPLES_FOLDER
    if own.is_dir():
        return tuple(sorted(p for p in own.iterdir() if p.is_file()))
    if stored.tag.name == config.DEFAULT_MODEL_NAME:
        return tuple(sorted(config.DATA_DIR.glob("*.jpg")))
    return ()


BROWSER_FORMATS = {"JPEG", "PNG", "GIF", "WEBP"}  # what every browser shows on the page


def check_examples(folder: Path) -> list[Path]:
    """The photos of `folder` to store as a model's examples, each decoded as the server decodes
    an upload; a ValueError says which file breaks which rule."""
    if not folder.is_dir():
        raise ValueError(f"--examples: no such folder: {folder}")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not 1 <= len(photos) <= config.MAX_EXAMPLES:
        raise ValueError(f"--examples: {folder} has {len(photos)} files; give 1 to {config.MAX_EXAMPLES} photos")
    for photo in photos:
        size = photo.stat().st_size
        if size > config.MAX_EXAMPLE_BYTES:
            raise ValueError(
                f"--examples: {photo.name} is {size:,} bytes, the limit is {config.MAX_EXAMPLE_BYTES:,}: "
                "save it smaller (a photo for the web, e.g. 1024 px wide)"
            )
        try:
            image = open_image(photo.read_bytes())
            image.load()
        except ImageRejected as e:
            raise ValueError(f"--examples: {photo.name}: {e}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"--examples: {photo.name}: image data is truncated or corrupt ({e})") from None
        if image.format not in BROWSER_FORMATS:
            raise ValueError(
                f"--examples: {photo.name} is {image.format}, which browsers do not show: save it as JPEG or PNG"
            )
    return photos


class NotImported(ValueError):
    """A stored model that import_model.py did not write (a BentoML tutorial's `iris_clf`): no labels or
    preprocessing to serve it by."""


def load_card(tag: object) -> ModelCard:
    """The card of a stored model, or a message saying how to put the model there."""
    try:
        stored = bentoml.models.get(str(tag))
    except bentoml.exceptions.NotFound:
        raise bentoml.exceptions.NotFound(
            f"model {tag} is not in the model store; import it first: python import_model.py"
        ) from None
    try:
        return ModelCard.from_stored(stored)
    except (KeyError, TypeError, ValueError) as e:
        lacks = f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
        raise NotImported(
            f"model {stored.tag} was not stored by import_model.py (its metadata has {lacks}): "
            "serve a model imported with python import_model.py"
        ) from None


def check_name(name: str) -> None:
    """Refuse a name the model store would refuse, before any work is done."""
    if len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.match(name):
        raise ValueError(
            f"--name {name!r} cannot name a stored model: use at most {NAME_MAX_LENGTH} lowercase letters, digits, "
            f"'-', '_' or '.', starting and ending with a letter or digit (e.g. {name_from(name) or 'beetles'!r})"
        )


def name_from(stem: str) -> str:
    """A valid model name made from a file name: 'Birds Model v2' -> 'birds-model-v2', 'Käfer' -> 'kafer';
    '' when nothing of it is left (a name in another script: the import then asks for --name)."""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9._-]+", "-", ascii_stem.lower()).strip("-._")[:NAME_MAX_LENGTH].strip("-._")


def save(name: str, onnx_file: Path, metadata: dict, examples: Sequence[Path] = ()) -> str:
    """Store a verified ONNX file with its metadata and example photos (from `check_examples`);
    returns the new `name:version` tag."""
    with bentoml.models.create(
        name,
        labels={"task": "image-classification", "runtime": "onnxruntime", "arch": str(metadata["arch"])},
        metadata=metadata,
    ) as entry:
        Path(entry.path_of(ONNX_FILE)).write_bytes(onnx_file.read_bytes())
        if examples:
            folder = Path(entry.path_of(EXAMPLES_FOLDER))
            folder.mkdir()
            for photo in examples:
                shutil.copyfile(photo, folder / photo.name)
    return str(entry.tag)


def onnx_file(tag_or_path: str) -> tuple[str, Size]:
    """The ONNX file and input size of a stored model, or of an .onnx file (the default 224) for the benchmarks."""
    if tag_or_path.endswith(".onnx"):
        return tag_or_path, Preprocessing().crop
    entry = bentoml.models.get(tag_or_path)
    return entry.path_of(ONNX_FILE), ModelCard.from_stored(entry).preprocessing.crop


def exists(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
