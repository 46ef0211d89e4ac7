"""GPU check of Model.run_dlpack against Model.run: python benchmarks/gpu_dlpack_check.py BUNDLE
Needs torch with CUDA and a --target cuda bundle (not the compiler). Prints PASS/FAIL lines and the
min-of-50 latency of run_dlpack (torch CUDA tensors in, DeviceArray out) and run (numpy in/out)."""
import sys
import time

import numpy as np
import torch

import mlrt

failures = 0


def check(name, ok):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}")


def flat(o):
    o = list(o.values()) if isinstance(o, dict) else o
    return [y for x in o for y in flat(x)] if isinstance(o, (tuple, list)) else [o]


def make_inputs(model, seed):  # floats: randn; integers: randint in [0, 1000); bools: randint in [0, 2)
    g = torch.Generator(device="cuda").manual_seed(seed)
    xs = []
    for s in model.inputs:
        if s.dtype.kind == "f":
            x = torch.randn(s.shape, generator=g, device="cuda")
        else:
            x = torch.randint(0, 2 if s.dtype.kind == "b" else 1000, s.shape, generator=g, device="cuda")
        xs.append(x.to(getattr(torch, s.dtype.name)))
    return xs


def min_ms(fn, n=50):
    best = float("inf")
    for _ in range(n + 1):  # the first call warms up
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


model = mlrt.load(sys.argv[1], device="cuda:0")
for seed in range(3):
    xs = make_inputs(model, seed)
    host = [x.cpu().numpy() for x in xs]
    got = [torch.from_dlpack(y) for y in flat(model.run_dlpack(*xs))]
    want = model.run_flat(*host)
    same = all(g.device == xs[0].device and np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))
    check(f"run_dlpack == run, bit-identical (seed {seed})", same and len(got) == len(want))

side = torch.cuda.Stream()  # inputs produced on a side stream behind a long matmul: ordering must hold
big = torch.randn(4096, 4096, device="cuda")
with torch.cuda.stream(side):
    for _ in range(20):
        big = big @ big / 64
    xs2 = [x.clone() for x in make_inputs(model, 7)]
    got = [torch.from_dlpack(y).cpu().numpy() for y in flat(model.run_dlpack(*xs2))]
want = model.run_flat(*[x.cpu().numpy() for x in xs2])
check("inputs from a side stream (stream ordering)", all(np.array_equal(g, w) for g, w in zip(got, want)))

outs = flat(model.run_dlpack(*xs))
ref = model.run_flat(*[x.cpu().numpy() for x in xs])[0]
t1, t2 = torch.from_dlpack(outs[0]), torch.from_dlpack(outs[0])
check("two consumers alias one DeviceArray", t1.data_ptr() == t2.data_ptr() == outs[0].data_ptr)
del model, outs, t2
check("outputs outlive the model", np.array_equal(t1.cpu().numpy(), ref))

model = mlrt.load(sys.argv[1], device="cuda:0")
host = [x.cpu().numpy() for x in xs]
ms_dlpack = min_ms(lambda: model.run_dlpack(*xs))
ms_run = min_ms(lambda: model.run_flat(*host))
print(f"TIME run_dlpack {ms_dlpack:.3f} ms, run (numpy) {ms_run:.3f} ms, ratio {ms_run / ms_dlpack:.2f}x")
print("PASS all" if failures == 0 else f"FAIL {failures} check(s)")
sys.exit(1 if failures else 0)
