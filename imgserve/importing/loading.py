"""The torch side of import, first step: read a model file in whatever form a researcher saved it.

Forms, told apart by their bytes before anything is unpickled:
- a state_dict (or a training checkpoint holding one), built with `--arch`: a torchvision name, or
  the researcher's own class or builder function (`FILE.py:NAME`, `package.module:NAME`);
- a whole pickled model, `torch.save(model)`: only with `--trust-pickle`, since unpickling runs code;
- TorchScript (`torch.jit.save`) and `torch.export` archives (`.pt2`).

Every refusal is an `ImportRefused` whose message says what the file is and what to do. Only
`import_model.py`, the benchmark and the tests import this file; the server never needs torch.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import io
import json
import os
import pickle
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import torch
import torchvision
from torch import nn

PICKLE_REFUSED = (
    "{path} is a whole pickled model (saved with torch.save(model)){classes}. Loading it runs Python "
    "code stored in the file, which can do anything on this machine. If you made this file or trust "
    "its source, run again with --trust-pickle. To avoid the question, save model.state_dict() and "
    "pass --arch, or save a torch.export archive (.pt2)."
)
QUANTIZED_REFUSED = (
    "{path} is a quantized model (torch.ao.quantization: int8 weights with their scales), which the import "
    "cannot rebuild. Import the float model it was made from (its state_dict before "
    "torch.ao.quantization.convert) and add --quantize int8: a quantized copy is stored beside it, checked "
    "against the float one on photos"
)
# The modules of torch's quantized layers, as a pickle names their classes.
QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                     "torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat")  # fmt: skip
# The pickle protocol 2 header of torch.save's legacy (pre-1.6, non-zip) format: its magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
SAFETENSORS_MAX_HEADER = 100_000_000  # the largest header the safetensors format allows, in bytes
SHOWN_KEYS = 4  # key names quoted in a mismatch message; the rest are counted
# torchvision's own pattern for the DenseNet key names it used before 0.3 (models/densenet.py), and
# the BatchNorm counter such files may have gained since.
LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
# How deep a training wrapper's prefix is looked for: 'model.', 'module.model.', 'student.backbone.body.'.
MAX_WRAPPER_DEPTH = 3
# Where a layer's weight is kept, whole, once torch.nn.utils has reparametrized it: as it is, pruned
# (weight_orig, with weight_mask beside it), weight_norm's direction (parametrizations.weight.original1,
# or weight_v before torch 2.1).
REPARAMETRIZED_WEIGHTS = ("weight", "weight_orig", "parametrizations.weight.original1", "weight_v")
TORCHSCRIPT_ERROR = "The following operation failed in the TorchScript interpreter"  # its errors' first line
# The ops a torch.jit.trace records with the mode the model ran in, fixed in the graph: the position of
# their `train` (dropout) or `training` (batch_norm) argument.
TRACED_MODE = {"aten::dropout": 2, "aten::dropout_": 2, "aten::feature_dropout": 2, "aten::feature_dropout_": 2,
               "aten::alpha_dropout": 2, "aten::feature_alpha_dropout": 2, "aten::batch_norm": 5}  # fmt: skip


class ImportRefused(Exception):
    """The model cannot be imported as asked; the message tells the user what to do."""


@dataclass
class LoadedModel:
    module: nn.Module
    source_format: str  # "state_dict", "safetensors", "pickle", "torchscript" or "exported" (.pt2)
    arch: str
    # (channels, height, width) when the file itself fixes the input (a .pt2's signature)
    input_shape: tuple[int, int, int] | None = None
    one_image_per_call: bool = False  # a .pt2 exported with a fixed batch of 1
    notes: list[str] = field(default_factory=list)
    # Class names the training script saved with the model (ImageFolder's class_to_idx...), and where
    labels: list[str] | None = None
    labels_from: str = ""


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's deprecation chatter (TorchScript, the legacy ONNX exporter, the tracer) says nothing a user
    can act on. Only torch's own calls run inside: what they warn of is torch's, whatever module it names."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("ignore", message=".*constant folding.*", category=UserWarning)
        yield


# --- What a file is, from its bytes.


def file_kind(path: Path) -> str:
    """'torch' (torch.save archive), 'torchscript', 'exported' (.pt2), 'legacy' or 'safetensors'; else ImportRefused."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ImportRefused(f"{path.name} is a damaged zip archive ({e}), not a model torch can read") from None
        if any("/code/__torch__" in n for n in names):
            return "torchscript"
        if any(n.endswith(("/archive_format", "serialized_exported_program.json")) for n in names):
            return "exported"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise ImportRefused(
            f"{path.name} is a zip archive but not one that torch wrote (no data.pkl, TorchScript code "
            "or torch.export program in it)"
        )
    if head == LEGACY_TORCH_MAGIC:
        return "legacy"
    if head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"  # an 8-byte header length, then the header's JSON
    if head[:1] == b"\x80":
        raise ImportRefused(
            f"{path.name} is a plain Python pickle (pickle.dump), not a file saved with torch.save; "
            "save the model's weights with torch.save(model.state_dict(), path)"
        )
    raise ImportRefused(
        f"{path.name} is not a PyTorch model file: it is none of torch.save's formats, TorchScript, a "
        ".pt2 archive or safetensors (corrupt, truncated, or another kind of file)"
    )


