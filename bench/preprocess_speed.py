"""Our preprocessing against the textbook torchvision path: time per image, and the answers.

    BENTOML_HOME=... python -m bench.preprocess_speed [TAG]

Textbook: full decode, Resize(256), CenterCrop(224), ToTensor, Normalize, as the tutorials write
it. Ours: imgserve.serving.preprocess (draft-mode JPEG decode, one uint8 resample of the crop box only,
EXIF orientation), normalisation then done inside the model graph; for a like-for-like time the
same normalisation is timed here in NumPy and added. Both timed in one thread (the server
decodes different images in different threads), on the small and the ~12 MP photos.

Answers: the served path (ours + ONNX Runtime) against the tutorials' path (textbook + torch
eager) on every benchmark photo: same top-1, and every class probability within
PROB_TOLERANCE.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time

import numpy as np

from bench import models
from bench import photos as bench_photos
from imgserve import config
from imgserve.serving import predict, store
from imgserve.serving.preprocess import Preprocessing, preprocess

# Largest difference of any class probability allowed between the two paths. Measured: up to 0.019
# on the 12 MP photos (the draft decode's DCT-domain downscale is a box filter, the full decode's
# resize is bilinear over all pixels); small photos differ by < 0.001.
PROB_TOLERANCE = 0.03


def textbook_transform(prep: Preprocessing):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(prep.resize),
            transforms.CenterCrop(prep.crop),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )


def textbook(data: bytes, transform):
    from PIL import Image

    return transform(Image.open(io.BytesIO(data)).convert("RGB"))


def ours_normalized(data: bytes, prep: Preprocessing, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Our uint8 output plus the normalisation the model graph does, for a like-for-like time."""
    return preprocess(data, prep).astype(np.float32) * scale + shift


def _time_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()  # this thread's CPU time: what a decode costs, whatever else runs
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times) * 1000


def compare(all_photos: list[bench_photos.Photo], prep: Preprocessing, session, torch_model, repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    transform = textbook_transform(prep)
    std = np.array(prep.std, np.float32).reshape(3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -np.array(prep.mean, np.float32).reshape(3, 1, 1) / std
    per_photo, answers = [], []
    for p in all_photos:
        data = p.data
        fast = _time_ms(lambda d=data: ours_normalized(d, prep, scale, shift), repeats)
        slow = _time_ms(lambda d=data: textbook(d, transform), repeats)
        per_photo.append({"photo": p.name, "kind": p.kind, "ours_ms": round(fast, 2), "textbook_ms": round(slow, 2)})
        served = predict.run(session, preprocess(data, prep)[None])[0]
        with torch.inference_mode():
            tutorial = torch.softmax(torch_model(textbook(data, transform)[None]), dim=1)[0].numpy()
        answers.append(
            {
                "photo": p.name,
                "top1_served": int(served.argmax()),
                "top1_textbook": int(tutorial.argmax()),
                "top1_same": bool(served.argmax() == tutorial.argmax()),
                "max_prob_diff": round(float(np.abs(served - tutorial).max()), 4),
            }
        )
    kinds = {}
    for kind in ("small", "large"):
        rows = [r for r in per_photo if r["kind"] == kind]
        ours = statistics.median(r["ours_ms"] for r in rows)
        tb = statistics.median(r["textbook_ms"] for r in rows)
        kinds[kind] = {"ours_ms": round(ours, 2), "textbook_ms": round(tb, 2), "speedup": round(tb / ours, 2)}
    return {
        "timing": "median CPU ms per image in one thread, median over the photos of a kind",
        **kinds,
        "per_photo": per_photo,
        "answers": answers,
        "prob_tolerance": PROB_TOLERANCE,
        "all_top1_same": all(a["top1_same"] for a in answers),
        "max_prob_diff": max(a["max_prob_diff"] for a in answers),
    }


def main() -> None:
    import bentoml

    tag = sys.argv[1] if len(sys.argv) > 1 else config.model_tag()
    entry = bentoml.models.get(tag)
    card = store.ModelCard.from_stored(entry)
    session = predict.open_session(entry.path_of(store.ONNX_FILE), threads=1)
    result = compare(bench_photos.photos(), card.preprocessing, session, models.torch_model(card).eval(), 5)
    print(json.dumps({k: v for k, v in result.items() if k != "per_photo"}, indent=1))


if __name__ == "__main__":
    main()
