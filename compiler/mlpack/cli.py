"""The `mlpack` command line: build, inspect, run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .errors import BuildError


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlpack-mlrt")
def main() -> None:
    """mlpack: compile PyTorch models into self-contained mlrt bundles."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bundle to write (default: MODEL with suffix .bundle).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="SHAPE[:DTYPE]",
              help="Shape of an input, e.g. 1x3x224x224:float32; once per input, in order. "
                   "Needed for TorchScript and pickled models, which do not record shapes.")
@click.option("--example-inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npy (one input) or .npz (inputs in order) fixing input shapes and dtypes.")
@click.option("--dynamic", "dynamic", multiple=True, metavar="INPUT:DIM=[NAME:]MIN..MAX",
              help="A bounded dynamic dim, e.g. x:0=1..32 or ids:1=seq:1..128 (INPUT: name or position; dims "
                   "sharing a NAME are equal). A .pt2 exported with dynamic_shapes brings its own.")
@click.option("--buckets", "buckets", multiple=True, metavar="DIM=N,N,...",
              help="Sizes of a dynamic dim that get their own static program, e.g. x:0=1,8,32 or batch=1,8,32 "
                   "(default: powers of two and both bounds).")
@click.option("--target", default="cpu", show_default=True, help="Code to generate: cpu, cuda or cpu,cuda.")
@click.option("--cpu", default=None,
              help="cpu: level(s) to compile for, comma-separated: x86-64, x86-64-v2, x86-64-v3 (default, AVX2+FMA); "
                   "aarch64 (any 64-bit ARM), armv8.2-a, armv8.2-a+dotprod, cortex-a72, cortex-a76, cortex-a78, "
                   "neoverse-n1, neoverse-v1 (needs an aarch64 C cross compiler). Several levels give one bundle "
                   "with a code variant each, e.g. x86-64-v3,aarch64: mlrt runs the first one its CPU can.")
@click.option("--winograd/--no-winograd", default=True, show_default=True,
              help="cpu: run 3x3 stride-1 convs as Winograd F(4x4,3x3) or F(2x2,3x3): faster, but those weights take 4x or 16/9 the bytes.")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="cuda: operand precision of matmul/conv (tf32/fp16/bf16 use tensor cores, fp32 accumulation).")
@click.option("--cuda-arch", type=int, default=None, help="cuda: minimum compute capability, e.g. 80 (default) or 90.")
@click.option("--cuda-sass", default="80,90", show_default=True,
              help="cuda: architectures to ship machine code for besides the PTX (no JIT at load), or 'none'; "
                   "e.g. 80,87,90 adds Jetson Orin (sm_87).")
@click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), help="Write the IR after each stage here.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Show the full traceback of errors.")
def build(model, output, input_shapes, example_inputs, dynamic, buckets, target, cpu, winograd, precision, cuda_arch,
          cuda_sass, dump_ir, quiet, verbose):
    """Compile MODEL into one bundle file.

    MODEL is a torch.export program (.pt2, torch.export.save), a TorchScript file (torch.jit.save)
    or a pickled nn.Module (torch.save). Warning: loading a pickled module runs code from the file:
    only build models you trust.
    """
    import warnings

    from .build import build as do_build

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch-internal deprecation noise

    output = output or model.with_suffix(".bundle")
    examples = None
    if example_inputs:
        from .frontend.export import load_example_inputs

        examples = load_example_inputs(example_inputs)
    say = (lambda *a, **k: None) if quiet else click.echo
    t0 = time.perf_counter()

    def progress(stage: str, secs: float) -> None:
        say(f"  {stage:<8} {secs:6.2f} s")

    say(f"building {model} -> {output}")
    try:
        try:
            sass = [] if cuda_sass.strip().lower() in ("", "none") else [int(a) for a in cuda_sass.split(",")]
        except ValueError:
            raise BuildError(f"--cuda-sass takes compute capabilities like 80,90 (or none), got {cuda_sass!r}") from None
        result = do_build(str(model), examples, output, target, cpu=cpu, precision=precision, cuda_arch=cuda_arch,
                          cuda_sass=sass, winograd=winograd, input_shapes=input_shapes or None, progress=progress,
                          dump_ir=dump_ir, dynamic=list(dynamic) or None, buckets=list(buckets) or None)
    except BuildError as e:
        if verbose:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    plan = result.memory_plan
    folded = result.manifest.get("graph_passes", {})
    say(f"graph: {folded.get('batchnorm_folded', 0)} BatchNorm folded into convs, "
        f"{folded.get('constants_folded', 0)} weight-only subgraphs precomputed")
    for name, t in result.manifest["targets"].items():
        kernels = t.get("kernels", {})
        if name == "cuda":
            say(f"cuda: {_describe_cuda(t)}; kernels: {', '.join(f'{k} x{v}' for k, v in sorted(kernels.items()))}")
        else:
            say(f"cpu: {sum(kernels.values())} ops on microkernels")
    for line in _describe_dynamic(result.manifest):
        say(line)
    say(f"memory plan: arena {_mib(plan['arena_bytes'])} | sum of buffers {_mib(plan['sum_bytes'])} | "
        f"live-bytes lower bound {_mib(plan['lower_bound_bytes'])} ({len(plan['buffers'])} buffers, "
        f"{plan['algorithm']})")
    say(f"wrote {output}: {_mib(result.bundle_bytes)} in {time.perf_counter() - t0:.1f} s")


