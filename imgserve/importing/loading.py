"""The torch side of import, first step: read a model file in whatever form a researcher saved it.

Forms, told apart by their bytes before anything is unpickled:
- a state_dict (or a training checkpoint holding one), built with `--arch`: a torchvision name, or
  the researcher's own class or builder function (`FILE.py:NAME`, `package.module:NAME`);
- a whole pickled model, `torch.save(model)`: only with `--trust-pickle`, since unpickling runs code;
- TorchScript (`torch.jit.save`) and `torch.export` archives (`.pt2`).

Every refusal is an `ImportRefused` (messages.py) whose message says what the file is and what to
do. A state_dict's model is built by archs.py and its weights fitted by state_dicts.py. Only
`import_model.py`, the benchmark and the tests import the importing package; the server never needs torch.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import pickletools
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from imgserve.importing import formats
from imgserve.importing.archs import (
    build_arch,
    build_code_arch,
    check_arch,
    classification_archs,
    code_importable,
    import_code,
    is_code_arch,
)
from imgserve.importing.messages import SHOWN_KEYS, ImportRefused, quiet_torch
from imgserve.importing.state_dicts import (
    CHECKPOINT_KEYS,
    QUANTIZED_REFUSED,
    as_fine_tuned,
    classifier_key,
    closest_archs,
    fit_state_dict,
    fit_stem_channels,
    left_beside,
    under_wrapper,
    unwrap_state_dict,
)

PICKLE_REFUSED = (
    "{path} is a whole pickled model (saved with torch.save(model)){classes}. Loading it runs Python "
    "code stored in the file, which can do anything on this machine. If you made this file or trust "
    "its source, run again with --trust-pickle. To avoid the question, save model.state_dict() and "
    "pass --arch, or save a torch.export archive (.pt2)."
)
CHECKPOINT_PICKLE_REFUSED = (
    "{path} is a training checkpoint (a dict) holding Python objects of {classes} (a whole model, or objects "
    "of your code beside its weights). Loading them runs code named in the file, which can do anything on this "
    "machine. If you made this file or trust its source, run again with --trust-pickle; or, where it loads, "
    "save the weights alone, e.g. torch.save(model.state_dict(), 'weights.pth'), and import that with --arch."
)
# The modules of torch's quantized layers, as a pickle names their classes.
QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized",
                     "torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat")  # fmt: skip
HALF_TYPES = (torch.float16, torch.bfloat16)
# The ops a torch.jit.trace or a torch.export records with the mode the model ran in, fixed in the graph:
# the position of their `train` (dropout) or `training` (batch norm) argument. Batch norm's running_mean
# is its argument 3.
RECORDED_MODE = {"aten::dropout": 2, "aten::dropout_": 2, "aten::feature_dropout": 2, "aten::feature_dropout_": 2,
                 "aten::alpha_dropout": 2, "aten::feature_alpha_dropout": 2, "aten::native_dropout": 2,
                 "aten::batch_norm": 5, "aten::native_batch_norm": 5, "aten::_native_batch_norm_legit": 5,
                 "aten::_native_batch_norm_legit_functional": 5}  # fmt: skip
# How each form records a training-mode layer, and how to save it again in eval mode.
RECORDED = {
    "traced": (
        "a trace",
        "Trace it again after model.eval(): model.eval(), then torch.jit.trace(model, example).save(...)",
    ),
    "exported": (
        "an exported program",
        "Export it again after model.eval(): model.eval(), then "
        "torch.export.save(torch.export.export(model, (example,)), ...)",
    ),
}


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


def data_globals() -> list[object | tuple[object, str]]:
    """What training scripts keep beside the weights as plain data: their command-line arguments
    (timm's and DeiT's `'args': args`, an argparse.Namespace), paths (saved on Windows too), numpy
    numbers and arrays (a best accuracy from scikit-learn, class names). Rebuilding them runs no code
    of the file's, so torch's weights-only loader may build them (torch's own advice for numpy); a
    checkpoint holding them needs no --trust-pickle. Also under the names that numpy 1.x and Python
    3.13 pickle them by."""
    import argparse
    import pathlib

    import numpy as np

    multiarray = importlib.import_module("numpy._core.multiarray")  # where numpy 2 pickles its arrays from
    # Each path as its pure flavour, which any system builds: a WindowsPath saved on Windows cannot be
    # instantiated here ("cannot instantiate 'WindowsPath' on your system"), and nothing reads the disk.
    paths = {"PurePosixPath": pathlib.PurePosixPath, "PureWindowsPath": pathlib.PureWindowsPath,
             "PosixPath": pathlib.PurePosixPath, "WindowsPath": pathlib.PureWindowsPath}  # fmt: skip
    return [
        argparse.Namespace,
        *((c, f"{module}.{name}") for name, c in paths.items() for module in ("pathlib", "pathlib._local")),
        np.dtype,
        np.ndarray,
        *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
        multiarray.scalar,
        multiarray._reconstruct,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]


def data_global_names() -> set[str]:
    """The names a pickle gives the classes of data_globals()."""
    return {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in data_globals()}  # type: ignore[attr-defined]


def unsafe_globals(source: Path | bytes) -> list[str]:
    """Classes and functions a torch.save pickle would import to load: empty for plain tensors and the
    plain data of data_globals()."""
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except Exception as e:  # torch reads the pickle's opcodes only; any failure means a damaged file
        name = "an entry of the archive" if isinstance(source, bytes) else source.name
        raise ImportRefused(f"{name} is damaged: torch cannot read its pickle ({e})") from None
    return sorted(set(found) - data_global_names())


def holds_a_dict(path: Path) -> bool:
    """Whether a torch.save archive's object is a dict (a training checkpoint), read from its pickle's
    first opcode without unpickling: a whole model starts with its class instead."""
    try:
        with zipfile.ZipFile(path) as z:
            pickled = next(n for n in z.namelist() if n.endswith("data.pkl"))
            ops = pickletools.genops(z.read(pickled))
            first = next(op for op, _, _ in ops if op.name != "PROTO")
    except Exception:  # damaged: torch.load says so next
        return False
    return first.name == "EMPTY_DICT"


# --- Loading each form.


def load_model(
    path: Path, arch: str | None = None, trust_pickle: bool = False, arch_kwargs: dict | None = None
) -> LoadedModel:
    """Load a model file in any of the forms above; refuse with a message that says what to do."""
    with code_importable(arch):
        return on_the_cpu(in_float32(_load_model(path, arch, trust_pickle, arch_kwargs)))


def on_the_cpu(loaded: LoadedModel) -> LoadedModel:
    """A model that keeps the GPU it was trained on as an attribute (`self.device = torch.device("cuda")`,
    its forward then `x.to(self.device)`) runs on the CPU, where map_location put its weights: the
    attribute is set to the CPU, as the researcher's code would set it on a machine without a GPU."""
    moved = []
    for name, module in loaded.module.named_modules():
        for attribute, value in list(vars(module).items()):
            if isinstance(value, torch.device) and value.type != "cpu":
                setattr(module, attribute, torch.device("cpu"))
                moved.append(f"{name}.{attribute} ({value})" if name else f"{attribute} ({value})")
    if moved:
        loaded.notes.append(f"the model's {', '.join(moved[:SHOWN_KEYS])}: set to the CPU, where it is served")
    return loaded


def in_float32(loaded: LoadedModel) -> LoadedModel:
    """A model saved in half precision (`model.half()`, bfloat16) runs in float32, as the server's
    input is: the same answers to within rounding, and on a CPU half precision is no faster."""
    tensors = [*loaded.module.parameters(), *loaded.module.buffers(), *_graph_constants(loaded.module)]
    saved = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"})
    if saved:
        loaded.module = loaded.module.float()
        for node in _graph_constants(loaded.module, nodes=True):
            node.t_("value", node.t("value").float())
        loaded.notes.append(f"its weights were saved in {', '.join(saved)}: run in float32")
    return loaded


def _graph_constants(module: nn.Module, nodes: bool = False) -> list:
    """The half-precision tensors a TorchScript model keeps in its graphs, which .float() does not reach: all
    its weights once frozen (torch.jit.freeze), a trace's tensors made in forward; their nodes, with `nodes`.
    (A float64 constant in a float32 model is a scalar of its code, left as it is.)"""
    found = []
    for scripted in (m for m in module.modules() if isinstance(m, torch.jit.ScriptModule)):
        graph = getattr(scripted, "graph", None)  # forward's; a class's methods are shared by its instances
        for node in graph.findAllNodes("prim::Constant") if graph is not None else []:
            if node.hasAttribute("value") and node.kindOf("value") == "t" and node.t("value").dtype in HALF_TYPES:
                found.append(node if nodes else node.t("value"))
    return found


def _load_model(path: Path, arch: str | None, trust_pickle: bool, arch_kwargs: dict | None) -> LoadedModel:
    kind = formats.file_kind(path)
    with quiet_torch():
        if kind == "torchscript":
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                if formats.holds_mkldnn_constants(path):
                    raise ImportRefused(
                        f"{path.name} was saved after torch.jit.optimize_for_inference: its weights became MKL-DNN "
                        "tensors, which torch.jit.save does not store, so no one can load the file. Save the model "
                        "before that step, torch.jit.script(model).save(...) (or torch.jit.freeze's result), and "
                        "import that"
                    ) from None
                raise ImportRefused(f"{path.name} is a damaged TorchScript archive ({e})") from None
            if training := traced_in_training(module.inlined_graph):
                raise recorded_in_training(path, "traced", training)
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
            obj = _unpickle(path, classes, arch, trust_pickle)
        else:
            try:
                with torch.serialization.safe_globals(data_globals()):
                    obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:  # the legacy format, read without a scan first: a pickled model
                obj = _unpickle(path, [], arch, trust_pickle)
            except Exception as e:
                raise ImportRefused(f"{path.name} is damaged: torch.load cannot read it ({e})") from None
    whole = _whole_model(path, obj)
    if whole is not None:
        whole.notes += left_beside(obj)
        return whole
    notes = left_beside(obj)
    if not arch and isinstance(obj, dict) and obj.get("arch") in classification_archs():
        arch = obj["arch"]  # pytorch/examples' ImageNet script saves {"arch": "resnet18", "state_dict": ...}
        notes.append(f"the architecture, {arch}, is the one the checkpoint names ('arch')")
    loaded = _build_from_state_dict(path, unwrap_state_dict(obj, path), arch, arch_kwargs or {})
    loaded.notes[:0] = notes
    return with_saved_labels(loaded, obj)


def traced_in_training(graph: torch.Graph) -> list[str]:
    """The layers a trace recorded in training mode (model.eval() not called before torch.jit.trace):
    their mode is a constant in the graph. A scripted model reads self.training instead: never listed."""
    found: set[str | None] = set()
    nodes = list(graph.nodes())
    while nodes:
        node = nodes.pop()
        nodes += [n for block in node.blocks() for n in block.nodes()]
        if node.kind() in RECORDED_MODE:
            args = [i.toIValue() if i.node().kind() == "prim::Constant" else i for i in node.inputs()]
            found.add(_in_training(node.kind(), args))
    return sorted(layer for layer in found if layer)


def exported_in_training(program: torch.export.ExportedProgram) -> list[str]:
    """The layers a torch.export recorded in training mode (model.eval() not called before it): as in a
    trace, their mode is an argument of the graph's op, and the exported module refuses .eval()."""
    found: set[str | None] = set()
    for graph in (m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)):
        for node in graph.nodes:
            schema = getattr(node.target, "_schema", None)
            if node.op == "call_function" and schema is not None and schema.name in RECORDED_MODE:
                named = [node.kwargs.get(a.name, a.name) for a in schema.arguments[len(node.args) :]]
                found.add(_in_training(schema.name, [*node.args, *named]))
    return sorted(layer for layer in found if layer)


