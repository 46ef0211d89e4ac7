"""The runtime's CUDA backend (device="cuda:N"), testable without a GPU:

- device strings, bundles with cpu / cuda / both targets, and hostile `targets.cuda` manifests;
- the backend itself against a stand-in libcuda.so.1 (FAKE_LIBCUDA below, compiled here and put
  first on LD_LIBRARY_PATH of a child process, so it also shadows a real driver): device memory is host memory and the test bundle's two
  kernels run on the host, so argument tables, buffers, weight offsets, context pooling, graph
  capture/replay, error paths and resource release are all checked for real;
- the same bundles on a real GPU when libcuda.so.1 and a GPU are present (skipped otherwise).

The test model is y = x * w0 + w1 (1000 floats); kernel k0 writes x * w0 into the arena and k1
adds w1 from there, using 64 KiB of dynamic shared memory (above the 48 KiB default, so the
runtime must opt in). The PTX is nvcc's output for it (ISA lowered to 7.0, so older drivers load
it) with the argument-table slots templated, so it fits any manifest `call` order.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mlrt
from mlpack import bundle as bundle_fmt

N = 1000
W0 = np.linspace(-1, 1, N, dtype=np.float32)
W1 = np.full(N, 0.5, np.float32)

PTX_TEMPLATE = """.version 7.0
.target sm_80
.address_size 64

    // .globl    k0
.extern .shared .align 16 .b8 s[];

.visible .entry k0(
    .param .u64 k0_param_0
)
{
    .reg .pred     %p<2>;
    .reg .f32     %f<4>;
    .reg .b32     %r<5>;
    .reg .b64     %rd<13>;


    ld.param.u64     %rd1, [k0_param_0];
    mov.u32     %r2, %ntid.x;
    mov.u32     %r3, %ctaid.x;
    mov.u32     %r4, %tid.x;
    mad.lo.s32     %r1, %r3, %r2, %r4;
    setp.gt.s32     %p1, %r1, 999;
    @%p1 bra     $L__BB0_2;

    cvta.to.global.u64     %rd2, %rd1;
    ld.global.u64     %rd3, [%rd2+@T@];
    cvta.to.global.u64     %rd4, %rd3;
    ld.global.u64     %rd5, [%rd2+@W0@];
    cvta.to.global.u64     %rd6, %rd5;
    ld.global.u64     %rd7, [%rd2+@X@];
    cvta.to.global.u64     %rd8, %rd7;
    mul.wide.s32     %rd9, %r1, 4;
    add.s64     %rd10, %rd8, %rd9;
    add.s64     %rd11, %rd6, %rd9;
    ld.global.f32     %f1, [%rd11];
    ld.global.f32     %f2, [%rd10];
    mul.f32     %f3, %f2, %f1;
    add.s64     %rd12, %rd4, %rd9;
    st.global.f32     [%rd12], %f3;

$L__BB0_2:
    ret;

}
    // .globl    k1
