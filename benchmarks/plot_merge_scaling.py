#!/usr/bin/env python3
"""Plot wall time and peak RSS against model size from merge_bench.py's results.

    python benchmarks/plot_merge_scaling.py bench-out/scaling/results-*.json \
        --out benchmarks/figures/merge_scaling.png

Each results file is one size (merge_bench.py --size 0.5b,1.5b,7b writes results-SIZE.json);
one line per (tool, method). The RSS panel also draws the inputs of the largest tensor
(three bfloat16 copies of it): what a streaming merge cannot avoid holding at once.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted((json.loads(p.read_text()) for p in args.results), key=lambda r: r["params"])
    lines: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for res in sizes:
        for run in res["runs"]:
            if run.get("rc") == 0:
                lines.setdefault((run["tool"], run["method"]), []).append(
                    (res["params"] / 1e9, run["wall_s"], run["maxrss_bytes"] / 1e9))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (tool, method), pts in sorted(lines.items()):
        xs = [p[0] for p in pts]
        style = dict(marker="o" if tool == "modelglue" else "s", linestyle="-" if tool == "modelglue" else "--")
        ax_t.plot(xs, [p[1] for p in pts], label=f"{tool} {method}", **style)
        ax_m.plot(xs, [p[2] for p in pts], label=f"{tool} {method}", **style)
    esize = 2 if sizes[0]["dtype"] in ("bfloat16", "float16") else 4
    ax_m.plot([r["params"] / 1e9 for r in sizes], [3 * r["largest_tensor"] * esize / 1e9 for r in sizes],
              color="grey", linestyle=":", label="3 x largest tensor")
    for ax, title, unit in ((ax_t, "wall time", "s"), (ax_m, "peak RSS", "GB")):
        ax.set_xlabel("parameters (billions)")
        ax.set_ylabel(f"{title} ({unit})")
        ax.set_title(f"{title}, three {sizes[0]['dtype']} inputs")
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
