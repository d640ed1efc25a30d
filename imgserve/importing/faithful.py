"""Does the server answer as the researcher's own code does? Measured at import, on real photos.

Served path: the bundle's own decoding (JPEG draft decode, EXIF orientation, one uint8 resample of the
crop box) and the exported ONNX graph, exactly as the server runs them. Reference: each photo decoded in
full by Pillow, the researcher's transform list run by torchvision itself, and their torch model. The
two are compared on top-1 and on the largest probability difference.

Import side only (torch, torchvision); the server never reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from imgserve import config
from imgserve.importing import convert
from imgserve.importing.messages import ImportRefused, error_line, quiet_torch
from imgserve.importing.transforms import Step
from imgserve.serving.predict import open_session, run
from imgserve.serving.preprocess import ALPHA_MODES, DEEP_MODES, ImageRejected, Preprocessing, preprocess


@dataclass(frozen=True)
class Agreement:
    """Two pipelines' answers on the same images: top-1 the same on how many, the largest probability gap."""

    photos: int  # images compared: photos, or views of photos (the int8 gate)
    top1_agree: int
    max_prob_diff: float
    apart: tuple[str, ...] = ()  # the photos answered differently (top-1, or past FAITHFUL_MAX_PROB_DIFF)
    # ... of them, those with transparency or more than 8 bits, which the server decodes differently on purpose
    decoded_apart: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # files the server would refuse too (not images, corrupt): not compared

    @classmethod
    def between(cls, reference: np.ndarray, probs: np.ndarray) -> Agreement:
        """Of two (images, classes) arrays of probabilities."""
        same = reference.argmax(1) == probs.argmax(1)
        return cls(len(reference), int(same.sum()), float(np.abs(reference - probs).max()))

    @property
    def fraction(self) -> float:
        return self.top1_agree / self.photos if self.photos else 0.0

    @property
    def acceptable(self) -> bool:
        return (
            self.photos > 0
            and self.fraction >= config.FAITHFUL_MIN_TOP1_AGREEMENT
            and self.max_prob_diff <= config.FAITHFUL_MAX_PROB_DIFF
        )

    def to_dict(self) -> dict:
        return {
            "photos": self.photos,
            "top1_agreement": round(self.fraction, 4),
            "max_prob_diff": round(self.max_prob_diff, 6),
        }

    def __str__(self) -> str:
        skipped = f" ({len(self.skipped)} skipped, the server refuses them too: {', '.join(self.skipped[:4])})"
        return (
            f"top-1 the same on {self.top1_agree} of {self.photos} photos, "
            f"largest probability difference {self.max_prob_diff:.4f}" + (skipped if self.skipped else "")
        )


def photos_in(folder: Path, limit: int | None = config.FAITHFUL_MAX_PHOTOS) -> list[Path]:
    """Image files of a folder and its subfolders, by name, at most `limit` (None: all; sorted, so runs
    repeat). Hidden files are left out: macOS leaves "._photo.jpg" beside copied photos."""
    found = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in config.PHOTO_SUFFIXES and not p.name.startswith(".")
    )
    return found[:limit]


def reference_transform(steps: list[Step]) -> Callable[[Image.Image], torch.Tensor]:
    """The researcher's transform list, built by torchvision from the parsed steps."""
    from torchvision import transforms as v1
    from torchvision.transforms import InterpolationMode, v2

    def value(v: object) -> object:
        if isinstance(v, str) and v.upper() in InterpolationMode.__members__:
            return InterpolationMode[v.upper()]
        if isinstance(v, str) and hasattr(torch, v) and isinstance(getattr(torch, v), torch.dtype):
            return getattr(torch, v)
        return v

    # A list with v2's own steps is v2 code: its Resize too (v1's refuses a tensor's LANCZOS, v2's runs it).
    module = v2 if any(step.name in ("ToImage", "ToDtype", "RGB") for step in steps) else v1
    built = [
        getattr(module, step.name)(*map(value, step.args), **{k: value(v) for k, v in step.kwargs.items()})
        for step in steps
    ]
    return v1.Compose(built)


def check_runs(steps: list[Step]) -> None:
    """Refuse a list that torchvision itself cannot run (two ToTensor(), LANCZOS on v1's tensor Resize):
    your code cannot run it either, and the check against it would fail late, as an unforeseen error."""
    photo = Image.new("RGB", (96, 72), (120, 60, 200))
    try:
        with quiet_torch():
            reference_transform(steps)(photo)
    except Exception as e:  # torchvision's errors have no common base class
        raise ImportRefused(
            f"torchvision cannot run this list as written ({', '.join(map(str, steps))}): {error_line(e)}. Write "
            "the list your code runs"
        ) from None


def measure(
    model: nn.Module,
    outputs: convert.Outputs,
    onnx_path: Path,
    prep: Preprocessing,
    steps: list[Step],
    photos: list[Path],
) -> Agreement:
    """Served path against the reference on every photo that decodes; photos that do not are skipped."""
    transform = reference_transform(steps)
    # The researcher's images were gray already when the model is gray and their list has no Grayscale.
    mode = "L" if prep.channels == 1 and not any(s.name == "Grayscale" for s in steps) else "RGB"
    session = open_session(str(onnx_path))
    agree, worst, count, apart, decoded_apart, skipped = 0, 0.0, 0, [], [], []
    for path in photos:
        data = path.read_bytes()
        try:
            served = run(session, preprocess(data, prep)[None])[0]
        except ImageRejected:
            skipped.append(path.name)  # not a photo the server would classify either
            continue
        with Image.open(path) as img:
            special = img.mode in DEEP_MODES | ALPHA_MODES or "transparency" in img.info
            photo = ImageOps.exif_transpose(img).convert(mode)
        with torch.inference_mode(), quiet_torch():
            out = model(transform(photo)[None].float())
            expected = convert.to_probabilities(out, outputs)[0].numpy()
        count += 1
        same = expected[served.argmax()] >= expected.max() - config.FAITHFUL_TIE  # its top-1, or one tied with it
        diff = float(np.abs(served - expected).max())
        agree += int(same)
        worst = max(worst, diff)
        if not same or diff > config.FAITHFUL_MAX_PROB_DIFF:
            apart.append(path.name)
            if special:
                decoded_apart.append(path.name)
    return Agreement(count, agree, worst, tuple(apart), tuple(decoded_apart), tuple(skipped))