@main.command("triton-repo")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository folder (created; other models in it are left alone).")
@click.option("--name", default=None, help="Model name in Triton (default: the bundle's file name without suffix).")
@click.option("--instances", default=1, show_default=True, type=int,
              help="Model instances (threads serving requests); they share one loaded bundle.")
@click.option("--max-batch", "max_batch", default=None, type=int,
              help="Triton max_batch_size (default: the bundle's dynamic batch dim max, else 0; 0 turns batching off).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Instance kind; gpu needs a bundle built with --target cuda (untested here).")
@click.option("--threads", default=None, type=int, help="mlrt threads per run (default: physical cores).")
@click.option("--version", "version", default=1, show_default=True, type=int, help="Model version folder.")
@click.option("--backend", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="libtriton_mlrt.so to copy (default: the one inside the installed mlrt package).")
def triton_repo(bundle, repo, name, instances, max_batch, kind, threads, version, backend):
    """Write a Triton Inference Server model repository serving BUNDLE with the mlrt backend.

    Then: tritonserver --model-repository REPO (docs/serving.md).
    """
    from .triton_repo import TritonRepoError, write_repo

    try:
        folder = write_repo(bundle, repo, name=name, instances=instances, max_batch=max_batch, kind=kind,
                            threads=threads, version=version, backend=backend)
    except TritonRepoError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    config = (folder / "config.pbtxt").read_text()
    batching = any(line.startswith("max_batch_size:") for line in config.splitlines())
    click.echo(f"wrote {folder}/ (config.pbtxt, {version}/model.bundle, libtriton_mlrt.so)"
               + ("; dynamic batching on" if batching else "; one request per run"))
    click.echo(f"serve it: tritonserver --model-repository {repo}")


@main.command()
@click.argument("private_key", type=click.Path(dir_okay=False, path_type=Path))
def keygen(private_key):
    """Create an Ed25519 signing key: PRIVATE_KEY (PEM) and PRIVATE_KEY.pub (public, hex)."""
    from .bundle.signing import keygen as do_keygen

    try:
        priv, pub = do_keygen(private_key)
    except BuildError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"wrote {priv} (keep it secret) and {pub} (give it to mlrt.load(..., public_key=...))")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM), e.g. from `mlpack keygen`.")
def sign(bundle, key):
    """Sign BUNDLE in place with an Ed25519 key (adds a `signature` section)."""
    from .bundle.signing import sign as do_sign

    try:
        public = do_sign(bundle, key)
    except (BuildError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"signed {bundle} (public key {public.hex()})")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the live-memory picture of the plan (PNG/SVG; needs matplotlib).")
