"""`make bench`: the served throughput and latency against the limits and the alternatives, in one run.

    BENTOML_HOME=... python -m bench.run            # full run (about 15 minutes on 2 cores)
    BENTOML_HOME=... python -m bench.run --smoke    # every step, tiny: checks the benchmark works

For each model (the default EfficientNet-Lite0 and a heavy VGG-11 with random weights):
1. in-process limits: the model alone at each batch size; decode + preprocess + model in one
   process at each thread and batch setting (the best is the limit); one image at a time;
2. servers, each started fresh (time to ready measured) and loaded by closed-loop clients at
   1..64 concurrency over a mix of small and ~12 MP JPEGs: this bundle's `bentoml serve`, the same
   with batching off (CLASSIFIER_MAX_BATCH_SIZE=1), LitServe with its batching on serving the same
   ONNX model and preprocessing, and the tutorials' one-image-at-a-time Gradio app (torch eager).
Plus our preprocessing against the textbook torchvision path (time and answers). Writes
bench/results/bench.json and bench/results/bench.png; the README's "Performance" shows them.

Then, in full runs (or alone: --mixed), one server of both models: the resident memory each model
adds, and a level of mixed traffic, fast and slow model at once, with the fast model's p99 next to
its p99 alone on the same server (bench/results/mixed.json; README "Several models").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

import httpx

from bench import inprocess, int8_refused, loadgen, models, plot, preprocess_speed
from bench import photos as bench_photos
from imgserve import config, testing
from imgserve.serving import predict, store
from imgserve.serving.preprocess import preprocess
from imgserve.testing import Server

BENCH = testing.ROOT / "bench"
READY_TIMEOUT_S = 180
MAX_WARMUP_S = 15  # caps on a level's windows, which grow with clients / images per second
MAX_MEASURE_S = 20
SERVERS = ("bentoml", "bentoml_unbatched", "litserve", "gradio")
LEVELS = [1, 2, 4, 8, 16, 32, 64]
LARGE_EVERY = 4  # one request in four carries a ~12 MP photo, the others a small one
TARGETS = {
    "served_vs_inprocess_at_8": 0.9,  # issue 16 (was 0.85)
    "served_vs_gradio_at_8": 10.0,
    "served_vs_litserve_at_8": 1.0,
    "one_client_p50_over_inprocess_ms": 15.0,
    "large_preprocess_speedup": 4.0,
    "ready_s": 15.0,
    "rss_at_64_mb": 1536,
    "int8_served_vs_fp32_served_at_8": 1.3,
    "int8_top1_agreement": 0.99,
}


@dataclass
class ModelPlan:
    levels: list[int]
    warmup_s: float
    measure_s: float
    servers: tuple[str, ...] = SERVERS
    baseline_levels: list[int] | None = None  # LitServe and Gradio at these only (None: all levels)
    batch_curve: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    curve_seconds: float = 1.5
    grid_threads: list[int] = field(default_factory=lambda: [1, 2])
    grid_decode: list[int] = field(default_factory=lambda: [1, 2])
    grid_batch: list[int] = field(default_factory=lambda: [1, 4, 8])
    grid_seconds: float = 3.0
    single_rounds: int = 2


FULL = {
    models.DEFAULT: ModelPlan(levels=LEVELS, warmup_s=2.0, measure_s=6.0, grid_seconds=2.5),
    models.HEAVY: ModelPlan(
        levels=LEVELS,
        warmup_s=3.0,
        measure_s=8.0,
        baseline_levels=[1, 8, 64],
        batch_curve=[1, 2, 4, 8],
        curve_seconds=2.0,
        grid_decode=[1],
        grid_batch=[1, 4],
        grid_seconds=6.0,
        single_rounds=1,
    ),
}
SMOKE = {
    models.DEFAULT: ModelPlan(
        levels=[1, 4],
        warmup_s=0.5,
        measure_s=2.0,
        batch_curve=[1, 4],
        curve_seconds=0.1,
        grid_threads=[config.MODEL_THREADS],
        grid_decode=[1],
        grid_batch=[1, 4],
        grid_seconds=0.3,
        single_rounds=1,
    )
}


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    versions = {}
    for pkg in ("bentoml", "onnxruntime", "torch", "torchvision", "pillow", "numpy", "litserve", "gradio", "uvloop"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(int(mem.split()[1]) / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- Servers


def start(kind: str, tag: str, log_dir: Path, env: dict[str, str] | None = None) -> Server:
    """`tag`: one model, or several separated by commas (one BentoML server of them all). `kind` is one
    of SERVERS, or "bentoml_int8": this bundle serving the int8 model. `env` over this process's
    (the int8 model the gate refused is in a store of its own: `bench.int8_refused`)."""
    if kind.startswith("bentoml"):
        env = (env or {}) | ({config.ENV_MAX_BATCH_SIZE: "1"} if kind == "bentoml_unbatched" else {})
        return testing.start_server(tag, log_dir, env, kind, READY_TIMEOUT_S)
    port = testing.free_port()
    env = testing.server_environ(tag, {"GRADIO_ANALYTICS_ENABLED": "False"})
    argv = [sys.executable, "-m", f"bench.baselines.{kind}_app", tag, str(port)]
    log, url = log_dir / f"{kind}-{port}.log", f"http://127.0.0.1:{port}"
    if kind == "litserve":
        return testing.launch(kind, argv, env, log, f"{url}/health", READY_TIMEOUT_S)
    if kind == "gradio":
        launched = log_dir / f"{kind}-{port}.launched"  # Gradio is up once its app has written this
        return testing.launch(kind, [*argv, str(launched)], env, log, f"{url}/", READY_TIMEOUT_S, launched)
    raise ValueError(kind)


def freeze(server: Server) -> None:
    """Stop every process of the server: a frozen server takes no CPU from the one being measured.
    (testing.stop_server thaws it first.)"""
    os.killpg(server.process.pid, signal.SIGSTOP)


@contextlib.contextmanager
def thawed(server: Server) -> Iterator[None]:
    os.killpg(server.process.pid, signal.SIGCONT)
    try:
        yield
    finally:
        freeze(server)


class Target:
    """A started server with its requests built: runs one load level at a time."""

    def __init__(self, server: Server, plan: ModelPlan, sequence: list[bench_photos.Photo], expected: dict) -> None:
        self.server, self.plan = server, plan
        kind = server.kind
        baseline = not kind.startswith("bentoml") and plan.baseline_levels is not None
        self.levels = plan.baseline_levels if baseline else plan.levels
        host = "127.0.0.1"
        if kind == "gradio":
            self.requests = [
                loadgen.gradio_upload_request(host, f"{p.name}.jpg", p.data, expected[p.name], p.kind) for p in sequence
            ]
            self.exchange = loadgen.gradio_exchange(host, "classify")
        else:
            self.requests = [
                loadgen.multipart_request(host, "/classify", p.kind, f"{p.name}.jpg", p.data, 5, expected[p.name])
                for p in sequence
            ]
            self.exchange = loadgen.send
        self.metrics = (lambda: server.histogram(config.METRIC_BATCH_SIZE)) if kind.startswith("bentoml") else None
        self.rate = 1.0  # images/s at the last level: sizes the next level's windows
        self.out: dict = {"ready_s": server.ready_s, "levels": []}

    def level(self, clients: int, warmup: float, measure: float) -> dict:
        return asyncio.run(
            loadgen.http_level(
                "127.0.0.1",
                self.server.port,
                self.requests,
                clients,
                warmup,
                measure,
                self.server.process.pid,
                self.metrics,
                self.exchange,
            )
        )

    def warm_up(self) -> None:
        # Not recorded: the first model calls (ONNX Runtime allocates at each new batch shape).
        self.rate = max(self.level(1, 0.0, self.plan.warmup_s * 2)["images_per_s"], 0.5)

    def run(self, clients: int) -> None:
        """One level, its windows long enough for every client to be answered about twice:
        a closed loop starts as a burst, and needs a full round to reach its steady state."""
        kind, cycle = self.server.kind, clients / self.rate
        warmup = min(MAX_WARMUP_S, max(self.plan.warmup_s, 1.2 * cycle))
        measure = min(MAX_MEASURE_S, max(self.plan.measure_s, 2.0 * cycle))
        row = {"clients": clients, **self.level(clients, warmup, measure)}
        self.server.raise_if_exited()  # if its answers were connection failures, say why
        row["load_avg_1m"] = load_average()[0]
        self.rate = max(row["images_per_s"], 0.5)
        self.out["levels"].append(row)
        print(f"  {kind:18s} {clients:3d} clients: {row['images_per_s']:7.1f} img/s  p50 {row['p50_ms']}"
              f"  p99 {row['p99_ms']} ms  errors {row['errors']}  batch {row.get('mean_batch_size')}"
              f"  server {row['server_cpu_cores']} cores, gen {row['loadgen_cpu_cores']}"
              f"  rss {row['server_peak_rss_mb']} MB  load {row['load_avg_1m']}", flush=True)  # fmt: skip


def serve_and_load(
    tag: str,
    plan: ModelPlan,
    sequence: list[bench_photos.Photo],
    expected: dict[str, dict[str, str]],
    log_dir: Path,
    parallel_start: bool,
    int8: int8_refused.Served | None = None,
) -> dict:
    """All servers up at once, loaded in turn at each level, so that the servers compared at a level
    are measured within a minute of each other: on a shared machine, load from elsewhere comes and
    goes over minutes. Each is started alone (its time to ready is its own) unless `parallel_start`
    (smoke runs: quicker, start times meaningless). The servers not being loaded are frozen
    (SIGSTOP): idle, they took 0.03 (BentoML, Gradio) to 0.13 (LitServe) of a core each.
    """
    started: dict[str, Server] = {}
    kinds = list(expected)  # plan.servers, and "bentoml_int8" when there is an int8 model
    tags = {kind: int8.tag if kind == "bentoml_int8" and int8 else tag for kind in kinds}
    envs = {"bentoml_int8": int8.env if int8 else None}
    try:
        if parallel_start:
            with ThreadPoolExecutor(len(kinds)) as pool:
                futures = {kind: pool.submit(start, kind, tags[kind], log_dir, envs.get(kind)) for kind in kinds}
            started = {kind: f.result() for kind, f in futures.items() if f.exception() is None}
            for f in futures.values():
                if f.exception() is not None:
                    raise f.exception()
        else:
            for kind in kinds:
                started[kind] = start(kind, tags[kind], log_dir, envs.get(kind))
        for server in started.values():
            freeze(server)
        loads = [Target(started[kind], plan, sequence, expected[kind]) for kind in kinds]
        for t in loads:
            with thawed(t.server):
                t.warm_up()
        for i, clients in enumerate(plan.levels):
            order = loads[i % len(loads) :] + loads[: i % len(loads)]  # no server always first
            for t in order:
                if clients in t.levels:
                    with thawed(t.server):
                        t.run(clients)
    finally:
        for server in started.values():
            testing.stop_server(server)
    return {t.server.kind: t.out for t in loads}


# --- Several models in one server


MIXED_CLIENTS = 4  # per model: the fast model's clients alone, then as many slow-model clients beside them
MIXED_WARMUP_S = 5.0
MIXED_MEASURE_S = 20.0


def idle_rss_mb(tags: list[str], sequence: list[bench_photos.Photo], log_dir: Path) -> float:
    """Resident memory of a server of `tags` once each model has answered a request (ONNX Runtime
    allocates its buffers at the first run)."""
    server = start("bentoml", ",".join(tags), log_dir)
    try:
        photo = sequence[0]
        for tag in tags:
            r = httpx.post(
                f"{server.url}/classify",
                files=[("images", ("p.jpg", photo.data, "image/jpeg"))],
                data={"model": tag},
                timeout=120,
            )
            r.raise_for_status()
        return round(testing.tree_rss_bytes(server.process.pid) / 2**20)
    finally:
        testing.stop_server(server)


def several_models(sequence: list[bench_photos.Photo], log_dir: Path, measure_s: float = MIXED_MEASURE_S) -> dict:
    """What a second model costs in memory, and whether a slow model's traffic delays a fast one's answers."""
    import bentoml

    fast, slow = models.ensure(models.DEFAULT), models.ensure(models.HEAVY)
    out: dict = {"fast": fast, "slow": slow, "clients_per_model": MIXED_CLIENTS}
    print("several models: resident memory after one request to each model", flush=True)
    rss = {name: idle_rss_mb(tags, sequence, log_dir) for name, tags in
           (("fast", [fast]), ("slow", [slow]), ("both", [fast, slow]))}  # fmt: skip
    out["rss_mb"] = rss | {"fast_extra": rss["both"] - rss["slow"], "slow_extra": rss["both"] - rss["fast"]}
    print(f"  {out['rss_mb']}", flush=True)

    requests = {}
    for role, tag in (("fast", fast), ("slow", slow)):
        entry = bentoml.models.get(tag)
        card = store.ModelCard.from_stored(entry)
        expected = expected_answers(predict.open_session(entry.path_of(store.ONNX_FILE)), card, sequence)
        requests[role] = [
            loadgen.multipart_request("127.0.0.1", "/classify", p.kind, f"{p.name}.jpg", p.data, 5,
                                      expected[p.name], model=tag)
            for p in sequence
        ]  # fmt: skip
    server = start("bentoml", f"{fast},{slow}", log_dir)

    async def level(roles: list[str], warmup: float, measure: float) -> dict[str, dict]:
        rows = await asyncio.gather(
            *(
                loadgen.http_level("127.0.0.1", server.port, requests[role], MIXED_CLIENTS, warmup, measure,
                                   server.process.pid, partial(server.histogram, config.METRIC_BATCH_SIZE, out[role]))
                for role in roles
            )
        )  # fmt: skip
        return dict(zip(roles, rows, strict=True))

    def fast_batch_ms(run: Callable[[], dict]) -> tuple[dict, float | None]:
        """`run()`, and the fast model's mean milliseconds per model call meanwhile (warm-up included)."""
        s0, n0 = server.histogram(config.METRIC_BATCH_SECONDS, fast)
        rows = run()
        s1, n1 = server.histogram(config.METRIC_BATCH_SECONDS, fast)
        return rows, round(1000 * (s1 - s0) / (n1 - n0), 1) if n1 > n0 else None

    try:
        asyncio.run(level(["fast", "slow"], 0.0, 4.0))  # not recorded: first batches of each shape
        alone, alone_ms = fast_batch_ms(lambda: asyncio.run(level(["fast"], MIXED_WARMUP_S, measure_s)))
        mixed, mixed_ms = fast_batch_ms(lambda: asyncio.run(level(["fast", "slow"], MIXED_WARMUP_S, measure_s)))
    finally:
        testing.stop_server(server)
    alone = alone["fast"]
    alone["model_call_ms"], mixed["fast"]["model_call_ms"] = alone_ms, mixed_ms
    out["fast_alone"], out["mixed"] = alone, mixed
    for name, row in (("fast alone", alone), ("fast, mixed", mixed["fast"]), ("slow, mixed", mixed["slow"])):
        print(f"  {name:12s} {MIXED_CLIENTS} clients: {row['images_per_s']:6.1f} img/s  p50 {row['p50_ms']}"
              f"  p99 {row['p99_ms']} ms  errors {row['errors']}  batch {row.get('mean_batch_size')}"
              f"  server {row['server_cpu_cores']} cores  model call {row.get('model_call_ms')} ms",
              flush=True)  # fmt: skip
    return out


