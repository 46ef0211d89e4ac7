"""Decompositions of core ATen ops torch-mlir cannot lower (or lowers wrongly), into ops it can.

They join torch-mlir's own table in frontend.lift. Shapes are static, so each one is written for
the sizes of the node it replaces (loops unrolled, windows computed in Python).

- `adaptive_max_pool2d`: torch-mlir lowers only windows of one size at a fixed stride (and emits
  an always-failing assert otherwise). Uniform windows become `max_pool2d_with_indices` (the
  linalg pooling op); others a gather of each output's window (padded to the largest window and
  masked with -inf), reduced with `max.dim` (first maximum, NaN propagates: eager's rule), whose
  argmax maps back to the flat input index eager returns. adaptive_max_pool1d reaches this
  through torch-mlir's decomposition to 2-D.
- `_linalg_det` / `_linalg_slogdet` (torch.det, torch.linalg.det, slogdet, logdet): torch-mlir's
  lowering allocates inside loops, which the static memory plan cannot place. Here: LU
  factorization with partial pivoting (LAPACK getf2's algorithm: the first largest |pivot|),
  unrolled over the static matrix size on whole batched tensors (about a dozen ops per column:
  fine for the small matrices models hold, a long graph for n in the hundreds). The op's LU and
  pivots outputs (backward's helpers, which no forward reads) are our own factorization of A,
  not LAPACK's of A^T. A zero pivot gives det 0 (sign 0, log|det| = -inf), as eager.
- `fmod.Scalar` (torch.roll's index arithmetic: Swin's shifted windows): torch-mlir fails to
  legalize it (reported as "failed to legalize 'torch.constant.int'"); `fmod.Tensor` it lowers.
- `arange.start_step` in int8 / uint8 (torch.eye decomposes to a uint8 arange compared with
  itself): torch-mlir's lowering crashes the process (SIGSEGV). Counted in int64, then cast.
- Linear and cubic resizes (`upsample_linear1d`, `upsample_bilinear2d`, `upsample_trilinear3d`,
  `upsample_bicubic2d`: F.interpolate in segmentation heads, FPNs, 3-D UNets): the generic
  decompositions gather every tap into a full-size buffer and blend them in more loops (8 ns per
  output bilinear, 27 trilinear, 35 bicubic here). These resizes are separable, so each becomes
  one matmul per resized dim with an [out, in] interpolation matrix, on the GEMM kernels, in the
  order that costs the fewest multiplies: 7-20x faster on 8-64 pixel maps. The matrices hold
  eager's weights (the same float32 source-index formula; cubic: A = -0.75, edge taps clamped) and
  are built from iota by the program, which costs out*in elements. Dense matrices cost `in`
  multiply-adds per output and dim, so large upsamples (a 1-D 256 -> 1024) keep the generic
  path. A non-finite input spreads further than in eager: an Inf becomes NaN along its rows and
  columns (0 * Inf), where eager keeps it to its neighbours.
- Nearest and nearest-exact by whole factors (1-, 2- and 3-D; FPN / YOLO top-down paths): each
  input element broadcast to its block (an expand and a reshape, one copy), instead of a gather
  with index arithmetic per element (6-8x faster). Other factors keep the generic decomposition.
- `mul.Tensor`, `sub.Tensor`, `div.Tensor_mode` of an int8 / uint8 tensor and a Python number
  (`y * 2`, `y - 2`, `y // 2`): torch-mlir's lowering crashes the process (SIGSEGV). An integer
  in the dtype's range becomes a 0-d tensor of that dtype (same wrap-around as eager); with a float
  the tensor is cast to float32 first (eager's type promotion gives float32 too).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch._decomp import decomposition_table as _decomp_table  # PyTorch's own, for what we leave

aten = torch.ops.aten


def _windows(size: int, out: int) -> tuple[list[int], list[int]]:
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    return starts, ends


def _window_index(size: int, out: int):
    """(out, maxlen) input indices of each output's window (clamped) and whether each is inside it."""
    starts, ends = _windows(size, out)
    maxlen = max(e - s for s, e in zip(starts, ends))
    i = torch.arange(out, dtype=torch.int64)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    k = torch.arange(maxlen, dtype=torch.int64)
    idx = start[:, None] + k[None, :]
    valid = idx < end[:, None]
    return torch.clamp(idx, max=size - 1), valid, maxlen


