"""Shared fixtures: an isolated model store, the real default model, tiny exact models, real servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from torch import nn

# The model store of the test session, isolated from the user's: set before bentoml is imported.
BENTOML_HOME = Path(tempfile.mkdtemp(prefix="imgserve-test-home-"))
os.environ["BENTOML_HOME"] = str(BENTOML_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
PYTHON = sys.executable
BENTOML = str(Path(sys.executable).with_name("bentoml"))
READY_TIMEOUT_S = 60
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
COLOURS = ["red", "green", "blue"]

from imgserve.importing import cli as import_model  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(BENTOML_HOME, ignore_errors=True)


def run_import(*args: str | Path) -> subprocess.CompletedProcess:
    """import_model.py as a user runs it: a separate process, its output captured."""
    return subprocess.run(
        [PYTHON, str(ROOT / "import_model.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def imported_tag(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def default_model() -> str:
    """The real default model (EfficientNet-Lite0, ImageNet) in the test store."""
    assert import_model.main([]) == 0
    import bentoml

    return str(bentoml.models.get(f"{import_model.config.DEFAULT_MODEL_NAME}:latest").tag)


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


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> str:
    """A tiny TorchScript model with exact answers, imported with [0, 1] inputs."""
    return import_colour_model(tmp_path_factory.mktemp("colour"), "colours", "--title", "Colours")


# Real photos that ship with scikit-image, colour and gray, none of them in data/: the held-out set
# of the import's faithfulness check (--photos) and of the tests comparing served answers with torch.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
                  "retina", "camera", "coins", "moon", "clock", "page", "grass", "brick")  # fmt: skip


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> Path:
    """A folder of real photos as JPEGs, the way a camera or a microscope would save them."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in SKIMAGE_PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=90)  # gray stays gray
    return folder


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def metric(self, name: str, model: str | None = None) -> float:
        """Sum of a Prometheus metric over all its label sets, or over those of one served model (its tag)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
        return sum(s.value for s in samples if model is None or s.labels.get("model") == model)


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float, output: Callable[[], str]) -> None:
    """Poll `url` until it answers 200; fail with the process's output if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited {process.returncode}:\n{output()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s} s:\n{output()}")


def serve_env(tags: str | list[str]) -> dict[str, str]:
    """One tag as $CLASSIFIER_MODEL, as single-model users set it; a list as $CLASSIFIER_MODELS."""
    if isinstance(tags, str):
        return {"CLASSIFIER_MODEL": tags, "CLASSIFIER_MODELS": ""}
    return {"CLASSIFIER_MODEL": "", "CLASSIFIER_MODELS": ",".join(tags)}


def start_server(tags: str | list[str], log_dir: Path, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    # Each server its own BENTOML_HOME, the session's model store linked in: `bentoml serve` empties
    # $BENTOML_HOME/prometheus_multiproc_dir as it starts, which froze the /metrics of servers already up.
    home = Path(tempfile.mkdtemp(prefix=f"home-{port}-", dir=log_dir))
    (home / "models").symlink_to(BENTOML_HOME / "models")
    with log.open("w") as out:  # the server writes to its own copy of the file descriptor
        process = subprocess.Popen(
            [BENTOML, "serve", "service:ImageClassifier", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(home), **serve_env(tags), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, workers included
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_ready(f"{server.url}/readyz", process, READY_TIMEOUT_S, lambda: log.read_text()[-3000:])
    except RuntimeError:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@pytest.fixture(scope="session")
def server(default_model, tmp_path_factory) -> Iterator[Server]:
    """A real `bentoml serve` of the default model."""
    s = start_server(default_model, tmp_path_factory.mktemp("logs"))
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def colour_server(colour_model, tmp_path_factory) -> Iterator[Server]:
    s = start_server(colour_model, tmp_path_factory.mktemp("logs"))
    yield s
    stop_server(s)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    except psutil.NoSuchProcess:
        pass
    return total


@pytest.fixture(scope="session")
def two_model_server(default_model, colour_model, tmp_path_factory) -> Iterator[Server]:
    """One `bentoml serve` of two models: EfficientNet-Lite0 (the default, ~8 ms an image) and the
    tiny colour model (microseconds). The latency bound is raised so that tests may queue much
    slow work without being shed."""
    env = {"CLASSIFIER_MAX_LATENCY_MS": "120000"}
    s = start_server([default_model, colour_model], tmp_path_factory.mktemp("logs"), env)
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def examples_server(examples_model, tmp_path_factory) -> Iterator[Server]:
    """The model with its own examples, served with a temporary folder of its own: as in the image, the
    model store then lies outside both folders Gradio serves files from (cwd and temp). Gradio copies
    the examples into its cache as the page is built, so they show all the same."""
    logs = tmp_path_factory.mktemp("logs")
    (logs / "tmp").mkdir()
    s = start_server(examples_model, logs, env={"TMPDIR": str(logs / "tmp")})
    yield s
    stop_server(s)


def image_bytes(colour=(255, 0, 0), size=(64, 48), fmt="PNG", mode="RGB", **save) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt, **save)
    return buf.getvalue()