def inspect(bundle, as_json, plot):
    """Show a bundle's signature, targets, sections and memory plan."""
    from .bundle import read_bundle

    try:
        info = read_bundle(bundle)
    except ValueError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    m = info.manifest
    if as_json:
        click.echo(json.dumps(m, indent=1))
        return
    click.echo(f"bundle {bundle}: format v{info.format_version}, {_mib(info.file_size)}")
    click.echo("producer: " + ", ".join(f"{k} {v}" for k, v in m["producer"].items()))
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}:")
        for t in m[kind]:
            model_dtype = f" (model: {t['torch_dtype']})" if t.get("torch_dtype") else ""
            click.echo(f"  {t['name']}: {t['dtype']}{t['shape']}{model_dtype}")
    click.echo(f"returns: {_describe_structure(m.get('output_structure', 0), m['outputs'])}")
    for mut in m.get("input_mutations", []):
        click.echo(f"updates in place: input {m['inputs'][mut['input']]['name']} <- {m['outputs'][mut['output']]['name']}")
    for name, t in m["targets"].items():
        if name == "cuda":
            click.echo(f"target cuda: {_describe_cuda(t)}")
        elif "variants" in t:
            click.echo(f"target {name}: {len(t['variants'])} code variants, the first this CPU can run is used:")
            for v in t["variants"]:
                section = f" in {v['section']}" if "section" in v else ""
                click.echo(f"  {v['cpu']} ({v['arch']}){section} needs [{', '.join(v.get('features', []))}]"
                           + _describe_kernel_isas(v))
        else:
            arch = f" ({t['arch']})" if t.get("arch") else ""
            click.echo(f"target {name}: {t.get('cpu', '')}{arch} needs [{', '.join(t.get('features', []))}]"
                       + _describe_kernel_isas(t))
    click.echo("sections:")
    for s in info.sections:
        click.echo(f"  {s.name:<10} {s.size:>12,d} bytes at {s.offset:#x}  sha256 {s.sha256.hex()[:16]}…")
    for line in _describe_dynamic(m):
        click.echo(line)
    plan = m["memory_plan"]
    click.echo(f"memory plan{' (largest program)' if m.get('programs') else ''}: arena {_mib(plan['arena_bytes'])}, sum {_mib(plan['sum_bytes'])}, "
               f"lower bound {_mib(plan['lower_bound_bytes'])}, {len(plan['buffers'])} buffers ({plan['algorithm']})")
    stored: dict[str, int] = {}  # bytes per stored dtype (fp16/bf16 CUDA bundles: GEMM/conv weights halved)
    for w in m["weights"]:
        stored[w["dtype"]] = stored.get(w["dtype"], 0) + w["nbytes"]
    by_dtype = f" ({', '.join(f'{d} {_mib(n)}' for d, n in sorted(stored.items()))})" if len(stored) > 1 else ""
    click.echo(f"weights: {len(m['weights'])} tensors, {_mib(sum(stored.values()))}{by_dtype}")
    for name, t in m["targets"].items():
        kernels = t.get("kernels") or {}
        click.echo(f"kernels ({name}): " + (", ".join(f"{k} x{v}" for k, v in sorted(kernels.items()))
                                            or "none (all loops generated by MLIR)"))
    signed = any(s.name == "signature" for s in info.sections)
    click.echo(f"signature: {'Ed25519 (verify with mlrt.load(..., public_key=...))' if signed else 'none'}")
    if plot:
        _plot_memory(plan, bundle.name, plot)
        click.echo(f"wrote {plot}")


def _describe_dynamic(m: dict) -> list[str]:
    """Dynamic dims, their buckets and padding, and each program's arena (format version 2)."""
    if not m.get("programs"):
        return []
    lines = []
    for d in m.get("dynamic_dims", []):
        how = ("sizes between buckets run padded on the next bucket" if d.get("padding") is not None
               else f"only bucket sizes run (not padded: {d.get('not_padded', 'unknown')})")
        lines.append(f"dynamic dim {d['name']}: {d['min']}..{d['max']}, buckets {d['buckets']}; {how}")
    arenas = [p["arena_bytes"] for p in m["programs"]]
    lines.append(f"programs: {len(m['programs'])}, one per bucket combination; arena {_mib(max(arenas))} "
                 f"(the largest program's)")
    for p in m["programs"]:
        sizes = ", ".join(f"{k}={v}" for k, v in p["sizes"].items())
        line = f"  {sizes:<24} {p.get('section', '-'):<8} arena {_mib(p['arena_bytes'])}, " \
               f"{sum(p.get('kernels', {}).values())} kernel calls"
        if "cuda" in p:
            cuda = p["cuda"]
            sass = ", ".join("sm_" + k for k in cuda.get("sass", {})) or "PTX only"
            line += (f"; {cuda['section']}: {len(cuda['launches'])} launches, device arena "
                     f"{_mib(cuda['arena_bytes'])}, {sass}")
        lines.append(line)
    return lines


