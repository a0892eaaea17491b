"""prepare_keep (the TIES trim, density 0.5) on task vectors N(0,0.002) apart, float32 or bfloat16: tie_order sort vs index.

    PYTHONPATH=src python benchmarks/trim_bench.py ENTRIES float32|bfloat16
"""
import sys, time, torch
from modelglue.methods.task_vectors import prepare_keep
torch.manual_seed(0)
n = int(sys.argv[1]); dt = getattr(torch, sys.argv[2])
a = (torch.randn(n) * 0.02).to(dt); b = (a.float() + torch.randn(n) * 0.002).to(dt)
d = b - a
for tie in ("sort", "index"):
    t = time.perf_counter(); k = prepare_keep(lambda x, y: d[x:y], n, dt, "magnitude", 0.5, None, tie_order=tie)
    print(sys.argv[2], n, tie, round(time.perf_counter() - t, 2), "s", "sorted" if k.explicit is not None else "cut")