def adaptive_max_pool2d(x: torch.Tensor, output_size):
    oh, ow = (int(s) for s in output_size)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    hs, he = _windows(h, oh)
    ws, we = _windows(w, ow)

    def uniform(starts, ends):
        sizes = {e - s for s, e in zip(starts, ends)}
        strides = {b - a for a, b in zip(starts, starts[1:])}
        return len(sizes) == 1 and len(strides) <= 1

    if uniform(hs, he) and uniform(ws, we):
        kernel = [he[0] - hs[0], we[0] - ws[0]]
        stride = [hs[1] - hs[0] if oh > 1 else 1, ws[1] - ws[0] if ow > 1 else 1]
        return aten.max_pool2d_with_indices.default(x, kernel, stride)
    ih, vh, mh = _window_index(h, oh)
    iw, vw, mw = _window_index(w, ow)
    lead = x.shape[:-2]
    vals = x[..., ih[:, :, None, None], iw[None, None, :, :]]  # (..., oh, mh, ow, mw)
    mask = vh[:, :, None, None] & vw[None, None, :, :]
    vals = torch.where(mask, vals, float("-inf"))
    nd = len(lead)
    vals = vals.permute(*range(nd), nd, nd + 2, nd + 1, nd + 3).reshape(*lead, oh, ow, mh * mw)
    values, j = torch.max(vals, dim=-1)
    flat = (ih[:, None, :, None] * w + iw[None, :, None, :]).reshape(oh, ow, mh * mw)
    indices = torch.gather(flat.expand(*lead, oh, ow, mh * mw), -1, j[..., None]).squeeze(-1)
    return values, indices


def _lu(a: torch.Tensor):
    """Unrolled getf2 on (..., n, n): (packed LU, row-swap parity sign, 1-based int32 pivots)."""
    n = int(a.shape[-1])
    rows = torch.arange(n, dtype=torch.int64)
    sign = torch.ones(a.shape[:-2], dtype=a.dtype)
    pivots = []
    for k in range(n):
        col = torch.where(rows >= k, a[..., :, k].abs(), -1.0)
        p = torch.argmax(col, dim=-1)  # (...,)
        pivots.append(p)
        row_k = a[..., k:k + 1, :]
        row_p = torch.gather(a, -2, p[..., None, None].expand(*a.shape[:-2], 1, n))
        is_k = (rows == k)[:, None]
        is_p = (rows == p[..., None])[..., None]
        a = torch.where(is_k, row_p, torch.where(is_p, row_k, a))
        sign = torch.where(p != k, -sign, sign)
        piv = a[..., k, k]
        safe = torch.where(piv == 0, torch.ones_like(piv), piv)
        f = torch.where(rows > k, a[..., :, k] / safe[..., None], 0.0)
        a = a - f[..., :, None] * a[..., k:k + 1, :]
        below = (rows[:, None] > k) & (rows[None, :] == k)
        a = torch.where(below, f[..., :, None], a)
    piv = (torch.stack(pivots, dim=-1) + 1).to(torch.int32) if n else \
        torch.zeros((*a.shape[:-2], 0), dtype=torch.int32)
    return a, sign, piv


def linalg_det(a: torch.Tensor):
    lu, sign, piv = _lu(a)
    det = sign * torch.prod(torch.diagonal(lu, dim1=-2, dim2=-1), dim=-1)
    return det, lu, piv


def linalg_slogdet(a: torch.Tensor):
    lu, sign, piv = _lu(a)
    diag = torch.diagonal(lu, dim1=-2, dim2=-1)
    sign = sign * torch.prod(torch.sign(diag), dim=-1)
    logabs = torch.sum(torch.log(torch.abs(diag)), dim=-1)
    return sign, logabs, lu, piv