.visible .entry k1(
    .param .u64 k1_param_0
)
{
    .reg .pred     %p<3>;
    .reg .f32     %f<8>;
    .reg .b32     %r<8>;
    .reg .b64     %rd<14>;


    ld.param.u64     %rd4, [k1_param_0];
    cvta.to.global.u64     %rd1, %rd4;
    ld.global.u64     %rd2, [%rd1+@W1@];
    ld.global.u64     %rd3, [%rd1+@Y@];
    mov.u32     %r4, %ntid.x;
    mov.u32     %r5, %ctaid.x;
    mov.u32     %r1, %tid.x;
    mad.lo.s32     %r2, %r5, %r4, %r1;
    setp.gt.s32     %p1, %r2, 999;
    mov.f32     %f7, 0f00000000;
    @%p1 bra     $L__BB1_2;

    ld.global.u64     %rd5, [%rd1+@T@];
    cvta.to.global.u64     %rd6, %rd5;
    mul.wide.s32     %rd7, %r2, 4;
    add.s64     %rd8, %rd6, %rd7;
    ld.global.f32     %f7, [%rd8];

$L__BB1_2:
    shl.b32     %r6, %r1, 2;
    mov.u32     %r7, s;
    add.s32     %r3, %r7, %r6;
    st.shared.f32     [%r3+64000], %f7;
    bar.sync     0;
    @%p1 bra     $L__BB1_4;

    cvta.to.global.u64     %rd9, %rd2;
    mul.wide.s32     %rd10, %r2, 4;
    add.s64     %rd11, %rd9, %rd10;
    ld.global.f32     %f4, [%rd11];
    ld.shared.f32     %f5, [%r3+64000];
    add.f32     %f6, %f5, %f4;
    cvta.to.global.u64     %rd12, %rd3;
    add.s64     %rd13, %rd12, %rd10;
    st.global.f32     [%rd13], %f6;

$L__BB1_4:
    ret;

}
"""


def _has_gpu() -> bool:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def _libcuda_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


HAS_GPU = _has_gpu()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a real NVIDIA GPU and driver (libcuda.so.1)")


def make_ptx(call: list[str], weight_index: dict[str, int]) -> str:
    """The test kernels, reading their pointers from the argument-table slots of this call list."""
    slot = {"x": call.index("input:0"), "w0": call.index(f"weight:{weight_index['w0']}"), "t": call.index("arena"),
            "y": call.index("output:0"), "w1": call.index(f"weight:{weight_index['w1']}")}
    text = PTX_TEMPLATE
    for key, marker in (("x", "@X@"), ("w0", "@W0@"), ("t", "@T@"), ("y", "@Y@"), ("w1", "@W1@")):
        text = text.replace(marker, str(8 * slot[key]))
    layout = " ".join(f"{k}={slot[k]}" for k in ("x", "w0", "t", "y", "w1"))
    return f"// layout {layout}\n" + text  # read by the stand-in driver only


def cuda_target(ptx_section: str = "cuda.ptx", **overrides) -> dict:
    t = {"section": ptx_section, "ptx_isa": "7.0", "min_sm": 80, "min_driver": 11000, "precision": "fp32",
         "arena_bytes": 4 * N, "memory_plan": {"arena_bytes": 4 * N}, "kernels": {"generic": 2},
         "launches": [{"kernel": "k0", "grid": [4, 1, 1], "block": [256, 1, 1], "shared_bytes": 0},
                      {"kernel": "k1", "grid": [4, 1, 1], "block": [256, 1, 1], "shared_bytes": 65536}]}
    t.update(overrides)
    return t


def write_cuda_only(path: Path, edit=None, ptx: bytes | None = None) -> Path:
    """A bundle with only the CUDA target (no cpu.so), written by hand."""
    blob, entries = bundle_fmt.pack_weights([("w0", W0), ("w1", W1)])
    call = ["input:0", "weight:0", "arena", "output:0", "weight:1"]
    manifest = {"format_version": 1, "producer": {"mlpack": "test"},
                "inputs": [{"name": "x", "dtype": "float32", "shape": [N]}],
                "outputs": [{"name": "y", "dtype": "float32", "shape": [N]}], "output_structure": 0,
                "weights": entries, "call": call, "memory_plan": {"arena_bytes": 4 * N},
                "targets": {"cuda": cuda_target()}}
    if edit:
        edit(manifest)
    if ptx is None:
        ptx = make_ptx(call, {"w0": 0, "w1": 1}).encode() + b"\0"
    bundle_fmt.write_bundle(path, manifest, [("weights", blob, 4096), ("cuda.ptx", ptx, 8)])
    return path


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    """The same model built by mlpack for the CPU."""
    import torch
    from torch import nn

    import mlpack

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w0 = nn.Parameter(torch.from_numpy(W0.copy()))
            self.w1 = nn.Parameter(torch.from_numpy(W1.copy()))

        def forward(self, x):
            return x * self.w0 + self.w1

    path = tmp_path_factory.mktemp("cuda_rt") / "cpu.bundle"
    mlpack.build(M().eval(), (torch.zeros(N),), path)
    return path


def add_cuda_target(src: Path, dst: Path, edit=None, ptx: bytes | None = None) -> Path:
    """Copy of a CPU bundle with a cuda.ptx section and targets.cuda added (a cpu,cuda bundle)."""
    info = bundle_fmt.read_bundle(src)
    manifest = json.loads(json.dumps(info.manifest))
    windex = {w["name"]: i for i, w in enumerate(manifest["weights"])}
    manifest["targets"]["cuda"] = cuda_target()
    if edit:
        edit(manifest)
    if ptx is None:
        ptx = make_ptx(manifest["call"], windex).encode() + b"\0"
    sections = [(s.name, bundle_fmt.section_bytes(src, s.name), s.alignment) for s in info.sections
                if s.name != "manifest"]
    bundle_fmt.write_bundle(dst, manifest, sections + [("cuda.ptx", ptx, 8)])
    return dst


@pytest.fixture(scope="module")
def both_bundle(cpu_bundle, tmp_path_factory) -> Path:
    return add_cuda_target(cpu_bundle, tmp_path_factory.mktemp("cuda_rt") / "both.bundle")


def reference(x: np.ndarray) -> np.ndarray:
    return x * W0 + W1


# --------------------------------------------------------------------------- no GPU needed


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1", "cuda:99999", "cuda0", " cpu", ""])
def test_bad_device_string(both_bundle, device):
    with pytest.raises(mlrt.Error, match=r"device must be 'cpu', 'cuda' or 'cuda:N', got '" + re.escape(device) + "'"):
        mlrt.load(both_bundle, device=device)


def test_device_must_be_a_string(both_bundle):
    with pytest.raises(mlrt.Error, match="device must be a string"):
        mlrt.load(both_bundle, device=0)


def test_cpu_path_of_a_cpu_cuda_bundle(both_bundle):
    m = mlrt.load(both_bundle)
    assert m.device == "cpu" and m.device_bytes == 0
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    np.testing.assert_allclose(m.run(x), reference(x), rtol=1e-6, atol=1e-6)
    assert mlrt.load(both_bundle, device="cpu").device == "cpu"


def test_cuda_only_bundle_on_cpu(tmp_path):
    path = write_cuda_only(tmp_path / "cuda.bundle")
    with pytest.raises(mlrt.Error, match=r"no CPU code \(it was built for cuda only\): load it with "
                                         r"device=\"cuda:0\""):
        mlrt.load(path)


def test_cpu_only_bundle_on_cuda(cpu_bundle):
    for device in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(mlrt.Error, match=r"built for cpu only; rebuild with mlpack build --target cuda "
                                             r"\(or cpu,cuda\)"):
            mlrt.load(cpu_bundle, device=device)


@pytest.mark.skipif(_libcuda_loadable(), reason="checks the message on a machine without the NVIDIA driver")
def test_cuda_without_driver_is_a_clear_error(both_bundle, tmp_path):
    for device in ("cuda", "cuda:0"):
        with pytest.raises(mlrt.Error, match=r"device 'cuda:0' needs the NVIDIA driver: libcuda.so.1 could not be "
                                             r"loaded \(.*libcuda.so.1"):
            mlrt.load(both_bundle, device=device)
    with pytest.raises(mlrt.Error, match="needs the NVIDIA driver"):
        mlrt.load(write_cuda_only(tmp_path / "c.bundle"), device="cuda:0")
    assert mlrt.load(both_bundle).run(np.ones(N, np.float32)).shape == (N,)  # the CPU path is unaffected


def _launch(**kw):
    launch = {"kernel": "k0", "grid": [4, 1, 1], "block": [256, 1, 1], "shared_bytes": 0}
    launch.update(kw)
    return lambda m: m["targets"]["cuda"].update(launches=[launch])


def _drop(key):
    return lambda m: m["targets"]["cuda"].pop(key)


@pytest.mark.parametrize("edit, message", [
    (_launch(grid=[0, 1, 1]), r"launches\[0\]: grid must be 3 integers"),
    (_launch(grid=[1 << 31, 1, 1]), "grid must be"),
    (_launch(grid=[1, 65536, 1]), "grid must be"),
    (_launch(grid=[1, 1]), "grid must be"),
    (_launch(grid=[1, 1.5, 1]), "grid must be"),
    (_launch(grid="4"), "grid must be"),
    (_launch(block=[1024, 2, 1]), "at most 1024 threads"),
    (_launch(block=[1 << 40, 1, 1]), "at most 1024 threads"),
    (_launch(block=[1, 1, 65]), "at most 1024 threads"),
    (_launch(block=[-1, 1, 1]), "at most 1024 threads"),
    (_launch(shared_bytes=300000), r"shared_bytes must be in \[0, 228 KiB\]"),
    (_launch(shared_bytes=-1), "shared_bytes"),
    (_launch(kernel="k0; drop"), "kernel name is not an identifier"),
    (_launch(kernel=""), "kernel name is not an identifier"),
    (_launch(kernel=7), "needs string 'kernel'"),
    (lambda m: m["targets"]["cuda"]["launches"][0].pop("kernel"), r"launches\[0\]: needs string 'kernel'"),
    (lambda m: m["targets"]["cuda"]["launches"][1].pop("shared_bytes"), r"launches\[1\]: needs"),
    (lambda m: m["targets"]["cuda"].update(launches={"kernel": "k0"}), "array launches"),
    (lambda m: m["targets"]["cuda"].update(section="nope"), "CUDA section 'nope' is missing"),
    (lambda m: m["targets"]["cuda"].update(section="weights"), "may not be 'weights'"),
    (lambda m: m["targets"]["cuda"].update(ptx_isa="eight"), "ptx_isa must look like '8.0'"),
    (lambda m: m["targets"]["cuda"].update(precision="fp64"), "precision must be"),
    (lambda m: m["targets"]["cuda"].update(min_sm=-80), "min_sm out of range"),
    (lambda m: m["targets"]["cuda"].update(arena_bytes=-1), "targets.cuda.arena_bytes out of range"),
    (lambda m: m["targets"]["cuda"].update(arena_bytes=1 << 41), "targets.cuda.arena_bytes out of range"),
    (_drop("launches"), "targets.cuda needs"),
    (_drop("min_driver"), "targets.cuda needs"),
    (lambda m: m["targets"].update(cuda=[1]), "targets.cuda is not an object"),
    (lambda m: m["targets"]["cuda"].update(sass={"90": "cuda.sm_90"}), "sass section 'cuda.sm_90' is missing"),
    (lambda m: m["targets"]["cuda"].update(sass={"90": "cuda.ptx"}), "'cuda.ptx' is not an ELF cubin"),
    (lambda m: m["targets"]["cuda"].update(sass={"sm90": "cuda.ptx"}), "maps a compute capability"),
    (lambda m: m["targets"]["cuda"].update(sass=["cuda.ptx"]), "sass must be an object"),
])
def test_hostile_cuda_target(both_bundle, cpu_bundle, tmp_path, edit, message):
    dst = add_cuda_target(cpu_bundle, tmp_path / "hostile.bundle", edit)
    for device in ("cpu", "cuda:0"):  # the manifest is validated before any driver is touched
        with pytest.raises(mlrt.Error, match=message):
            mlrt.load(dst, device=device)


@pytest.mark.parametrize("ptx, message", [
    (b".version 7.0\n", "is not NUL-terminated"),
    (b"\0", "is not NUL-terminated"),
    (b"", "is not NUL-terminated"),
    (b".version 7.0\n\xff\xfe\0", "non-ASCII byte at offset 13"),
    (b".version\0 7.0\n\0", "non-ASCII byte at offset 8"),
])
def test_malformed_ptx_section(cpu_bundle, tmp_path, ptx, message):
    dst = add_cuda_target(cpu_bundle, tmp_path / "ptx.bundle", ptx=ptx)
    with pytest.raises(mlrt.Error, match=message):
        mlrt.load(dst)


def test_many_launches_are_bounded(cpu_bundle, tmp_path):
    launch = {"kernel": "k0", "grid": [1, 1, 1], "block": [1, 1, 1], "shared_bytes": 0}
    ok = add_cuda_target(cpu_bundle, tmp_path / "many.bundle",
                         lambda m: m["targets"]["cuda"].update(launches=[launch] * 20000))
    assert mlrt.load(ok).device == "cpu"


# --------------------------------------------------------------------------- the stand-in driver

FAKE_LIBCUDA = r"""/* A stand-in libcuda.so.1 for testing mlrt's CUDA backend on machines without a GPU: device memory
 * is host memory, and the two "kernels" of the test bundle (k0, k1) run on the host. It checks
 * what a real driver would refuse (no current context, capture misuse) and reports leaks at exit.
 * Real bundles: a module whose PTX has no "// layout" line runs the kernels of the CUDA emulation
 * (tests/cuda_emulation) compiled from the same generated source: $FAKE_CUDA_EMULATION/<key>.so,
 * where <key> is the FNV-1a 64 hash of the PTX text (emulate.ptx_key), one at a time.
 * Stream ordering: a device-to-device copy on a stream that has not waited on an event since its
 * last synchronize counts as unordered (fake_cuda_count("dtod_unordered")). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
#define N 1000

static long g_allocs, g_modules, g_retains, g_streams, g_execs, g_graphs, g_events;
static long g_launches, g_graph_launches, g_captures;
static long g_records, g_waits, g_dtod, g_dtod_unordered, g_last_record_stream, g_fail_calls;
static __thread int t_depth; /* context push depth on this thread */
static int g_ctx_token;

