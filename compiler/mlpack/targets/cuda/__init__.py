"""The CUDA target (`--target cuda`): CUDA C++ generated over the templates in kernels/, compiled
to PTX by nvcc and to cubins by ptxas (codegen.py)."""

from __future__ import annotations

from ...errors import BuildError
from ...lower.program import LoweringOptions
from .codegen import (DEFAULT_SASS, DEFAULT_SM, HALF_WEIGHTS, PRECISIONS, CudaArtifact, compile_cuda,
                      split_k_scratch)


class Cuda:
    """targets.Target for NVIDIA GPUs from a minimum compute capability."""

    name = "cuda"
    weight_layouts = frozenset({"panels"})  # the GEMM templates read packed B panels too
    # Plain weights unless another target asks: bundles of one model at different batch sizes
    # then carry byte-identical weights.
    packs_weights = False

    def __init__(self, options):
        self.precision = options.precision
        self.min_sm = options.cuda_arch or DEFAULT_SM
        self.sass = DEFAULT_SASS if options.cuda_sass is None else tuple(options.cuda_sass)
        # fp16/bf16: GEMM and conv weights stored in that type, halving their bytes in the bundle
        # and on the device; not when a CPU target shares the weights section (its kernels read
        # float32), so `cpu,cuda` bundles keep float32 weights at every precision.
        self.half_weights = self.precision in HALF_WEIGHTS and set(options.bundle_targets) <= {"cuda"}

    def lowering(self, weight_layouts: frozenset) -> LoweringOptions:
        if self.precision not in PRECISIONS:
            raise BuildError(f"unknown --precision {self.precision!r}: one of {', '.join(PRECISIONS)}")
        if self.min_sm < 80 and self.precision != "fp32":
            raise BuildError(f"--precision {self.precision} uses tensor cores that need sm_80 or newer")
        # Kernels are generated from generic ops; GEMM calls get split-K partial-sum scratch.
        return LoweringOptions(label="cuda", kernel_scratch=split_k_scratch, weight_layouts=weight_layouts,
                               generalize=True)

    def compile(self, planned, dump=None, stage=None) -> CudaArtifact:
        return compile_cuda(planned, self.precision, self.min_sm, dump, stage, self.sass, self.half_weights)

    def sections_per_program(self) -> int:
        return 1 + len([cc for cc in self.sass if cc >= self.min_sm])  # the PTX and each cubin

    def dynamic_manifest(self, codes: list[CudaArtifact], sizes: list[dict]) -> dict:
        shared = codes[0].shared_manifest()
        for code, at in zip(codes, sizes):
            if code.shared_manifest() != shared:
                raise BuildError(f"internal: the CUDA program at sizes {at} needs {code.shared_manifest()}, "
                                 f"the first one {shared}")
        return shared
