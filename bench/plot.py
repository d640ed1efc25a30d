"""bench.json -> bench.png: throughput and p99 latency against concurrency, one column per model.

python -m bench.plot [bench/results/bench.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STYLE = {
    "bentoml": ("this bundle (BentoML, batching)", "tab:blue", "o", 2.5),
    "bentoml_unbatched": ("same, batching off", "tab:cyan", "s", 1.5),
    "litserve": ("LitServe, batching on", "tab:orange", "^", 1.5),
    "gradio": ("Gradio Interface (tutorial)", "tab:red", "v", 1.5),
    "bentoml_int8": ("this bundle, int8 model", "tab:green", "D", 2.5),
}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 8.5), squeeze=False)
    for col, name in enumerate(names):
        m = result["models"][name]
        top, bottom = axes[0][col], axes[1][col]
        refused = "refused" in (m.get("int8") or {})
        for kind, server in m["servers"].items():
            label, colour, marker, width = STYLE[kind]
            if kind == "bentoml_int8" and refused:
                label += " (refused by the import's gate: speed only)"
            rows = server["levels"]
            x = [r["clients"] for r in rows]
            top.plot(x, [r["images_per_s"] for r in rows], marker=marker, color=colour, lw=width, label=label)
            p99 = [float("nan") if r["p99_ms"] is None else r["p99_ms"] for r in rows]  # None: nothing answered
            bottom.plot(x, p99, marker=marker, color=colour, lw=width, label=label)
        limit = m["inprocess"]["limit"]
        top.axhline(
            limit["images_per_s"],
            color="black",
            ls="--",
            lw=1,
            label=f"in-process limit ({limit['images_per_s']:.0f} img/s: batch {limit['batch']}, "
            f"{limit['model_threads']} model + {limit['decode_threads']} decode threads)",
        )
        int8 = (m.get("int8") or {}).get("inprocess")
        if int8:
            top.axhline(int8["images_per_s"], color=STYLE["bentoml_int8"][1], ls="--", lw=1,
                        label=f"in-process, int8 model ({int8['images_per_s']:.0f} img/s, same settings)")  # fmt: skip
        top.set_title(f"{name}: throughput")
        top.set_ylabel("images/s")
        top.set_ylim(bottom=0)
        bottom.set_title(f"{name}: p99 latency")
        bottom.set_ylabel("ms (log scale)")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks([r["clients"] for r in m["servers"]["bentoml"]["levels"]])
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.get_yaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("concurrent clients (closed loop)")
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8, loc="best")
    mc = result["machine"]
    large = result["mix"]["large_every"]
    fig.suptitle(
        f"{mc['nproc']} cores, {mc['cpu_model']}; 1 request in {large} a ~12 MP JPEG, the rest 0.1-0.4 MP\n"
        f"load average {result['load_average_before'][0]} before, {result['load_average_after'][0]} after "
        f"({result['started']}, {result['mode']} run)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "bench.json"
    plot(json.loads(source.read_text()), source.with_suffix(".png"))