static void add(long *c, long v) { __atomic_add_fetch(c, v, __ATOMIC_SEQ_CST); }
static int envi(const char *n, int d) { const char *v = getenv(n); return v ? atoi(v) : d; }
static CUresult fail(const char *fn) {
  const char *f = getenv("FAKE_CUDA_FAIL"); /* "cuStreamSynchronize:700"; "cuMemAlloc_v2:2@1": after 1 call */
  size_t n = strlen(fn);
  if (f && strncmp(f, fn, n) == 0 && f[n] == ':') {
    const char *at = strchr(f + n, '@');
    if (at && __atomic_fetch_add(&g_fail_calls, 1, __ATOMIC_SEQ_CST) < atol(at + 1)) return 0;
    return atoi(f + n + 1);
  }
  return 0;
}
#define FAIL(fn) do { CUresult r_ = fail(fn); if (r_) return r_; } while (0)
#define NEED_CTX() do { if (t_depth <= 0) return 201; } while (0)

static void report(void) {
  if (getenv("FAKE_CUDA_STATS"))
    fprintf(stderr, "FAKE_CUDA_STATS launches=%ld graph_launches=%ld captures=%ld\n", g_launches, g_graph_launches, g_captures);
  if (g_allocs || g_modules || g_retains || g_streams || g_execs || g_graphs || g_events)
    fprintf(stderr, "FAKE_CUDA_LEAK allocs=%ld modules=%ld retains=%ld streams=%ld execs=%ld graphs=%ld events=%ld\n",
            g_allocs, g_modules, g_retains, g_streams, g_execs, g_graphs, g_events);
}

