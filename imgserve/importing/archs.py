"""What builds the model a state_dict belongs to (`--arch`): a torchvision classifier by name, or the
researcher's own class or builder function (`FILE.py:NAME`, `package.module:NAME`), which runs their
code: only when they name it."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torchvision
from torch import nn

from imgserve.importing.messages import ImportRefused, quiet_torch


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
        if arch in classification_archs():
            return
        spelt = torchvision_spelling(arch)
        timm = arch.startswith("timm/") or "." in arch.removeprefix("torchvision.models.")  # resnet50.a1_in1k
        if spelt and not timm:
            raise ImportRefused(f"unknown architecture {arch!r}: --arch spells it {spelt}; pass --arch {spelt}")
        if arch.endswith(".py") or ("/" in arch and not timm):
            raise ImportRefused(
                f"--arch {arch!r}: write FILE.py:NAME or package.module:NAME (NAME a class or function)"
            )
        name = arch.removeprefix("timm/")
        also = f" If the weights are in torchvision's layout, --arch {spelt} builds torchvision's." if spelt else ""
        raise ImportRefused(
            f"unknown architecture {arch!r}: not one of torchvision's (--list-archs). A timm model, or any other, is "
            "built by code of yours: a file build.py with\n    import timm\n\n    def build():\n"
            f"        return timm.create_model({name!r}, num_classes=...)  # as your training script built it\n"
            f"and pass --arch build.py:build (with timm installed where the import runs).{also}"
        )
    target, _, name = arch.rpartition(":")
    if not target or not name.isidentifier():
        raise ImportRefused(f"--arch {arch!r}: write FILE.py:NAME or package.module:NAME (NAME a class or function)")
    if target.endswith(".py") and not Path(target).is_file():
        raise ImportRefused(f"--arch {arch!r}: no such file: {target}")


def torchvision_spelling(arch: str) -> str | None:
    """The name --arch takes that `arch` spells otherwise: ResNet18, resnet-18, torchvision.models.resnet18,
    EfficientNet-Lite0; or that a timm name with its pretrained tag shares (resnet50.a1_in1k)."""

    def key(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    name = arch.removeprefix("torchvision.models.").removeprefix("timm/").partition(".")[0]
    return next((known for known in classification_archs() if key(known) == key(name)), None)


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
