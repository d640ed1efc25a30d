"""The benchmark's two models: the default EfficientNet-Lite0 and a heavy VGG-11 with random weights.

Random weights are fine for timing (the arithmetic is the same) and need no download: the
heavy model is rebuilt from its seed wherever torch needs it (the Gradio baseline).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "efficientnet-lite0"
HEAVY_ARCH = "vgg11"
HEAVY = f"{HEAVY_ARCH}-random"
HEAVY_SEED = 0


def heavy_module():
    import torch
    import torchvision

    torch.manual_seed(HEAVY_SEED)
    return torchvision.models.get_model(HEAVY_ARCH, weights=None, num_classes=1000)


def ensure(name: str) -> str:
    """Import `name` into the model store unless it is there; returns its latest tag."""
    import bentoml

    from imgserve.serving import store

    if not store.exists(f"{name}:latest"):
        with tempfile.TemporaryDirectory() as tmp:
            if name == DEFAULT:
                args = []
            elif name == HEAVY:
                import torch

                weights = Path(tmp) / f"{HEAVY}.pth"
                torch.save(heavy_module().state_dict(), weights)
                args = [str(weights), "--arch", HEAVY_ARCH, "--name", HEAVY, "--title", f"{HEAVY_ARCH}, random weights"]
            else:
                raise ValueError(f"unknown benchmark model {name!r}")
            subprocess.run([sys.executable, str(ROOT / "import_model.py"), *args], cwd=ROOT, check=True)
    return str(bentoml.models.get(f"{name}:latest").tag)


def ensure_int8() -> dict:
    """`import_model.py --quantize int8 --if-missing`: the default model's int8 tag and how it agrees
    with the fp32 model when the gate passed it, else the gate's refusal, which the benchmark reports."""
    import bentoml

    result = subprocess.run(
        [sys.executable, str(ROOT / "import_model.py"), "--if-missing", "--quantize", "int8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return {"tag": None, "refused": result.stderr.strip().splitlines()[-1].removeprefix("error: ")}
    tag = result.stdout.strip().splitlines()[-1]
    return {"tag": tag, **bentoml.models.get(tag).info.metadata["quantization"]}


def torch_model(card):
    """The torch module behind a stored benchmark model: same weights, logits out."""
    arch = card.metadata["arch"]
    if arch == DEFAULT:
        from imgserve.importing import cli, loading

        weights = Path(cli.default_model_args()[0])
        return loading.load_model(weights, DEFAULT).module
    if arch == HEAVY_ARCH:
        return heavy_module()
    raise ValueError(f"no torch model for {arch!r}")
