"""A state_dict as researchers save it, fitted to the model it belongs to: found in a training
checkpoint, under a training wrapper's prefix, with pruned or weight-normed layers folded, old
layouts renamed; and when it does not fit, the way forward (the right torchvision name, the classes
argument, the builder of a changed head or first convolution)."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

import torch
from torch import nn

from imgserve.importing.archs import build_arch, classification_archs, is_code_arch
from imgserve.importing.messages import SHOWN_KEYS, ImportRefused
from imgserve.importing.probing import first_conv

QUANTIZED_REFUSED = (
    "{path} is a quantized model (torch.ao.quantization: int8 weights with their scales), which the import "
    "cannot rebuild. Import the float model it was made from (its state_dict before "
    "torch.ao.quantization.convert) and add --quantize int8: a quantized copy is stored beside it, checked "
    "against the float one on photos"
)
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
# torchvision's own pattern for the DenseNet key names it used before 0.3 (models/densenet.py), and
# the BatchNorm counter such files may have gained since.
LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
# How deep a training wrapper's prefix is looked for: 'model.', 'module.model.', 'student.backbone.body.'.
MAX_WRAPPER_DEPTH = 3


def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict, or one inside a training checkpoint; DataParallel prefixes removed."""
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:  # under a key of its own ('model_state', 'student'): the one set of weights the file holds
            checkpoint: dict = obj
            sets = [k for k, v in checkpoint.items() if _is_state_dict(v)]
            if len(sets) > 1:
                raise ImportRefused(
                    f"{path.name} holds {len(sets)} sets of weights ({', '.join(map(repr, sets[:SHOWN_KEYS]))}): save "
                    f"the one to serve on its own, e.g. torch.save(checkpoint[{sets[0]!r}], 'weights.pth')"
                )
            if sets:
                obj = checkpoint[sets[0]]
            else:  # model.state_dict() with the class names or the epoch added to it: its tensors are the weights
                weights = {
                    k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor) and ("." in str(k) or v.ndim)
                }
                obj = weights if any("." in str(k) for k in weights) else obj
    if isinstance(obj, dict) and any(
        str(k).endswith("_packed_params") or (isinstance(v, torch.Tensor) and v.is_quantized) for k, v in obj.items()
    ):
        raise ImportRefused(QUANTIZED_REFUSED.format(path=path.name))
    if not _is_state_dict(obj):
        raise ImportRefused(
            f"{path.name} holds no model: no state_dict (a mapping of parameter names to tensors) "
            f"and no whole model; found {_describe(obj)}"
        )
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def left_beside(checkpoint: object) -> list[str]:
    """A note naming the other copies of the model a checkpoint holds beside the one imported (an EMA copy:
    'state_dict_ema' beside 'state_dict', 'model_ema' beside 'model'), whose answers differ: a researcher
    who evaluated the EMA learns which one is served, and how to serve the other."""
    if not isinstance(checkpoint, dict):
        return []
    kinds = (nn.Module, dict)
    key = next((k for kind in kinds for k in CHECKPOINT_KEYS if isinstance(checkpoint.get(k), kind)), None)
    if key is None:
        return []
    chosen = checkpoint[key]
    if isinstance(chosen, nn.Module):
        copies = [k for k, v in checkpoint.items() if k != key and isinstance(v, nn.Module)]
    elif _is_state_dict(chosen):
        copies = [k for k, v in checkpoint.items() if k != key and _is_state_dict(v) and _names(v) == _names(chosen)]
    else:
        return []
    if not copies:
        return []
    return [
        f"the model is the checkpoint's {key!r}; left out: {', '.join(map(repr, copies[:SHOWN_KEYS]))}. To "
        f"serve that instead (an EMA copy), save it alone, e.g. torch.save(checkpoint[{copies[0]!r}], 'ema.pth'), "
        "and import that"
    ]


def _names(state_dict: dict) -> set[str]:
    """A state_dict's parameter names, whether saved from the model or from a DataParallel around it."""
    return {str(k).removeprefix("module.") for k in state_dict}


def _is_state_dict(obj: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:SHOWN_KEYS]}"
    return f"a {type(obj).__name__}"


# Architectures that torchvision builds differently from its ImageNet weights, which fine-tuning
# starts from, than from scratch, in ways a state_dict does not record: their auxiliary head's name.
AUX_HEADS = {"inception_v3": "AuxLogits", "googlenet": "aux1"}


