"""What does one family of the demo zoo add to Model-GLUE's final model?

    python benchmarks/demo_without_family.py [--zoo DIR] [--family D] [--with-results demo-out/results.json]
                                             [--out bench-out/without-D] [--json OUT]

Runs the demo's glue pipeline (the settings `modelglue demo` uses) on the zoo without the
models of one family, and compares the final model's test mean and its gain over the best
single model with the full pipeline's. The full pipeline's figures are read from a
`results.json` of `make demo` / `modelglue demo` when one is given (`--with-results`),
else it is run too. Family D is the one with its own tokenizer: the difference is what
the cross-tokenizer model-level mixture brings.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _summary(results: dict) -> dict:
    final = results["final"]
    return {"final_test_mean": round(final["test_mean"], 4),
            "best_single": results["best_single"]["name"],
            "best_single_test_mean": round(results["best_single"]["test_mean"], 4),
            "gain_over_best_single": round(final["gain_over_best_single"], 4),
            "experts": final.get("name"), "seconds": results.get("seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None, help="demo zoo root (default: the cached full demo zoo)")
    ap.add_argument("--family", default="D")
    ap.add_argument("--with-results", type=Path, default=None, help="results.json of the full pipeline on this zoo")
    ap.add_argument("--out", type=Path, default=Path("bench-out/demo-without-family"))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from modelglue.demo import demo_zoo
    from modelglue.glue import demo_config, run_glue

    zoo = args.zoo or demo_zoo(scale="full", quiet=False)
    manifest = json.loads((zoo / "zoo.json").read_text())
    dropped = {m["name"] for m in manifest["models"] if m["family"] == args.family}
    if not dropped:
        raise SystemExit(f"no model of family {args.family} in {zoo}")
    rows = {}
    if args.with_results:
        rows["with"] = _summary(json.loads(args.with_results.read_text()))
    else:
        t0 = time.perf_counter()
        rows["with"] = _summary(run_glue(demo_config(zoo, args.out / "with"), quiet=True))
        print(f"with family {args.family}: {time.perf_counter() - t0:.0f} s")
    cfg = demo_config(zoo, args.out / "without")
    cfg.models = [m for m in cfg.models if m.name not in dropped]
    t0 = time.perf_counter()
    rows["without"] = _summary(run_glue(cfg, quiet=True))
    print(f"without family {args.family} ({', '.join(sorted(dropped))}): {time.perf_counter() - t0:.0f} s")
    print(f"{'pipeline':<10} {'final test':>10} {'best single':>22} {'gain':>7}")
    for name, r in rows.items():
        print(f"{name:<10} {r['final_test_mean']:>10.3f} {r['best_single']:>14} {r['best_single_test_mean']:.3f} "
              f"{r['gain_over_best_single']:>+7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"zoo": str(zoo), "family": args.family, **rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
