"""The evaluator's text path on a model-level mixture against the old token-id path.

    .venv/bin/python benchmarks/mixture_text_eval.py              # tiny demo zoo (built/cached)
    .venv/bin/python benchmarks/mixture_text_eval.py --zoo DIR

A model-level mixture of family A's a_sort and family C's c_base (one shared tokenizer,
so both paths apply), `trained` router on 40 validation prompts per task. Every
built-in task's first 100 test examples are scored twice with one torch thread:
through `text_lm` (what `modelglue eval` does now: route each prompt on its text, each
expert decodes its rows) and through the mixture's token-level forward (`HFTextLM` on
the mixture model, what the evaluator did before). Prints both times and scores.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None, help="demo zoo root (default: the tiny zoo, built/cached)")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from modelglue.demo import demo_zoo
    from modelglue.evaluate import HFTextLM, load_model, load_tasks, score_task
    from modelglue.mixture import mix

    zoo = args.zoo or demo_zoo(scale="tiny")
    rows = [{"prompt": ex["prompt"], "expert": 1 if t.name == "sub" else 0}
            for t in load_tasks("all", "validation") for ex in t.examples[:40]]
    out = Path(tempfile.mkdtemp()) / "mixture"
    mix("model", [zoo / "a_sort", zoo / "c_base"], out, router="trained", router_data=rows)
    model, tok = load_model(out)
    tasks = load_tasks("all", "test")
    for name, lm in (("text (MixtureTextLM)", model), ("token ids (forward)", HFTextLM(model, tok))):
        t0 = time.perf_counter()
        scores = {t.name: score_task(lm, tok, t, limit=args.limit)["score"] for t in tasks}
        print(f"{name}: {time.perf_counter() - t0:.1f} s, mean {sum(scores.values()) / len(scores):.3f}  {scores}")


if __name__ == "__main__":
    main()