/* Not a driver function: lets a test read the counters (live handles and stream-ordering events). */
long fake_cuda_count(const char *what) {
  static const struct { const char *name; long *v; } all[] = {
    {"allocs", &g_allocs}, {"retains", &g_retains}, {"streams", &g_streams}, {"events", &g_events},
    {"records", &g_records}, {"waits", &g_waits}, {"dtod", &g_dtod}, {"dtod_unordered", &g_dtod_unordered},
    {"last_record_stream", &g_last_record_stream}, {"launches", &g_launches}, {"graph_launches", &g_graph_launches}};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
    if (strcmp(all[i].name, what) == 0) return __atomic_load_n(all[i].v, __ATOMIC_SEQ_CST);
  return -1;
}

CUresult cuInit(unsigned flags) {
  (void)flags;
  atexit(report);
  if (getenv("FAKE_CUDA_NO_DEVICE")) return 100;
  return 0;
}
CUresult cuDriverGetVersion(int *v) { *v = envi("FAKE_CUDA_VERSION", 12040); return 0; }
CUresult cuGetErrorName(CUresult r, const char **s) {
  switch (r) {
    case 0: *s = "CUDA_SUCCESS"; return 0;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 100: *s = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 201: *s = "CUDA_ERROR_INVALID_CONTEXT"; return 0;
    case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; return 0;
    case 700: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; return 0;
    case 900: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; return 0;
  }
  *s = NULL;
  return 1;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
  if (r == 700) { *s = "an illegal memory access was encountered"; return 0; }
  if (r == 2) { *s = "out of memory"; return 0; }
  const char *n;
  if (cuGetErrorName(r, &n)) { *s = NULL; return 1; }
  *s = "fake error";
  return 0;
}
CUresult cuDeviceGetCount(int *c) { *c = envi("FAKE_CUDA_DEVICES", 1); return 0; }
CUresult cuDeviceGet(int *d, int ordinal) {
  if (ordinal >= envi("FAKE_CUDA_DEVICES", 1)) return 101;
  *d = ordinal;
  return 0;
}
CUresult cuDeviceGetName(char *name, int len, int dev) { snprintf(name, (size_t)len, "Fake GPU %d", dev); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
  (void)dev;
  int cc = envi("FAKE_CUDA_CC", 80);
  if (attr == 75) *v = cc / 10;
  else if (attr == 76) *v = cc % 10;
  else if (attr == 97) *v = 99 * 1024;
  else return 1;
  return 0;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; FAIL("cuDevicePrimaryCtxRetain"); *ctx = &g_ctx_token; add(&g_retains, 1); return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; add(&g_retains, -1); return 0; }