def _describe_structure(node, outputs: list[dict]) -> str:
    """The manifest's `output_structure` as Python-like text with output names: `(output_0, None, max(values=output_1, ...))`."""
    if isinstance(node, int):
        return outputs[node]["name"] if 0 <= node < len(outputs) else f"<output {node}?>"
    kind = node.get("type")
    if kind == "none":
        return "None"
    if kind == "float":
        return repr(float(node["value"]))
    if kind in ("bool", "int", "str"):
        return repr(node["value"])
    items = [_describe_structure(n, outputs) for n in node.get("items", [])]
    if kind == "tuple":
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if kind == "list":
        return f"[{', '.join(items)}]"
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(node["keys"], items)) + "}"
    if kind == "namedtuple":
        name = node.get("class", "").rsplit(".", 1)[-1]
        return f"{name}(" + ", ".join(f"{f}={v}" for f, v in zip(node["fields"], items)) + ")"
    return f"<{kind}>"


def _describe_kernel_isas(t: dict) -> str:
    isas = t.get("kernel_isas") or []
    if len(isas) > 1:
        return f"; kernels: {' or '.join(isas)}, the best this CPU runs picked at run time"
    return f"; kernels: {isas[0]}" if isas else ""


def _describe_cuda(t: dict) -> str:
    """One line about a bundle's CUDA target (manifest targets.cuda), for build and inspect."""
    head = f"PTX ISA {t['ptx_isa']} for sm_{t['min_sm']}+ (driver >= {t['min_driver']}), precision {t['precision']}"
    if "launches" not in t:  # a dynamic bundle: the code is per program (programs[i].cuda)
        return f"{head}, one CUDA program per bucket combination (below)"
    sass = ", ".join("sm_" + k for k in t.get("sass", {})) or "none (PTX JIT only)"
    return (f"{head}, {len(t['launches'])} launches, device arena {_mib(t['arena_bytes'])}, "
            f"machine code for {sass}")


