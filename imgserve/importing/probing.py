"""What a model takes, asked of the model itself: its input channels (and a flattened MLP's size) from
its first layer, whether it runs at a size, and the sizes it does run at, for the refusal that names
them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from imgserve import config
from imgserve.importing.messages import SHOWN_KEYS, ImportRefused, error_line, quiet_torch

# Where a layer's weight is kept, whole, once torch.nn.utils has reparametrized it: as it is, pruned
# (weight_orig, with weight_mask beside it), weight_norm's direction (parametrizations.weight.original1,
# or weight_v before torch 2.1).
REPARAMETRIZED_WEIGHTS = ("weight", "weight_orig", "parametrizations.weight.original1", "weight_v")


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d | None]:
    """The model's first convolution and its name, as the class declares its modules ("", None: none)."""
    return next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), ("", None))


def first_layer_input(module: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """(channels, size) the model's weights imply. Its first convolution gives the channels (wherever
    the class declares it: a head declared first is not the first layer); a model with no convolution
    whose first Linear layer takes a square gray or RGB image, flattened, gives both (an MLP on 28 x 28
    digits), as a guess that --crop or --transforms overrides. The layers' own sizes when they are torch's
    layers (a pruned or weight-normed layer keeps its weight under another name); TorchScript's, from
    their parameters."""
    _, conv = first_conv(module)
    if conv is not None:
        return conv.in_channels, None
    weights = [p for name, p in module.named_parameters() if name.endswith(REPARAMETRIZED_WEIGHTS)]
    convs = [p for p in weights if p.ndim == 4]
    if convs:
        return int(convs[0].shape[1]), None
    linear = next((p for p in weights if p.ndim == 2), None)
    if linear is None:
        return None, None
    n = int(linear.shape[1])
    for channels in (1, 3):
        side = round((n / channels) ** 0.5)
        if side * side * channels == n and side >= 8:
            return channels, (side, side)
    return None, None


class NamedLogits(nn.Module):
    """The `logits` field of what the model returns: torchvision's GoogLeNet and Inception outputs (which
    a scripted one returns even in eval mode, its auxiliary outputs None), Hugging Face's outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class KeyedLogits(NamedLogits):
    """The `"logits"` entry of the dict the model returns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["logits"]


class FlatScores(NamedLogits):
    """Class scores of shape (batch, classes, 1, 1), as a convolution for a head gives them (SqueezeNet's
    layout without its flatten), as the rows they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flatten(1)


class PerImageScore(NamedLogits):
    """A binary classifier's one score per image, its class dimension squeezed away (`.squeeze(1)` or
    `.squeeze()` at the end of forward, as BCE training writes it), as a column: one output per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(-1, 1)


def with_class_scores(module: nn.Module, channels: int, size: tuple[int, int]) -> tuple[nn.Module, str | None]:
    """The model, or, when it returns its class scores named `logits` among other outputs, the model
    answering with those, as the researcher's code reads them (`model(x).logits`), and a note saying so;
    likewise a binary classifier's one score per image, squeezed to shape (batch,), and a convolution's
    scores of shape (batch, classes, 1, 1)."""
    try:
        with torch.inference_mode(), quiet_torch():
            out = module(torch.zeros(1, channels, *size))
            # Scores only: class numbers (argmax) of these shapes are refused by probe(), with what to return.
            scores = isinstance(out, torch.Tensor) and out.is_floating_point()
            if scores and out.ndim == 4 and out.shape[0] == 1 and out.shape[2:] == (1, 1):
                return FlatScores(module), (
                    f"it returns shape (batch, {out.shape[1]}, 1, 1), a convolution's class scores: served as the "
                    f"rows (batch, {out.shape[1]}) they are"
                )
            if scores and out.numel() == 1 and out.ndim <= 1:  # (batch,) or (classes,)?
                pair = module(torch.zeros(2, channels, *size))
                if isinstance(pair, torch.Tensor) and pair.shape == (2,):
                    return PerImageScore(module), (
                        "it returns one score per image, shape (batch,) (squeezed): a binary classifier's one output"
                    )
    except Exception:  # not this size or not a batch: probe() and the export say why
        return module, None
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return KeyedLogits(module), "it returns a dict: its 'logits' are the class scores served"
    if not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
        return NamedLogits(module), f"it returns a {type(out).__name__}: its .logits are the class scores served"
    return module, None