CUresult cuCtxPushCurrent_v2(void *ctx) { if (ctx != &g_ctx_token) return 201; t_depth++; return 0; }
CUresult cuCtxPopCurrent_v2(void **ctx) { if (t_depth <= 0) return 201; t_depth--; if (ctx) *ctx = &g_ctx_token; return 0; }

typedef int (*EmulateFn)(const char *, void *const *, const unsigned *, const unsigned *);
typedef struct { char *ptx; int layout[5]; void *emu_lib; EmulateFn emu; } Module;
typedef struct { char name[64]; unsigned shared_limit; const int *layout; EmulateFn emu; } Function;
static pthread_mutex_t g_emu_lock = PTHREAD_MUTEX_INITIALIZER; /* the emulation's thread indices are globals */

static int load_emulation(Module *m, const char *ptx) {
  const char *dir = getenv("FAKE_CUDA_EMULATION");
  if (!dir) return 218;
  unsigned long long h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
  for (const unsigned char *c = (const unsigned char *)ptx; *c; ++c) h = (h ^ *c) * 1099511628211ULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/%016llx.so", dir, h);
  m->emu_lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!m->emu_lib) return 218;
  m->emu = (EmulateFn)dlsym(m->emu_lib, "mlrt_emulate_named");
  return m->emu ? 0 : 218;
}
CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned n, int *opts, void **vals) {
  NEED_CTX();
  const char *ptx = image;
  if (strstr(ptx, "FAKE_JIT_ERROR")) {
    for (unsigned i = 0; i < n; ++i)
      if (opts[i] == 5) strcpy((char *)vals[i], "ptxas fatal   : fake JIT failure at line 1");
    return 218;
  }
  Module *m = calloc(1, sizeof *m);
  m->ptx = strdup(ptx);
  const char *l = strstr(ptx, "// layout ");
  if (!l) {
    int r = load_emulation(m, ptx);
    if (r) { if (m->emu_lib) dlclose(m->emu_lib); free(m->ptx); free(m); return r; }
  } else if (sscanf(l, "// layout x=%d w0=%d t=%d y=%d w1=%d", &m->layout[0], &m->layout[1], &m->layout[2],
                    &m->layout[3], &m->layout[4]) != 5) return 218;
  *mod = m;
  add(&g_modules, 1);
  return 0;
}
CUresult cuModuleUnload(void *mod) {
  Module *m = mod;
  if (m->emu_lib) dlclose(m->emu_lib);
  free(m->ptx);
  free(m);
  add(&g_modules, -1);
  return 0;
}
CUresult cuModuleGetFunction(void **f, void *mod, const char *name) {
  NEED_CTX();
  Module *m = mod;
  char pat[128];
  snprintf(pat, sizeof pat, ".entry %s(", name);
  if (!strstr(m->ptx, pat) || strlen(name) >= 64) return 500;
  Function *fn = calloc(1, sizeof *fn); /* leaked on purpose: handles live as long as the module */
  strcpy(fn->name, name);
  fn->shared_limit = 48 * 1024;
  fn->layout = m->layout;
  fn->emu = m->emu;
  *f = fn;
  return 0;
}
CUresult cuFuncSetAttribute(void *f, int attr, int v) { if (attr != 8) return 1; ((Function *)f)->shared_limit = (unsigned)v; return 0; }

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
  NEED_CTX();
  FAIL("cuMemAlloc_v2");
  void *m = aligned_alloc(256, (n + 255) / 256 * 256 + 256);
  if (!m) return 2;
  memset(m, 0xcd, n);
  *p = (CUdeviceptr)m;
  add(&g_allocs, 1);
  return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { NEED_CTX(); free((void *)p); add(&g_allocs, -1); return 0; }
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) { *f = 1 << 30; *t = 1 << 30; return 0; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { NEED_CTX(); memcpy((void *)d, s, n); return 0; }
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { NEED_CTX(); FAIL("cuMemcpyDtoH_v2"); memcpy(d, (void *)s, n); return 0; }

typedef struct { Function *f; unsigned grid, block, shared; void **args; unsigned grid3[3], block3[3]; } Launch;
typedef struct { int capturing; Launch *rec; int nrec; int waited; } Stream;
typedef struct { void *stream; int recorded; } Event;
typedef struct { Launch *rec; int nrec; } Graph;

CUresult cuStreamCreate(void **s, unsigned flags) {
  NEED_CTX();
  if (flags != 1) return 1;
  *s = calloc(1, sizeof(Stream));
  add(&g_streams, 1);
  return 0;
}
CUresult cuStreamDestroy_v2(void *s) { NEED_CTX(); free(((Stream *)s)->rec); free(s); add(&g_streams, -1); return 0; }
CUresult cuStreamSynchronize(void *s) {
  NEED_CTX();
  FAIL("cuStreamSynchronize");
  if (((Stream *)s)->capturing) return 900;
  ((Stream *)s)->waited = 0;
  return 0;
}
#define NO_CAPTURE(s) do { if (((Stream *)(s))->capturing) return 900; } while (0)
#define IS_SPECIAL(s) ((unsigned long long)(s) <= 2) /* NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD */

CUresult cuEventCreate(void **e, unsigned flags) {
  NEED_CTX();
  FAIL("cuEventCreate");
  if (flags != 2) return 1; /* CU_EVENT_DISABLE_TIMING */
  *e = calloc(1, sizeof(Event));
  add(&g_events, 1);
  return 0;
}
CUresult cuEventDestroy_v2(void *e) { NEED_CTX(); free(e); add(&g_events, -1); return 0; }
CUresult cuEventRecord(void *e, void *s) {
  NEED_CTX();
  FAIL("cuEventRecord");
  if (!IS_SPECIAL(s)) NO_CAPTURE(s);
  ((Event *)e)->stream = s;
  ((Event *)e)->recorded = 1;
  add(&g_records, 1);
  __atomic_store_n(&g_last_record_stream, (long)(unsigned long long)s, __ATOMIC_SEQ_CST);
  return 0;
}
CUresult cuStreamWaitEvent(void *s, void *e, unsigned flags) {
  NEED_CTX();
  if (flags != 0 || IS_SPECIAL(s)) return 1; /* mlrt only makes its own streams wait */
  NO_CAPTURE(s);
  if (((Event *)e)->recorded) ((Stream *)s)->waited = 1;
  add(&g_waits, 1);
  return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *src, size_t n, void *s) { NEED_CTX(); NO_CAPTURE(s); memcpy((void *)d, src, n); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr src, size_t n, void *s) { NEED_CTX(); NO_CAPTURE(s); memcpy(d, (void *)src, n); return 0; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *s) {
  NEED_CTX();
  NO_CAPTURE(s);
  memset((void *)d, v, n);
  return 0;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void *s) {
  NEED_CTX();
  NO_CAPTURE(s);
  add(&g_dtod, 1);
  if (!((Stream *)s)->waited) add(&g_dtod_unordered, 1);
  memcpy((void *)d, (void *)src, n);
  return 0;
}

static void run_kernel(const Launch *l) {
  if (l->f->emu) {
    pthread_mutex_lock(&g_emu_lock);
    if (l->f->emu(l->f->name, l->args, l->grid3, l->block3) != 0) abort(); /* a kernel the library lacks */
    pthread_mutex_unlock(&g_emu_lock);
    add(&g_launches, 1);
    return;
  }
  void **a = l->args;
  const int *o = l->f->layout; /* x w0 t y w1: argument-table slots */
  float *x = a[o[0]], *w0 = a[o[1]], *t = a[o[2]], *y = a[o[3]], *w1 = a[o[4]];
  unsigned threads = l->grid * l->block;
  if (strcmp(l->f->name, "k0") == 0) {
    for (unsigned i = 0; i < threads && i < N; ++i) t[i] = x[i] * w0[i];
  } else if (strcmp(l->f->name, "k1") == 0) {
    for (unsigned i = 0; i < threads && i < N; ++i) y[i] = t[i] + w1[i];
  }
  add(&g_launches, 1);
}

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
  NEED_CTX();
  FAIL("cuLaunchKernel");
  Function *fn = f;
  if (extra || !params || (!fn->emu && (gy != 1 || gz != 1 || by != 1 || bz != 1))) return 1;
  if (shared > fn->shared_limit) return 1; /* CUDA_ERROR_INVALID_VALUE, as a real driver */
  Launch l = {fn, gx, bx, shared, (void **)*(CUdeviceptr *)params[0], {gx, gy, gz}, {bx, by, bz}};
  Stream *s = stream;
  if (s->capturing) {
    s->rec = realloc(s->rec, sizeof(Launch) * (size_t)(s->nrec + 1));
    s->rec[s->nrec++] = l;
    return 0;
  }
  run_kernel(&l);
  return 0;
}
CUresult cuStreamBeginCapture_v2(void *s, int mode) {
  NEED_CTX();
  FAIL("cuStreamBeginCapture_v2");
  if (mode != 1 || ((Stream *)s)->capturing) return 1;
  ((Stream *)s)->capturing = 1;
  return 0;
}
CUresult cuStreamEndCapture(void *stream, void **graph) {
  Stream *s = stream;
  if (!s->capturing) return 1;
  s->capturing = 0;
  Graph *g = calloc(1, sizeof *g);
  g->rec = s->rec;
  g->nrec = s->nrec;
  s->rec = NULL;
  s->nrec = 0;
  *graph = g;
  add(&g_graphs, 1);
  add(&g_captures, 1);
  return 0;
}
CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long flags) {
  (void)flags;
  Graph *g = graph, *e = calloc(1, sizeof *e);
  e->nrec = g->nrec;
  e->rec = malloc(sizeof(Launch) * (size_t)(g->nrec + 1));
  memcpy(e->rec, g->rec, sizeof(Launch) * (size_t)g->nrec);
  *exec = e;
  add(&g_execs, 1);
  return 0;
}
CUresult cuGraphDestroy(void *graph) { Graph *g = graph; free(g->rec); free(g); add(&g_graphs, -1); return 0; }
CUresult cuGraphExecDestroy(void *exec) { Graph *g = exec; free(g->rec); free(g); add(&g_execs, -1); return 0; }
CUresult cuGraphLaunch(void *exec, void *s) {
  NEED_CTX();
  NO_CAPTURE(s);
  Graph *g = exec;
  for (int i = 0; i < g->nrec; ++i) run_kernel(&g->rec[i]);
  add(&g_graph_launches, 1);
  return 0;
}
"""

CHILD = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    import mlrt
    path, device = sys.argv[1], sys.argv[2]
    runs = int(os.environ.get("RUNS", "3"))
    try:
        m = mlrt.load(path, device=device)
    except mlrt.Error as e:
        print("LOAD_ERROR:", e)
        sys.exit(0)
    print("DEVICE", m.device, m.device_bytes)
    w0 = np.linspace(-1, 1, 1000, dtype=np.float32)
    errors = []
    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(runs):
            x = rng.standard_normal(1000).astype(np.float32)
            try:
                y = m.run(x)
            except mlrt.Error as e:
                errors.append(str(e))
                continue
            if not np.allclose(y, x * w0 + 0.5, rtol=1e-6, atol=1e-6):
                errors.append("WRONG RESULT")
    threads = [threading.Thread(target=work, args=(s,)) for s in range(int(os.environ.get("THREADS", "1")))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for e in sorted(set(errors)):
        print("RUN_ERROR:", e)
    print("BYTES", m.device_bytes)
    del m
    print("DONE")
""")


