"""Fixtures: an isolated model store, the real default model, tiny exact models, real servers.
Plain helpers are in tests/helpers.py; starting and measuring servers in imgserve/testing.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The model store of the test session, isolated from the user's: set before bentoml is imported.
BENTOML_HOME = Path(tempfile.mkdtemp(prefix="imgserve-test-home-"))
os.environ["BENTOML_HOME"] = str(BENTOML_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

from imgserve.importing import cli as import_model  # noqa: E402
from imgserve.testing import Server, running  # noqa: E402
from tests.helpers import EXAMPLE_PHOTOS, SKIMAGE_PHOTOS, import_colour_model  # noqa: E402

# Fixtures that import a real model into the store: a test that uses one, itself or through another
# fixture, is marked `model` (left out of `make test-fast`).
IMPORTING_FIXTURES = {"default_model", "colour_model", "examples_model"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if IMPORTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def default_model() -> str:
    """The real default model (EfficientNet-Lite0, ImageNet) in the test store."""
    assert import_model.main([]) == 0
    import bentoml

    return str(bentoml.models.get(f"{import_model.config.DEFAULT_MODEL_NAME}:latest").tag)


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> str:
    """A tiny TorchScript model with exact answers, imported with [0, 1] inputs."""
    return import_colour_model(tmp_path_factory.mktemp("colour"), "colours", "--title", "Colours")


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> Path:
    """A folder of real photos as JPEGs, the way a camera or a microscope would save them."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in SKIMAGE_PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=90)  # gray stays gray
    return folder


@pytest.fixture(scope="session")
def example_photos(tmp_path_factory) -> Path:
    """A folder of example photos as a researcher would give it: scikit-image's, saved as JPEGs."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("examples")
    for name in EXAMPLE_PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=85)
    return folder


@pytest.fixture(scope="session")
def examples_model(tmp_path_factory, example_photos) -> str:
    """The colour model again, under its own name, imported with its own example photos."""
    description = "Says which colour channel dominates a stained slide."
    extra = ["--title", "Stain colours", "--description", description, "--examples", example_photos]
    return import_colour_model(tmp_path_factory.mktemp("stains"), "stains", *extra)


@pytest.fixture(scope="session")
def server(default_model, tmp_path_factory) -> Iterator[Server]:
    """A real `bentoml serve` of the default model."""
    with running(default_model, tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="session")
def colour_server(colour_model, tmp_path_factory) -> Iterator[Server]:
    with running(colour_model, tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="session")
def two_model_server(default_model, colour_model, tmp_path_factory) -> Iterator[Server]:
    """One `bentoml serve` of two models: EfficientNet-Lite0 (the default, ~8 ms an image) and the
    tiny colour model (microseconds). The latency bound is raised so that tests may queue much
    slow work without being shed."""
    env = {"CLASSIFIER_MAX_LATENCY_MS": "120000"}
    with running([default_model, colour_model], tmp_path_factory.mktemp("logs"), env) as s:
        yield s


@pytest.fixture(scope="session")
def examples_server(examples_model, tmp_path_factory) -> Iterator[Server]:
    """The model with its own examples, served with a temporary folder of its own: as in the image, the
    model store then lies outside both folders Gradio serves files from (cwd and temp). Gradio copies
    the examples into its cache as the page is built, so they show all the same."""
    logs = tmp_path_factory.mktemp("logs")
    (logs / "tmp").mkdir()
    with running(examples_model, logs, env={"TMPDIR": str(logs / "tmp")}) as s:
        yield s
