"""Triton with the mlrt backend under load: dynamic batching vs one request per run vs in-process mlrt.

    python benchmarks/triton_load.py [--models mlp,small_cnn] [--requests 2000] [--concurrency 8] [--protocol http|grpc]

For each zoo model it builds one bundle with a dynamic batch dim 1..8, serves it twice from one
tritonserver (build/triton, see scripts/setup.sh): `<m>_batched` (max_batch_size 8, dynamic
batching) and `<m>_unbatched` (--max-batch 0), both with 2 instances, and sends single-row
requests from `concurrency` client threads (each its own client), then runs the same rows through
mlrt in this process from as many threads. Prints throughput and p50/p99 latency per line.
The clients run on the same machine as the server: on 2 cores they compete for the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,small_cnn")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--instances", type=int, default=2)
    args = ap.parse_args()

    import mlpack
    import mlrt
    import triton_server
    import zoo
    from mlpack.triton_repo import write_repo

    reason = triton_server.why_unavailable()
    if reason:
        sys.exit(f"error: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="triton_load_"))
    repo = tmp / "repo"
    rows = {}
    for name in args.models.split(","):
        model, inputs = zoo.make(name)
        example = inputs[0].expand(8, *inputs[0].shape[1:]).contiguous()
        bundle = tmp / f"{name}.bundle"
        t0 = time.perf_counter()
        mlpack.build(model, (example,), bundle, dynamic={"x": {0: (1, 8)}})
        print(f"built {name} (batch 1..8) in {time.perf_counter() - t0:.1f} s", flush=True)
        write_repo(bundle, repo, name=f"{name}_batched", instances=args.instances)
        write_repo(bundle, repo, name=f"{name}_unbatched", instances=args.instances, max_batch=0)
        rows[name] = (bundle, inputs[0][:1].numpy())

    srv = triton_server.TritonServer(repo, tmp / "tritonserver.log", explicit=False).start()
    url = srv.http_url if args.protocol == "http" else srv.grpc_url
    make = triton_server.http_infer_call if args.protocol == "http" else triton_server.grpc_infer_call
    lines = []
    try:
        for name, (bundle, x) in rows.items():
            for variant in ("batched", "unbatched"):
                make_state, call = make(url, f"{name}_{variant}", x)
                run = triton_server.run_load(call, make_state, requests=200, concurrency=args.concurrency)  # warm-up
                before = srv.metrics()
                run = triton_server.run_load(call, make_state, requests=args.requests, concurrency=args.concurrency)
                after = srv.metrics()
                key = f'{{model="{name}_{variant}",version="1"}}'
                runs = after[f"nv_inference_exec_count{key}"] - before.get(f"nv_inference_exec_count{key}", 0)
                n = after[f"nv_inference_count{key}"] - before.get(f"nv_inference_count{key}", 0)
                line = run.line(f"{name} triton {args.protocol} {variant}") + f"  ({n / max(runs, 1):.2f} rows/run)"
                if run.errors:
                    line += f"  first error: {run.first_error}"
                lines.append(line)
                print(line, flush=True)
            m = mlrt.load(str(bundle))
            triton_server.run_load(lambda s, i: m.run(x), lambda: None, requests=200, concurrency=args.concurrency)
            run = triton_server.run_load(lambda s, i: m.run(x), lambda: None, requests=args.requests,
                                         concurrency=args.concurrency)
            line = run.line(f"{name} in-process mlrt ({args.concurrency} thr)")
            lines.append(line)
            print(line, flush=True)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
