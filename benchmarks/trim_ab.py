"""One task vector's prepare_keep (TIES trim, density 0.5) with a warm-up, on N threads:
    PYTHONPATH=SRC python benchmarks/trim_ab.py ENTRIES float32|bfloat16 THREADS
(run with two SRC trees to compare engines)."""
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from modelglue.methods.task_vectors import prepare_keep
torch.manual_seed(0)
n = int(sys.argv[1]); dt = getattr(torch, sys.argv[2])
a = (torch.randn(n) * 0.02).to(dt); b = (a.float() + torch.randn(n) * 0.002).to(dt)
d = b - a; del a, b
prepare_keep(lambda x, y: d[x:y], 1000, dt, "magnitude", 0.5, None)  # warm (old: the sort probe)
t = time.perf_counter(); k = prepare_keep(lambda x, y: d[x:y], n, dt, "magnitude", 0.5, None)
print(sys.argv[1:], round(time.perf_counter() - t, 2), "s", flush=True)
