"""Real servers for the tests and the benchmark, started and measured one way.

Both start `bentoml serve` (and the benchmark its baselines) as a user would, each server in its own
process group with its own BENTOML_HOME around the shared model store, wait for it to answer, read
its /metrics with prometheus_client's parser and its processes' CPU and memory with psutil.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from imgserve import config

ROOT = Path(__file__).resolve().parents[1]  # where service.py is: `bentoml serve` runs from here
BENTOML = str(Path(sys.executable).with_name("bentoml"))
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A started server: `kind` names what runs (bentoml, litserve, gradio...)."""

    kind: str
    port: int
    process: subprocess.Popen
    log: Path
    ready_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def scrape(self, headers: Mapping[str, str] | None = None) -> str:
        return httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text

    def metric(self, name: str, model: str | None = None, headers: Mapping[str, str] | None = None) -> float:
        """A Prometheus sample summed over its label sets, or over those of one served model (its tag)."""
        return metric_sum(self.scrape(headers), name, model_labels(model))

    def histogram(
        self, name: str, model: str | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[float, float]:
        """A histogram's (sum, count), as `metric` sums them, from one read of /metrics: a mean of the two
        never mixes counts taken at different times."""
        text, labels = self.scrape(headers), model_labels(model)
        return metric_sum(text, f"{name}_sum", labels), metric_sum(text, f"{name}_count", labels)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def raise_if_exited(self) -> None:
        """Fail, with the server's output, if its process has ended."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} exited {self.process.returncode}:\n{self.output()}")


def model_labels(model: str | None) -> dict[str, str]:
    """The labels of one served model's samples (its tag); none: every model's."""
    return {config.METRIC_MODEL_LABEL: model} if model else {}


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of sample `name` in a Prometheus exposition over the label sets that have `labels`."""
    wanted = dict(labels or {}).items()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted <= sample.labels.items()
    )


def serve_env(tags: str | list[str]) -> dict[str, str]:
    """One tag as $CLASSIFIER_MODEL, as single-model users set it; a list (or commas) as $CLASSIFIER_MODELS."""
    if isinstance(tags, str) and "," not in tags:
        return {config.ENV_MODEL: tags, config.ENV_MODELS: ""}
    return {config.ENV_MODEL: "", config.ENV_MODELS: tags if isinstance(tags, str) else ",".join(tags)}


def server_environ(tags: str | list[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a server of `tags`, with `env` over it."""
    environ = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **serve_env(tags)}
    environ.pop(config.ENV_API_KEY, None)  # an operator's key in this shell would lock the clients out
    return environ | dict(env or {})


def own_home(path: Path) -> Path:
    """A BENTOML_HOME of the server's own around the shared model store: `bentoml serve` empties
    $BENTOML_HOME/prometheus_multiproc_dir as it starts, which froze the /metrics of servers already up."""
    from imgserve.serving.bentoml_compat import model_store_dir

    models = model_store_dir()
    path.mkdir(parents=True, exist_ok=True)
    link = path / "models"
    if link.is_symlink() and link.resolve() != models.resolve():  # left by a run with another store
        link.unlink()
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    return path


def launch(
    kind: str,
    argv: list[str],
    env: Mapping[str, str],
    log: Path,
    ready_url: str,
    timeout_s: float = READY_TIMEOUT_S,
    launched: Path | None = None,
    root: Path = ROOT,
) -> Server:
    """Start `argv` in `root`, in its own process group, output to `log`; return once `ready_url` answers
    200 (and the file `launched` exists, for a server that writes one when up). Stopped if it never is."""
    port = httpx.URL(ready_url).port
    assert port is not None, ready_url
    start = time.perf_counter()
    with log.open("w") as out:  # the server writes to its own copy of the file descriptor
        process = subprocess.Popen(
            argv, cwd=root, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(kind, port, process, log, 0.0)
    try:
        wait_until_ready(ready_url, process, timeout_s, server.output, launched)
    except RuntimeError:
        stop_server(server)
        raise
    server.ready_s = round(time.perf_counter() - start, 2)
    return server


def wait_until_ready(
    url: str, process: subprocess.Popen, timeout_s: float, output: Callable[[], str], launched: Path | None = None
) -> None:
    """Poll `url` until it answers 200 (and `launched` exists, if given); fail with the process's
    `output()` if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited {process.returncode}:\n{output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200 and (launched is None or launched.exists()):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s:\n{output()}")


def start_server(
    tags: str | list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    kind: str = "bentoml",
    timeout_s: float = READY_TIMEOUT_S,
    root: Path = ROOT,
) -> Server:
    """`bentoml serve service:ImageClassifier` of the models `tags`, with `env` over this process's; run
    in `root`, a checkout of this repository (another one's: its own service.py and imgserve/)."""
    port = free_port()
    home = own_home(log_dir / f"home-{kind}-{port}")
    argv = [BENTOML, "serve", "service:ImageClassifier", "--host", "127.0.0.1", "--port", str(port)]
    environ = server_environ(tags, {"BENTOML_HOME": str(home), **(env or {})})
    log = log_dir / f"{kind}-{port}.log"
    return launch(kind, argv, environ, log, f"http://127.0.0.1:{port}/readyz", timeout_s, root=root)


def stop_server(server: Server) -> None:
    """SIGTERM to the whole process group (workers included), SIGKILL if it lingers."""
    try:
        os.killpg(server.process.pid, signal.SIGCONT)  # a frozen process acts on SIGTERM only once thawed
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@contextlib.contextmanager
def running(tags: str | list[str], log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """start_server, stopped again on the way out: a test fixture's whole life of a server."""
    server = start_server(tags, log_dir, env)
    try:
        yield server
    finally:
        stop_server(server)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and every process below it; empty once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(processes: list[psutil.Process]) -> int:
    """Resident memory of these processes, summed (shared pages counted in each: an upper bound)."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    return rss_bytes(process_tree(pid))


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds these processes have used so far."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total