@pytest.fixture(scope="session")
def fake_driver(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("needs a C compiler to build the stand-in libcuda.so.1")
    d = tmp_path_factory.mktemp("fake_cuda")
    (d / "fake_libcuda.c").write_text(FAKE_LIBCUDA)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(d / "libcuda.so.1"), str(d / "fake_libcuda.c"),
                    "-lpthread", "-ldl"], check=True, capture_output=True)
    return d


def run_child(fake_driver: Path, bundle: Path, device: str = "cuda:0", **env) -> tuple[str, str]:
    full = {**os.environ, "LD_LIBRARY_PATH": f"{fake_driver}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            "FAKE_CUDA_STATS": "1", **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(bundle), device], capture_output=True, text=True,
                          timeout=300, env=full)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAKE_CUDA_STATS" in proc.stderr, proc.stderr  # the stand-in, not a real driver, was loaded
    assert "FAKE_CUDA_LEAK" not in proc.stderr, proc.stderr  # every handle and allocation released
    return proc.stdout, proc.stderr


def stats(stderr: str) -> dict[str, int]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("FAKE_CUDA_STATS"))
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


@pytest.mark.parametrize("which", ["cuda_only", "both"])
def test_fake_driver_runs_and_replays_graphs(fake_driver, both_bundle, tmp_path, which):
    bundle = both_bundle if which == "both" else write_cuda_only(tmp_path / "c.bundle")
    out, err = run_child(fake_driver, bundle, RUNS=4)
    assert "DEVICE cuda:0" in out and "RUN_ERROR" not in out and "DONE" in out, out
    weights_bytes = next(s.size for s in bundle_fmt.read_bundle(bundle).sections if s.name == "weights")
    assert int(out.split("DEVICE cuda:0 ")[1].split()[0]) == weights_bytes  # no context before the first run
    assert int(out.split("BYTES ")[1].split()[0]) > weights_bytes + 2 * 4 * N  # + one context
    # one context: captured once, the graph replayed on every run
    assert stats(err) == {"captures": 1, "graph_launches": 4, "launches": 8}


