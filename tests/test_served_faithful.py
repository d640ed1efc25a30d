"""The promise end to end: a model's served answers agree with torch running its own transforms, for the
transform lists and the image files researchers have.

Small models whose answers follow the photo are imported with transform lists as researchers write them
(NEAREST and a non-square squeeze, BICUBIC and a crop, a crop padding the photo, v2 resizing the tensor, a
gray model made gray by Grayscale(), an MNIST-style model of inverted photos), served together by one real
`bentoml serve`, and sent real photos in the forms uploads take: palette GIF and PNG, gray JPEG to a colour
model, CMYK JPEG, 1-bit PNG, a 10 x 10 thumbnail, a panorama, a tall strip, a transparent PNG, a 16-bit PNG
and a phone photo stored sideways. The reference is torchvision running the researcher's own list on
`Image.open(path).convert(...)`; for the last three, where the server decodes differently on purpose
(README, "Import your own model", step 8), on what the server says it does: transparent areas on white,
16 bits scaled to 8, the EXIF orientation applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2

from imgserve import config
from imgserve.testing import Server, running
from tests.helpers import imported_tag, run_import, sensitive
from tests.researcher_code import Digits, Net

pytestmark = [pytest.mark.model, pytest.mark.serve]

CODE = "tests/researcher_code.py"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
DECIDED = 0.05  # a top-1 this far ahead of the runner-up must be the served top-1 too


@dataclass
class Form:
    """A model as a researcher has it: its class, its transform list as text and as torchvision objects."""

    build: Callable[[], nn.Module]
    arch: list[str]
    text: str
    transforms: Callable
    mode: str = "RGB"  # how their code opens a photo
    # The largest probability difference allowed: measured at most 0.006 (README), the import's gate 0.1.
    tolerance: float = 0.02
    built: nn.Module | None = field(default=None, repr=False)


FORMS = {
    "nearest-squeeze": Form(
        lambda: Net(num_classes=3),
        ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 3}'],
        "Resize((60, 90), interpolation=InterpolationMode.NEAREST), ToTensor(), Normalize((0.5,), (0.5,))",
        T.Compose([T.Resize((60, 90), interpolation=InterpolationMode.NEAREST), T.ToTensor(),
                   T.Normalize((0.5,), (0.5,))]),
        tolerance=1e-4,  # NEAREST picks pixels of the full decode, as torchvision does: the same input exactly
    ),
    "bicubic-crop": Form(
        lambda: Net(num_classes=4),
        ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 4}'],
        f"Resize(72, interpolation=InterpolationMode.BICUBIC), CenterCrop(64), ToTensor(), Normalize{IMAGENET}",
        T.Compose([T.Resize(72, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(64), T.ToTensor(),
                   T.Normalize(*IMAGENET)]),
    ),
    "padded-to-32": Form(  # LeNet-style: 28 px photos padded with black to the 32 the model takes
        lambda: Net(num_classes=3),
        ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 3}'],
        "Resize(28), CenterCrop(32), ToTensor(), Normalize((0.5,), (0.5,))",
        T.Compose([T.Resize(28), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.5,), (0.5,))]),
    ),
    "v2-tensor-resize": Form(
        lambda: Net(num_classes=3),
        ["--arch", f"{CODE}:Net", "--arch-kwargs", '{"num_classes": 3}'],
        f"v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((80, 80)), "
        f"v2.Normalize{IMAGENET}])",
        v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((80, 80)),
                    v2.Normalize(*IMAGENET)]),
    ),
    "gray-digits": Form(
        Digits,
        ["--arch", f"{CODE}:Digits"],
        "Grayscale(), Resize(28), CenterCrop(28), ToTensor(), Normalize((0.1307,), (0.3081,))",
        T.Compose([T.Grayscale(), T.Resize(28), T.CenterCrop(28), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]),
    ),
    "inverted-digits": Form(  # imported with the list the refusal of their RandomInvert(p=1.0) gives
        Digits,
        ["--arch", f"{CODE}:Digits"],
        "Resize(28), CenterCrop(28), ToTensor(), Normalize((0.8693,), (-0.3081,))",
        T.Compose([T.RandomInvert(p=1.0), T.Resize(28), T.CenterCrop(28), T.ToTensor(),
                   T.Normalize((0.1307,), (0.3081,))]),  # their own list
        mode="L",
    ),
}  # fmt: skip


def _save(img: Image.Image, path: Path, **options) -> Path:
    img.save(path, **options)
    return path


def _photos(folder: Path) -> dict[str, tuple[Path, Callable[[Image.Image], Image.Image]]]:
    """Real photos in the forms uploads take; each with what the server is documented to make of the file
    before the transforms (the identity but for transparency, 16 bits and EXIF orientation)."""
    astronaut, chelsea = Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea())
    coffee, camera = Image.fromarray(skimage.data.coffee()), Image.fromarray(skimage.data.camera())
    same = lambda img: img  # noqa: E731
    rgba = np.array(chelsea.convert("RGBA"))
    rgba[:, : rgba.shape[1] // 3, 3] = 0  # a cut-out: the left third transparent, black under it
    rgba[:, : rgba.shape[1] // 3, :3] = 0
    rgba[:, rgba.shape[1] // 3 : rgba.shape[1] // 2, 3] = 128
    sideways = Image.Exif()
    sideways[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored as a phone held upright saves it
    on_white = lambda img: Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))  # noqa: E731
    return {
        "rgb.jpg": (_save(astronaut, folder / "rgb.jpg", quality=90), same),
        "palette.gif": (_save(chelsea.convert("P", palette=Image.Palette.ADAPTIVE), folder / "palette.gif"), same),
        "palette.png": (_save(coffee.convert("P", palette=Image.Palette.ADAPTIVE), folder / "palette.png"), same),
        "gray.jpg": (_save(camera, folder / "gray.jpg", quality=90), same),
        "cmyk.jpg": (_save(coffee.convert("CMYK"), folder / "cmyk.jpg", quality=90), same),
        "bilevel.png": (_save(camera.convert("1"), folder / "bilevel.png"), same),
        "thumb10.png": (_save(chelsea.resize((10, 10), Image.Resampling.LANCZOS), folder / "thumb10.png"), same),
        "panorama.jpg": (_save(astronaut.resize((3000, 160)), folder / "panorama.jpg", quality=90), same),
        "strip.jpg": (_save(coffee.resize((70, 1400)), folder / "strip.jpg", quality=90), same),
        "cutout.png": (_save(Image.fromarray(rgba), folder / "cutout.png"), on_white),
        "deep16.png": (
            _save(Image.fromarray(skimage.data.camera().astype(np.uint16) * 257), folder / "deep16.png"),
            lambda img: Image.fromarray((np.asarray(img, np.uint32) * 255 // 65535).astype(np.uint8)),
        ),
        "sideways.jpg": (
            _save(chelsea.transpose(Image.Transpose.ROTATE_90), folder / "sideways.jpg", exif=sideways, quality=90),
            ImageOps.exif_transpose,
        ),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, tuple[Path, Callable[[Image.Image], Image.Image]]]:
    return _photos(tmp_path_factory.mktemp("upload-forms"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, real_photos) -> Iterator[tuple[Server, dict[str, str]]]:
    """Every form imported as a user would (its own list, the import's check on real photos), one server."""
    tmp = tmp_path_factory.mktemp("faithful-models")
    tags = {}
    for i, (name, form) in enumerate(FORMS.items()):
        form.built = sensitive(form.build, form.transforms, form.mode == "L", 10 + i)
        torch.save(form.built.state_dict(), tmp / f"{name}.pth")
        result = run_import(tmp / f"{name}.pth", *form.arch, "--transforms", form.text, "--photos", real_photos,
                            "--name", name)  # fmt: skip
        tags[name] = imported_tag(result)
    env = {"CLASSIFIER_MAX_LATENCY_MS": "120000"}
    with running(list(tags.values()), tmp_path_factory.mktemp("logs"), env) as s:
        yield s, tags


def reference(form: Form, photo: Image.Image) -> np.ndarray:
    assert form.built is not None
    with torch.inference_mode():
        out = form.built(form.transforms(photo.convert(form.mode))[None])
    return torch.softmax(out, dim=1)[0].numpy()  # softmax of log-softmax is the model's own probability


@pytest.mark.parametrize("name", list(FORMS))
def test_served_answers_agree_with_torch_on_every_kind_of_upload(server, photos, name):
    s, tags = server
    form = FORMS[name]
    with s.client() as c:
        r = c.post(
            "/classify",
            files=[("images", (f, path.read_bytes(), "application/octet-stream")) for f, (path, _) in photos.items()],
            data={"top_k": "10", "model": name},
        )
    assert r.status_code == 200, r.text
    labels = [f"class_{i}" for i in range(len(r.json()[0]["predictions"]))]  # no --labels; top_k 10 gives all
    got = np.array([[{p["label"]: p["score"] for p in a["predictions"]}[lb] for lb in labels] for a in r.json()])
    expected = []
    for path, decoded in photos.values():
        with Image.open(path) as img:
            expected.append(reference(form, decoded(img)))
    expected = np.array(expected)
    assert len(set(expected.argmax(1))) >= 2  # the model's answers follow the photo: agreement means something
    names = list(photos)
    apart = {names[i]: float(d) for i, d in enumerate(np.abs(got - expected).max(1)) if d > 0.02}
    same = got.argmax(1) == expected.argmax(1)
    ranked = np.sort(expected, axis=1)
    decided = ranked[:, -1] - ranked[:, -2] > DECIDED  # a near-tie may flip within the tolerance
    assert same[decided].all() and same.mean() >= config.FAITHFUL_MIN_TOP1_AGREEMENT, (same, apart)
    assert np.abs(got - expected).max() <= form.tolerance, apart
    assert {a["model"] for a in r.json()} == {tags[name]}
