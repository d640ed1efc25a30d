"""The benchmark's photos: real small JPEGs, and ~12 MP JPEGs made from them at run time.

Small: the three photos in data/ and two more from scikit-image, as JPEGs of 0.14 to 0.37 MP.
Large: each small photo upscaled (Lanczos) to ~12 MP and saved as JPEG quality 90, the size
of a phone photo. They are written to a cache folder, never committed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE = Path(skimage.data.__file__).parent
SOURCES = [
    ROOT / "data" / "cat.jpg",
    ROOT / "data" / "coffee.jpg",
    ROOT / "data" / "rocket.jpg",
    SKIMAGE / "astronaut.png",
    SKIMAGE / "motorcycle_left.png",
]
LARGE_PIXELS = 12_000_000
JPEG_QUALITY = 90
CACHE = ROOT / "bench" / ".cache" / "photos"


@dataclass(frozen=True)
class Photo:
    name: str
    kind: str  # "small" or "large"
    path: Path
    size: tuple[int, int]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _cached(path: Path, make) -> Path:
    """`path`, written by `make()` unless it is there already."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(make())
        tmp.replace(path)
    return path


def photos() -> list[Photo]:
    """Five small and five ~12 MP photos, the same five scenes at both sizes."""
    out = []
    for src in SOURCES:
        img = Image.open(src).convert("RGB")
        small = src if src.suffix == ".jpg" else _cached(CACHE / f"{src.stem}.jpg", lambda i=img: _jpeg(i))
        out.append(Photo(src.stem, "small", small, img.size))
        scale = (LARGE_PIXELS / (img.width * img.height)) ** 0.5
        size = (round(img.width * scale), round(img.height * scale))
        large = _cached(
            CACHE / f"{src.stem}-12mp.jpg", lambda i=img, s=size: _jpeg(i.resize(s, Image.Resampling.LANCZOS))
        )
        out.append(Photo(f"{src.stem}-12mp", "large", large, size))
    return out


def mix(all_photos: list[Photo], large_every: int) -> list[Photo]:
    """The request sequence: every `large_every`-th photo is a large one, the rest small."""
    small = [p for p in all_photos if p.kind == "small"]
    large = [p for p in all_photos if p.kind == "large"]
    seq, s, g = [], 0, 0
    for i in range(len(small) * max(large_every, 1)):
        if large_every and i % large_every == large_every - 1:
            seq.append(large[g % len(large)])
            g += 1
        else:
            seq.append(small[s % len(small)])
            s += 1
    return seq