def as_fine_tuned(arch: str, state_dict: dict, kwargs: dict) -> tuple[dict, list[str]]:
    """inception_v3 and googlenet as torchvision builds them from its weights: `transform_input=True`
    (the input re-normalised inside the model; nothing in the weights shows it) unless --arch-kwargs
    says otherwise, and the auxiliary head only when the file has its weights."""
    if arch not in AUX_HEADS:
        return kwargs, []
    notes = []
    extra: dict[str, object] = {"init_weights": False}  # the weights are loaded over them
    if "aux_logits" not in kwargs:
        extra["aux_logits"] = any(AUX_HEADS[arch] in k.split(".") for k in state_dict)
    if "transform_input" not in kwargs:
        extra["transform_input"] = True
        notes.append(
            f"{arch} is built with transform_input=True, as torchvision builds it from its ImageNet weights, "
            "which fine-tuning starts from; for a model trained from scratch pass "
            "--arch-kwargs '{\"transform_input\": false}'"
        )
    return {**extra, **kwargs}, notes


def fit_stem_channels(module: nn.Module, state_dict: dict) -> list[str]:
    """A torchvision model whose first convolution takes other channels than RGB (a gray microscopy or
    digits model: `model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)`):
    that convolution rebuilt for the file's channels, everything else about it kept, and said.

    Only when its weights differ in the input channels alone; a changed kernel leaves stride and
    padding unknown, and fit_state_dict then asks for the code that builds the model.
    """
    name, conv = first_conv(module)
    weights = state_dict.get(f"{name}.weight")
    if conv is None or weights is None or weights.ndim != 4 or conv.groups != 1:
        return []
    channels = int(weights.shape[1])
    same_kernel = weights.shape[0] == conv.out_channels and weights.shape[2:] == conv.weight.shape[2:]
    if channels == conv.in_channels or not same_kernel:
        return []
    stem = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent), attr, stem)
    return [
        f"its first convolution, {name}, takes {channels} channel{'s' * (channels != 1)} (from the weights): built "
        f"with torchvision's kernel, stride and padding ({conv.kernel_size}, {conv.stride}, {conv.padding}). If your "
        "code changed those too, give the code that builds the model (--arch FILE.py:build)"
    ]


def under_wrapper(state_dict: dict, expected: Iterable[str]) -> tuple[dict, list[str]]:
    """The model's weights where a training wrapper put them, and a note saying so.

    A LightningModule saves its network's weights as 'model.conv1.weight' (its attribute's name), beside
    whatever else it holds (a loss's class weights, an EMA copy under 'model_ema.'). When the keys do
    not fit as they are but every key of the architecture is there under one prefix, those are the
    weights and the rest is left out. Tried only on a misfit: a model whose own layers all sit under
    one attribute ('net.0.weight') fits as it is. DenseNet weights saved by torchvision before 0.3
    (CheXNet and its kin: 'norm.1' for 'norm1') are renamed as torchvision itself renames them.
    """
    expected = set(required(expected))
    if expected <= state_dict.keys():
        return state_dict, []
    notes = []
    folded = without_reparametrizations(state_dict)
    if folded.keys() != state_dict.keys():
        state_dict = folded
        notes.append(
            "pruned or weight-normed layers (torch.nn.utils.prune, weight_norm) have their weights computed as "
            "torch computes them: weight_orig * weight_mask, g * v / |v|"
        )
        if expected <= state_dict.keys():
            return state_dict, notes
    renamed = {LEGACY_DENSENET.sub(r"\1\2", k): v for k, v in state_dict.items()}
    if renamed.keys() != state_dict.keys():
        state_dict = renamed
        notes.append("DenseNet layer names of torchvision before 0.3 ('norm.1') read as today's ('norm1')")
        if expected <= state_dict.keys():
            return state_dict, notes
    prefixes = dict.fromkeys(
        ".".join(parts[:depth]) + "."
        for parts in (k.split(".") for k in state_dict)
        for depth in range(1, min(len(parts), MAX_WRAPPER_DEPTH + 1))
    )
    for prefix in prefixes:
        inner = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        if set(required(inner)) == expected:
            left = [k for k in state_dict if not k.startswith(prefix)]
            notes.append(f"the weights are those under '{prefix}' in the file (a training wrapper's)")
            if left:
                notes.append(f"left out {len(left)} other tensors of the file ({_keys(left)})")
            return inner, notes
    return state_dict, notes