def unsafe_globals(source: Path | bytes) -> list[str]:
    """Classes and functions a torch.save pickle would import to load: empty for plain tensors."""
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    except Exception as e:  # torch reads the pickle's opcodes only; any failure means a damaged file
        name = "an entry of the archive" if isinstance(source, bytes) else source.name
        raise ImportRefused(f"{name} is damaged: torch cannot read its pickle ({e})") from None


# --- The architecture a state_dict belongs to: torchvision's, or the researcher's own code.


def classification_archs() -> list[str]:
    """torchvision's classification models, plus the EfficientNet-Lite family of the default model."""
    lite = [f"efficientnet-lite{i}" for i in range(5)]
    return sorted(torchvision.models.list_models(module=torchvision.models)) + lite


def build_arch(arch: str, **kwargs: object) -> nn.Module:
    with quiet_torch():
        if arch.startswith("efficientnet-lite"):
            from efficientnet_lite_pytorch import EfficientNet

            return EfficientNet.from_name(arch, **kwargs)
        return torchvision.models.get_model(arch, weights=None, **kwargs)


def is_code_arch(arch: str) -> bool:
    """`FILE.py:NAME` or `package.module:NAME`: the researcher's own code, run only when named."""
    return ":" in arch


def check_arch(arch: str) -> None:
    """--arch as spelled, and its file, checked before any model is loaded."""
    if not is_code_arch(arch):
        if arch.endswith(".py") or "/" in arch:
            raise ImportRefused(
                f"--arch {arch!r}: write FILE.py:NAME or package.module:NAME (NAME a class or function)"
            )
        if arch not in classification_archs():
            raise ImportRefused(
                f"unknown architecture {arch!r}; --list-archs shows torchvision's, or pass FILE.py:NAME"
            )
        return
    target, _, name = arch.rpartition(":")
    if not target or not name.isidentifier():
        raise ImportRefused(f"--arch {arch!r}: write FILE.py:NAME or package.module:NAME (NAME a class or function)")
    if target.endswith(".py") and not Path(target).is_file():
        raise ImportRefused(f"--arch {arch!r}: no such file: {target}")


def import_code(arch: str) -> types.ModuleType:
    """Run the researcher's module (their explicit choice) and return it."""
    target = arch.rpartition(":")[0]
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # a pickle that names the module finds it too
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(target)
    except ImportRefused:
        raise
    except Exception as e:  # their code: whatever it raises is reported, not a traceback of ours
        raise ImportRefused(f"--arch {arch}: running {target} failed: {type(e).__name__}: {e}") from None