RANDOM_AT_INFERENCE = (
    "the model answers differently each time it sees the same image (largest difference {diff:.2g}): its forward "
    "is random in eval mode, so your own code's answers vary from run to run too. Usually it is dropout called as "
    "F.dropout(x, p), whose training=True is the default: write F.dropout(x, p, training=self.training) or use "
    "nn.Dropout, then import again (a TorchScript or .pt2 file saved again after that change)"
)


def check_deterministic(module: nn.Module, inputs: torch.Tensor) -> None:
    """Refuse a model that answers the same input differently on a second run: no export or server can
    answer as it does, and the parity check would blame the export."""
    with torch.inference_mode(), quiet_torch():
        first, second = module(inputs[:1]), module(inputs[:1])
    diff = float((first - second).abs().max())
    if diff > 1e-5:
        raise ImportRefused(RANDOM_AT_INFERENCE.format(diff=diff))


# Photos of one colour, as uploads have them (a dark frame, an overexposed one, a blank scan), in uint8.
UNIFORM_PHOTOS = {"all black": 0, "all white": 255, "all mid-grey": 128}


def check_finite(packaged: nn.Module, channels: int, size: tuple[int, int], photos: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose probabilities are not numbers (NaN, infinite) on a photo: the server would
    answer that photo with no probabilities at all. `packaged` takes uint8 pixels; `photos`, the
    parity check's, are tried beside photos of one colour, where dividing by the photo's own spread
    (x / x.std()) or a log of 0 gives NaN."""
    tried = dict(photos)
    tried.update({name: torch.full((1, channels, *size), v, dtype=torch.uint8) for name, v in UNIFORM_PHOTOS.items()})
    with torch.inference_mode(), quiet_torch():
        bad = [name for name, pixels in tried.items() if not bool(torch.isfinite(packaged(pixels)).all())]
    if bad:
        raise ImportRefused(
            f"the model's answer is not a number (NaN or infinite) for {', '.join(bad[:SHOWN_KEYS])}: your code "
            "gets that too, and the server would answer such a photo with no probabilities. Usually the forward "
            "divides by the photo's own spread, x / x.std() (0 for a photo of one colour), or takes a log of 0: "
            "add a small epsilon, x / (x.std() + 1e-6), torch.log(x + 1e-6), and import again (a TorchScript or "
            ".pt2 file saved again after that change)"
        )


def is_scripted(module: nn.Module) -> bool:
    """A TorchScript model, alone or inside the wrapper that takes its logits: scripted, not traced, on export."""
    return isinstance(module.model if isinstance(module, NamedLogits) else module, torch.jit.ScriptModule)


def built_for(module: nn.Module) -> tuple[str, int] | None:
    """(class, side) when the model is one of torchvision's built for another input side than 224
    (config.ARCH_INPUT_SIDE; a VisionTransformer, its image_size), whatever form it came in or head it was given."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torchvision.") and cls.__name__ in config.ARCH_INPUT_SIDE:
            return cls.__name__, config.ARCH_INPUT_SIDE[cls.__name__]
        if cls.__module__.startswith("torchvision.") and cls.__name__ == "VisionTransformer":
            side = getattr(module, "image_size", None)  # built for it: its position embedding's size
            return (cls.__name__, side) if isinstance(side, int) and side != config.DEFAULT_CROP else None
    return None


INPUT_SIZES_TRIED = (224, 256, 299, 384, 128, 96, 64, 32, 28)  # common training sizes, probed on refusal
MAX_FIXED_BATCH, FIXED_BATCHES_TRIED = 512, 4  # a batch a forward may fix, and how many of those are tried


@dataclass
class Refusal:
    """Why the model would not be served at a size: it failed on the input, or it ran (`ran`) and
    returned something other than one row of class scores per image."""

    message: str
    ran: bool = False


# How a subclass that returns the class scores is imported, by the form the model came in: a pickle
# names its own class, TorchScript and .pt2 files hold their code.
USE_SUBCLASS = {
    "state_dict": "and pass --arch yourfile.py:Scores (the weights are the same)",
    "safetensors": "and pass --arch yourfile.py:Scores (the weights are the same)",
    "pickle": "then save the model's weights, torch.save(model.state_dict(), 'weights.pth'), and import those with "
    "--arch yourfile.py:Scores",
    "torchscript": "build Scores with the same weights (model.state_dict()), and script or trace it and save it again",
    "exported": "build Scores with the same weights (model.state_dict()), and export it and save it again",
}


