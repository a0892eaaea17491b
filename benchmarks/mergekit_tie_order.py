#!/usr/bin/env python3
"""Probe: mirroring mergekit's sort calls when the trim threshold is tied gives exact parity.

Not engine code. Monkeypatches modelglue's TIES trim (magnitude) and breadcrumbs window
(magnitude_outliers) with mergekit 0.1.5's selection order -- torch.argsort(w, descending=True)[:k]
and torch.sort(w).indices[n_bot:n_bot+k] of mergekit/sparsify.py -- used only when the
kthvalue threshold is tied (TIES), then merges the golden recipes that hit ties
(ties_bf16_inputs, breadcrumbs_bf16_inputs) and some that do not, and counts mismatches.
Run: .venv/bin/python benchmarks/mergekit_tie_order.py   (expects 0 problems everywhere)
"""
import os, sys, tempfile
import torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests")); sys.path.insert(0, os.path.join(ROOT, "src"))
import modelglue.methods.task_vectors as tv
from pathlib import Path
orig_mag, orig_out = tv.magnitude, tv.magnitude_outliers

def magnitude(delta, density, rescale=None, **kw):
    if density >= 1 or density <= 0 or delta.numel() == 0:
        return orig_mag(delta, density, rescale, **kw)
    k = max(1, int(density * delta.numel()))
    w = delta.abs().reshape(-1).float()
    thr = torch.kthvalue(w, w.numel() - k + 1).values
    if int((w == thr).sum()) > k - int((w > thr).sum()):   # ambiguous: do what mergekit does
        mask = torch.zeros(w.numel(), dtype=delta.dtype)
        mask[torch.argsort(w, descending=True)[:k]] = 1
        return tv._rescale(delta, mask.reshape(delta.shape), rescale, density)
    return orig_mag(delta, density, rescale, **kw)

def magnitude_outliers(delta, density, rescale=None, gamma=0.01, **kw):
    if density >= 1:
        return delta
    n = delta.numel(); keep, n_top = int(density * n), int(gamma * n); n_bot = max(0, n - keep - n_top)
    idx = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype); mask[idx[n_bot:n_bot + keep]] = 1
    return tv._rescale(delta, mask.reshape(delta.shape), rescale, density)

for d in [vars(tv)] + [v for v in vars(tv).values() if isinstance(v, dict) and "magnitude" in v]:
    d["magnitude"], d["magnitude_outliers"] = magnitude, magnitude_outliers
import test_mergekit_golden as T
from modelglue import merge
os.chdir(T.GOLDEN)
for r in ["ties_bf16_inputs.yml", "breadcrumbs_bf16_inputs.yml", "ties.yml", "breadcrumbs.yml", "breadcrumbs_ties.yml", "ties_filter_density.yml"]:
    out = merge(T.GOLDEN / r, Path(tempfile.mkdtemp()) / "o")
    print(r, "problems with mergekit-order fallback:", len(T.compare_tensors(T._load_dir(Path(out)), T._load_dir(T.GOLDEN / T.MANIFEST["recipes"][r]["output"]))))
