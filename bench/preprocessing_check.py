"""Which preprocessing do the default model's weights expect? Measured, not guessed.

    python -m bench.preprocessing_check

Runs EfficientNet-Lite0 (torch, before export) on real photos under each candidate
normalisation and resize recipe, and prints the top-1 class and its probability. The
right recipe is the one under which the photos get their right classes most confidently.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import skimage.data
import torch

from imgserve import config
from imgserve.importing import cli, convert, loading
from imgserve.serving.preprocess import Preprocessing, preprocess

ROOT = Path(__file__).resolve().parents[1]
SKIMAGE = Path(skimage.data.__file__).parent
PHOTOS = [*sorted((ROOT / "data").glob("*.jpg")), SKIMAGE / "astronaut.png", SKIMAGE / "motorcycle_left.png"]
CANDIDATES = {
    "ImageNet mean/std, 256->224 bilinear": (config.IMAGENET_MEAN, config.IMAGENET_STD, 256, "bilinear"),
    "ImageNet mean/std, 256->224 bicubic": (config.IMAGENET_MEAN, config.IMAGENET_STD, 256, "bicubic"),
    "raw [0, 1], 256->224 bilinear": ((0, 0, 0), (1, 1, 1), 256, "bilinear"),
    "TF (x-127)/128, 256->224 bilinear": (config.DEFAULT_MODEL_MEAN, config.DEFAULT_MODEL_STD, 256, "bilinear"),
    "TF (x-127)/128, 256->224 bicubic": (config.DEFAULT_MODEL_MEAN, config.DEFAULT_MODEL_STD, 256, "bicubic"),
    "TF (x-127)/128, 224->224 bilinear": (config.DEFAULT_MODEL_MEAN, config.DEFAULT_MODEL_STD, 224, "bilinear"),
}


def main() -> None:
    weights = cli.default_model_args()[0]
    model = loading.load_model(Path(weights), config.DEFAULT_ARCH).module
    labels = cli.imagenet_labels()
    for name, (mean, std, resize, interpolation) in CANDIDATES.items():
        prep = Preprocessing(resize=resize, crop=224, mean=mean, std=std, interpolation=interpolation)
        packaged = convert.Packaged(model, prep, convert.Outputs.LOGITS).eval()
        answers, confidences = [], []
        for photo in PHOTOS:
            with torch.inference_mode():
                probs = packaged(torch.from_numpy(preprocess(photo.read_bytes(), prep))[None])[0]
            best = int(probs.argmax())
            answers.append(f"{photo.stem}={labels[best]} {float(probs[best]):.2f}")
            confidences.append(float(probs[best]))
        print(f"{name:38s} median top-1 p={statistics.median(confidences):.2f} | " + ", ".join(answers))


if __name__ == "__main__":
    main()
