"""Fits the rational erf that lower/llvm_codegen.py inlines: erf(x) = x * P(x^2) / Q(x^2) on
[0, 3.92], P of degree 6, Q of degree 4 with Q(0) = 1, minimizing the relative error by Loeb's
iterated least squares (then Lawson-style reweighting towards equal ripples). Prints the
coefficients, highest degree first (as _ERF_P / _ERF_Q take them), and the worst relative error in
exact arithmetic and evaluated in float32 with FMA Horner steps.

    python scripts/fit_erf.py          # needs numpy and scipy (not runtime or test dependencies)
"""

import numpy as np
from scipy.special import erf

X, DEG_P, DEG_Q = 3.92, 6, 4


def fit() -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.linspace(1e-4, X, 20000), np.geomspace(1e-6, 1e-3, 200)])
    g, z = erf(x) / x, x * x  # fit g = P(z) / Q(z)
    w = np.ones_like(x)
    for it in range(30):
        vp, vq = np.vander(z, DEG_P + 1, increasing=True), np.vander(z, DEG_Q + 1, increasing=True)[:, 1:]
        a = np.concatenate([vp, -g[:, None] * vq], axis=1) * (w / g)[:, None]
        c = np.linalg.lstsq(a, g * w / g, rcond=None)[0]
        p, q = c[: DEG_P + 1], np.concatenate([[1.0], c[DEG_P + 1 :]])
        qz = np.polyval(q[::-1], z)
        err = (np.polyval(p[::-1], z) / qz - g) / g
        w = 1.0 / np.abs(qz)
        if it > 5:
            w *= (np.abs(err) / np.abs(err).max() + 1e-3) ** 0.5
    print(f"worst relative error, exact arithmetic: {np.abs(err).max():.2e}")
    return p, q


def float32_error(p: np.ndarray, q: np.ndarray) -> float:
    def fma(a, b, c):  # one rounding, as llvm.fma.f32
        return (a.astype(np.float64) * b + c).astype(np.float32)

    x = np.concatenate([np.linspace(0, 6, 3_000_001, dtype=np.float32), np.geomspace(1e-30, 1e-2, 10**5).astype(np.float32)])
    c = np.minimum(x, np.float32(X))
    z = c * c
    pp, qq = np.full_like(z, np.float32(p[-1])), np.full_like(z, np.float32(q[-1]))
    for k in p[-2::-1].astype(np.float32):
        pp = fma(pp, z, k)
    for k in q[-2::-1].astype(np.float32):
        qq = fma(qq, z, k)
    r = np.minimum((c * pp) / qq, np.float32(1.0)).astype(np.float64)
    ref = erf(x.astype(np.float64))
    return float((np.abs(r - ref) / ref.clip(min=1e-38)).max())


if __name__ == "__main__":
    p, q = fit()
    print("_ERF_P =", [float(v) for v in p[::-1]])
    print("_ERF_Q =", [float(v) for v in q[::-1]])
    print(f"worst relative error, float32 with FMA: {float32_error(p, q):.2e}")
