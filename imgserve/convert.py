"""The torch side of import: load a .pth the three ways researchers save one, export it to
ONNX with its preprocessing inside, and prove the export answers like the original.

Only `import_model.py` and the tests import this file; the server never needs torch.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from imgserve import config
from imgserve.predict import INPUT_NAME, OUTPUT_NAME, open_session, run
from imgserve.preprocess import Preprocessing

PICKLE_REFUSED = (
    "{path} is a whole pickled model (saved with torch.save(model)). Loading it runs Python "
    "code stored in the file, which can do anything on this machine. If you made this file "
    "or trust its source, run again with --trust-pickle. To avoid the question, save "
    "model.state_dict() and pass --arch, or save TorchScript (torch.jit.script(model).save(path))."
)


class ImportRefused(Exception):
    """The model cannot be imported as asked; the message tells the user what to do."""


@dataclass
class LoadedModel:
    module: nn.Module
    source_format: str  # "state_dict", "pickle" or "torchscript"
    arch: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classification_archs() -> list[str]:
    """torchvision's classification models, plus the EfficientNet-Lite family of the default model."""
    lite = [f"efficientnet-lite{i}" for i in range(5)]
    return sorted(torchvision.models.list_models(module=torchvision.models)) + lite


def build_arch(arch: str, num_classes: int) -> nn.Module:
    if arch.startswith("efficientnet-lite"):
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(arch, num_classes=num_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/__torch__" in name for name in z.namelist())


def _unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """A bare state_dict, or one inside a training checkpoint; DataParallel prefixes removed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImportRefused("the file holds no state_dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _classes_in(state_dict: dict[str, torch.Tensor], reference: nn.Module) -> int:
    """Number of classes: rows of the architecture's last weight matrix, read from the file."""
    weights = [k for k, v in reference.state_dict().items() if k.endswith("weight") and v.ndim >= 2]
    last = weights[-1]
    if last not in state_dict:
        raise ImportRefused(f"the weights have no {last!r}: they do not look like this architecture")
    return int(state_dict[last].shape[0])


def load_model(path: Path, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load a .pth saved as a state_dict (needs `arch`), a whole pickled model, or TorchScript."""
    if _is_torchscript(path):
        return LoadedModel(torch.jit.load(str(path), map_location="cpu").eval(), "torchscript", arch or "torchscript")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers: a pickled model.
        if not trust_pickle:
            raise ImportRefused(PICKLE_REFUSED.format(path=path.name)) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ModuleNotFoundError) as e:
            raise ImportRefused(
                f"unpickling needs the code that defined the model ({e}); run import_model.py "
                "where that module can be imported (PYTHONPATH), or save a state_dict instead"
            ) from None
        if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
            obj = obj["model"]
        if isinstance(obj, nn.Module):
            return LoadedModel(obj.eval(), "pickle", arch or type(obj).__name__)
    except (RuntimeError, EOFError, OSError) as e:
        raise ImportRefused(f"{path.name} is not a PyTorch file torch.load can read ({e})") from None

    state_dict = _unwrap_state_dict(obj)
    if not arch:
        raise ImportRefused(
            f"{path.name} holds only weights (a state_dict); name the architecture they belong to "
            "with --arch, e.g. --arch resnet18 (see --list-archs)"
        )
    if arch not in classification_archs():
        raise ImportRefused(f"unknown architecture {arch!r}; --list-archs shows the ones available")
    num_classes = _classes_in(state_dict, build_arch(arch, 1000))
    module = build_arch(arch, num_classes)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ImportRefused(
            f"the weights do not fit torchvision's {arch} with {num_classes} classes "
            f"(a changed classifier?). Save the whole model with --trust-pickle, or TorchScript.\n{e}"
        ) from None
    return LoadedModel(module.eval(), "state_dict", arch)


class Packaged(nn.Module):
    """uint8 pixels in, probabilities out: the stored model carries its own preprocessing."""

    def __init__(self, model: nn.Module, prep: Preprocessing, apply_softmax: bool) -> None:
        super().__init__()
        self.model = model
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.apply_softmax = apply_softmax

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() * self.scale + self.shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(self.normalize(pixels))
        return torch.softmax(out, dim=1) if self.apply_softmax else out


def outputs_are_probabilities(model: nn.Module, sample: torch.Tensor) -> bool:
    """True when the model already ends in softmax; logits and log-softmax both need one."""
    with torch.inference_mode():
        out = model(sample)
    return bool((out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3))


def export_onnx(packaged: Packaged, crop: int, destination: Path) -> None:
    example = torch.zeros(1, 3, crop, crop, dtype=torch.uint8)
    buffer = io.BytesIO()
    # A loaded TorchScript model cannot be traced from a Python wrapper; script the wrapper.
    scripted = isinstance(packaged.model, torch.jit.ScriptModule)
    torch.onnx.export(
        torch.jit.script(packaged) if scripted else packaged,
        (example,),
        buffer,
        dynamo=False,  # the TorchScript-based exporter: takes TorchScript models as well
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=config.ONNX_OPSET,
    )
    destination.write_bytes(buffer.getvalue())


def check_parity(packaged: Packaged, onnx_path: Path, inputs: np.ndarray) -> dict:
    """Run torch and ONNX Runtime on the same uint8 inputs; refuse unless they agree."""
    with torch.inference_mode():
        expected = packaged(torch.from_numpy(inputs)).numpy()
    session = open_session(str(onnx_path))
    got = run(session, inputs)
    single = np.concatenate([run(session, x[None]) for x in inputs])
    max_diff = float(max(np.abs(got - expected).max(), np.abs(single - expected).max()))
    top1_agree = bool((got.argmax(1) == expected.argmax(1)).all() and (single.argmax(1) == expected.argmax(1)).all())
    result = {"inputs": len(inputs), "max_prob_diff": max_diff, "top1_agree": top1_agree}
    if not top1_agree or max_diff > config.PARITY_MAX_PROB_DIFF:
        raise ImportRefused(
            f"the exported ONNX model does not answer like the torch model (top-1 agrees: {top1_agree}, "
            f"largest probability difference {max_diff:.2e}, allowed {config.PARITY_MAX_PROB_DIFF:.0e}); "
            "nothing was stored"
        )
    return result