def build_code_arch(arch: str, kwargs: dict) -> nn.Module:
    name = arch.rpartition(":")[2]
    module = import_code(arch)
    builder = getattr(module, name, None)
    if not callable(builder):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module))
        raise ImportRefused(f"--arch {arch}: {name} is not defined there (nn.Module classes found: {found or 'none'})")
    try:
        with quiet_torch():
            model = builder(**kwargs)
    except Exception as e:
        hint = "" if kwargs else "; pass its arguments as JSON with --arch-kwargs '{\"num_classes\": 10}'"
        raise ImportRefused(
            f"--arch {arch}: calling {name}(**{kwargs}) failed: {type(e).__name__}: {e}{hint}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ImportRefused(f"--arch {arch}: {name}(...) returned {type(model).__name__}, not a torch nn.Module")
    return model


# --- Loading each form.


@contextlib.contextmanager
def code_importable(arch: str | None) -> Iterator[None]:
    """The researcher's folder on the import path while their model is loaded, as running their own
    script would have it: a FILE.py's folder (its imports of its neighbours work), for package.module
    the folder the import runs in. Taken off again after: nothing lasts past the load."""
    target = arch.rpartition(":")[0] if arch and is_code_arch(arch) else ""
    folder = str(Path(target).resolve().parent) if target.endswith(".py") else os.getcwd() if target else ""
    if not folder or folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def load_model(
    path: Path, arch: str | None = None, trust_pickle: bool = False, arch_kwargs: dict | None = None
) -> LoadedModel:
    """Load a model file in any of the forms above; refuse with a message that says what to do."""
    with code_importable(arch):
        return in_float32(_load_model(path, arch, trust_pickle, arch_kwargs))


def in_float32(loaded: LoadedModel) -> LoadedModel:
    """A model saved in half precision (`model.half()`, bfloat16) runs in float32, as the server's
    input is: the same answers to within rounding, and on a CPU half precision is no faster."""
    tensors = [*loaded.module.parameters(), *loaded.module.buffers()]
    saved = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"})
    if saved:
        loaded.module = loaded.module.float()
        loaded.notes.append(f"its weights were saved in {', '.join(saved)}: run in float32")
    return loaded


def _load_model(path: Path, arch: str | None, trust_pickle: bool, arch_kwargs: dict | None) -> LoadedModel:
    kind = file_kind(path)
    with quiet_torch():
        if kind == "torchscript":
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                raise ImportRefused(f"{path.name} is a damaged TorchScript archive ({e})") from None
            if training := traced_in_training(module.inlined_graph):
                raise ImportRefused(
                    f"{path.name} was traced in training mode: its {' and '.join(training)} run as in training "
                    "(dropout at random, batch norm on each batch's own statistics), and a trace keeps that "
                    "whatever .eval() says later. Trace it again after model.eval(): model.eval(), then "
                    "torch.jit.trace(model, example).save(...)"
                )
            return LoadedModel(module.eval(), "torchscript", arch or "torchscript")
        if kind == "exported":
            return _load_exported(path, trust_pickle)
        if kind == "safetensors":  # weights only, and no pickle to scan
            weights = unwrap_state_dict(read_safetensors(path), path)
            loaded = _build_from_state_dict(path, weights, arch, arch_kwargs or {})
            loaded.source_format = "safetensors"
            return loaded
        classes = unsafe_globals(path) if kind == "torch" else []
        if classes:
            return _load_pickle(path, classes, arch, trust_pickle)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # the legacy format, read without a scan first: a pickled model
            return _load_pickle(path, [], arch, trust_pickle)
        except Exception as e:
            raise ImportRefused(f"{path.name} is damaged: torch.load cannot read it ({e})") from None
    notes = []
    if not arch and isinstance(obj, dict) and obj.get("arch") in classification_archs():
        arch = obj["arch"]  # pytorch/examples' ImageNet script saves {"arch": "resnet18", "state_dict": ...}
        notes.append(f"the architecture, {arch}, is the one the checkpoint names ('arch')")
    loaded = _build_from_state_dict(path, unwrap_state_dict(obj, path), arch, arch_kwargs or {})
    loaded.notes[:0] = notes
    return with_saved_labels(loaded, obj)


def traced_in_training(graph: torch.Graph) -> list[str]:
    """The layers a trace recorded in training mode (model.eval() not called before torch.jit.trace):
    their mode is a constant in the graph. A scripted model reads self.training instead: never listed."""
    found = set()
    nodes = list(graph.nodes())
    while nodes:
        node = nodes.pop()
        nodes += [n for block in node.blocks() for n in block.nodes()]
        position = TRACED_MODE.get(node.kind())
        if position is not None and position < len(list(node.inputs())):
            flag = node.inputsAt(position)
            if flag.node().kind() == "prim::Constant" and flag.toIValue() is True:
                found.add("batch norm" if "batch_norm" in node.kind() else "dropout")
    return sorted(found)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportRefused(f"{path.name} is a damaged safetensors file ({e})") from None


LABEL_KEYS = ("class_to_idx", "idx_to_class", "classes", "class_names", "labels")


def with_saved_labels(loaded: LoadedModel, saved: object) -> LoadedModel:
    """The class names a training script kept beside the weights, when it kept them: ImageFolder's
    `class_to_idx` in the checkpoint or set on the model (`model.class_to_idx = data.class_to_idx`),
    an `idx_to_class`, or a list of `classes`."""
    places = [("the checkpoint", saved)] if isinstance(saved, dict) else []
    places.append(("the model", vars(loaded.module)))
    for where, mapping in places:
        for key in LABEL_KEYS:
            labels = _as_labels(mapping.get(key))
            if labels:
                loaded.labels, loaded.labels_from = labels, f"from {where}'s {key!r}"
                return loaded
    return loaded


def _as_labels(value: object) -> list[str] | None:
    """Class names in output order from {name: index}, {index: name} or [name, ...]; else None."""
    if isinstance(value, dict) and value:
        items = list(value.items())
        if all(isinstance(k, str) and isinstance(v, int) for k, v in items):
            by_index = {v: k for k, v in items}
        elif all(isinstance(k, int | str) and str(k).isdigit() and isinstance(v, str) for k, v in items):
            by_index = {int(k): v for k, v in items}  # {0: "daisy"}, or {"0": "daisy"} as JSON gives it back
        else:
            return None
        return [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(items))) else None
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _load_pickle(path: Path, classes: list[str], arch: str | None, trust_pickle: bool) -> LoadedModel:
    if any(c.startswith(QUANTIZED_MODULES) for c in classes):  # unusable whatever the trust: said first
        raise ImportRefused(QUANTIZED_REFUSED.format(path=path.name))
    if not trust_pickle:
        shown = ", ".join(c for c in classes if not c.startswith("torch."))[:200]
        raise ImportRefused(PICKLE_REFUSED.format(path=path.name, classes=f" of {shown}" if shown else ""))
    data = path.read_bytes()  # before any code of yours runs: a training script could write the file anew
    code = import_code(arch) if arch and is_code_arch(arch) else None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_pickle_module(code))
    except (AttributeError, ModuleNotFoundError) as e:
        where = "the script that saved it" if "__main__" in str(e) else "a module that cannot be imported here"
        raise ImportRefused(
            f"unpickling needs the code that defined the model ({e}): it was defined in {where}. "
            "Pass the file that defines the class, e.g. --arch mynet.py:Net (with --trust-pickle), or run "
            "from the folder where its module can be imported. Naming a file runs it whole: if the class is in "
            "your training script, copy the class alone into a file of its own and name that"
        ) from None
    except Exception as e:  # code from the file ran and failed
        raise ImportRefused(f"unpickling {path.name} failed: {type(e).__name__}: {e}") from None
    saved = obj
    for key in CHECKPOINT_KEYS:  # a checkpoint dict holding the whole model
        if isinstance(obj, dict) and isinstance(obj.get(key), nn.Module):
            obj = obj[key]
            break
    notes = []
    if isinstance(obj, nn.DataParallel | nn.parallel.DistributedDataParallel):
        # Saved wrapped for several GPUs: the wrapper insists on them (saved on a GPU machine, it refuses
        # to run on the CPU); the model is the one inside, as model.module gives it.
        notes.append(f"the model inside its {type(obj).__name__} wrapper (model.module)")
        obj = obj.module
    if isinstance(obj, nn.Module):
        return with_saved_labels(LoadedModel(obj.eval(), "pickle", type(obj).__name__, notes=notes), saved)
    if isinstance(obj, torch.jit.ScriptModule):
        return LoadedModel(obj.eval(), "torchscript", "torchscript")
    raise ImportRefused(f"{path.name} holds a {type(obj).__name__}, not a model or a state_dict")