# --- In process


def expected_answers(session, card, sequence: list[bench_photos.Photo]) -> dict[str, str]:
    """Top-1 label of each photo down the served path, to check every served answer against."""
    return {
        p.name: card.labels[int(predict.run(session, preprocess(p.data, card.preprocessing)[None])[0].argmax())]
        for p in {p.name: p for p in sequence}.values()
    }


def textbook_answers(torch_model, card, all_photos: list[bench_photos.Photo]) -> dict[str, str]:
    """Top-1 label of each photo down the tutorials' path (the Gradio baseline's)."""
    import torch

    transform = preprocess_speed.textbook_transform(card.preprocessing)
    with torch.inference_mode():
        return {
            p.name: card.labels[int(torch_model(preprocess_speed.textbook(p.data, transform)[None]).argmax())]
            for p in all_photos
        }


def in_process(entry, card, plan: ModelPlan, sequence: list[bench_photos.Photo]) -> dict:
    onnx_path = entry.path_of(store.ONNX_FILE)
    images = [p.data for p in sequence]
    served_session = predict.open_session(onnx_path)  # the service's own threads
    curve = inprocess.batch_curve(served_session, card.preprocessing.crop, plan.batch_curve, plan.curve_seconds)
    print(f"  model alone ({config.MODEL_THREADS} threads): {curve}", flush=True)
    grid = []
    for threads in plan.grid_threads:
        session = predict.open_session(onnx_path, threads=threads)
        for decode in plan.grid_decode:
            for batch in plan.grid_batch:
                row = {
                    "model_threads": threads,
                    **inprocess.pipeline(session, card.preprocessing, images, decode, batch, plan.grid_seconds),
                }
                grid.append(row)
                print(f"  pipeline {row}", flush=True)
    single = inprocess.single_latency(
        served_session, card.preprocessing, [(p.kind, p.data) for p in sequence], plan.single_rounds
    )
    print(f"  one image at a time: {single}", flush=True)
    return {
        "model_threads_served": config.MODEL_THREADS,
        "batch_curve": curve,
        "pipeline_grid": grid,
        "limit": max(grid, key=lambda r: r["images_per_s"]),
        "single": single,
    }


