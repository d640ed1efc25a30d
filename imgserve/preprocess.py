"""Bytes in, a uint8 CHW array out: decode, check, orient, resize, crop.

This file has no torch in it: the serving image runs it. Normalisation (mean/std) is not
done here but inside the exported ONNX graph, so what crosses from the request workers to
the batched model is a quarter of the size of float32 and the model artifact carries its
own preprocessing.

The recipe is torchvision's textbook one (resize the shorter side, centre-crop), done the
fast way: JPEGs are decoded at reduced scale when the target is much smaller (Pillow's
draft mode), everything stays uint8 until the model.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgserve import config

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageRejected(ValueError):
    """A client's upload that cannot be classified; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels; stored in the model's metadata at import."""

    resize: int = config.DEFAULT_RESIZE
    crop: int = config.DEFAULT_CROP
    mean: tuple[float, float, float] = config.IMAGENET_MEAN
    std: tuple[float, float, float] = config.IMAGENET_STD
    interpolation: str = config.DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {self.interpolation!r}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std all positive")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            resize=int(d["resize"]),
            crop=int(d["crop"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
        )


def open_image(data: bytes, max_pixels: int = config.MAX_IMAGE_PIXELS) -> Image.Image:
    """Identify the format from the bytes and check the size from the header, before decoding."""
    if not data:
        raise ImageRejected("empty file: no image data was uploaded")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's bomb warning with a clear 400.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=config.ACCEPTED_FORMATS)
    except Image.DecompressionBombError as e:  # Pillow's own guard, at twice its default limit
        raise ImageRejected(f"image too large: {e}", status=413) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            f"not a supported image: accepted formats are {', '.join(config.ACCEPTED_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"unreadable image header ({e})") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height} pixels, limit is {max_pixels}",
            status=413,
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent areas become white, 16-bit images keep their range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        hi = 65535 if arr.max(initial=0) > 255 else 255
        img = Image.fromarray((arr * 255 // hi).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # most photos: RGB already, no copy


def preprocess(data: bytes, prep: Preprocessing, max_pixels: int = config.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one upload into the model's uint8 input, shape (3, crop, crop)."""
    img = open_image(data, max_pixels)
    try:
        if img.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= 2 x resize, so the
            # final antialiased resize still does the real work (answers match full decode).
            img.draft("RGB", (2 * prep.resize, 2 * prep.resize))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright photo
        img = _to_rgb(img)
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageRejected(f"image data is truncated or corrupt ({e})") from None
    return resize_crop(img, prep)


def resize_crop(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(crop) in uint8, returned as CHW.

    Only the crop box is resampled (Pillow's `box=`), so a 10000x1 strip costs no more
    than a square photo, and the filter still reads the pixels around the box as a full
    resize would.
    """
    width, height = img.size
    short = min(width, height)
    # torchvision: the shorter side becomes `resize`, the longer one int(long * resize / short).
    new_w = prep.resize if width == short else int(width * prep.resize / short)
    new_h = prep.resize if height == short else int(height * prep.resize / short)
    left = round((new_w - prep.crop) / 2.0)
    top = round((new_h - prep.crop) / 2.0)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + prep.crop) * sx, (top + prep.crop) * sy)
    img = img.resize((prep.crop, prep.crop), INTERPOLATIONS[prep.interpolation], box=box)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
