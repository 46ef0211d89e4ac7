"""The main job, end to end: export the sample model, compile it with `mlpack build`, run the
bundle with mlrt, and compare output and latency with eager PyTorch (same process, interleaved)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mlrt

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from sample_net import make  # noqa: E402


def main() -> None:
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    model, inputs = make()

    # 1. Save the model the way PyTorch users do: torch.export.save -> sample_net.pt2
    torch.export.save(torch.export.export(model, inputs), out / "sample_net.pt2")

    # 2. Compile it: one self-contained bundle (code + weights + memory plan + signature)
    subprocess.run([sys.executable, "-m", "mlpack.cli", "build", str(out / "sample_net.pt2"),
                    "-o", str(out / "sample_net.bundle")], check=True)

    # 3. Run it with mlrt (numpy in, numpy out) and check it against eager PyTorch
    bundle = mlrt.load(out / "sample_net.bundle")
    x = inputs[0].numpy()
    y = bundle.run(x)
    with torch.inference_mode():
        ref = model(*inputs).numpy()
    err = float(np.abs(y - ref).max())
    print(f"\nmlrt output  : {np.array2string(y[0, :5], precision=5)} ...")
    print(f"torch output : {np.array2string(ref[0, :5], precision=5)} ...")
    print(f"max abs diff : {err:.2e}  ({'OK' if err <= 1e-4 * max(1, np.abs(ref).max()) else 'MISMATCH'})")

    # 4. Latency: blocks of 40 runs of each runtime in turn (both see the same machine load), the
    # first 10 of each block untimed: right after a switch the other runtime's thread pool is still
    # spinning on the same 2 cores (libgomp spins for a while after each parallel region).
    torch.set_num_threads(2)
    t_mlrt, t_torch = [], []

    def block(fn, into):
        for i in range(40):
            t0 = time.perf_counter()
            fn()
            if i >= 10:
                into.append((time.perf_counter() - t0) * 1e3)

    with torch.inference_mode():
        for _ in range(3):
            block(lambda: bundle.run(x), t_mlrt)
            block(lambda: model(*inputs), t_torch)
    print(f"\nlatency (batch 1, ms)   min     median")
    print(f"  mlrt              {min(t_mlrt):8.3f} {statistics.median(t_mlrt):8.3f}")
    print(f"  torch eager (2t)  {min(t_torch):8.3f} {statistics.median(t_torch):8.3f}")
    print(f"  mlrt / torch      {min(t_mlrt) / min(t_torch):8.2f}x {statistics.median(t_mlrt) / statistics.median(t_torch):8.2f}x")
    if err > 1e-4 * max(1, np.abs(ref).max()):
        sys.exit(1)


if __name__ == "__main__":
    main()