def _pickle_module(code: types.ModuleType | None) -> types.ModuleType:
    """pickle, where a class saved from a training script (`__main__.Net`) is found in `code`."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module == "__main__" and code is not None and hasattr(code, name):
                return getattr(code, name)
            return super().find_class(module, name)

    shim = types.ModuleType("pickle")
    shim.Unpickler = Unpickler  # type: ignore[attr-defined]
    shim.load = pickle.load  # type: ignore[attr-defined]
    return shim


def _pickled_members(z: zipfile.ZipFile) -> list[str]:
    """Members of a .pt2 that torch.export.load unpickles: sample inputs and saved tensors (`*.pt`), and
    weights or constants its configs mark `use_pickle`. The other weights are raw bytes."""
    names = z.namelist()
    found = [n for n in names if n.endswith((".pt", ".pkl"))]
    for config in (n for n in names if n.endswith("_config.json")):
        try:
            entries = json.loads(z.read(config)).get("config", {}).values()
        except (ValueError, AttributeError):
            raise ImportRefused(f"the .pt2 archive's {config} is damaged") from None
        folder = config.rpartition("/")[0]
        found += [f"{folder}/{e['path_name']}" for e in entries if isinstance(e, dict) and e.get("use_pickle")]
    return found


def _load_exported(path: Path, trust_pickle: bool) -> LoadedModel:
    """A torch.export archive: its graph is data, but its weights or constants may be pickles."""
    classes: set[str] = set()
    with zipfile.ZipFile(path) as z:
        for name in _pickled_members(z):
            data = z.read(name)
            # torch.save's zip format can be scanned without running it; any other pickle cannot.
            classes |= set(unsafe_globals(data)) if data[:2] == b"PK" else {f"an unscanned pickle ({name})"}
    if classes and not trust_pickle:
        held = ", ".join(sorted(classes))[:200]
        raise ImportRefused(PICKLE_REFUSED.format(path=path.name, classes=f" holding {held}"))
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ImportRefused(f"{path.name} is a damaged torch.export archive ({type(e).__name__}: {e})") from None
    inputs = [
        s for s in program.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    if len(inputs) != 1:
        raise ImportRefused(f"{path.name} takes {len(inputs)} inputs; an image classifier takes one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name)
    shape = tuple(node.meta["val"].shape)
    if len(shape) != 4:
        raise ImportRefused(f"{path.name} takes an input of shape {list(shape)}, not an image batch (N, C, H, W)")
    fixed = [d for d in shape[1:] if isinstance(d, int)]  # a dynamic dimension is a symbol, not an int
    input_shape = (fixed[0], fixed[1], fixed[2]) if len(fixed) == 3 else None
    module = program.module()
    loaded = LoadedModel(module, "exported", "torch.export", input_shape, one_image_per_call=isinstance(shape[0], int))
    if loaded.one_image_per_call and shape[0] != 1:
        raise ImportRefused(
            f"{path.name} was exported for batches of exactly {shape[0]} images; export it with a batch of 1 "
            "or a dynamic batch (dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
        )
    if loaded.one_image_per_call:
        loaded.notes.append("exported with a fixed batch of 1: served one image per model call")
    return loaded


# --- A state_dict: unwrapped, its architecture built, its weights fitted with a diagnosis.


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


def _is_state_dict(obj: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:SHOWN_KEYS]}"
    return f"a {type(obj).__name__}"


def _build_from_state_dict(path: Path, state_dict: dict, arch: str | None, kwargs: dict) -> LoadedModel:
    if not arch:
        guess = closest_archs(state_dict)
        hint = f"; they look like torchvision's {guess[0]}" + (f" ({guess[1]})" if guess[1] else "") if guess else ""
        raise ImportRefused(
            f"{path.name} holds only weights (a state_dict){hint}. Name the architecture they belong to with "
            "--arch: a torchvision name (--arch resnet18, see --list-archs), or the code that builds your model "
            "(--arch mynet.py:Net, with --arch-kwargs for its arguments)"
        )
    if is_code_arch(arch):
        module = build_code_arch(arch, kwargs)
        state_dict, notes = under_wrapper(state_dict, module.state_dict().keys())
        fit_state_dict(module, state_dict, arch, kwargs)
        return LoadedModel(module.eval(), "state_dict", arch, notes=notes)
    check_arch(arch)
    kwargs, notes = as_fine_tuned(arch, state_dict, kwargs)
    reference = build_arch(arch, **kwargs)
    state_dict, unwrapped = under_wrapper(state_dict, reference.state_dict().keys())
    notes += unwrapped
    head = classifier_key(reference.state_dict())
    if "num_classes" not in kwargs and head in state_dict:
        kwargs = {**kwargs, "num_classes": int(state_dict[head].shape[0])}
    module = build_arch(arch, **kwargs) if kwargs else reference
    notes += fit_stem_channels(module, state_dict)
    fit_state_dict(module, state_dict, arch, kwargs)
    return LoadedModel(module.eval(), "state_dict", arch, notes=notes)


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


def first_conv(module: nn.Module) -> tuple[str, nn.Conv2d | None]:
    """The model's first convolution and its name, as the class declares its modules ("", None: none)."""
    return next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), ("", None))


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


