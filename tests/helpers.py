"""What the tests share besides fixtures: the repository's paths, the import as a user runs it, the tiny
exact colour model, models whose answers follow the photo, images made to order."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgserve.testing import ROOT

if TYPE_CHECKING:
    from torch import nn

DATA = ROOT / "data"
PYTHON = sys.executable
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
COLOURS = ["red", "green", "blue"]


def run_import(*args: str | Path) -> subprocess.CompletedProcess:
    """import_model.py as a user runs it: a separate process, its output captured."""
    return subprocess.run(
        [PYTHON, str(ROOT / "import_model.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def imported_tag(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def colour_module():
    """Mean colour -> class: red, green or blue. Fixed weights, so answers are exact."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model[2].weight.copy_(10 * torch.eye(3))
        model[2].bias.zero_()
    return model.eval()


def import_colour_model(tmp: Path, name: str, *extra: str | Path) -> str:
    """The tiny TorchScript colour model, imported under `name` with [0, 1] inputs and `extra` options."""
    import torch

    path = tmp / f"{name}.pt"
    torch.jit.script(colour_module()).save(str(path))
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    args = ["--labels", labels, "--name", name, "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    return imported_tag(run_import(path, *args, "--resize", "32", "--crop", "32", *extra))


# Real photos that ship with scikit-image, colour and gray, none of them in data/: the held-out set
# of the import's faithfulness check (--photos) and of the tests comparing served answers with torch.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
                  "retina", "camera", "coins", "moon", "clock", "page", "grass", "brick")  # fmt: skip


SPREAD = 4.0  # standard deviation of the test models' logits over photos: confident, photo-dependent answers


def sensitive(build: Callable[[], nn.Module], transforms: Callable, gray: bool, seed: int) -> nn.Module:
    """A small model whose answers follow the photo: seeded weights, batch norm's statistics and the last
    layer set from a few photos (centred on their mean features, scaled by their spread), roughly as
    training leaves them. Agreement between two pipelines means something only for such a model."""
    import skimage.data
    import torch
    from PIL import Image
    from torch import nn

    torch.manual_seed(seed)
    model = build()
    arrays = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.camera(), skimage.data.coins(), skimage.data.immunohistochemistry()]  # fmt: skip
    batch = torch.stack([transforms(Image.fromarray(a).convert("L" if gray else "RGB")) for a in arrays])
    # Batch norm's statistics from these photos (as training leaves them): features then follow the photo.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over what it sees
    model.train(bool(norms))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(batch)
        model.eval()
        model(batch)
    hook.remove()
    features = seen[-1]
    # A floor under each feature's spread: no weight is huge, so pixel-level noise cannot swing an answer.
    mean, std = features.mean(0), features.std(0) + features.std(0).median() + 1e-6
    with torch.no_grad():
        weight = torch.randn(last.out_features, last.in_features) / std * SPREAD / last.in_features**0.5
        last.weight.copy_(weight)
        last.bias.copy_(-(weight @ mean))
    return model


# Real photos for a model's own examples (`--examples`): a fundus photograph and a stained tissue slide.
EXAMPLE_PHOTOS = ("retina", "immunohistochemistry")


def image_bytes(colour=(255, 0, 0), size=(64, 48), fmt="PNG", mode="RGB", **save) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt, **save)
    return buf.getvalue()