def probe(module: nn.Module, channels: int, size: tuple[int, int], form: str = "state_dict") -> Refusal | None:
    """None if the model runs on a (1, channels, *size) input and gives one row of scores, else why not;
    `form`, the file's (LoadedModel.source_format), says how a changed model is imported."""
    try:
        with torch.inference_mode(), quiet_torch():
            out = module(torch.zeros(1, channels, *size))
    except Exception as e:  # any failure in the model's own code means: not this input
        return Refusal(error_line(e))
    if _is_row(out):
        return None
    name = getattr(module, "original_name", type(module).__name__)  # a TorchScript model: its class, as written
    return Refusal(_not_one_row(out, name, form), ran=True)


def _not_one_row(out: object, model_class: str, form: str) -> str:
    """What the model returned instead of (1, classes), and the change to its forward that serves it."""
    subclass = (
        f"write a subclass in your model file, e.g.\n    class Scores({model_class}):\n        def forward(self, x):\n"
        "            return super().forward(x){pick}\n" + USE_SUBCLASS.get(form, USE_SUBCLASS["state_dict"])
    )
    if isinstance(out, tuple | list):
        what = f"a {type(out).__name__} of {len(out)} values ({_shapes(enumerate(out))})"
        fix = subclass.format(pick=_scores_pick(enumerate(out)))
    elif isinstance(out, dict):
        what = f"a dict with keys {sorted(map(str, out))[:SHOWN_KEYS]} ({_shapes(out.items())})"
        fix = subclass.format(pick=_scores_pick(out.items()))
    elif isinstance(out, torch.Tensor) and not out.is_floating_point():
        what = (
            f"{out.dtype} values of shape {list(out.shape)}, class numbers or decisions (as argmax gives), not scores"
        )
        fix = (
            "return the class scores that come before them (the logits, before argmax: the server adds the softmax "
            "and answers with every class's probability)"
        )
    elif isinstance(out, torch.Tensor) and out.ndim == 1:
        what, fix = f"a tensor of shape {list(out.shape)}", "keep the batch dimension: x.flatten(1), not x.squeeze()"
    elif isinstance(out, torch.Tensor) and out.ndim >= 3:  # a score per class and position (a map)
        what = f"a tensor of shape {list(out.shape)}, scores at each position of the image, not one row"
        fix = (
            "return (batch, classes) as your code makes them of this, e.g. x.mean((2, 3)) to average over the "
            "positions (x.flatten(1) would make each position's score a class of its own)"
        )
    elif isinstance(out, torch.Tensor):
        what, fix = f"a tensor of shape {list(out.shape)}", "return (batch, classes): e.g. x.flatten(1) at the end"
    else:
        what, fix = f"a {type(out).__name__}", subclass.format(pick=".logits")
    return (
        f"for one image the model returns {what}; the server needs one row of class scores per image, a "
        f"tensor of shape (1, classes). To serve it, {fix}"
    )


def _is_row(value: object) -> bool:
    """One row of scores for one image: a float tensor of shape (1, n)."""
    return isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == 1 and value.is_floating_point()


def _shapes(items: Iterable[tuple[object, object]]) -> str:
    return ", ".join(
        f"[{k!r}]: " + (f"shape {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in items
    )


def _scores_pick(items: Iterable[tuple[object, object]]) -> str:
    """The subscript that takes the class scores out of what the model returned: the element that is one
    row per image, the first of several (each named, to choose the one the code reads)."""
    rows = [(k, v) for k, v in items if isinstance(v, torch.Tensor) and _is_row(v)]
    if not rows:
        return "[0]  # the class scores: the element your code reads them from"
    (key, value), others = rows[0], rows[1:]
    also = f"; {', '.join(f'[{k!r}]' for k, _ in others)} too: pick the one your code reads" if others else ""
    return f"[{key!r}]  # the class scores, shape {list(value.shape)}{also}"


def fixed_batch(module: nn.Module, channels: int, size: tuple[int, int], error: str) -> int | None:
    """The batch size a model runs at when it refuses one image: its forward fixes the batch
    (`x.view(32, -1)`, a trace of a 32-image example through `int(x.shape[0])`). Tried only at the
    numbers the refusal names ('mat1 and mat2 shapes cannot be multiplied (8x1922 and 15376x3)')."""
    numbers = dict.fromkeys(int(n) for n in re.findall(r"\d+", error))
    for n in [n for n in numbers if 2 <= n <= MAX_FIXED_BATCH][:FIXED_BATCHES_TRIED]:
        try:
            with torch.inference_mode(), quiet_torch():
                out = module(torch.zeros(n, channels, *size))
        except Exception:  # not this batch either
            continue
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == n:
            return n
    return None


def accepted_sizes(module: nn.Module, channels: int) -> list[int]:
    return [s for s in INPUT_SIZES_TRIED if probe(module, channels, (s, s)) is None]