def test_fake_driver_concurrent_runs_pool_contexts(fake_driver, both_bundle):
    out, err = run_child(fake_driver, both_bundle, device="cuda", RUNS=20, THREADS=4)
    assert "RUN_ERROR" not in out and "DONE" in out, out
    s = stats(err)
    assert 1 <= s["captures"] <= 4 and s["graph_launches"] == 80 and s["launches"] == 160


def test_fake_driver_without_graphs(fake_driver, both_bundle):
    out, err = run_child(fake_driver, both_bundle, RUNS=3, MLRT_CUDA_GRAPHS=0)
    assert "RUN_ERROR" not in out and "DONE" in out, out
    assert stats(err) == {"captures": 0, "graph_launches": 0, "launches": 6}


@pytest.mark.parametrize("env, device, message", [
    ({"FAKE_CUDA_NO_DEVICE": 1}, "cuda:0", r"device 'cuda:0' needs a GPU, and the NVIDIA driver sees none \(CUDA error "
                                           r"CUDA_ERROR_NO_DEVICE"),
    ({"FAKE_CUDA_VERSION": 10020}, "cuda:0", r"driver supports CUDA 10.2 \(10020\); this bundle's PTX 7.0 needs "
                                             r"CUDA 11.0 \(11000\) or newer"),
    ({"FAKE_CUDA_CC": 75}, "cuda:0", r"GPU 0 \(Fake GPU 0\) has compute capability 7.5; this bundle needs 8.0 or "
                                     r"newer"),
    ({}, "cuda:1", r"device 'cuda:1': no such GPU: this machine has 1 CUDA GPU\(s\) \(cuda:0\)"),
    ({"FAKE_CUDA_DEVICES": 3}, "cuda:3", r"has 3 CUDA GPU\(s\) \(cuda:0..cuda:2\)"),
    ({"FAKE_CUDA_FAIL": "cuMemAlloc_v2:2"}, "cuda:0", r"CUDA error CUDA_ERROR_OUT_OF_MEMORY \(out of memory\) in "
                                                      r"cuMemAlloc \(weights\)"),
    ({"FAKE_CUDA_FAIL": "cuDevicePrimaryCtxRetain:201"}, "cuda:0", "CUDA_ERROR_INVALID_CONTEXT.* in "
                                                                   "cuDevicePrimaryCtxRetain"),
])
def test_fake_driver_load_errors(fake_driver, both_bundle, env, device, message):
    out, _ = run_child(fake_driver, both_bundle, device=device, **env)
    assert "LOAD_ERROR" in out, out
    assert re.search(message, out), out