# --- Targets


def at(levels: list[dict], clients: int) -> dict | None:
    return next((row for row in levels if row["clients"] == clients), None)


def targets(result: dict) -> list[dict]:
    """Each target of the issue, per model: measured value, target, met or not."""
    rows = []

    def add(name: str, model: str | None, value: float | None, met: bool | None, detail: str) -> None:
        rows.append(
            {"target": name, "model": model, "value": value, "goal": TARGETS[name], "met": met, "detail": detail}
        )

    prep = result["preprocessing"]["large"]
    add(
        "large_preprocess_speedup",
        None,
        prep["speedup"],
        prep["speedup"] >= TARGETS["large_preprocess_speedup"],
        f"12 MP JPEG: ours {prep['ours_ms']} ms, textbook {prep['textbook_ms']} ms",
    )
    for name, m in result["models"].items():
        servers = m["servers"]
        served = servers["bentoml"]["levels"]
        clients = 8 if at(served, 8) else served[-1]["clients"]
        ours = at(served, clients)["images_per_s"]
        limit = m["inprocess"]["limit"]["images_per_s"]
        add(
            "served_vs_inprocess_at_8",
            name,
            round(ours / limit, 3),
            ours / limit >= TARGETS["served_vs_inprocess_at_8"],
            f"{ours} img/s served at {clients} clients, in-process limit {limit} img/s",
        )
        for other, target in (("gradio", "served_vs_gradio_at_8"), ("litserve", "served_vs_litserve_at_8")):
            row = at(servers[other]["levels"], clients)
            if row is None or row["images_per_s"] == 0:
                add(target, name, None, None, f"{other} not measured at {clients} clients")
                continue
            ratio = ours / row["images_per_s"]
            add(target, name, round(ratio, 2), ratio >= TARGETS[target], f"{ours} vs {row['images_per_s']} img/s")
        one = at(served, 1)
        single = m["inprocess"]["single"]["p50_ms"]
        over = None if one["p50_ms"] is None else round(one["p50_ms"] - single, 1)
        add(
            "one_client_p50_over_inprocess_ms",
            name,
            over,
            None if over is None else over <= TARGETS["one_client_p50_over_inprocess_ms"],
            f"p50 {one['p50_ms']} ms served to one client, {single} ms in process",
        )
        ready = servers["bentoml"]["ready_s"]
        add("ready_s", name, ready, ready <= TARGETS["ready_s"], "bentoml serve started -> /readyz 200")
        if "int8" in m:
            int8_targets(m, served, clients, add)
        top = at(served, 64) or served[-1]
        add(
            "rss_at_64_mb",
            name,
            top["server_peak_rss_mb"],
            top["server_peak_rss_mb"] <= TARGETS["rss_at_64_mb"],
            f"peak RSS of the server's process tree at {top['clients']} clients",
        )
    return rows