def _plot_memory(plan: dict, title: str, out: Path) -> None:
    """Arena offset (y) against program step (x), one rectangle per buffer, plus live bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        click.echo("error: --plot needs matplotlib: pip install matplotlib", err=True)
        sys.exit(1)
    buffers = plan["buffers"]
    steps = max((b["last"] for b in buffers), default=0) + 1
    live = [0] * steps
    for b in buffers:
        for t in range(b["first"], b["last"] + 1):
            live[t] += b["size"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for b in buffers:
        ax.add_patch(plt.Rectangle((b["first"], b["offset"] / 2**20), b["last"] - b["first"] + 1, b["size"] / 2**20,
                                   alpha=0.6, edgecolor="black", linewidth=0.3))
    ax.set_xlim(0, steps)
    ax.set_ylim(0, max(plan["arena_bytes"], 1) / 2**20 * 1.05)
    ax.set_ylabel("arena offset (MiB)")
    ax.set_title(f"{title}: arena {_mib(plan['arena_bytes'])}, sum {_mib(plan['sum_bytes'])}, "
                 f"lower bound {_mib(plan['lower_bound_bytes'])}")
    ax2.plot(range(steps), [v / 2**20 for v in live])
    ax2.set_ylabel("live MiB")
    ax2.set_xlabel("program step")
    fig.tight_layout()
    fig.savefig(out)


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npy file per input, in order.")
@click.option("--random", "use_random", is_flag=True, help="Feed seeded random inputs of the right signature.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=N",
              help="Size of a dynamic dim for the random inputs (default: its upper bound), e.g. batch=4.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write outputs to .npz / .npy.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (a bundle built with --target cuda).")
def run(bundle, inputs, use_random, dims, output, device):
    """Run BUNDLE with mlrt on .npy inputs (or --random) and print or save the outputs."""
    import numpy as np

    import mlrt

    try:
        model = mlrt.load(bundle, device=device)
        if use_random:
            arrays = _random_inputs(model, dims)
        else:
            arrays = [np.load(p) for p in inputs]
        t0 = time.perf_counter()
        outs = model.run_flat(*arrays)
        elapsed = time.perf_counter() - t0
    except mlrt.Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if output:
        if output.suffix == ".npy" and len(outs) == 1:
            np.save(output, outs[0])
        else:
            np.savez(output, **{s.name: o for s, o in zip(model.outputs, outs)})
        click.echo(f"wrote {output}")
    for s, o in zip(model.outputs, outs):
        click.echo(f"{s.name}: {o.dtype}{list(o.shape)} min {o.min():.6g} max {o.max():.6g} mean {o.mean():.6g}")
    click.echo(f"run took {elapsed * 1e3:.2f} ms")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--iterations", default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs first.")
@click.option("--threads", default=0, help="Threads per run (default: physical cores).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (a bundle built with --target cuda).")
@click.option("--compare", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A model file (.pt2 / TorchScript / pickled nn.Module) to run in eager PyTorch on the same inputs.")
@click.option("--cold/--no-cold", default=True, show_default=True,
              help="Also measure cold start (process start -> first result) and peak RSS in a fresh process.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=N",
              help="Size of a dynamic dim for the random inputs (default: its upper bound), e.g. batch=4.")
def bench(bundle, iterations, warmup, threads, device, compare, cold, dims):
    """Latency (min / median / p99), throughput, cold start and peak RSS of BUNDLE with mlrt."""
    import statistics
    import subprocess

    import mlrt

    try:
        model = mlrt.load(bundle, num_threads=threads, device=device)
        arrays = _random_inputs(model, dims)
    except mlrt.Error as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    runners = {"mlrt": lambda: model.run_flat(*arrays)}
    if compare:
        runners["eager"] = _eager_runner(compare, arrays, model.num_threads, device)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    for _ in range(iterations):  # interleaved, so both see the same machine load
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    click.echo(f"{bundle}: {iterations} runs after {warmup} warm-up, {model.num_threads} thread(s)")
    for k, t in times.items():
        t = sorted(t)
        p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
        click.echo(f"  {k:<6} min {t[0]:9.3f} ms  median {statistics.median(t):9.3f} ms  p99 {p99:9.3f} ms  "
                   f"throughput {1e3 / statistics.median(t):9.1f} /s")
    if compare:
        ratio_min = min(times["mlrt"]) / min(times["eager"])
        ratio_med = statistics.median(times["mlrt"]) / statistics.median(times["eager"])
        click.echo(f"  mlrt / eager: {ratio_min:.2f}x (min), {ratio_med:.2f}x (median)")
    if cold:
        code = ("import sys, numpy as np, mlrt\n"
                "m = mlrt.load(sys.argv[1], device=sys.argv[2])\n"
                "m.run_flat(*[np.zeros(s.max_shape, s.dtype) for s in m.inputs])\n"
                "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
        best, rss = float("inf"), 0
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, str(bundle), device], capture_output=True, text=True)
            best = min(best, (time.perf_counter() - t0) * 1e3)
            if proc.returncode != 0:
                click.echo(f"error: cold-start process failed: {proc.stderr.strip()}", err=True)
                sys.exit(1)
            rss = int(proc.stdout.split()[-1]) / 1024
        click.echo(f"  cold start (python process start -> first result): {best:.0f} ms; peak RSS {rss:.0f} MiB")


def _random_inputs(model, dims=()):
    """Seeded inputs of the model's signature: normal floats, zeros elsewhere (valid indices).
    `dims`: "NAME=N" sizes of dynamic dims; the others take their upper bound."""
    import numpy as np

    import mlrt

    sizes = {}
    for spec in dims:
        name, _, n = spec.partition("=")
        if not n.isdigit():
            raise mlrt.Error(f"--dim {spec!r}: expected NAME=N, e.g. batch=4")
        sizes[name] = int(n)
    known = {d for s in model.inputs for d in s.shape if isinstance(d, str)}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise mlrt.Error(f"--dim: the bundle has no dynamic dim {', '.join(unknown)} "
                         f"(its dynamic dims: {', '.join(sorted(known)) or 'none'})")
    rng = np.random.default_rng(0)
    out = []
    for s in model.inputs:
        shape = [sizes.get(d, hi) if isinstance(d, str) else d for d, hi in zip(s.shape, s.max_shape)]
        out.append(rng.standard_normal(shape).astype(s.dtype) if s.dtype.kind == "f" else np.zeros(shape, s.dtype))
    return out


def _eager_runner(path: Path, arrays, threads: int, device: str = "cpu"):
    """Eager PyTorch on the same inputs and device; like mlrt, numpy in and numpy out."""
    import warnings

    import torch

    from .frontend.export import load_model

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(a) for a in arrays]
    ep = load_model(path, tensors)
    module = ep.module()
    if device == "cpu":
        def run():
            with torch.inference_mode():
                return module(*tensors)

        return run
    if not torch.cuda.is_available():
        click.echo(f"error: --compare on {device} needs PyTorch with CUDA", err=True)
        sys.exit(1)
    dev = torch.device("cuda:0" if device == "cuda" else device)
    module = module.to(dev)

    def run_gpu():
        with torch.inference_mode():
            out = module(*[t.to(dev) for t in tensors])
            return [o.cpu() for o in torch.utils._pytree.tree_leaves(out)]

    return run_gpu


if __name__ == "__main__":
    main()
