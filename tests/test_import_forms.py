"""Every form a researcher saves a model in, imported and served by a real `bentoml serve`: the served
answers agree with torch running the model's own transforms on real photos the import never saw.

The models are small, with seeded weights and a head scaled so that their answers depend on the photo
(each test checks that they do, so that agreement means something).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

from imgserve import config
from imgserve.testing import running
from tests.helpers import DATA, ROOT, imported_tag, run_import, sensitive
from tests.researcher_code import At128, Digits, Net, resnet18_with_new_head

pytestmark = pytest.mark.model  # each test imports a real model, in a process of its own

CODE = "tests/researcher_code.py"  # as a user names their own file, relative to where they run the import
IMAGENET = T.Normalize(config.IMAGENET_MEAN, config.IMAGENET_STD)
RESULTS = ROOT / "test-artifacts" / "import-forms.json"


def tutorial_flowers() -> nn.Module:
    """Like the tutorials' flowers model: a torchvision backbone, a new head ending in LogSoftmax."""
    model = torchvision.models.mobilenet_v3_small()
    model.classifier = nn.Sequential(nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 5), nn.LogSoftmax(dim=1))
    return model


def save_state_dict(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def save_whole(model: nn.Module, path: Path) -> None:
    torch.save(model, path)


def save_exported(model: nn.Module, path: Path, shape: tuple[int, ...]) -> None:
    torch.export.save(torch.export.export(model, (torch.randn(*shape),)), path)


@dataclass
class Form:
    file: str
    model: Callable[[T.Compose, bool], nn.Module]  # built from its transforms and gray flag
    save: Callable[[nn.Module, Path], None]
    args: list[str]
    transforms: T.Compose  # the model's own, as the researcher's code has them
    gray: bool = False  # their images are gray: opened as Pillow's "L"
    built: nn.Module | None = field(default=None, repr=False)


FORMS = {
    "own class, state_dict": Form(
        "cells.pth",
        lambda t, g: sensitive(lambda: Net(num_classes=4), t, g, 1),
        save_state_dict,
        ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 4}', "--transforms",
         "Resize(160), CenterCrop(144), ToTensor(), Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])"],
        T.Compose([T.Resize(160), T.CenterCrop(144), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)]),
    ),
    "torchvision with a new head": Form(
        "birds_resnet18.pth",
        lambda t, g: sensitive(lambda: resnet18_with_new_head(5), t, g, 2),
        save_state_dict,
        ["--arch", "tests.researcher_code:resnet18_with_new_head"],
        T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), IMAGENET]),
    ),
    "torch.export .pt2": Form(
        "insects.pt2",
        lambda t, g: sensitive(lambda: Net(num_classes=3), t, g, 3),
        lambda m, p: save_exported(m, p, (1, 3, 96, 96)),
        ["--transforms", "Resize((96, 96)), ToTensor()"],
        T.Compose([T.Resize((96, 96)), T.ToTensor()]),
    ),
    "gray 28 px, log-softmax": Form(
        "digits.pth",
        lambda t, g: sensitive(Digits, t, g, 4),
        save_state_dict,
        ["--arch", f"{CODE}:Digits", "--transforms",
         "Resize(28), CenterCrop(28), ToTensor(), Normalize((0.1307,), (0.3081,))"],
        T.Compose([T.Resize(28), T.CenterCrop(28), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]),
        gray=True,
    ),
    "trained at 128 px": Form(
        "plankton.pth",
        lambda t, g: sensitive(At128, t, g, 5),
        save_state_dict,
        ["--arch", f"{CODE}:At128", "--resize", "128", "--crop", "128", "--mean", "0.5", "--std", "0.5"],
        T.Compose([T.Resize(128), T.CenterCrop(128), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
    ),
    "tutorial whole pickle": Form(
        "flowers.pth",
        lambda t, g: sensitive(tutorial_flowers, t, g, 6),
        save_whole,
        ["--trust-pickle", "--transforms", "Resize((224, 224)), ToTensor()"],
        T.Compose([T.Resize((224, 224)), T.ToTensor()]),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def imported(tmp_path_factory, real_photos) -> dict[str, dict]:
    """Each form saved as its file and imported as a user would; tag, metadata and import time."""
    tmp = tmp_path_factory.mktemp("forms")
    out = {}
    for i, (name, form) in enumerate(FORMS.items()):
        form.built = form.model(form.transforms, form.gray)
        path = tmp / form.file
        form.save(form.built, path)
        started = time.monotonic()
        result = run_import(path, *form.args, "--photos", real_photos, "--name", f"form-{i}")
        seconds = time.monotonic() - started
        tag = imported_tag(result)
        out[name] = {"tag": tag, "seconds": seconds, "log": result.stderr, **bentoml.models.get(tag).info.metadata}
    RESULTS.parent.mkdir(exist_ok=True)
    summary = {n: {"seconds": round(v["seconds"], 1), **v["faithfulness"]} for n, v in out.items()}
    RESULTS.write_text(json.dumps(summary, indent=1))
    return out


def reference(form: Form, photo: Path) -> np.ndarray:
    """The researcher's own path: their transforms on the photo decoded in full, their torch model."""
    img = Image.open(photo).convert("L" if form.gray else "RGB")
    with torch.inference_mode():
        out = form.built(form.transforms(img)[None])
    return torch.softmax(out, dim=1)[0].numpy()  # softmax of log-softmax is the model's own probability


@pytest.fixture(scope="module", params=list(FORMS))
def served(request, imported, tmp_path_factory) -> Iterator[tuple[Form, dict, object]]:
    entry = imported[request.param]
    with running(entry["tag"], tmp_path_factory.mktemp("logs")) as server:
        yield FORMS[request.param], entry, server


@pytest.mark.serve
def test_the_served_answers_agree_with_torch_running_the_models_own_transforms(served, real_photos):
    form, entry, server = served
    photos = sorted(real_photos.glob("*.jpg")) + sorted(DATA.glob("*.jpg"))
    labels = entry["labels"]
    with server.client() as c:
        r = c.post(
            "/classify",
            files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos],
            data={"top_k": str(len(labels))},
        )
    assert r.status_code == 200, r.text
    expected = np.stack([reference(form, p) for p in photos])
    got = np.stack([[{p["label"]: p["score"] for p in a["predictions"]}[label] for label in labels] for a in r.json()])
    # A model that answers alike for every photo, or hesitates everywhere, would make agreement vacuous.
    confident = min(0.5, 2 / len(labels))  # a median top-1 probability of twice chance or more
    assert len(set(expected.argmax(1))) >= 2 and np.median(expected.max(1)) >= confident, expected.max(1)
    assert (got.argmax(1) == expected.argmax(1)).all(), [
        photos[i].name for i in np.where(got.argmax(1) != expected.argmax(1))[0]
    ]
    assert np.abs(got - expected).max() <= config.FAITHFUL_MAX_PROB_DIFF
    assert {a["model"] for a in r.json()} == {entry["tag"]}


def test_each_form_is_stored_with_what_the_import_measured_and_said(imported, real_photos):
    for name, entry in imported.items():
        photos = len(list(real_photos.glob("*.jpg"))) + len(list(DATA.glob("*.jpg")))
        assert entry["faithfulness"]["photos"] == photos, name
        assert entry["faithfulness"]["top1_agreement"] >= config.FAITHFUL_MIN_TOP1_AGREEMENT, name
        assert entry["transforms"] in entry["log"], name  # the summary states the stored preprocessing
        assert "Warning" not in entry["log"], (name, entry["log"])  # no torch chatter reaches the user


def test_channels_and_size_are_read_from_the_file(imported):
    digits, pt2 = imported["gray 28 px, log-softmax"], imported["torch.export .pt2"]
    assert digits["input"] == {"channels": 1, "height": 28, "width": 28}
    assert digits["sources"]["channels"] == "read from the weights (first layer)"
    assert digits["transforms"].startswith("Grayscale(), Resize(28), CenterCrop(28)")
    assert pt2["input"] == {"channels": 3, "height": 96, "width": 96}
    assert pt2["source_format"] == "exported" and "read from the .pt2" in pt2["sources"]["size"]
    at128 = imported["trained at 128 px"]
    assert at128["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # one --mean value for every channel