def int8_targets(m: dict, served: list[dict], clients: int, add) -> None:
    """The int8 model's two targets: its speed served against the fp32 model's, and its agreement.
    An int8 model the gate refused was served from a scratch store: its speed is measured all the same."""
    int8 = m["int8"]
    if int8["tag"] is None:  # runs before refused models were served
        for target in ("int8_served_vs_fp32_served_at_8", "int8_top1_agreement"):
            add(target, models.DEFAULT, None, False, f"no int8 model: the import refused it ({int8['refused']})")
        return
    refused = "; refused by the import's gate, served from the benchmark's scratch store" if "refused" in int8 else ""
    ours = at(served, clients)["images_per_s"]
    row = at(m["servers"]["bentoml_int8"]["levels"], clients)
    ratio = row["images_per_s"] / ours if ours else 0.0
    detail = f"{row['images_per_s']} vs {ours} img/s at {clients} clients{refused}"
    target = "int8_served_vs_fp32_served_at_8"
    add(target, models.DEFAULT, round(ratio, 2), ratio >= TARGETS[target], detail)
    held = int8["held_back"]
    agree = held["top1_agreement"]
    add(
        "int8_top1_agreement",
        models.DEFAULT,
        agree,
        agree >= TARGETS["int8_top1_agreement"],
        f"{held['images']} held-back views; largest probability difference {held['max_prob_diff']}"
        + (f"; the import refused it: {int8['refused']}" if "refused" in int8 else ""),
    )


