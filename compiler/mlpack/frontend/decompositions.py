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
- `upsample_bilinear2d` (F.interpolate, mode="bilinear": segmentation heads, FPNs): the generic
  decomposition gathers the four corners into four full-size buffers and blends them in more
  loops (8 ns per output element here). Bilinear resizing is separable, so it becomes two
  matmuls with [out, in] interpolation matrices, one per spatial dim, which run on the GEMM
  kernels: 7-8x faster for 8-16 pixel maps. The matrices hold eager's weights (the same float32
  source-index formula) and are built from iota by the program, which costs out*in elements. The
  cheaper order of the two is taken. A non-finite input spreads further than in eager: an Inf
  becomes NaN along its row and column (0 * Inf), where eager keeps it to its neighbours.
- `upsample_nearest2d` by whole factors (F.interpolate, mode="nearest", FPN / YOLO top-down
  paths): each input pixel broadcast to its s_h x s_w block (an expand and a reshape, one copy),
  instead of a gather with index arithmetic per element (8x faster on a 16 -> 64 map). Other
  factors keep the generic decomposition.
- `mul.Tensor`, `sub.Tensor`, `div.Tensor_mode` of an int8 / uint8 tensor and a Python number
  (`y * 2`, `y - 2`, `y // 2`): torch-mlir's lowering crashes the process (SIGSEGV). An integer
  in the dtype's range becomes a 0-d tensor of that dtype (same wrap-around as eager); with a float
  the tensor is cast to float32 first (eager's type promotion gives float32 too).
"""

from __future__ import annotations

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


def _static(*sizes) -> bool:
    return all(isinstance(v, int) for v in sizes)


def _linear_weights(size: int, out: int, align_corners: bool, scale) -> torch.Tensor:
    """[out, size] float32: row o holds output o's two weights, as eager computes them
    (aten/src/ATen/native/UpSample.h: area_pixel_compute_scale / _source_index, in float)."""
    if align_corners:
        step = (size - 1) / (out - 1) if out > 1 else 0.0
        src = torch.arange(out, dtype=torch.float32) * step
    else:
        step = 1.0 / scale if scale is not None and scale > 0 else size / out
        src = ((torch.arange(out, dtype=torch.float32) + 0.5) * step - 0.5).clamp(min=0.0)
    i0 = src.floor().to(torch.int64).clamp(max=size - 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    hi = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    cols = torch.arange(size, dtype=torch.int64)[None, :]
    return (cols == i0[:, None]).to(torch.float32) * (1.0 - hi)[:, None] \
        + (cols == i1[:, None]).to(torch.float32) * hi[:, None]


def upsample_bilinear2d(x: torch.Tensor, output_size, align_corners: bool, scales_h=None, scales_w=None):
    """Bilinear resize of [N, C, H, W] as two matmuls with interpolation matrices (see above)."""
    n, c, h, w = x.shape  # batch and channels may be symbolic (dynamic shapes)
    oh, ow = output_size
    if x.dtype != torch.float32 or not _static(h, w, oh, ow):
        return _decomp_table[aten.upsample_bilinear2d.default](x, output_size, align_corners, scales_h, scales_w)
    if (oh, ow) == (h, w) and (align_corners or (scales_h in (None, 1.0) and scales_w in (None, 1.0))):
        return x.clone()  # every source index is the output index itself
    ry = _linear_weights(h, oh, align_corners, scales_h)      # [OH, H]
    rxt = _linear_weights(w, ow, align_corners, scales_w).t()  # [W, OW]
    if h * w * ow + oh * h * ow <= oh * h * w + oh * w * ow:  # width first
        t = (x.reshape(-1, w) @ rxt).reshape(-1, h, ow)
        return torch.matmul(ry, t).reshape(n, c, oh, ow)
    t = torch.matmul(ry, x.reshape(-1, h, w))  # height first: [N*C, OH, W]
    return (t.reshape(-1, w) @ rxt).reshape(n, c, oh, ow)


def upsample_bilinear2d_vec(x: torch.Tensor, output_size, align_corners: bool, scale_factors):
    h, w = x.shape[-2:]
    if output_size is None:
        if not _static(h, w):
            return _decomp_table[aten.upsample_bilinear2d.vec](x, output_size, align_corners, scale_factors)
        output_size = [int(h * scale_factors[0]), int(w * scale_factors[1])]  # eager: floor
    sh, sw = scale_factors if scale_factors is not None else (None, None)
    return upsample_bilinear2d(x, output_size, align_corners, sh, sw)


def _nearest_whole(x: torch.Tensor, oh, ow, scales_h, scales_w):
    """Nearest by whole factors, each pixel broadcast to its block (eager's source index
    floor(o * in / out), or floor(o / scale) with the scale given, is o // factor); else None."""
    n, c, h, w = x.shape  # batch and channels may be symbolic (dynamic shapes)
    if not (_static(h, w, oh, ow) and oh % h == 0 and ow % w == 0
            and scales_h in (None, oh // h) and scales_w in (None, ow // w)):
        return None
    sh, sw = oh // h, ow // w
    return x[:, :, :, None, :, None].expand(-1, -1, h, sh, w, sw).reshape(n, c, oh, ow)


def upsample_nearest2d(x: torch.Tensor, output_size, scales_h=None, scales_w=None):
    y = _nearest_whole(x, *output_size, scales_h, scales_w)
    return y if y is not None else _decomp_table[aten.upsample_nearest2d.default](x, output_size, scales_h, scales_w)


def upsample_nearest2d_vec(x: torch.Tensor, output_size, scale_factors):
    h, w = x.shape[-2:]
    if output_size is None and scale_factors is not None and _static(h, w):
        output_size = [int(h * scale_factors[0]), int(w * scale_factors[1])]  # eager: floor
    sh, sw = scale_factors if scale_factors is not None else (None, None)
    y = _nearest_whole(x, *output_size, sh, sw) if output_size is not None else None
    return y if y is not None else NotImplemented  # torch-mlir lowers the op itself


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
        aten.upsample_bilinear2d.default: upsample_bilinear2d,
        aten.upsample_bilinear2d.vec: upsample_bilinear2d_vec,
        aten.upsample_nearest2d.default: upsample_nearest2d,
        aten.upsample_nearest2d.vec: upsample_nearest2d_vec,
        aten.arange.start_step: arange_8bit,
        aten.mul.Tensor: _with_8bit_scalar(aten.mul.Tensor),
        aten.sub.Tensor: _with_8bit_scalar(aten.sub.Tensor),
        aten.div.Tensor_mode: _with_8bit_scalar(aten.div.Tensor_mode),
    }
