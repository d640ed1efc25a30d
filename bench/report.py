"""bench.json -> the Markdown tables of the README's "Performance" section.

python -m bench.report [bench/results/bench.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {
    "served_vs_inprocess_at_8": "served at 8 clients / in-process limit",
    "served_vs_gradio_at_8": "served / Gradio, 8 clients",
    "served_vs_litserve_at_8": "served / LitServe, 8 clients",
    "one_client_p50_over_inprocess_ms": "one client: p50 minus in-process latency (ms)",
    "large_preprocess_speedup": "12 MP JPEG preprocessing, textbook / ours",
    "ready_s": "`bentoml serve` to ready (s)",
    "rss_at_64_mb": "server RSS at 64 clients (MB)",
    "int8_served_vs_fp32_served_at_8": "int8 served / fp32 served, 8 clients",
    "int8_top1_agreement": "int8 top-1 agreement with fp32, held-back photos",
}
GOALS = {
    "served_vs_inprocess_at_8": "≥ {}",
    "served_vs_gradio_at_8": "≥ {}",
    "served_vs_litserve_at_8": "≥ {}",
    "one_client_p50_over_inprocess_ms": "≤ {}",
    "large_preprocess_speedup": "≥ {}",
    "ready_s": "≤ {}",
    "rss_at_64_mb": "≤ {}",
    "int8_served_vs_fp32_served_at_8": "≥ {}",
    "int8_top1_agreement": "≥ {}",
}


def cell(value) -> str:
    return "–" if value is None else str(value)


def int8_lines(m: dict) -> list[str]:
    """The int8 model's rows, when the run had one (runs before it was added have no "int8")."""
    if "int8" not in m:
        return []
    int8 = m["int8"]
    if int8["tag"] is None:
        return ["", f"int8: the import refused it, nothing to serve: {int8['refused']}"]
    rows = {r["clients"]: r for r in m["servers"]["bentoml_int8"]["levels"]}
    held = int8["held_back"]
    decided = (  # runs before the decided views were measured have none
        f" (on the {held['decided_views']} decided ones, {held['decided_top1_agreement']:.2%})"
        if "decided_views" in held
        else ""
    )
    refused = (
        f"**refused by the import's gate**: top-1 the same as fp32's on {held['top1_agreement']:.2%} of "
        f"{held['images']} held-back views{decided}, {int8['min_agreement']:.0%} required; served anyway from the "
        "benchmark's scratch store, to measure what int8 would gain. "
        if "refused" in int8
        else f"top-1 the same as fp32's on {held['top1_agreement']:.2%} of {held['images']} held-back views{decided}. "
    )
    return [
        "",
        f"int8 (`{int8['tag']}`, {int8['int8_layers']} of {int8['of_layers']} convolutions in int8): {refused}"
        f"In process, at the fp32 limit's settings: {int8['inprocess']['images_per_s']} img/s. Served, img/s "
        "and p99 ms by clients: "
        + "; ".join(f"{c}: {r['images_per_s']}, {cell(r['p99_ms'])}" for c, r in rows.items())
        + ".",
    ]


def report(result: dict) -> str:
    mc = result["machine"]
    out = [
        f"Run of {result['started']} ({result['mode']}, {result['duration_s']} s): {mc['nproc']} cores, "
        f"{mc['cpu_model']}, {mc['memory_gb']} GB; load average (1 min) {result['load_average_before'][0]} "
        f"before, {result['load_average_after'][0]} after. One request in {result['mix']['large_every']} "
        "carries a ~12 MP JPEG, the others a 0.1-0.4 MP one.",
        "",
        "| target | model | goal | measured | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        goal = GOALS[t["target"]].format(t["goal"])
        out.append(f"| {NAMES[t['target']]} | {t['model'] or 'both'} | {goal} | {cell(t['value'])} | {met} |")
    for name, m in result["models"].items():
        inproc = m["inprocess"]
        limit, single = inproc["limit"], inproc["single"]
        out += [
            "",
            f"**{name}** (`{m['tag']}`). In-process limit: **{limit['images_per_s']} img/s** (batch {limit['batch']}, "
            f"{limit['model_threads']} model + {limit['decode_threads']} decode threads); one image alone: "
            f"p50 {single['p50_ms']} ms (small {single.get('p50_small_ms')}, 12 MP {single.get('p50_large_ms')}). "
            "Model alone, ms per batch: "
            + ", ".join(f"{r['batch']}: {r['ms_per_batch']}" for r in inproc["batch_curve"])
            + ". Ready after: "
            + ", ".join(f"{k} {s['ready_s']} s" for k, s in m["servers"].items())
            + ".",
            "",
            "| clients | img/s | p50 ms | p95 ms | p99 ms | errors | batch | server CPU | server RSS MB | "
            "load gen CPU | batching off: img/s, p99 | LitServe: img/s, p99 | Gradio: img/s, p99 |",
            "| " + " | ".join(["---"] * 13) + " |",
        ]
        others = {k: {r["clients"]: r for r in s["levels"]} for k, s in m["servers"].items()}
        for row in m["servers"]["bentoml"]["levels"]:
            c = row["clients"]
            cells = [
                str(c),
                str(row["images_per_s"]),
                cell(row["p50_ms"]),
                cell(row["p95_ms"]),
                cell(row["p99_ms"]),
                str(row["errors"]),
                cell(row.get("mean_batch_size")),
                str(row["server_cpu_cores"]),
                str(row["server_peak_rss_mb"]),
                str(row["loadgen_cpu_cores"]),
            ]
            for kind in ("bentoml_unbatched", "litserve", "gradio"):
                o = others.get(kind, {}).get(c)
                cells.append("–" if o is None else f"{o['images_per_s']}, {cell(o['p99_ms'])}")
            out.append("| " + " | ".join(cells) + " |")
        out += int8_lines(m)
    prep = result["preprocessing"]
    out += [
        "",
        "| photos | ours ms | textbook ms | textbook / ours |",
        "| --- | --- | --- | --- |",
        f"| small (0.1-0.4 MP) | {prep['small']['ours_ms']} | {prep['small']['textbook_ms']} | "
        f"{prep['small']['speedup']} |",
        f"| large (~12 MP) | {prep['large']['ours_ms']} | {prep['large']['textbook_ms']} | "
        f"{prep['large']['speedup']} |",
        "",
        f"Answers, served path against the tutorials' path on all {len(prep['answers'])} photos: top-1 the same on "
        f"{sum(a['top1_same'] for a in prep['answers'])}, largest probability difference {prep['max_prob_diff']} "
        f"(tolerance {prep['prob_tolerance']}).",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "bench.json"
    sys.stdout.write(report(json.loads(source.read_text())) + "\n")