# --- Main


def run(plans: dict[str, ModelPlan], out_dir: Path, mode: str) -> dict:
    import bentoml

    started = time.perf_counter()
    result: dict = {
        "schema": 1,
        "mode": mode,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "plan": {name: asdict(plan) for name, plan in plans.items()},
        "mix": {"large_every": LARGE_EVERY},
        "targets_goal": TARGETS,
        "models": {},
    }
    log_dir = BENCH / ".cache" / "logs" if mode == "full" else out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    all_photos = bench_photos.photos()
    sequence = bench_photos.mix(all_photos, LARGE_EVERY)
    result["photos"] = [
        {"name": p.name, "kind": p.kind, "megapixels": round(p.size[0] * p.size[1] / 1e6, 2), "bytes": len(p.data)}
        for p in all_photos
    ]
    for name, plan in plans.items():
        print(f"{name}:", flush=True)
        tag = models.ensure(name)
        entry = bentoml.models.get(tag)
        card = store.ModelCard.from_stored(entry)
        torch_model = models.torch_model(card).eval()
        if name == models.DEFAULT:
            print("  preprocessing: ours against the textbook path", flush=True)
            session = predict.open_session(entry.path_of(store.ONNX_FILE), threads=1)
            result["preprocessing"] = preprocess_speed.compare(
                all_photos, card.preprocessing, session, torch_model, repeats=5 if mode == "full" else 1
            )
            print(f"  { ({k: v for k, v in result['preprocessing'].items() if k in ('small', 'large')}) }", flush=True)
        m: dict = {"tag": tag, "load_average_start": load_average()}
        m["inprocess"] = in_process(entry, card, plan, sequence)
        session = predict.open_session(entry.path_of(store.ONNX_FILE))
        expected = expected_answers(session, card, sequence)
        tutorial = textbook_answers(torch_model, card, all_photos)
        del session, torch_model
        answers = {kind: tutorial if kind == "gradio" else expected for kind in plan.servers}
        int8 = None
        if name == models.DEFAULT:
            m["int8"] = models.ensure_int8()
            print(f"  int8: {m['int8'].get('held_back') or m['int8']['refused']}", flush=True)
            if m["int8"]["tag"]:
                int8_tag = m["int8"]["tag"]
                int8 = int8_refused.Served(int8_tag, bentoml.models.get(int8_tag).path_of(store.ONNX_FILE), {})
            else:  # served anyway, from a scratch store, to measure what int8 would gain
                m["int8"], int8 = int8_refused.prepare(tag, m["int8"]["refused"])
                print(f"  int8, refused by the gate, served from {int8_refused.HOME}", flush=True)
        if int8:
            int8_session = predict.open_session(int8.onnx)
            answers["bentoml_int8"] = expected_answers(int8_session, card, sequence)
            best = m["inprocess"]["limit"]
            m["int8"]["inprocess"] = inprocess.pipeline(
                int8_session, card.preprocessing, [p.data for p in sequence], best["decode_threads"], best["batch"],
                plan.grid_seconds,
            )  # fmt: skip
            del int8_session
        m["servers"] = serve_and_load(tag, plan, sequence, answers, log_dir, parallel_start=mode == "smoke", int8=int8)
        # The limit again, after the servers: the better of the two is the machine's capacity.
        best = m["inprocess"]["limit"]
        session = predict.open_session(entry.path_of(store.ONNX_FILE), threads=best["model_threads"])
        images = [p.data for p in sequence]
        again = inprocess.pipeline(
            session, card.preprocessing, images, best["decode_threads"], best["batch"], plan.grid_seconds
        )
        m["inprocess"]["limit_again"] = {"model_threads": best["model_threads"], **again}
        if again["images_per_s"] > best["images_per_s"]:
            m["inprocess"]["limit"] = m["inprocess"]["limit_again"]
        print(f"  pipeline again, after the servers: {again}", flush=True)
        del session
        m["load_average_end"] = load_average()
        result["models"][name] = m
    if mode == "full":  # not in smoke runs: a VGG-11 import and four more server starts
        result["several_models"] = several_models(sequence, log_dir)
        (out_dir / "mixed.json").parent.mkdir(parents=True, exist_ok=True)
        (out_dir / "mixed.json").write_text(json.dumps(result["several_models"], indent=1) + "\n")
    result["targets"] = targets(result)
    result["load_average_after"] = load_average()
    result["duration_s"] = round(time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    plot.plot(result, out_dir / "bench.png")
    for t in result["targets"]:
        print(f"target {t['target']:34s} {t['model'] or '':20s} {t['value']!s:>8} goal {t['goal']!s:>6}: "
              f"{'met' if t['met'] else 'MISSED' if t['met'] is False else 'n/a'} ({t['detail']})")  # fmt: skip
    print(f"wrote {out_dir / 'bench.json'} and bench.png in {result['duration_s']} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="every step, tiny: seconds, numbers meaningless")
    p.add_argument("--out", type=Path, help="output folder (default: bench/results)")
    p.add_argument("--models", nargs="+", help=f"only these of {list(FULL)}")
    p.add_argument("--mixed", action="store_true", help="only the several-models step: memory, mixed traffic")
    args = p.parse_args(argv)
    if args.mixed:
        out = args.out or BENCH / "results"
        log_dir = BENCH / ".cache" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine(), "load_average_before": load_average()}
        result |= several_models(bench_photos.mix(bench_photos.photos(), LARGE_EVERY), log_dir)
        result["load_average_after"] = load_average()
        out.mkdir(parents=True, exist_ok=True)
        (out / "mixed.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out / 'mixed.json'}", flush=True)
        return 0
    plans = SMOKE if args.smoke else FULL
    if args.models:
        plans = {name: plans[name] for name in args.models}
    out = args.out or (BENCH / "results" if not args.smoke else BENCH / ".cache" / "smoke")
    run(plans, out, "smoke" if args.smoke else "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
