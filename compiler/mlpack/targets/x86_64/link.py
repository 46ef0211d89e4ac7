"""The x86-64 shared object: the model's objects linked with the C microkernels (targets/cpu_kernels/*.c,
shared with aarch64: AVX2 / AVX-512F blocks here) and memrefCopy by the system C compiler ($CC,
default cc), with -march at the bundle's level (lower/native_link.py does the work and caches the
kernel objects)."""

from __future__ import annotations

import os
from pathlib import Path

from ...lower.native_link import link_shared_object

# The CPU targets' one set of kernel sources (a folder of C, not a target: no target imports another).
KERNELS_DIR = Path(__file__).parent.parent / "cpu_kernels"
# The microkernels cpu_kernels/*.c define (mlrt_kernels.h): the generated code may call these.
KERNELS = frozenset({"mlrt_matmul_f32", "mlrt_conv2d_f32", "mlrt_conv2d_packed_f32", "mlrt_depthwise_conv2d_f32",
                     "mlrt_depthwise_mult_conv2d_f32", "mlrt_conv2d_winograd_f32", "mlrt_conv2d_small_f32",
                     "mlrt_conv2d_grouped_f32", "mlrt_conv3d_f32", "mlrt_pool2d_f32"})


def link(objs: list[bytes], num_args: int, cpu: str, call) -> bytes:
    cc = os.environ.get("CC", "cc")
    return link_shared_object(objs, num_args, cc, [f"-march={cpu}", "-mtune=generic"], KERNELS_DIR,
                              f"linking needs a C compiler ({cc!r}; set CC to another): none found on PATH", call)