def _generic(op, *args):
    """PyTorch's registered decomposition of `op` applied to args, or NotImplemented where it has
    none (the op is kept: a CompositeImplicit `.vec` overload then traces into its `.default`).
    (Not core_aten_decompositions(): export's table shares its entries, ours included.)"""
    fn = _decomp_table.get(op)
    return fn(*args) if fn is not None else NotImplemented


def _static(*sizes) -> bool:
    return all(isinstance(v, int) for v in sizes)


def _source_index(size: int, out: int, align_corners: bool, scale, cubic: bool) -> torch.Tensor:
    """Each output's real-valued source index, float32, as eager computes it
    (aten/src/ATen/native/UpSample.h: area_pixel_compute_scale / _source_index)."""
    if align_corners:
        step = (size - 1) / (out - 1) if out > 1 else 0.0
        return torch.arange(out, dtype=torch.float32) * step
    step = 1.0 / scale if scale is not None and scale > 0 else size / out
    src = (torch.arange(out, dtype=torch.float32) + 0.5) * step - 0.5
    return src if cubic else src.clamp(min=0.0)


def _interpolation_matrix(size: int, out: int, align_corners: bool, scale, cubic: bool) -> torch.Tensor:
    """[out, size] float32: row o holds output o's weights over the inputs. Linear: two taps;
    cubic: four (A = -0.75), the out-of-range ones on the edge input (eager's clamped reads)."""
    src = _source_index(size, out, align_corners, scale, cubic)
    i0 = src.floor().to(torch.int64).clamp(max=size - 1)  # eager's guard_index_and_lambda
    t = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    if cubic:
        a = -0.75

        def near(x):  # |x| <= 1
            return ((a + 2) * x - (a + 3)) * x * x + 1

        def far(x):  # 1 < |x| < 2
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

        taps = [(i0 - 1, far(t + 1.0)), (i0, near(t)), (i0 + 1, near(1.0 - t)), (i0 + 2, far(2.0 - t))]
    else:
        taps = [(i0, 1.0 - t), (i0 + 1, t)]
    cols = torch.arange(size, dtype=torch.int64)[None, :]  # one-hot per tap: elementwise, no scatter
    return sum((cols == index.clamp(0, size - 1)[:, None]).to(torch.float32) * weight[:, None]
               for index, weight in taps)


def _cheapest_order(dims: list[int], outs: list[int], axes: list[int]) -> tuple[tuple[int, ...], int]:
    """The order to resize `axes` of dims in, one matmul each, and its multiply-adds: a matmul
    along a dim of E elements costs E * out and leaves E * out / in."""

    def cost(order):
        sizes, total = list(dims), 0
        for a in order:
            total += math.prod(sizes) * outs[a]
            sizes[a] = outs[a]
        return total

    order = min(itertools.permutations(axes), key=lambda o: (cost(o), o[::-1]))
    return order, cost(order)


def _separable_resize(x: torch.Tensor, mats: list[torch.Tensor], order) -> torch.Tensor:
    """Resizes the last len(mats) dims of `x` by [out, in] matrices, one matmul per dim in
    `order`, on the GEMM kernels."""
    sizes = [int(d) for d in x.shape[x.dim() - len(mats):]]
    lead = x.shape[:x.dim() - len(mats)]
    y = x.reshape(-1, *sizes)
    for a in order:
        inner = math.prod(sizes[a + 1:])
        if inner == 1:  # the last dim: rows of y times the transposed matrix
            y = y.reshape(-1, sizes[a]) @ mats[a].t()
        else:  # [outer, in, inner] -> [outer, out, inner]: a batched matmul sharing the matrix
            y = torch.matmul(mats[a], y.reshape(-1, sizes[a], inner))
        sizes[a] = mats[a].shape[0]
    return y.reshape(*lead, *sizes)