def test_fake_driver_jit_log_and_missing_kernel(fake_driver, cpu_bundle, tmp_path):
    bad = add_cuda_target(cpu_bundle, tmp_path / "jit.bundle", ptx=b"// FAKE_JIT_ERROR\n.version 7.0\n\0")
    out, _ = run_child(fake_driver, bad)
    assert "could not load the bundle's PTX (ISA 7.0, sm_80) on GPU 0 (Fake GPU 0): CUDA error " \
           "CUDA_ERROR_INVALID_PTX" in out and "JIT log:\nptxas fatal   : fake JIT failure at line 1" in out, out
    missing = add_cuda_target(cpu_bundle, tmp_path / "k9.bundle",
                              lambda m: m["targets"]["cuda"]["launches"].append(
                                  {"kernel": "k9", "grid": [1, 1, 1], "block": [32, 1, 1], "shared_bytes": 0}))
    out, _ = run_child(fake_driver, missing)
    assert "launches[2] names kernel 'k9', which the PTX does not define" in out, out


@pytest.mark.parametrize("env, message", [
    ({"FAKE_CUDA_FAIL": "cuStreamSynchronize:700"},
     "device 'cuda:0': CUDA error CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered) in "
     "cuStreamSynchronize"),
    ({"FAKE_CUDA_FAIL": "cuLaunchKernel:700"}, "in cuLaunchKernel"),
    ({"FAKE_CUDA_FAIL": "cuLaunchKernel:700", "MLRT_CUDA_GRAPHS": 0}, "in cuLaunchKernel"),
    ({"FAKE_CUDA_FAIL": "cuStreamBeginCapture_v2:900"}, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"),
])
def test_fake_driver_run_errors_release_everything(fake_driver, both_bundle, env, message):
    out, _ = run_child(fake_driver, both_bundle, RUNS=2, **env)
    assert "RUN_ERROR: " in out and message in out and "DONE" in out, out


# --------------------------------------------------------------------------- a real GPU


@needs_gpu
def test_gpu_matches_cpu(both_bundle, tmp_path):
    cpu = mlrt.load(both_bundle)
    gpu = mlrt.load(both_bundle, device="cuda")
    assert gpu.device == "cuda:0" and gpu.device_bytes > 0
    rng = np.random.default_rng(1)
    for _ in range(3):  # the first run captures the graph, the others replay it
        x = rng.standard_normal(N).astype(np.float32)
        np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-6, atol=1e-6)
    only = mlrt.load(write_cuda_only(tmp_path / "c.bundle"), device="cuda:0")
    x = rng.standard_normal(N).astype(np.float32)
    np.testing.assert_allclose(only.run(x), reference(x), rtol=1e-6, atol=1e-6)


@needs_gpu
def test_gpu_concurrent_runs(both_bundle):
    import threading

    gpu = mlrt.load(both_bundle, device="cuda:0")
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(50):
            x = rng.standard_normal(N).astype(np.float32)
            if not np.allclose(gpu.run(x), reference(x), rtol=1e-6, atol=1e-6):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors


@needs_gpu
def test_gpu_without_graphs(both_bundle):
    env = {**os.environ, "MLRT_CUDA_GRAPHS": "0"}
    code = ("import sys, numpy as np, mlrt; m = mlrt.load(sys.argv[1], device='cuda:0'); x = np.ones(1000, np.float32);"
            "w0 = np.linspace(-1, 1, 1000, dtype=np.float32); assert np.allclose(m.run(x), w0 + 0.5); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(both_bundle)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@needs_gpu
def test_gpu_missing_kernel_and_bad_device(cpu_bundle, both_bundle, tmp_path):
    missing = add_cuda_target(cpu_bundle, tmp_path / "k9.bundle",
                              lambda m: m["targets"]["cuda"]["launches"].append(
                                  {"kernel": "k9", "grid": [1, 1, 1], "block": [32, 1, 1], "shared_bytes": 0}))
    with pytest.raises(mlrt.Error, match="names kernel 'k9', which the PTX does not define"):
        mlrt.load(missing, device="cuda:0")
    with pytest.raises(mlrt.Error, match="no such GPU: this machine has"):
        mlrt.load(both_bundle, device="cuda:999")