# --- What the model takes: channels and size, read from the weights where they say.


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


INPUT_SIZES_TRIED = (224, 256, 299, 384, 128, 96, 64, 32, 28)  # common training sizes, probed on refusal


@dataclass
class Refusal:
    """Why the model would not be served at a size: it failed on the input, or it ran (`ran`) and
    returned something other than one row of class scores per image."""

    message: str
    ran: bool = False


def probe(module: nn.Module, channels: int, size: tuple[int, int]) -> Refusal | None:
    """None if the model runs on a (1, channels, *size) input and gives one row of scores, else why not."""
    try:
        with torch.inference_mode(), quiet_torch():
            out = module(torch.zeros(1, channels, *size))
    except Exception as e:  # any failure in the model's own code means: not this input
        return Refusal(error_line(e))
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 1:
        return None
    return Refusal(_not_one_row(out, type(module).__name__), ran=True)


def error_line(e: Exception) -> str:
    """What an error says, in one line: its first, or for TorchScript the last (the error itself, after
    the stack of the code that was traced or scripted)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith(TORCHSCRIPT_ERROR):
        lines = lines[-1:]
    return (lines or [type(e).__name__])[0][:300]


def _not_one_row(out: object, model_class: str) -> str:
    """What the model returned instead of (1, classes), and the change to its forward that serves it."""
    subclass = (
        f"write a subclass in your model file, e.g.\n    class Scores({model_class}):\n        def forward(self, x):\n"
        "            return super().forward(x){pick}\nand pass --arch yourfile.py:Scores (the weights are the same)"
    )
    if isinstance(out, tuple | list):
        what, fix = f"a {type(out).__name__} of {len(out)} values", subclass.format(pick="[0]  # the class scores")
    elif isinstance(out, dict):
        what, fix = f"a dict with keys {sorted(map(str, out))[:SHOWN_KEYS]}", subclass.format(pick='["logits"]')
    elif isinstance(out, torch.Tensor) and out.ndim == 1:
        what, fix = f"a tensor of shape {list(out.shape)}", "keep the batch dimension: x.flatten(1), not x.squeeze()"
    elif isinstance(out, torch.Tensor):
        what, fix = f"a tensor of shape {list(out.shape)}", "return (batch, classes): e.g. x.flatten(1) at the end"
    else:
        what, fix = f"a {type(out).__name__}", subclass.format(pick=".logits")
    return (
        f"for one image the model returns {what}; the server needs one row of class scores per image, a "
        f"tensor of shape (1, classes). To serve it, {fix}"
    )


def accepted_sizes(module: nn.Module, channels: int) -> list[int]:
    return [s for s in INPUT_SIZES_TRIED if probe(module, channels, (s, s)) is None]


def parse_arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ImportRefused(f"--arch-kwargs is not JSON ({e}); write e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise ImportRefused("--arch-kwargs must be a JSON object of keyword arguments, e.g. '{\"num_classes\": 10}'")
    return value
