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
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgserve import config

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageRejected(ValueError):
    """A client's upload that cannot be classified; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Size = int | tuple[int, int]  # torchvision's size: an int, or (height, width)


def _size(value: Size | list[int]) -> Size:
    """An int stays an int (Resize's shorter side, a square crop); [h, w] from JSON becomes a tuple."""
    if isinstance(value, int):
        return value
    h, w = (int(v) for v in value)
    return (h, w)


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels, in torchvision's terms; stored in the model's metadata at import.

    The recipe is always Grayscale? -> Resize -> CenterCrop -> ToTensor -> Normalize:
    - resize: as Resize(size): an int is the shorter side (aspect kept), (h, w) the exact size;
    - crop: as CenterCrop(size), the model's input size; equal to an exact resize means no crop;
    - mean, std: normalisation of [0, 1] pixels, one value per input channel;
    - channels: the model's input channels, 3 (RGB) or 1 (gray, as torchvision's Grayscale());
    - grayscale: with 3 channels, the photo is made gray first (Grayscale(num_output_channels=3)).
    """

    resize: Size = config.DEFAULT_RESIZE
    crop: Size = config.DEFAULT_CROP
    mean: tuple[float, ...] = config.IMAGENET_MEAN
    std: tuple[float, ...] = config.IMAGENET_STD
    interpolation: str = config.DEFAULT_INTERPOLATION
    channels: int = 3
    grayscale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "resize", _size(self.resize))
        object.__setattr__(self, "crop", _size(self.crop))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "grayscale", bool(self.grayscale or self.channels == 1))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"a model takes 1 (gray) or 3 (RGB) input channels, not {self.channels}")
        # A crop larger than the resized photo is padded with black around it, as torchvision's CenterCrop pads.
        if min(*self.input_size, *_hw(self.resize)) <= 0:
            raise ValueError(f"sizes must be positive, got Resize({self.resize}), CenterCrop({self.crop})")
        # A negative std is torchvision's too (Normalize refuses only 0): it inverts the photo, as
        # RandomInvert(p=1.0) before it would (white digits on black, MNIST's).
        if len(self.mean) != self.channels or len(self.std) != self.channels or 0.0 in self.std:
            raise ValueError(
                f"mean and std need {self.channels} value(s) each, one per input channel, std none 0; "
                f"got mean={list(self.mean)}, std={list(self.std)}"
            )

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return _hw(self.crop)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Also reads entries stored before channels and (h, w) sizes existed: those are RGB."""
        return cls(
            resize=_size(d["resize"]),
            crop=_size(d["crop"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
            channels=int(d.get("channels", 3)),
            grayscale=bool(d.get("grayscale", False)),
        )

    def transforms(self) -> str:
        """The recipe as a torchvision transform list, the way a researcher writes it."""
        steps = []
        if self.grayscale:
            steps.append("Grayscale()" if self.channels == 1 else "Grayscale(num_output_channels=3)")
        mode = (
            ""
            if self.interpolation == "bilinear"
            else f", interpolation=InterpolationMode.{self.interpolation.upper()}"
        )
        steps.append(f"Resize({self.resize}{mode})")
        if isinstance(self.resize, int) or self.resize != self.input_size:  # else Resize((h, w)) is the size
            steps.append(f"CenterCrop({self.crop})")
        steps.append("ToTensor()")
        if self.mean != (0.0,) * self.channels or self.std != (1.0,) * self.channels:
            steps.append(f"Normalize(mean={_floats(self.mean)}, std={_floats(self.std)})")
        return ", ".join(steps)


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def open_image(data: bytes, max_pixels: int = config.MAX_IMAGE_PIXELS) -> Image.Image:
    """Identify the format from the bytes and check the size from the header, before decoding."""
    if not data:
        raise ImageRejected("empty file: no image data was uploaded")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's bomb warning with a clear 400.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=config.ACCEPTED_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its limit (off in the server)
        over = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageRejected(
            f"image too large: over {over} pixels, limit is {max_pixels} ({config.ENV_MAX_PIXELS})", status=413
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(_unidentified(data)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"unreadable image header ({e})") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height} pixels, "
            f"limit is {max_pixels} ({config.ENV_MAX_PIXELS})",
            status=413,
        )
    return img


def _unidentified(data: bytes) -> str:
    """Why no accepted format opened the bytes. Pillow drops each reader's reason: a file that starts
    as one of the formats does (a 12-bit JPEG, a header cut short) is named with its reader's reason,
    not told that its own format is accepted."""
    Image.init()
    for fmt in config.ACCEPTED_FORMATS:
        reader, accepts = Image.OPEN[fmt]
        if accepts is not None and accepts(data[:16]):  # its signature, as Image.open tests it
            try:
                reader(io.BytesIO(data), "")
            except Exception as e:  # any reason the reader gives is the answer's reason
                return f"unreadable {fmt} image ({e}): save it again as an 8-bit JPEG or PNG"
    return f"not a supported image: accepted formats are {', '.join(config.ACCEPTED_FORMATS)}"


# Modes decoded otherwise than PIL's convert(): more than 8 bits (scaled to 8, not clipped) and with
# transparency (on white, not the colour hidden under it).
DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_model_mode(img: Image.Image, gray: bool) -> Image.Image:
    """Any mode to RGB, or to gray ("L", as torchvision's Grayscale); transparent areas become
    white, 16-bit images keep their range. At most one full-size copy besides the decoded image and
    its 8-bit or white-backed form: a 49 MP RGBA or 16-bit upload costs about what an RGB one does."""
    if img.mode in DEEP_MODES:
        img = _eight_bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBa", "La", "PA"):  # premultiplied or palette + alpha: rare, converted once
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("RGBA", "LA"):
        # As alpha_composite over opaque white (the same pixels), without an RGBA copy of each.
        base = "L" if img.mode == "LA" else "RGB"
        white = Image.new(base, img.size, (255,) * len(base))
        white.paste(img if base == "RGB" else img.getchannel("L"), (0, 0), img.getchannel("A"))
        img = white
    mode = "L" if gray else "RGB"
    # A gray photo for a gray model and most photos for an RGB one are already in mode: no copy.
    return img if img.mode == mode else img.convert(mode)


EIGHT_BIT_ROWS = 256  # rows converted at a time: a few MB of 32-bit temporaries, whatever the image


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit gray image as 8-bit "L": 0..65535 scaled to 0..255 when it uses more than 8 bits
    (32-bit values clipped to 0..65535 first)."""
    values = np.asarray(img)
    hi = 65535 if values.size and values.max() > 255 else 255
    out = np.empty(values.shape, np.uint8)
    for r in range(0, len(values), EIGHT_BIT_ROWS):
        rows = np.clip(values[r : r + EIGHT_BIT_ROWS], 0, 65535).astype(np.uint32)
        out[r : r + EIGHT_BIT_ROWS] = rows * 255 // hi
    return Image.fromarray(out, "L")


# Where ImageOps.exif_transpose moves a point (x, y) of a w x h image, by EXIF orientation (2..8).
ORIENTED = {
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (h - y, x),
    7: lambda x, y, w, h: (h - y, w - x),
    8: lambda x, y, w, h: (y, w - x),
}
EXIF_ORIENTATION = 0x0112

Box = tuple[float, float, float, float]  # left, top, right, bottom, as Pillow's resize takes a box
Reduced = tuple[tuple[int, int], Box]  # a JPEG decoded at reduced scale: the photo's full size, its part of the image


def preprocess(data: bytes, prep: Preprocessing, max_pixels: int = config.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one upload into the model's uint8 input, shape (channels, height, width)."""
    img = open_image(data, max_pixels)
    full_size = img.size
    photo: Box | None = None
    try:
        if img.format == "JPEG" and prep.interpolation != "nearest":
            # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= 2 x the resized size (and
            # DRAFT_MIN_SIDE), so the final antialiased resize still does the real work (answers match
            # full decode). Not for nearest: it picks single pixels of the full image, which a reduced
            # decode averages.
            h, w = (max(2 * v, config.DRAFT_MIN_SIDE) for v in _hw(prep.resize))
            drafted = img.draft("RGB", (w, h))
            # The photo's part of the reduced image: a side not a multiple of the scale ends in a partial pixel.
            photo = drafted[1] if drafted else None
        img.load()
        size, orientation = img.size, img.getexif().get(EXIF_ORIENTATION, 1) if photo else 1
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright photo
        if photo and orientation in ORIENTED:
            photo = _oriented(photo, ORIENTED[orientation], size)
            full_size = full_size[::-1] if orientation >= 5 else full_size  # 5..8 turn it a quarter
        img = _to_model_mode(img, prep.grayscale)
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageRejected(f"image data is truncated or corrupt ({e})") from None
    return resize_crop(img, prep, (full_size, photo) if photo else None)


def _oriented(box: Box, move: Callable[..., tuple[float, float]], size: tuple[int, int]) -> Box:
    (x0, y0), (x1, y1) = move(box[0], box[1], *size), move(box[2], box[3], *size)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def resize_crop(img: Image.Image, prep: Preprocessing, reduced: Reduced | None = None) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(crop) in uint8, returned as CHW.

    Only the crop box is resampled (Pillow's `box=`), so a 10000x1 strip costs no more
    than a square photo, and the filter still reads the pixels around the box as a full
    resize would. `reduced`, for a JPEG decoded at reduced scale: the photo's full size, and
    the part of `img` it is (sizes and crop follow the full photo, as torchvision's do).
    """
    (width, height), (x0, y0, x1, y1) = reduced or (img.size, (0, 0, *img.size))
    if isinstance(prep.resize, int):
        # torchvision: the shorter side becomes `resize`, the longer one int(long * resize / short).
        short = min(width, height)
        new_w = prep.resize if width == short else int(width * prep.resize / short)
        new_h = prep.resize if height == short else int(height * prep.resize / short)
    else:
        new_h, new_w = prep.resize
    crop_h, crop_w = prep.input_size
    # torchvision's CenterCrop: centred, and where the crop is larger than the photo, black around it
    left = round((new_w - crop_w) / 2.0) if crop_w <= new_w else -((crop_w - new_w) // 2)
    top = round((new_h - crop_h) / 2.0) if crop_h <= new_h else -((crop_h - new_h) // 2)
    left_in, right_in = max(left, 0), min(left + crop_w, new_w)  # the part of the crop that is photo
    top_in, bottom_in = max(top, 0), min(top + crop_h, new_h)
    sx, sy = (x1 - x0) / new_w, (y1 - y0) / new_h
    box = (x0 + left_in * sx, y0 + top_in * sy, x0 + right_in * sx, y0 + bottom_in * sy)
    img = img.resize((right_in - left_in, bottom_in - top_in), INTERPOLATIONS[prep.interpolation], box=box)
    if img.size != (crop_w, crop_h):
        padded = Image.new(img.mode, (crop_w, crop_h))  # black
        padded.paste(img, (left_in - left, top_in - top))
        img = padded
    pixels = np.asarray(img, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # gray (H, W) -> (1, H, W)
    if prep.grayscale and prep.channels == 3:
        pixels = np.repeat(pixels, 3, axis=0)  # Grayscale(num_output_channels=3)
    return np.ascontiguousarray(pixels)