def recorded_in_training(path: Path, done: str, layers: list[str]) -> ImportRefused:
    """The refusal of a trace or an exported program that recorded `layers` in training mode."""
    kept, again = RECORDED[done]
    run = " and ".join(layers) + (" run" if len(layers) > 1 else " runs")
    return ImportRefused(
        f"{path.name} was {done} in training mode: its {run} as in training (dropout at random, batch norm on "
        f"each batch's own statistics), and {kept} keeps that whatever .eval() says later. {again}"
    )


def _in_training(op: str, args: list[object]) -> str | None:
    """'dropout' or 'batch norm' when the op's recorded mode is training; batch norm without running
    statistics (track_running_stats=False) uses the batch's own in eval mode too: not listed."""
    position = RECORDED_MODE[op]
    if position >= len(args) or args[position] is not True:
        return None
    if "batch_norm" in op:
        return "batch norm" if args[3] is not None else None
    return "dropout"


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
    an `idx_to_class`, or a list of `classes`; in a Lightning checkpoint, among its `hyper_parameters`
    (a LightningModule's `save_hyperparameters()` of a `classes` argument)."""
    places = [("the checkpoint's {!r}", saved)] if isinstance(saved, dict) else []
    if isinstance(saved, dict) and isinstance(saved.get("hyper_parameters"), dict):
        places.append(("the checkpoint's hyper_parameters[{!r}]", saved["hyper_parameters"]))
    places.append(("the model's {!r}", vars(loaded.module)))
    for where, mapping in places:
        for key in LABEL_KEYS:
            labels = _as_labels(mapping.get(key))
            if labels:
                loaded.labels, loaded.labels_from = labels, "from " + where.format(key)
                return loaded
    return loaded


def _as_labels(value: object) -> list[str] | None:
    """Class names in output order from {name: index}, {index: name} or [name, ...] (a numpy array of
    them too); else None."""
    if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:  # np.array(class_names)
        value = value.tolist()
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


def _unpickle(path: Path, classes: list[str], arch: str | None, trust_pickle: bool) -> object:
    """What the file holds, unpickled with its code: only with --trust-pickle."""
    if any(c.startswith(QUANTIZED_MODULES) for c in classes):  # unusable whatever the trust: said first
        raise ImportRefused(QUANTIZED_REFUSED.format(path=path.name))
    if not trust_pickle:
        shown = ", ".join(c for c in classes if not c.startswith("torch."))[:200]
        if classes and holds_a_dict(path):
            raise ImportRefused(CHECKPOINT_PICKLE_REFUSED.format(path=path.name, classes=shown or ", ".join(classes)))
        raise ImportRefused(PICKLE_REFUSED.format(path=path.name, classes=f" of {shown}" if shown else ""))
    data = path.read_bytes()  # before any code of yours runs: a training script could write the file anew
    code = import_code(arch) if arch and is_code_arch(arch) else None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_pickle_module(code))
    except (AttributeError, ModuleNotFoundError) as e:
        where = "the script that saved it" if "__main__" in str(e) else "a module that cannot be imported here"
        if holds_a_dict(path):
            raise ImportRefused(
                f"unpickling {path.name}, a training checkpoint (a dict), needs code defined in {where} ({e}). "
                "Where it loads, save the weights alone, e.g. torch.save(checkpoint['state_dict'], 'weights.pth'), "
                "and import that file; or, if it is the class of a whole model in the checkpoint, pass the file "
                "that defines it (--arch mynet.py:Net, with --trust-pickle)"
            ) from None
        if isinstance(e, ModuleNotFoundError) and e.name and e.name != "__main__":
            top = e.name.partition(".")[0]
            raise ImportRefused(
                f"unpickling needs the module {e.name!r}, which cannot be imported here ({e}). If {top!r} is a "
                f"package (timm, transformers ...), install it where the import runs: pip install {top}. If it is "
                "your own code, run the import from the folder your training ran in, or pass the file that defines "
                "the class, e.g. --arch mynet.py:Net (with --trust-pickle). Naming a file runs it whole: if the "
                "class is in your training script, copy the class alone into a file of its own and name that"
            ) from None
        raise ImportRefused(
            f"unpickling needs the code that defined the model ({e}): it was defined in {where}. "
            "Pass the file that defines the class, e.g. --arch mynet.py:Net (with --trust-pickle), or run "
            "from the folder where its module can be imported. Naming a file runs it whole: if the class is in "
            "your training script, copy the class alone into a file of its own and name that"
        ) from None
    except Exception as e:  # code from the file ran and failed
        raise ImportRefused(f"unpickling {path.name} failed: {type(e).__name__}: {e}") from None