# Matrices while their multiply-adds per output stay under this many per tap of the generic path
# (2 per dim linear, 4 cubic). 1 thread, Zen 3, ns per output, matrices / generic: bilinear
# 32->128 1.5 / 9.3, 128->256 8.0 / 9.3 (192 multiply-adds an output: near the line); bicubic
# 64->128 3.1 / 36; trilinear 16->32 1.6 / 27; linear 64->256 5.6 / 6.3, 256->1024 22 / 3.5.
_MACS_PER_TAP = 40


def _resize(x: torch.Tensor, output_size, align_corners: bool, scales, cubic: bool, fallback):
    """A linear / cubic resize of x's last len(output_size) dims as one matmul per dim with
    [out, in] interpolation matrices, or `fallback()` (the generic gathers) for another dtype, a
    symbolic size, or an upsample big enough that the dense matrices cost more. Batch and channels
    may be symbolic."""
    spatial = x.shape[x.dim() - len(output_size):]
    if x.dtype != torch.float32 or not _static(*spatial, *output_size):
        return fallback()
    # A dim keeping its size (no other scale given) reads each output's own index: nothing to do.
    axes = [a for a, (n, o, s) in enumerate(zip(spatial, output_size, scales))
            if not (n == o and (align_corners or s in (None, 1.0)))]
    if not axes:
        return x.clone()
    order, macs = _cheapest_order([int(d) for d in spatial], list(output_size), axes)
    if macs > _MACS_PER_TAP * (4 if cubic else 2) ** len(spatial) * math.prod(output_size):
        return fallback()
    mats = [_interpolation_matrix(n, o, align_corners, s, cubic) if a in axes else None
            for a, (n, o, s) in enumerate(zip(spatial, output_size, scales))]
    return _separable_resize(x, mats, order)


def _vec_size(x: torch.Tensor, output_size, scale_factors):
    """The output size a `.vec` overload resizes to (eager: floor(in * scale)), or None if symbolic."""
    if output_size is not None:
        return output_size
    spatial = x.shape[x.dim() - len(scale_factors):]
    return [int(n * f) for n, f in zip(spatial, scale_factors)] if _static(*spatial) else None


def _resize_ops(op, vec, cubic: bool):
    """The decompositions of one linear / cubic resize op and its `.vec` overload."""

    names = [a.name for a in op._schema.arguments[3:]]  # scales_h, scales_w, ...: keyword or not

    def default(x, output_size, align_corners, *scales, **named):
        scales = [*scales, *(named.get(n) for n in names[len(scales):])]
        return _resize(x, output_size, align_corners, scales, cubic,
                       lambda: _generic(op, x, output_size, align_corners, *scales))

    def from_vec(x, output_size, align_corners, scale_factors):
        size = _vec_size(x, output_size, scale_factors)
        if size is None:
            return _generic(vec, x, output_size, align_corners, scale_factors)
        return default(x, size, align_corners, *(scale_factors or [None] * len(size)))

    return {op: default, vec: from_vec}