def without_reparametrizations(state_dict: dict) -> dict:
    """The weights that pruning (`name_orig` and `name_mask`) and weight_norm (`parametrizations.name.original0`
    and `original1`, or `name_g` and `name_v` before torch 2.1) keep in two parts, as the one tensor the
    layer computes from them, under the layer's own name."""
    folded = dict(state_dict)
    for key in state_dict:
        if key.endswith("_orig") and f"{key.removesuffix('_orig')}_mask" in state_dict:
            base = key.removesuffix("_orig")
            folded[base] = state_dict[key] * state_dict[f"{base}_mask"]
            del folded[key], folded[f"{base}_mask"]
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "parametrizations" and parts[-1] == "original0":
            v_key = ".".join([*parts[:-1], "original1"])
            if v_key in state_dict:
                base = ".".join([*parts[:-3], parts[-2]])
                folded[base] = _weight_norm(state_dict[v_key], state_dict[key])
                del folded[key], folded[v_key]
        if key.endswith("_g") and f"{key.removesuffix('_g')}_v" in state_dict:
            base = key.removesuffix("_g")
            folded[base] = _weight_norm(state_dict[f"{base}_v"], state_dict[key])
            del folded[key], folded[f"{base}_v"]
    return folded


def _weight_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g * v / |v|, the norm over every dimension but the one g keeps (weight_norm's `dim`, 0 by default)."""
    kept = [d for d in range(g.ndim) if g.shape[d] != 1]
    dim = kept[0] if len(kept) == 1 else 0 if g.ndim == v.ndim else -1  # -1: one norm over the whole tensor
    return torch._weight_norm(v, g, dim)


def classifier_key(state_dict: dict) -> str:
    """The classifier's weight: the last weight of two or more dimensions ('fc.weight', 'classifier.6.weight')."""
    return [k for k, v in state_dict.items() if k.endswith("weight") and v.ndim >= 2][-1]


def fit_state_dict(module: nn.Module, state_dict: dict, arch: str, kwargs: dict) -> None:
    """Load the weights strictly, or say exactly how they differ from the architecture and what to do."""
    expected = module.state_dict()
    missing = [k for k in required(expected) if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        module.load_state_dict(in_todays_layout(state_dict, expected), strict=True)
        return
    what = f"torchvision's {arch}" if not is_code_arch(arch) else arch
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing from the file ({_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} in the file that {what} has not ({_keys(unexpected)})")
    if wrong:
        shapes = ", ".join(
            f"{k}: file {list(state_dict[k].shape)}, model {list(expected[k].shape)}" for k in wrong[:SHOWN_KEYS]
        )
        problems.append(f"{len(wrong)} of another shape ({shapes})")
    message = f"the weights do not fit {what}{f' with {kwargs}' if kwargs else ''}: " + "; ".join(problems)
    raise ImportRefused(message + ". " + _mismatch_hint(module, state_dict, arch, kwargs, missing, unexpected, wrong))


def in_todays_layout(state_dict: dict, expected: dict) -> dict:
    """The file's weights, whose names and shapes are the module's, as today's torch saves them: with
    the layout versions the module's own state_dict records (MNASNet refuses weights without one; a
    file's are lost when its keys are renamed, and safetensors has none), and BatchNorm's counter filled
    in where torch before 0.4.1 did not save it, as BatchNorm itself does."""
    ordered = collections.OrderedDict(state_dict)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in ordered:
            ordered[key] = torch.tensor(0)
    ordered._metadata = getattr(expected, "_metadata", collections.OrderedDict())  # type: ignore[attr-defined]
    return ordered


def required(keys: Iterable[str]) -> list[str]:
    """The keys a file must have: BatchNorm's `num_batches_tracked` is not one (torch before 0.4.1 did
    not save it, and BatchNorm fills it in on loading)."""
    return [k for k in keys if not k.endswith(".num_batches_tracked")]


def _keys(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _mismatch_hint(module, state_dict, arch, kwargs, missing, unexpected, wrong) -> str:
    """The way forward: the right torchvision name, the classes argument, or a builder for a changed
    head or first convolution."""
    if missing and set(missing) <= {name for name, _ in module.named_buffers()} and not (unexpected or wrong):
        return (
            "The file has the model's parameters but not its buffers (BatchNorm's running_mean and running_var), "
            "which its answers depend on: it was saved from model.named_parameters(); save model.state_dict()"
        )
    head = classifier_key(module.state_dict())
    if wrong and set(wrong) <= {head, head.removesuffix("weight") + "bias"} and not (missing or unexpected):
        classes = int(state_dict[head].shape[0])
        return f"The file has {classes} classes: pass --arch-kwargs '{{\"num_classes\": {classes}}}'"
    if wrong == ["encoder.pos_embedding"] and not (missing or unexpected) and hasattr(module, "patch_size"):
        # torchvision's ViT at another size (fine-tuned at 384 from the SWAG weights): 1 + (side / patch)^2 positions
        side = round((state_dict[wrong[0]].shape[1] - 1) ** 0.5) * module.patch_size
        return f"The file's ViT was built for {side} x {side} images: pass --arch-kwargs '{{\"image_size\": {side}}}'"
    prefixes = {k.split(".")[0] for k in missing + unexpected}
    if not is_code_arch(arch) and prefixes == {head.split(".")[0]} and not wrong:
        [prefix] = prefixes
        shapes = ", ".join(f"{k} {list(state_dict[k].shape)}" for k in unexpected[:SHOWN_KEYS])
        return (
            f"Everything but the classifier fits: the head '{prefix}' was changed (the file has {shapes}). "
            + _builder("head.py", arch, {}, prefix, "...  # your new head")
        )
    stem = first_conv(module)[0]
    if not is_code_arch(arch) and stem and set(wrong) == {f"{stem}.weight"} and not (missing or unexpected):
        out, channels, *kernel = state_dict[f"{stem}.weight"].shape
        bias = f"{stem}.bias" in state_dict
        return (
            f"Everything but the first convolution fits: '{stem}' was changed (the file has {stem}.weight "
            f"{[out, channels, *kernel]}, torchvision's is {list(module.state_dict()[f'{stem}.weight'].shape)}). "
            + _builder(
                "stem.py",
                arch,
                kwargs,
                stem,
                f"nn.Conv2d({channels}, {out}, kernel_size={tuple(kernel)}, stride=..., padding=..., bias={bias})"
                "  # as you trained it",
            )
        )
    guess = closest_archs(state_dict)
    if guess and guess[0] != arch:
        return f"They look like torchvision's {guess[0]}{f' ({guess[1]})' if guess[1] else ''}: try --arch {guess[0]}"
    return "Check --arch (and --arch-kwargs) against the code that trained the model"


def _builder(file: str, arch: str, kwargs: dict, layer: str, value: str) -> str:
    """The file to write when a torchvision model had a layer replaced: build it, replace the layer."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    attribute = re.sub(r"\.(\d+)", r"[\1]", layer)  # features.0.0 -> features[0][0]
    return (
        f"Give the code that builds it, as in your training script: a file {file} with\n"
        f"    import torchvision\n    from torch import nn\n\n    def build():\n"
        f"        model = torchvision.models.{arch}({arguments})\n        model.{attribute} = {value}\n"
        "        return model\n"
        f"and pass --arch {file}:build"
    )


def closest_archs(state_dict: dict) -> tuple[str, str] | None:
    """The torchvision architecture whose weights, all but the classifier, are these: (name, note) or None.

    Each candidate is built on the meta device (shapes, no memory), so all 80 take a few seconds.
    """
    best: tuple[float, str, str] | None = None
    for arch in classification_archs():
        try:
            with torch.device("meta"):
                reference = build_arch(arch).state_dict()
        except Exception:  # a few (RegNet) cannot be built without real tensors; never the answer then
            continue
        head = classifier_key(reference).removesuffix("weight")  # 'fc.', 'classifier.6.'
        body = {k: v.shape for k, v in reference.items() if not k.startswith(head)}
        same = sum(1 for k, shape in body.items() if k in state_dict and state_dict[k].shape == shape)
        extra = sum(1 for k in state_dict if k not in reference and not k.startswith(head))
        score = same / (len(body) + extra) if body else 0.0
        if score >= 0.99 and (best is None or score > best[0]):
            heads = [k for k in state_dict if k.startswith(head)]
            fits = heads and all(k in reference and reference[k].ndim == state_dict[k].ndim for k in heads)
            note = "" if fits else f"with a changed head: {', '.join(heads[:SHOWN_KEYS])}"
            best = (score, arch, note)
    return (best[1], best[2]) if best else None
