"""A/B of a serving change: this checkout and another served side by side, loaded in turn.

    python -m bench.ab OTHER_CHECKOUT [--clients 8] [--rounds 4] [--seconds 10]

A is this checkout, B the other (a git worktree with the change: `git worktree add ../b`). Each serves
the default model with `bentoml serve` started in its own folder, so each runs its own service.py and
imgserve/; the server not being loaded is frozen. Rounds alternate A, B, A, B... with the benchmark's
mix (one large photo in four) at `--clients` closed-loop clients, so that load from elsewhere on a
shared machine falls on both alike. Prints each round, then the medians and B / A: images/s, the
server's CPU per image, p50. A change is kept when B / A clears the spread between rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import bentoml

from bench import models, photos
from bench.run import LARGE_EVERY, ModelPlan, Target, expected_answers, freeze, thawed
from imgserve import testing
from imgserve.serving import predict, store

FIGURES = ("images_per_s", "cpu_ms_per_image", "p50_ms")


def round_of(target: Target, clients: int, seconds: float) -> dict:
    row = target.level(clients, min(seconds, 3.0), seconds)
    cpu_ms = row["server_cpu_cores"] * 1000 / row["images_per_s"] if row["images_per_s"] else float("nan")
    if row["errors"] or row["wrong_answers"]:
        raise RuntimeError(f"{target.server.kind}: {row['errors']} errors, {row['wrong_answers']} wrong answers")
    return {"images_per_s": row["images_per_s"], "cpu_ms_per_image": round(cpu_ms, 2), "p50_ms": row["p50_ms"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("other", type=Path, help="the checkout with the change (B)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="rounds each, alternating")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds a round")
    args = p.parse_args(argv)
    if not (args.other / "service.py").is_file():
        p.error(f"{args.other} is no checkout of this repository (no service.py)")

    tag = models.ensure(models.DEFAULT)
    entry = bentoml.models.get(tag)
    card = store.ModelCard.from_stored(entry)
    sequence = photos.mix(photos.photos(), LARGE_EVERY)
    expected = expected_answers(predict.open_session(entry.path_of(store.ONNX_FILE)), card, sequence)
    plan = ModelPlan(levels=[args.clients], warmup_s=2.0, measure_s=args.seconds)
    logs = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    servers = {
        "A": testing.start_server(tag, logs, kind="bentoml"),
        "B": testing.start_server(tag, logs, kind="bentoml", root=args.other.resolve()),
    }
    results: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        targets = {name: Target(server, plan, sequence, expected) for name, server in servers.items()}
        for server in servers.values():
            freeze(server)
        for name, target in targets.items():  # not recorded: the first model calls, then a round at full load
            with thawed(servers[name]):
                target.warm_up()
                round_of(target, args.clients, args.seconds)
        for i in range(args.rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                with thawed(servers[name]):
                    row = round_of(targets[name], args.clients, args.seconds)
                results[name].append(row)
                print(f"round {i + 1} {name}: {row}", flush=True)
    finally:
        for server in servers.values():
            testing.stop_server(server)
    print(f"medians of {args.rounds} rounds at {args.clients} clients:")
    for figure in FIGURES:
        a, b = (statistics.median(r[figure] for r in results[n]) for n in ("A", "B"))
        spread = {n: (min(r[figure] for r in results[n]), max(r[figure] for r in results[n])) for n in results}
        print(f"  {figure:17s} A {a:8.2f}  B {b:8.2f}  B/A {b / a:5.3f}   (A {spread['A']}, B {spread['B']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