def _nearest_whole(x: torch.Tensor, out_size, scales):
    """Nearest (or nearest-exact) by whole factors, each element broadcast to its block: eager's
    source index, floor(o * in / out) (floor((o + 0.5) * in / out) exact), or with 1 / scale for
    a scale given, is o // factor. None for other sizes."""
    dims = len(out_size)
    lead, spatial = x.shape[:x.dim() - dims], x.shape[x.dim() - dims:]
    if not (_static(*spatial, *out_size) and all(o % n == 0 for n, o in zip(spatial, out_size))
            and all(s in (None, o // n) for n, o, s in zip(spatial, out_size, scales))):
        return None
    y = x
    for i in reversed(range(dims)):  # [..., n0, 1, n1, 1, ...] -> [..., n0, f0, n1, f1, ...]
        y = y.unsqueeze(len(lead) + i + 1)
    blocks = [d for n, o in zip(spatial, out_size) for d in (n, o // n)]
    return y.expand(*([-1] * len(lead)), *blocks).reshape(*lead, *out_size)


def _nearest_ops(op, vec, lowered_vec: bool = False):
    """The decompositions of one nearest resize op and its `.vec` overload: whole factors as a
    broadcast copy, other sizes left to PyTorch's decomposition (`lowered_vec`: the `.vec` op
    kept whole, for torch-mlir's own lowering)."""
    names = [a.name for a in op._schema.arguments[2:]]

    def default(x, output_size, *scales, **named):
        scales = [*scales, *(named.get(n) for n in names[len(scales):])]
        y = _nearest_whole(x, output_size, scales)
        return y if y is not None else _generic(op, x, output_size, *scales)

    def from_vec(x, output_size, scale_factors):
        size = _vec_size(x, output_size, scale_factors) if output_size is not None or scale_factors else None
        y = _nearest_whole(x, size, scale_factors or [None] * len(size)) if size is not None else None
        if y is not None:
            return y
        return NotImplemented if lowered_vec else _generic(vec, x, output_size, scale_factors)

    return {op: default, vec: from_vec}


def fmod_scalar(x: torch.Tensor, other):
    """fmod by a scalar (torch.roll's index arithmetic, e.g. Swin's shifted windows): torch-mlir
    lowers only the tensor-tensor form."""
    return aten.fmod.Tensor(x, torch.full((), other, dtype=x.dtype))


def arange_8bit(start, end, step=1, *, dtype=None, layout=None, device=None, pin_memory=None):
    """arange in int8 / uint8 as an int64 arange cast down (the values fit: arange checks the end)."""
    if dtype not in (torch.int8, torch.uint8):
        return NotImplemented  # everything else: the op itself
    wide = aten.arange.start_step(start, end, step, dtype=torch.int64, device=device)
    return wide.to(dtype)


_8BIT_RANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def _with_8bit_scalar(op):
    def decompose(a, b, *args, **kwargs):
        if not isinstance(a, torch.Tensor) or a.dtype not in _8BIT_RANGE or isinstance(b, (torch.Tensor, bool)):
            return NotImplemented
        lo, hi = _8BIT_RANGE[a.dtype]
        if isinstance(b, int) and lo <= b <= hi:
            return op(a, torch.full((), b, dtype=a.dtype), *args, **kwargs)
        if isinstance(b, float):
            return op(a.to(torch.float32), torch.full((), b, dtype=torch.float32), *args, **kwargs)
        return NotImplemented
    return decompose


def table() -> dict:
    """OpOverload -> decomposition, for `ExportedProgram.run_decompositions`."""
    return {
        aten.adaptive_max_pool2d.default: adaptive_max_pool2d,
        aten._linalg_det.default: linalg_det,
        aten._linalg_slogdet.default: linalg_slogdet,
        aten.fmod.Scalar: fmod_scalar,
        **_resize_ops(aten.upsample_linear1d.default, aten.upsample_linear1d.vec, cubic=False),
        **_resize_ops(aten.upsample_bilinear2d.default, aten.upsample_bilinear2d.vec, cubic=False),
        **_resize_ops(aten.upsample_trilinear3d.default, aten.upsample_trilinear3d.vec, cubic=False),
        **_resize_ops(aten.upsample_bicubic2d.default, aten.upsample_bicubic2d.vec, cubic=True),
        **_nearest_ops(aten.upsample_nearest1d.default, aten.upsample_nearest1d.vec),
        **_nearest_ops(aten.upsample_nearest2d.default, aten.upsample_nearest2d.vec, lowered_vec=True),
        **_nearest_ops(aten.upsample_nearest3d.default, aten.upsample_nearest3d.vec),
        **_nearest_ops(aten._upsample_nearest_exact1d.default, aten._upsample_nearest_exact1d.vec),
        **_nearest_ops(aten._upsample_nearest_exact2d.default, aten._upsample_nearest_exact2d.vec),
        **_nearest_ops(aten._upsample_nearest_exact3d.default, aten._upsample_nearest_exact3d.vec),
        aten.arange.start_step: arange_8bit,
        aten.mul.Tensor: _with_8bit_scalar(aten.mul.Tensor),
        aten.sub.Tensor: _with_8bit_scalar(aten.sub.Tensor),
        aten.div.Tensor_mode: _with_8bit_scalar(aten.div.Tensor_mode),
    }
