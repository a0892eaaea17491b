"""Which gentle fine-tune recipe gives task vectors that add? (issue 15, the demo zoo)

    python benchmarks/gentle_recipes.py --out DIR --variant NAME[,key=value...] [--limit 100]

Trains the full demo zoo's a_base once (cached in DIR/a_base), then family A's five
gentle fine-tunes under one variant of the recipe, with `modelglue.demo.train.train`:

    keep=0.5        share of each batch that keeps the base on the other tasks
    keep_hidden=10  weight of the hidden-state term on that share (0: outputs only, KL)
    steps=400 lr=0.001

and scores, on the first `--limit` test prompts of every built-in task: the singles,
task arithmetic (lambda 1) of the best two / best three / all five at weight 1, all five
at 0.7 and 0.5, and TIES of all five (density 0.5). One torch thread, in memory.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", default="recipe", help="NAME[,keep=..,keep_hidden=..,steps=..,lr=..]")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from modelglue.demo import zoo as Z
    from modelglue.demo.train import build_tokenizer, make_model, save_model, train
    from modelglue.evaluate.tasks import BUILTIN_TASKS
    from modelglue.search.scorers import MergeScorer

    name, *pairs = args.variant.split(",")
    specs = {s.name: s for s in Z.zoo_specs("full")}
    gentle = [n for n, s in specs.items() if s.family == "A" and s.role == "gentle"]
    first = specs[gentle[0]]
    cfg = dict(keep=first.keep, keep_hidden=first.keep_hidden, steps=first.steps, lr=first.lr)
    for kv in pairs:
        k, v = kv.split("=")
        cfg[k] = int(v) if k == "steps" else float(v)
    tok = build_tokenizer()
    base_dir = args.out / "a_base"
    if not (base_dir / "config.json").is_file():
        s = specs["a_base"]
        model = make_model("llama", Z.SIZES["full"]["llama"], seed=0)
        train(model, Z._mix(s), s.steps, s.lr, seed=0, desc="a_base")
        save_model(model, tok, base_dir)
    out = args.out / name
    for i, n in enumerate(gentle):
        if (out / n / "config.json").is_file():
            continue
        s = specs[n]
        model = Z._load(base_dir)
        keep = [(t, hard, 1.0) for t in Z.BASE_TASKS if t not in s.train_tasks for hard in (False, True)]
        train(model, Z._mix(s, specs["a_base"]), cfg["steps"], cfg["lr"], seed=100 + i, desc=n,
              teacher=Z._load(base_dir), keep=keep, keep_share=cfg["keep"], keep_hidden=cfg["keep_hidden"])
        save_model(model, tok, out / n)

    scorer = MergeScorer(list(BUILTIN_TASKS), str(base_dir), limit=args.limit)
    paths = {n: str(out / n) for n in gentle} | {"a_base": str(base_dir)}

    def mean(r: dict) -> float:
        return sum(r.values()) / len(r)

    def task_vectors(weights: dict[str, float], method: str = "task_arithmetic", **params) -> dict:
        return {"merge_method": method, "base_model": str(base_dir), "dtype": "float32",
                "models": [{"model": paths[n], "parameters": {"weight": w, **params}} for n, w in weights.items()]}

    rows = {}
    for n in paths:
        rows[n] = mean(scorer({"merge_method": "linear", "dtype": "float32",
                               "models": [{"model": paths[n], "parameters": {"weight": 1.0}}]}, "test"))
    ranked = sorted(gentle, key=rows.get, reverse=True)
    merges = {"TA best two, w=1": task_vectors({n: 1.0 for n in ranked[:2]}),
              "TA best three, w=1": task_vectors({n: 1.0 for n in ranked[:3]}),
              "TA all five, w=1": task_vectors({n: 1.0 for n in gentle}),
              "TA all five, w=0.7": task_vectors({n: 0.7 for n in gentle}),
              "TA all five, w=0.5": task_vectors({n: 0.5 for n in gentle}),
              "TIES all five, d=0.5, w=1": task_vectors({n: 1.0 for n in gentle}, "ties", density=0.5)}
    best = rows[ranked[0]]
    print(f"variant {name}: {cfg}")
    for n, v in rows.items():
        print(f"  {n:<28} {v:.3f}")
    for label, recipe in merges.items():
        rows[label] = mean(scorer(recipe, "test"))
        print(f"  {label:<28} {rows[label]:.3f}  ({rows[label] - best:+.3f} vs best member {ranked[0]})")
    (out / "scores.json").write_text(json.dumps({"variant": name, "config": cfg, "limit": args.limit,
                                                 "rows": rows, "best_member": ranked[0]}, indent=2))


if __name__ == "__main__":
    main()