def _whole_model(path: Path, obj: object) -> LoadedModel | None:
    """The model a file holds whole, alone or in a checkpoint dict; None for a dict of weights (a
    checkpoint, whatever else it holds), which is built from them."""
    saved = obj
    for key in CHECKPOINT_KEYS:  # a checkpoint dict holding the whole model
        if isinstance(obj, dict) and isinstance(obj.get(key), nn.Module):
            obj = obj[key]
            break
    if isinstance(obj, dict):
        return None
    notes = []
    while True:
        compiled = getattr(obj, "_orig_mod", None) if type(obj).__name__ == "OptimizedModule" else None
        if isinstance(obj, nn.DataParallel | nn.parallel.DistributedDataParallel):
            # Saved wrapped for several GPUs: the wrapper insists on them (saved on a GPU machine, it refuses
            # to run on the CPU); the model is the one inside, as model.module gives it.
            notes.append(f"the model inside its {type(obj).__name__} wrapper (model.module)")
            obj = obj.module
        elif isinstance(compiled, nn.Module):
            # torch.compile's wrapper compiles the model on its first call (a minute, and a C compiler);
            # what it runs is the model inside, which the ONNX export converts as it is.
            notes.append("the model inside its torch.compile wrapper (model._orig_mod)")
            obj = compiled
        else:
            break
    if isinstance(obj, nn.Module):
        return with_saved_labels(LoadedModel(obj.eval(), "pickle", type(obj).__name__, notes=notes), saved)
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
    if training := exported_in_training(program):
        raise recorded_in_training(path, "exported", training)
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
