"""Each conv, pool and Linear of a corpus model alone: mlrt against ONNX Runtime, in one process.

    python benchmarks/layer_compare.py tv_squeezenet [--repeats 300]
    python benchmarks/layer_compare.py zoo:mobilenet_v2     # a zoo model (tests/zoo.py)

Finds where a model loses to ORT. Every distinct (module, input shape) of the model's Conv2d
(followed by a ReLU, which both runtimes fuse), MaxPool2d, AvgPool2d and Linear is built as a
model of its own, then timed interleaved with ORT at 2 threads each (`--threads`) (min over the calls). Each
row includes one run's fixed cost in both runtimes (about 3 us for mlrt and 7 us for ORT here),
so rows of tiny layers favour mlrt. Prints one row per layer, the call count, and the sums.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

_TIMED = ("Conv2d", "MaxPool2d", "AvgPool2d", "Linear")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a corpus model name (tests/corpus.py), or zoo:NAME (tests/zoo.py)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2, help="threads for each runtime (1: kernel efficiency alone)")
    args = ap.parse_args()

    import torch

    import corpus
    import mlpack
    import mlrt
    from bench import _onnx_session, _time_interleaved

    torch.set_num_threads(args.threads)
    if args.model.startswith("zoo:"):
        import zoo

        model, inputs = zoo.make(args.model[4:])
    else:
        model, inputs = corpus.make(args.model)
    model.eval()
    layers: dict = {}  # (repr, input shape) -> [module, shape, calls]

    def record(mod, inp, _out):
        key = (repr(mod), tuple(inp[0].shape))
        layers.setdefault(key, [mod, tuple(inp[0].shape), 0])[2] += 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if type(m).__name__ in _TIMED]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()

    sums = {"mlrt": 0.0, "ort": 0.0}
    with tempfile.TemporaryDirectory(prefix="mlpack-layers-") as tmp:
        for i, ((text, _), (mod, shape, calls)) in enumerate(layers.items()):
            alone = torch.nn.Sequential(mod, torch.nn.ReLU()) if isinstance(mod, torch.nn.Conv2d) else mod
            x = torch.randn(shape)
            bundle = Path(tmp) / f"{i}.bundle"
            mlpack.build(alone, (x,), bundle)
            runner, xn = mlrt.load(bundle, num_threads=args.threads), x.numpy()
            sess = _onnx_session(alone, (x,), Path(tmp) / f"{i}.onnx", args.threads)
            fns = {"mlrt": lambda: runner.run(xn)}
            if sess is not None:
                feed = {sess.get_inputs()[0].name: xn}
                fns["ort"] = lambda: sess.run(None, feed)
            with torch.inference_mode():
                times = _time_interleaved(fns, args.repeats, budget_s=10.0)
            best = {k: min(v) * 1e3 for k, v in times.items()}  # us
            for k in sums:
                sums[k] += best.get(k, float("nan")) * calls
            ratio = best["mlrt"] / best["ort"] if "ort" in best else float("nan")
            print(f"{i:3d} x{calls} {str(shape):22s} {text[:58]:58s} mlrt {best['mlrt']:7.1f} us  "
                  f"ort {best.get('ort', float('nan')):7.1f} us  {ratio:5.2f}", flush=True)
    print(f"sum over calls: mlrt {sums['mlrt']:.1f} us, ort {sums['ort']:.1f} us")


if __name__ == "__main__":
    main()
