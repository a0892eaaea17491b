#!/usr/bin/env python3
"""How far modelglue's default 16-bit merges are from mergekit's 16-bit arithmetic.

    python benchmarks/precision_16bit.py [METHOD ...]     # default: every method below

For each method, merges the bfloat16 test models of tests/test_merge_precision.py (the
golden bfloat16 Llama and two fine-tunes with 2% task vectors) twice: by default
(float32 arithmetic, one rounding) and with exact=True (mergekit's 16-bit arithmetic,
which tests/test_mergekit_golden.py checks against mergekit 0.1.5's own outputs). Prints
the largest distance in ulps at the scale of each entry's inputs (what the tests bound
by 1), and in ulps of the output itself (large only where an output nearly cancels).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_merge_precision as T  # noqa: E402
from test_mergekit_golden import _ulp_distance  # noqa: E402

METHODS = ["linear", "task_arithmetic", "ties", "breadcrumbs_ties", "dare_ties", "slerp", "model_stock", "nuslerp",
           "multislerp", "karcher", "sce", "ram", "nearswap"]


class _Dirs:
    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name))


def main() -> None:
    models = T.finetunes.__wrapped__(_Dirs())
    print("| method | max ulps (inputs' scale) | entries > 1 | max ulps (output's own) | entries > 1 of | identical |")
    print("|---|---:|---:|---:|---:|---|")
    for method in sys.argv[1:] or METHODS:
        with tempfile.TemporaryDirectory() as d:
            recipe = T._recipe(method, models)
            fast, exact = T._merge(Path(d), recipe, False), T._merge(Path(d), recipe, True)
            inputs = T._inputs(recipe, torch.bfloat16)
            worst_in = worst_out = 0.0
            n_in = n_out = total = 0
            for k in fast:
                a, b = fast[k], exact[k]
                scale = torch.stack([b.double().abs(), *(x[k].double().abs() for x in inputs if k in x)]).amax(0)
                u = (a.double() - b.double()).abs() / T._ulp_at(scale, torch.bfloat16)
                worst_in, n_in = max(worst_in, float(u.max())), n_in + int((u > 1).sum())
                uo = _ulp_distance(a, b)
                worst_out, n_out = max(worst_out, int(uo.max())), n_out + int((uo > 1).sum())
                total += a.numel()
            same = all(torch.equal(fast[k], exact[k]) for k in fast)
            print(f"| {method} | {worst_in:.2f} | {n_in} | {worst_out:.0f} | {n_out} of {total} | {'yes' if same else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main()
