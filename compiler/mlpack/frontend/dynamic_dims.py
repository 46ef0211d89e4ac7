"""Bounded dynamic dims: declaring them, choosing buckets, and proving where padding is exact.

A dynamic bundle holds one static program per bucket (docs/bundle-format.md, format version 2).
A size between buckets runs the next bucket up on zero-padded inputs, and only where
`padding_obstacle` found nothing on the graph with symbolic shapes that would let a padded entry
reach an output entry the caller keeps.

The proof tracks, for every tensor and dim whose size involves the symbol `s`, how the dim's index
splits into an outer factor and the factor counting `s`, of size `lead + s * inner`: an entry is
*valid* when its digit there is below `lead + v * inner`, and the claim kept true through every op
is that valid entries are the ones a program built for size `v` computes, from valid entries only. Views that merge the symbol inside another dim
(MultiheadAttention's seq-first transposes) keep it as an inner factor; an output is only cut
where the symbol is back to one prefix-shaped dim.

Ops that mix entries along the dim (softmax, sums, matmuls over it) are exact too when what the
padding puts there cannot change the valid entries: each tracked dim also carries a fact about its
padded entries (those where this dim is past the valid prefix and every other tracked dim within
it), from a small lattice (`_DimState.pad`): zero-padded inputs give exact zeros, a mask built from them
(`mask == 0`, `(1 - mask) * finfo.min`, arange comparisons of a causal mask) gives -inf or a value
at most -1e30 after the scores, softmax turns those into exact zeros, and a sum or a matmul over
zeros adds nothing. This is how attention over a padded sequence is proved exact: keys past the
length masked by the model's own mask. Padded entries the lattice knows nothing exact about are
assumed finite where they come from finite operands through ops that keep values finite (exp
included: an overflow would need a garbage score above 88). A row whose every valid key is masked
(an all-padding sequence) is the exception: its softmax is uniform over however many keys there
are, so it differs from the unpadded run; models produce meaningless output there anyway.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import sympy
import torch
from torch import fx

from ..errors import BuildError, node_location

# --------------------------------------------------------------------------- declarations

_SPEC = re.compile(r"^(?P<input>[A-Za-z_][\w.]*|\d+):(?P<dim>-?\d+)=(?:(?P<name>[A-Za-z_]\w*):)?"
                   r"(?P<lo>\d+)?\.\.(?P<hi>\d+)?$")
MAX_PROGRAMS = 62  # bucket combinations: each program is a section, and a bundle has at most 64 (manifest, weights)


@dataclass
class DimDecl:
    """One declared dynamic dim: input (name or position), dim, symbol name, bounds."""

    input: str | int
    dim: int
    name: str | None
    lo: int
    hi: int


def parse_dynamic(spec: str) -> DimDecl:
    """'x:0=1..64' or 'x:0=batch:1..64' (a symbol name shared by dims that must be equal)."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise BuildError(f"--dynamic {spec!r}: expected INPUT:DIM=[NAME:]MIN..MAX, e.g. x:0=1..64 or "
                         "ids:1=seq:1..128")
    if m["hi"] is None:
        raise BuildError(f"--dynamic {spec!r}: a dynamic dim needs an upper bound (MIN..MAX): the bundle's "
                         "memory is planned at it")
    lo, hi = int(m["lo"] or 0), int(m["hi"])
    inp = int(m["input"]) if m["input"].isdigit() else m["input"]
    return _checked(DimDecl(inp, int(m["dim"]), m["name"], lo, hi), spec)


def _checked(d: DimDecl, what: str) -> DimDecl:
    if d.lo > d.hi:
        raise BuildError(f"dynamic dim {what}: min {d.lo} is above max {d.hi}")
    if d.hi > 1 << 40:
        raise BuildError(f"dynamic dim {what}: max {d.hi} is too large")
    return d


def declarations(dynamic: Any) -> list[DimDecl]:
    """Normalize `build(dynamic=...)`: strings as for --dynamic, or {input: {dim: bound}} where a
    bound is (min, max), (name, min, max) or a torch.export.Dim."""
    if dynamic is None:
        return []
    if isinstance(dynamic, str):
        dynamic = [dynamic]
    if not isinstance(dynamic, dict):
        return [parse_dynamic(s) for s in dynamic]
    out = []
    for inp, dims in dynamic.items():
        for dim, b in dims.items():
            what = f"{inp}:{dim}"
            if isinstance(b, str):
                out.append(parse_dynamic(f"{inp}:{dim}={b}"))
                continue
            if hasattr(b, "min") and hasattr(b, "max") and hasattr(b, "__name__"):  # torch.export.Dim
                name, lo, hi = b.__name__, b.min, b.max
            elif isinstance(b, (tuple, list)) and len(b) in (2, 3):
                name, lo, hi = (None, *b) if len(b) == 2 else b
            else:
                raise BuildError(f"dynamic dim {what}: expected (min, max), (name, min, max) or a torch.export.Dim, "
                                 f"got {b!r}")
            if hi is None or not isinstance(hi, int) or hi >= 1 << 62:
                raise BuildError(f"dynamic dim {what}: a dynamic dim needs an upper bound (max): the bundle's memory "
                                 "is planned at it")
            out.append(_checked(DimDecl(inp, int(dim), name, int(lo or 0), int(hi)), what))
    return out


def parse_buckets(specs: Any) -> dict[str, list[int]]:
    """'x:0=1,8,32' or 'batch=1,8,32' (strings, or a dict key -> sizes) -> {key: sorted sizes}."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        items = [(str(k), list(v)) for k, v in specs.items()]
    else:
        items = []
        for s in [specs] if isinstance(specs, str) else specs:
            key, eq, sizes = s.partition("=")
            if not eq or not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", sizes):
                raise BuildError(f"--buckets {s!r}: expected INPUT:DIM=N,N,... or NAME=N,N,..., e.g. x:0=1,8,32")
            items.append((key.strip(), [int(v) for v in sizes.split(",")]))
    return {k: sorted(set(int(x) for x in v)) for k, v in items}


@dataclass
class Symbol:
    """A dynamic dim of the exported program: where it occurs, its bounds and its buckets."""

    name: str
    expr: sympy.Symbol  # torch's symbol in the exported program
    lo: int
    hi: int
    uses: list[tuple[int, int]]  # (user input index, dim)
    buckets: list[int] = field(default_factory=list)
    not_padded: str | None = None  # why sizes between buckets cannot run padded (None: they can)

    def to_json(self, padding_outputs: list[dict] | None) -> dict:
        j = {"name": self.name, "min": self.lo, "max": self.hi, "buckets": self.buckets,
             "padding": None if padding_outputs is None else {"outputs": padding_outputs}}
        if padding_outputs is None and self.not_padded:
            j["not_padded"] = self.not_padded
        return j


def default_buckets(lo: int, hi: int) -> list[int]:
    """Powers of two within [lo, hi], and both bounds."""
    out = {lo, hi}
    p = 1
    while p < hi:
        if p > lo:
            out.add(p)
        p *= 2
    return sorted(out)


def resize(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """`t` with `n` entries along `dim`, cycling through its own (keeps example values realistic)."""
    if t.shape[dim] == n:
        return t
    if t.shape[dim] == 0:
        shape = list(t.shape)
        shape[dim] = n
        return torch.zeros(shape, dtype=t.dtype)
    idx = torch.arange(n) % t.shape[dim]
    return t.index_select(dim, idx).contiguous()


def export_dynamic(module: torch.nn.Module, examples: Sequence[torch.Tensor], input_names: list[str],
                   decls: list[DimDecl]) -> tuple[Any, dict[tuple[int, int], str]]:
    """torch.export with the declared dims as `Dim`s (one per name; unnamed dims get INPUT_DIM).
    Example sizes are moved off 0 and 1 (torch.export specializes those) and apart from each other.
    Returns the program and each dynamic (input, dim)'s name."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    dim_names: dict[tuple[int, int], str] = {}
    per_input: list[dict[int, Any]] = [{} for _ in examples]
    examples = list(examples)
    for d in decls:
        i = _input_index(d.input, input_names)
        rank = examples[i].dim()
        if not -rank <= d.dim < rank:
            raise BuildError(f"dynamic dim {d.input}:{d.dim}: input '{input_names[i]}' has rank {rank}")
        dim = d.dim % rank
        name = d.name or f"{input_names[i]}_{dim}"
        if name in dims and (dims[name].min, dims[name].max) != (d.lo, d.hi):
            raise BuildError(f"dynamic dim '{name}' is declared with two different ranges")
        dims.setdefault(name, Dim(name, min=d.lo, max=d.hi))
        per_input[i][dim] = dims[name]
        dim_names[(i, dim)] = name
    taken: set[int] = set()
    for name, dm in dims.items():  # a distinct example size per symbol, >= 2 where the range allows
        size = next((n for n in range(max(dm.min, 2), dm.max + 1) if n not in taken), dm.max)
        taken.add(size)
        for i, spec in enumerate(per_input):
            for dim, other in spec.items():
                if other is dm:
                    examples[i] = resize(examples[i], dim, size)
    shapes = torch.export.ShapesCollection()  # keyed by tensor: works for forward(*args) too
    for t, spec in zip(examples, per_input):
        if spec:
            shapes[t] = spec
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(examples), dynamic_shapes=shapes.dynamic_shapes(module, tuple(examples)),
                                     strict=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types
        text = str(e).strip()
        hint = ""
        if "specialize" in text.lower() or "constraint" in text.lower() or "suggested fixes" in text.lower():
            hint = ("\nhint: the model constrains a dim declared dynamic (it needs a fixed size, a narrower range, or "
                    "equality with another dim: declare equal dims with one name, e.g. ids:1=seq:1..128 and "
                    "mask:1=seq:1..128)")
        raise BuildError(f"torch.export with dynamic dims failed: {_first_lines(text)}{hint}") from e
    return ep, dim_names


def _first_lines(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:n]) if lines else "(no message)"


def _input_index(ref: str | int, names: list[str]) -> int:
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise BuildError(f"dynamic dim: the model has {len(names)} input(s), no input {ref}")
        return ref
    if ref not in names:
        raise BuildError(f"dynamic dim: the model has no input named '{ref}' (its inputs: {', '.join(names)})")
    return names.index(ref)


def _expr(d) -> sympy.Expr:
    return sympy.sympify(d.node.expr) if isinstance(d, torch.SymInt) else sympy.Integer(int(d))


def _finite(bound) -> int | None:
    """A range bound as an int; None for torch's infinity (int_oo)."""
    try:
        return int(bound) if bool(sympy.sympify(bound).is_finite) else None
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def symbols(ep, input_names: list[str], names: dict[tuple[int, int], str] | None = None) -> list[Symbol]:
    """The dynamic dims of an exported program's user inputs, with their ranges. Every one must be a
    plain symbol with a finite upper bound. `names` maps (input, dim) to a declared name."""
    from torch.export.graph_signature import InputKind

    found: dict[sympy.Symbol, Symbol] = {}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [n for s, n in zip(ep.graph_signature.input_specs, placeholders) if s.kind == InputKind.USER_INPUT]
    for i, node in enumerate(user):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim, d in enumerate(val.shape):
            if not isinstance(d, torch.SymInt):
                continue
            e = _expr(d)
            where = f"{input_names[i]}:{dim}"
            if not isinstance(e, sympy.Symbol):
                raise BuildError(f"input dim {where} has size {e}, derived from another dynamic dim: declare plain dims "
                                 "only (each input dim its own Dim, or the same Dim)")
            if e not in found:
                vr = ep.range_constraints.get(e)
                lo, hi = (_finite(vr.lower) or 0, _finite(vr.upper)) if vr is not None else (0, None)
                if hi is None or hi >= 1 << 40:
                    raise BuildError(f"input dim {where} is dynamic without an upper bound: the bundle's memory is "
                                     f"planned at it. Export with Dim(..., max=N), or build with --dynamic {where}=LO..HI")
                name = (names or {}).get((i, dim)) or f"{input_names[i]}_{dim}"
                found[e] = Symbol(name, e, lo, hi, [])
            found[e].uses.append((i, dim))
    return list(found.values())


def choose_buckets(syms: list[Symbol], requested: dict[str, list[int]], input_names: list[str]) -> None:
    """Fill each symbol's buckets: the requested sizes (by symbol name or INPUT:DIM) plus the upper bound,
    else default_buckets."""
    keys = {}
    for s in syms:
        keys[s.name] = s
        for i, dim in s.uses:
            keys[f"{input_names[i]}:{dim}"] = s
            keys[f"{i}:{dim}"] = s
    for key, sizes in requested.items():
        if key not in keys:
            raise BuildError(f"--buckets {key}: no dynamic dim by that name (dynamic dims: "
                             f"{', '.join(sorted({s.name for s in syms})) or 'none'})")
        s = keys[key]
        bad = [v for v in sizes if not s.lo <= v <= s.hi]
        if bad:
            raise BuildError(f"--buckets {key}: {bad} outside the dim's range {s.lo}..{s.hi}")
        s.buckets = sorted(set(sizes) | {s.hi})
    for s in syms:
        if not s.buckets:
            s.buckets = default_buckets(s.lo, s.hi)
    count = 1
    for s in syms:
        count *= len(s.buckets)
    if count > MAX_PROGRAMS:
        raise BuildError(f"{count} bucket combinations ({' x '.join(str(len(s.buckets)) for s in syms)}) is more "
                         f"than {MAX_PROGRAMS} programs: choose fewer sizes with --buckets")


def affine_outputs(shapes_by_size: dict[int, list[list[int]]]) -> list[dict]:
    """Output dims of the form add + mul * v, fitted on the programs' output shapes at each bucket
    (other symbols fixed). Dims that do not change are left out."""
    sizes = sorted(shapes_by_size)
    if len(sizes) < 2:
        return []
    a, b = sizes[0], sizes[-1]
    rules = []
    for o, (sa, sb) in enumerate(zip(shapes_by_size[a], shapes_by_size[b])):
        for d, (x, y) in enumerate(zip(sa, sb)):
            if x == y:
                continue
            mul, rem = divmod(y - x, b - a)
            add = x - mul * a
            if rem or any(shapes_by_size[v][o][d] != add + mul * v for v in sizes):
                raise BuildError(f"internal: output {o} dim {d} is not affine in the dynamic dim ({x} at {a}, {y} at {b})")
            rules.append({"output": o, "dim": d, "mul": mul, "add": add})
    return rules


# --------------------------------------------------------------------------- the padding proof


class _NotPaddable(Exception):
    pass


def _is_zero(e) -> bool:
    return sympy.expand(e) == 0


@dataclass(frozen=True, eq=False)
class _DimState:
    """One dim of size outer * (lead + s * inner): its index is (digit of `outer`) x (digit of the
    symbol's factor); an entry is valid when the second digit is below lead + v * inner. Whatever
    was merged inside the symbol's factor is folded into lead and inner. `pad`: what is known of
    the padded entries (a _Fact); not part of equality."""

    outer: Any
    lead: Any
    inner: Any
    pad: Any = "any"

    @property
    def prefix(self) -> bool:
        return _is_zero(self.outer - 1)

    def size(self, s):
        return self.outer * (self.lead + s * self.inner)

    def __eq__(self, other) -> bool:
        return isinstance(other, _DimState) and all(
            _is_zero(a - b) for a, b in ((self.outer, other.outer), (self.lead, other.lead), (self.inner, other.inner)))

    __hash__ = None


def _simple(s, size) -> _DimState:
    """A one-factor dim whose size is an affine lead + s * inner."""
    size = sympy.expand(size)
    try:
        poly = sympy.Poly(size, s)
    except sympy.PolynomialError:  # e.g. TruncToInt(2.0*ToFloat(s)): a resize by a float scale factor
        raise _NotPaddable(f"a dim of size {size} is not a polynomial in the dynamic dim") from None
    if poly.degree() != 1:
        raise _NotPaddable(f"a dim of size {size} is not affine in the dynamic dim")
    return _DimState(sympy.Integer(1), poly.coeff_monomial(1), poly.coeff_monomial(s))


# ---- what the padded entries hold (_DimState.pad)
#
# ("c", x): exactly x (booleans as 0.0 / 1.0, -inf allowed); "neg": at most -1e30 or -inf (a mask's
# finfo.min added to a finite score); "pos" / "nonneg" / "lt0" / "fin": finite and > 0 / >= 0 / < 0 /
# anything;
# "ge_v": an index at or past the valid length; "lt_v": an index below it; "fneg": finite or masked
# (a row of scores where some keys are masked); "any": nothing known.

_MASKED = -1e30
_FINITE = ("pos", "nonneg", "lt0", "fin", "ge_v", "lt_v")
# Ops whose results are finite whenever their operands are (no division, logarithm or root).
_FINITE_OPS = {"add", "sub", "rsub", "mul", "neg", "relu", "gelu", "silu", "sigmoid", "tanh", "erf", "cos", "sin",
               "abs", "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "where", "hardswish", "hardsigmoid",
               "hardtanh", "leaky_relu", "elu", "exp", "floor", "ceil", "round", "trunc", "sign", "square",
               "_to_copy", "clone", "alias", "detach", "contiguous", "lift_fresh_copy", "masked_fill", "bitwise_and",
               "bitwise_or", "bitwise_not", "bitwise_xor", "logical_and", "logical_or", "logical_not", "logical_xor",
               "eq", "ne", "lt", "le", "gt", "ge", "relu6", "mish", "softplus", "pow"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}


def _const(f) -> float | None:
    return f[1] if isinstance(f, tuple) else None


def _fin(f) -> bool:
    """Whether the fact says finite."""
    c = _const(f)
    return f in _FINITE or (c is not None and math.isfinite(c))


def _sign(f) -> str:
    """'pos', 'nonneg' or 'fin' for a finite fact."""
    c = _const(f)
    if c is not None:
        return "pos" if c > 0 else "nonneg" if c == 0 else "fin"
    return "nonneg" if f in ("ge_v", "lt_v") else "fin" if f == "lt0" else f


def _masked(f) -> bool:
    c = _const(f)
    return f == "neg" or (c is not None and c <= _MASKED)


def _fneg(f) -> bool:
    return f == "fneg" or _fin(f) or _masked(f)


def _join(a, b):
    if a == b:
        return a
    if _masked(a) and _masked(b):
        return "neg"
    if not (_fin(a) and _fin(b)) and _fneg(a) and _fneg(b):
        return "fneg"
    if _fin(a) and _fin(b):
        sa, sb = _sign(a), _sign(b)
        return sa if sa == sb else "nonneg" if {sa, sb} == {"pos", "nonneg"} else "fin"
    return "any"


def _as_fact(x):
    if isinstance(x, bool):
        return ("c", 1.0 if x else 0.0)
    if isinstance(x, (int, float)):
        return ("c", float(x))
    return None


def _evaluate(node, facts: dict[int, Any]):
    """The op on 0-d tensors holding the constant facts (argument position -> fact), or None."""
    args = list(node.args)
    kwargs = {k: v for k, v in node.kwargs.items() if k not in ("device", "layout", "pin_memory", "memory_format")}
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    try:
        for pos, a in enumerate(args):
            if isinstance(a, fx.Node):
                val = a.meta.get("val")
                c = _const(facts.get(pos))
                if not isinstance(val, torch.Tensor) or c is None:
                    return None
                args[pos] = torch.tensor(c, dtype=val.dtype)  # -inf as an integer raises: no constant then
            elif isinstance(a, (list, tuple)) or isinstance(a, (torch.SymInt, torch.SymFloat)):
                return None
        r = node.target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an op that wants shapes, a value the dtype cannot hold: no constant
        return None
    if not isinstance(r, torch.Tensor) or r.numel() != 1:
        return None
    x = float(r.item())
    return None if math.isnan(x) else ("c", x)


_BOUNDS = {"pos": (0.0, True, math.inf), "nonneg": (0.0, False, math.inf), "ge_v": (0.0, False, math.inf),
           "lt_v": (0.0, False, math.inf), "lt0": (-math.inf, False, 0.0)}  # (low, low excluded, high)


def _compare(name: str, a, b):
    """A comparison decided by the facts: an index past the length against one below it, or a
    sign against a constant (the causal mask's k - q <= 0)."""
    order = {("ge_v", "lt_v"): 1, ("lt_v", "ge_v"): -1}.get((a, b))
    if order is None:
        ca, cb = _const(a), _const(b)
        if cb is not None and a in _BOUNDS:
            lo, strict, hi = _BOUNDS[a]
            order = 1 if lo > cb or (lo == cb and strict) else -1 if hi < cb or (hi == cb and a == "lt0") else None
        elif ca is not None and b in _BOUNDS:
            lo, strict, hi = _BOUNDS[b]
            order = -1 if lo > ca or (lo == ca and strict) else 1 if hi < ca or (hi == ca and b == "lt0") else None
    if order is None:
        return "nonneg"  # a boolean, unknown
    truth = {"eq": False, "ne": True, "lt": order < 0, "le": order < 0, "gt": order > 0, "ge": order > 0}[name]
    return ("c", 1.0 if truth else 0.0)


def _sum_fact(x, k: float, y):
    """x + k * y."""
    if k == -1 and (x, y) in (("ge_v", "lt_v"), ("lt_v", "ge_v")):  # index past the length minus one below it
        return "pos" if x == "ge_v" else "lt0"
    cx, cy = _const(x), _const(y)
    if cy == 0.0:
        return x
    if cx == 0.0 and k == 1:
        return y
    if cx in (math.inf, -math.inf) and _fin(y):
        return x
    if cy in (math.inf, -math.inf) and _fin(x):
        return ("c", math.copysign(math.inf, k * cy))
    if (_masked(x) and _fin(y)) or (_masked(y) and _fin(x) and k >= 1):
        return "neg"
    if (x == "fneg" and _fin(y)) or (y == "fneg" and _fin(x) and k >= 1):
        return "fneg"
    if _fin(x) and _fin(y):
        sx, sy = _sign(x), _sign(y)
        if k > 0 and "fin" not in (sx, sy):
            return "pos" if "pos" in (sx, sy) else "nonneg"
        return "fin"
    return "any"


def _pointwise_fact(node, name: str, facts: dict[int, Any]):
    """The fact of a pointwise op's padded entries from its operands' (argument position -> fact)."""
    if name in ("full_like", "zeros_like", "ones_like"):
        fill = {"zeros_like": 0.0, "ones_like": 1.0}.get(name, node.args[1] if len(node.args) > 1 else None)
        return _as_fact(fill) or "any"
    if name == "empty_like":
        return "any"
    got = _evaluate(node, facts)
    if got is not None:
        return got
    f = [facts.get(i) or _as_fact(a) or "any" for i, a in enumerate(node.args)]
    a = f[0] if f else "any"
    b = f[1] if len(f) > 1 else None
    if name in ("_to_copy", "clone", "alias", "detach", "contiguous", "lift_fresh_copy"):
        dtype = node.meta["val"].dtype
        return "nonneg" if dtype == torch.bool else a if dtype.is_floating_point else "fin" if _fin(a) else "any"
    if name == "where":
        c = _const(f[0])
        return f[1] if c == 1.0 else f[2] if c == 0.0 else _join(f[1], f[2])
    if name == "masked_fill":
        c = _const(f[1])
        return f[2] if c == 1.0 else f[0] if c == 0.0 else _join(f[0], f[2])
    if name in _COMPARE and b is not None:
        return _compare(name, a, b)
    if name in ("bitwise_and", "logical_and") and 0.0 in (_const(a), _const(b)):
        return ("c", 0.0)
    if name in ("bitwise_or", "logical_or") and 1.0 in (_const(a), _const(b)):
        return ("c", 1.0)
    if name in ("add", "sub", "rsub") and b is not None:
        alpha = node.kwargs.get("alpha", 1)
        if not isinstance(alpha, (int, float)):
            return "any"
        return _sum_fact(a, alpha, b) if name == "add" else _sum_fact(a, -alpha, b) if name == "sub" else \
            _sum_fact(b, -alpha, a)
    if name == "mul" and b is not None:
        for x, y in ((a, b), (b, a)):
            if _const(x) == 0.0 and _fin(y):
                return ("c", 0.0)
            if _const(x) == 1.0:
                return y
            if _masked(x) and _const(y) is not None and 1.0 <= _const(y) < math.inf:
                return "neg"
        if _fin(a) and _fin(b):
            sa, sb = _sign(a), _sign(b)
            return sa if sa == sb and sa != "fin" else "nonneg" if {sa, sb} == {"pos", "nonneg"} else "fin"
        return "any"
    if name == "div" and b is not None:
        cb = _const(b)
        if cb is not None and cb != 0 and math.isfinite(cb):
            if _const(a) == 0.0:
                return a
            if _masked(a) and 0 < cb <= 1.0:
                return "neg"
            return (_sign(a) if cb > 0 else "fin") if _fin(a) else "any"
        return "fin" if _fin(a) and _fin(b) and _sign(b) == "pos" else "any"
    if name in ("rsqrt", "sqrt", "reciprocal"):
        if _fin(a) and _sign(a) == "pos":
            return "pos"
        return "nonneg" if name == "sqrt" and _fin(a) and _sign(a) == "nonneg" else "any"
    if name == "pow" and b is not None:
        e = _const(b)
        if _fin(a) and _sign(a) == "pos" and e is not None and math.isfinite(e):
            return "pos"
        if _fin(a) and e is not None and e >= 1 and e == int(e):
            return "nonneg" if int(e) % 2 == 0 else "fin"
        return "any"
    if name == "exp":  # exp(-1e30) underflows to exactly 0
        return ("c", 0.0) if _masked(a) else "nonneg" if _fin(a) else "any"
    if name in ("relu", "relu6", "abs", "square", "sigmoid"):
        return "nonneg" if _fin(a) else "any"
    if name in _FINITE_OPS and all(_fin(x) for x in f):
        return "fin"
    return "any"


_REDUCE_IDENTITY = {"sum": 0.0, "any": 0.0, "amax": -math.inf, "logsumexp": -math.inf, "amin": math.inf,
                    "all": 1.0, "prod": 1.0}


def _reduced_fact(name: str, f):
    """The fact of a reduction's result over other dims, from its input's on this dim."""
    c = _const(f)
    if name in ("argmax", "argmin", "any", "all"):
        return f if name in ("any", "all") and c is not None else "nonneg"
    if c is not None and (c == 0.0 or name in ("mean", "amax", "amin")):
        return ("c", c) if name != "prod" or c in (0.0, 1.0) else "any"
    if name in ("amax", "amin", "mean") and _masked(f):
        return "neg"
    if not _fin(f):
        return "any"
    if name in ("var", "std", "norm", "linalg_vector_norm"):
        return "nonneg"
    return _sign(f) if name in ("sum", "mean", "amax", "amin") else "fin"


def _values(st: dict, finite_in: bool) -> dict:
    """`st` with every fact replaced by 'fin' (finite operands, an op keeping values finite) or 'any'."""
    return {d: replace(f, pad="fin" if finite_in else "any") for d, f in st.items()}


class _Prover:
    def __init__(self, s: sympy.Symbol):
        self.s = s
        self.states: dict[fx.Node, Any] = {}
        self.iota: dict[fx.Node, int] = {}  # tensors whose entry at index i of this dim is i (arange)
        self.consts: dict[fx.Node, float] = {}  # untracked tensors holding one value everywhere
        self.nonfinite: set[fx.Node] = set()  # untracked tensors that may hold inf or nan

    def carries(self, e) -> bool:
        return self.s in sympy.sympify(e).free_symbols

    def shape(self, node) -> list:
        val = node.meta.get("val")
        return [_expr(d) for d in val.shape]

    def state(self, x) -> dict[int, _DimState]:
        if isinstance(x, fx.Node):
            st = self.states.get(x)
            if isinstance(st, dict):
                return st
        return {}

    def simple(self, f: _DimState) -> bool:
        return _is_zero(f.outer - 1) and _is_zero(f.lead) and _is_zero(f.inner - 1)

    def value_fact(self, x, dim: int | None = None):
        """What `x` holds where it is not padded along `dim` (an untracked or broadcast operand)."""
        if not isinstance(x, fx.Node):
            return _as_fact(x) or "any"
        if x in self.consts:
            return ("c", self.consts[x])
        if x in self.nonfinite:
            return "any"
        if x in self.iota:
            e = self.iota[x]
            st = self.state(x)
            return "lt_v" if e in st and e != dim and self.simple(st[e]) else "nonneg"
        return "fin"

    def operand_fact(self, x, od: int, out_rank: int):
        """The fact of operand `x` at output dim `od`'s padded entries (right-aligned broadcasting)."""
        if not isinstance(x, fx.Node) or not isinstance(x.meta.get("val"), torch.Tensor):
            return self.value_fact(x)
        xd = od - (out_rank - len(self.shape(x)))
        st = self.state(x)
        if xd >= 0 and xd in st:
            return st[xd].pad
        return self.value_fact(x, xd)

    def all_finite(self, node) -> bool:
        """Whether every tensor operand's tracked facts and values are finite."""
        for a in _tensor_args(node):
            if not _fin(self.value_fact(a)) or any(not _fin(f.pad) for f in self.state(a).values()):
                return False
        return True

    # ---- checks shared by all rules

    def check(self, node, st: dict[int, _DimState]) -> dict[int, _DimState]:
        """Every dim whose size involves the symbol must be tracked, and consistently."""
        shape = self.shape(node)
        for d, size in enumerate(shape):
            if d in st:
                if not _is_zero(st[d].size(self.s) - size):
                    raise _NotPaddable(f"internal: lost track of the dim through {node.target}")
            elif self.carries(size):
                raise _NotPaddable(f"'{_op_name(node)}' makes a dim of size {size} the checker cannot follow")
        return st

    def sym_args(self, node) -> list[tuple[int | str, Any]]:
        out = []
        for pos, a in list(enumerate(node.args)) + list(node.kwargs.items()):
            for leaf in fx.node.map_arg(a, lambda n: n) if isinstance(a, (list, tuple)) else [a]:
                if isinstance(leaf, fx.Node) and isinstance(leaf.meta.get("val"), (torch.SymInt, torch.SymFloat,
                                                                                     torch.SymBool)):
                    if self.carries(leaf.meta["val"].node.expr):
                        out.append((pos, leaf))
        return out

    # ---- rules

    def run(self, gm: fx.GraphModule, inputs: dict[fx.Node, dict[int, _DimState]]) -> list:
        self.states.update(inputs)
        for node in gm.graph.nodes:
            if node.op == "call_function":
                try:
                    self.states[node] = self.visit(node)
                except _NotPaddable as e:
                    raise _NotPaddable(f"{e} ({node_location(node)})") from None
            elif node.op == "output":
                return [self.state(a) for a in node.args[0]] if isinstance(node.args[0], (list, tuple)) else \
                    [self.state(node.args[0])]
        return []

    def visit(self, node) -> Any:
        target = node.target
        if target is operator.getitem:
            src = self.states.get(node.args[0])
            return src[node.args[1]] if isinstance(src, (list, tuple)) else {}
        val = node.meta.get("val")
        if not isinstance(target, torch._ops.OpOverload):
            if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)) or val is None:
                return None  # sym arithmetic: checked where its result is used
            raise _NotPaddable(f"'{target}' is not an ATen op the checker knows")
        name = _op_name(node)
        bad = [pos for pos, _ in self.sym_args(node) if (name, pos) not in _SIZE_ARGS]
        if bad:
            raise _NotPaddable(f"'{name}' uses the dim's size as a value")
        if name in _NO_RESULT:
            return None
        ins = [a for a in node.args if isinstance(a, fx.Node) and self.state(a)]
        for a in node.args:
            if isinstance(a, (list, tuple)):
                ins += [x for x in a if isinstance(x, fx.Node) and self.state(x)]
        if isinstance(val, (list, tuple)):  # multi-result ops: per result below
            return self.multi(node, name)
        if not isinstance(val, torch.Tensor):
            if ins:
                raise _NotPaddable(f"'{name}' turns a dynamic-size tensor into a value")
            return None
        self.follow_iota(node, name)
        if name in ("scalar_tensor", "full") and isinstance(node.args[-1 if name == "scalar_tensor" else 1], (int, float)):
            self.consts[node] = float(node.args[0] if name == "scalar_tensor" else node.args[1])
        if any(a in self.nonfinite for a in _tensor_args(node)):
            self.nonfinite.add(node)
        rule = _RULES.get(name)
        if rule is None:
            if torch.Tag.pointwise in target.tags or name in _IDENTITY_LIKE:
                rule = _Prover.pointwise
            elif not ins:
                return self.check(node, self.factory(node, name))
            else:
                raise _NotPaddable(f"'{name}' is not known to keep the entries of a dim apart")
        return self.check(node, rule(self, node))

    def factory(self, node, name) -> dict[int, _DimState]:
        """A result computed from no tracked tensor: its dims of dynamic size must be s-independent fills."""
        shape = self.shape(node)
        if name == "arange" and len(shape) == 1:
            start = node.args[0] if len(node.args) > 1 else 0
            step = node.args[2] if len(node.args) > 2 else 1
            if start == 0 and step == 1:
                self.iota[node] = 0
        if not any(self.carries(x) for x in shape):
            return {}
        if name not in _FILLS:
            raise _NotPaddable(f"'{name}' makes a tensor of dynamic size whose values may depend on the size")
        fill = {"zeros": 0.0, "new_zeros": 0.0, "ones": 1.0, "new_ones": 1.0}.get(name)
        if name in ("full", "new_full", "scalar_tensor"):
            fill = node.args[1] if isinstance(node.args[1], (int, float)) else None
        out = {d: _simple(self.s, x) for d, x in enumerate(shape) if self.carries(x)}
        if node in self.iota:
            return {d: replace(f, pad="ge_v" if self.simple(f) else "nonneg") for d, f in out.items()}
        return {d: replace(f, pad=_as_fact(fill) or "any") for d, f in out.items()}

    def follow_iota(self, node, name) -> None:
        """arange's 'entry i is i' survives copies, unsqueeze and expand (what index masks are made of)."""
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src not in self.iota:
            return
        d = self.iota[src]
        if name in ("_to_copy", "clone", "alias", "expand"):
            self.iota[node] = d + len(self.shape(node)) - len(self.shape(src))
        elif name == "unsqueeze":
            at = node.args[1] % len(self.shape(node))
            self.iota[node] = d if d < at else d + 1
        elif name in ("add", "sub") and len(node.args) > 1 and node.args[1] == 0:  # arange + past length 0
            self.iota[node] = d

    def pointwise(self, node) -> dict[int, _DimState]:
        out = self.shape(node)
        st: dict[int, _DimState] = {}
        for a in _tensor_args(node):
            shape = self.shape(a)
            off = len(out) - len(shape)
            for d, f in self.state(a).items():
                od = d + off
                if od in st and st[od] != f:
                    raise _NotPaddable(f"'{_op_name(node)}' combines operands that split a dim differently")
                st[od] = f
        for d, size in enumerate(out):  # a broadcast (size-1) operand dim grown to the dynamic size
            if d not in st and self.carries(size):
                st[d] = _simple(self.s, size)
        name = _op_name(node)
        for d, f in st.items():
            facts = {i: self.operand_fact(a, d, len(out)) for i, a in enumerate(node.args)
                     if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)}
            st[d] = replace(f, pad=_pointwise_fact(node, name, facts))
        return st

    def multi(self, node, name) -> list:
        finite = self.all_finite(node)
        results = self.multi_states(node, name)
        if name in ("split_with_sizes", "split", "unbind", "chunk", "split_with_sizes_copy", "unbind_copy"):
            return results  # entries moved, not computed: their facts hold
        return [_values(r, finite) if isinstance(r, dict) else r for r in results]

    def multi_states(self, node, name) -> list:
        x = node.args[0]
        st = self.state(x)
        shapes = [list(v.shape) if isinstance(v, torch.Tensor) else [] for v in node.meta["val"]]
        if name == "native_layer_norm":
            k = len(node.args[1])
            r = len(self.shape(x))
            if any(d >= r - k for d in st):
                raise _NotPaddable("layer_norm normalizes over the dynamic dim")
            return [dict(st)] + [{d: f for d, f in st.items()} for _ in shapes[1:]]
        if name == "native_group_norm":
            if any(d >= 1 for d in st):
                raise _NotPaddable("group_norm normalizes over the dynamic dim")
            return [dict(st)] + [{0: st[0]} if 0 in st else {} for _ in shapes[1:]]
        if name in ("_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
                    "native_batch_norm"):
            if 1 in st:
                raise _NotPaddable("batch_norm over the dynamic dim as channels")
            if name != "_native_batch_norm_legit_no_training" and bool(node.args[5]):
                raise _NotPaddable("batch_norm in training mode averages over the batch")
            return [dict(st)] + [{} for _ in shapes[1:]]
        if name in ("max_pool2d_with_indices", "max_pool3d_with_indices", "max_pool1d_with_indices"):
            sp = int(name[-len("2d_with_indices")])
            if any(d >= len(self.shape(x)) - sp for d in st):
                raise _NotPaddable("pooling windows run across the dynamic dim")
            return [dict(st), dict(st)]
        if name in ("split_with_sizes", "split", "unbind", "chunk", "split_with_sizes_copy", "unbind_copy"):
            at = 1 if name.startswith("unbind") else 2
            dim = node.args[at] if len(node.args) > at else node.kwargs.get("dim", 0)
            r = len(self.shape(x))
            dim %= r
            if dim in st:
                raise _NotPaddable(f"'{name}' splits the dynamic dim")
            if name.startswith("unbind"):
                return [{(d if d < dim else d - 1): f for d, f in st.items()} for _ in shapes]
            return [dict(st) for _ in shapes]
        if name in ("var_mean", "std_mean"):
            red = _reduced_dims(node, len(self.shape(x)))
            if any(d in red for d in st):
                raise _NotPaddable(f"'{name}' reduces over the dynamic dim")
            keep = bool(node.kwargs.get("keepdim", False))
            res = _after_reduction(st, red, keep)
            return [res, res]
        if name in ("max", "min", "sort", "topk", "kthvalue", "mode", "aminmax"):
            r = len(self.shape(x))
            dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)) % max(r, 1)
            if name == "topk":
                dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1)) % max(r, 1)
            if dim in st:
                raise _NotPaddable(f"'{name}' runs along the dynamic dim")
            keep = name in ("sort", "topk") or bool(node.args[2] if len(node.args) > 2 and name != "topk" else
                                                      node.kwargs.get("keepdim", False))
            res = _after_reduction(st, {dim}, keep)
            return [res for _ in shapes]
        if not st and not any(self.state(a) for a in _tensor_args(node)):
            if any(self.carries(sympy.sympify(_expr(d))) for sh in shapes for d in sh):
                raise _NotPaddable(f"'{name}' makes tensors of dynamic size")
            return [{} for _ in shapes]
        raise _NotPaddable(f"'{name}' is not known to keep the entries of a dim apart")


def _op_name(node) -> str:
    t = node.target
    return t._schema.name.split("::")[-1] if isinstance(t, torch._ops.OpOverload) else str(t)


def _tensor_args(node) -> list[fx.Node]:
    out = []
    for a in list(node.args) + list(node.kwargs.values()):
        for x in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(x, fx.Node) and isinstance(x.meta.get("val"), torch.Tensor):
                out.append(x)
    return out


def _reduced_dims(node, rank: int) -> set[int]:
    at = 2 if _op_name(node) in ("norm", "linalg_vector_norm") else 1  # after the order p
    dims = node.args[at] if len(node.args) > at else node.kwargs.get("dim")
    if dims is None or dims == [] or dims == ():
        return set(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return {d % max(rank, 1) for d in dims}


def _after_reduction(st, red: set[int], keep: bool) -> dict[int, _DimState]:
    out = {}
    for d, f in st.items():
        out[d if keep else d - sum(1 for r in red if r < d)] = f
    return out


def _reduce(self: _Prover, node) -> dict[int, _DimState]:
    """A reduction over the dynamic dim is exact when its padded entries are the reduction's
    identity (sum over zeros, any over False, amax over -inf)."""
    x = node.args[0]
    name = _op_name(node)
    r = len(self.shape(x))
    red = _reduced_dims(node, r)
    st = self.state(x)
    for d in red & set(st):
        if name not in _REDUCE_IDENTITY or _const(st[d].pad) != _REDUCE_IDENTITY[name]:
            raise _NotPaddable(f"'{name}' reduces over the dynamic dim")
    keep = len(self.shape(node)) == r
    kept = {d: replace(f, pad=_reduced_fact(name, f.pad)) for d, f in st.items() if d not in red}
    return _after_reduction(kept, red, keep)


def _along(dim_arg: int):
    """Ops that work along one dim (softmax, cumsum...): that dim must not be the dynamic one, except
    for prefix ops (cumsum) on a prefix-shaped dim."""

    def rule(self: _Prover, node) -> dict[int, _DimState]:
        x = node.args[0]
        name = _op_name(node)
        r = len(self.shape(x))
        dim = node.args[dim_arg] % max(r, 1)
        st = self.state(x)
        softmax = name in ("_softmax", "softmax", "_safe_softmax")
        out = {d: replace(f, pad="nonneg" if softmax and _fneg(f.pad) else
                          "fin" if _fin(f.pad) and self.all_finite(node) else "any") for d, f in st.items()}
        if dim in st:
            if softmax and _masked(st[dim].pad):  # masked keys: exp underflows to exactly 0
                out[dim] = replace(st[dim], pad=("c", 0.0))
            elif not (name in _PREFIX_OPS and st[dim].prefix):
                raise _NotPaddable(f"'{name}' runs along the dynamic dim")
        return out

    return rule


def _permute(self: _Prover, node) -> dict[int, _DimState]:
    st = self.state(node.args[0])
    r = len(self.shape(node.args[0]))
    perm = [p % r for p in node.args[1]]
    return {j: st[p] for j, p in enumerate(perm) if p in st}


def _transpose(self: _Prover, node) -> dict[int, _DimState]:
    st = self.state(node.args[0])
    r = len(self.shape(node.args[0]))
    if _op_name(node) in ("t", "numpy_T"):
        a, b = 0, max(r - 1, 0)
    else:
        a, b = node.args[1] % r, node.args[2] % r
    swap = {a: b, b: a}
    return {swap.get(d, d): f for d, f in st.items()}


def _repeat(self: _Prover, node) -> dict[int, _DimState]:
    x, reps = node.args[0], node.args[1]
    st = self.state(x)
    off = len(reps) - len(self.shape(x))
    out = {}
    for d, size in enumerate(self.shape(node)):
        if d - off in st:
            if not (isinstance(reps[d], int) and reps[d] == 1):
                raise _NotPaddable("repeat tiles the dynamic dim")
            out[d] = st[d - off]
        elif self.carries(size):
            if d >= off and not _is_zero(self.shape(x)[d - off] - 1):
                raise _NotPaddable("repeat tiles a dim by the dynamic size")
            out[d] = _simple(self.s, size)  # a size-1 dim repeated: every entry equal
    return out


def _unsqueeze(self: _Prover, node) -> dict[int, _DimState]:
    st = self.state(node.args[0])
    r = len(self.shape(node))
    dim = node.args[1] % r
    return {(d if d < dim else d + 1): f for d, f in st.items()}


def _squeeze(self: _Prover, node) -> dict[int, _DimState]:
    x = node.args[0]
    shape = self.shape(x)
    out_rank = len(self.shape(node))
    st = self.state(x)
    kept = [d for d in range(len(shape))]
    if len(shape) != out_rank:  # squeezed dims: size 1, never dynamic
        dims = node.args[1] if len(node.args) > 1 else None
        if dims is None:
            dims = [d for d, n in enumerate(shape) if n == 1]
        elif isinstance(dims, int):
            dims = [dims]
        dims = {d % len(shape) for d in dims if shape[d % len(shape)] == 1}
        kept = [d for d in range(len(shape)) if d not in dims]
    return {kept.index(d): f for d, f in st.items() if d in kept}


def _expand(self: _Prover, node) -> dict[int, _DimState]:
    st = self.state(node.args[0])
    off = len(self.shape(node)) - len(self.shape(node.args[0]))
    out = {d + off: f for d, f in st.items()}
    for d, size in enumerate(self.shape(node)):
        if d not in out and self.carries(size):  # a size-1 dim repeated: every entry equal
            out[d] = replace(_simple(self.s, size), pad=self.value_fact(node.args[0], d - off))
    return out


def _exact(e) -> bool:
    """True when `e` (a quotient of sizes) is a polynomial: the division leaves no remainder."""
    return sympy.fraction(sympy.cancel(e))[1] == 1


def _view(self: _Prover, node) -> dict[int, _DimState]:
    """The input dims' factors, laid out outer to inner, are re-cut into the output dims. The
    symbol's factor may be merged with others whole, or split when its outer part keeps the symbol
    and the inner part divides both lead and inner."""
    x = node.args[0]
    st = self.state(x)
    if not st:
        return {}
    atoms: list[tuple[Any, _DimState | None]] = []  # (size, the symbol's state if this is its factor)
    for d, size in enumerate(self.shape(x)):
        if d in st:
            f = st[d]
            atoms += [(f.outer, None), (f.lead + self.s * f.inner, f)]
        else:
            atoms.append((size, None))
    result: dict[int, _DimState] = {}
    i, rem = 0, None  # current atom; what is left of it when an output dim took its outer part
    for d, size in enumerate(self.shape(node)):
        before, after, sym = sympy.Integer(1), sympy.Integer(1), None  # factors around the symbol's
        need = sympy.sympify(size)

        def take(part, owner=None):
            nonlocal before, after, sym
            if owner is not None:
                sym = owner
            elif sym is None:
                before = before * part
            else:
                after = after * part

        while not _is_zero(need - 1):
            if i >= len(atoms):
                raise _NotPaddable("internal: view sizes do not match")
            a_size, a_state = atoms[i]
            cur = a_size if rem is None else rem
            symbol_factor = a_state is not None and rem is None
            if _is_zero(cur - 1):
                i, rem = i + 1, None
            elif _exact(need / cur):  # all of it goes into this output dim
                take(cur, a_state if symbol_factor else None)
                need = sympy.cancel(need / cur)
                i, rem = i + 1, None
            else:  # this output dim takes the outer part `need`, the rest goes on
                r = sympy.cancel(cur / need)
                if not _exact(r) or self.carries(r):
                    raise _NotPaddable("a view splits a dim of dynamic size the checker cannot follow")
                if symbol_factor:
                    lead, inner = sympy.cancel(a_state.lead / r), sympy.cancel(a_state.inner / r)
                    if not (_exact(lead) and _exact(inner)):
                        raise _NotPaddable("a view splits the dynamic dim's factor")
                    take(need, _DimState(sympy.Integer(1), lead, inner, a_state.pad))
                elif self.carries(need):
                    raise _NotPaddable("a view splits a dim of dynamic size the checker cannot follow")
                else:
                    take(need)
                rem, need = r, sympy.Integer(1)
        if sym is not None:
            result[d] = _DimState(before, sym.lead * after, sym.inner * after, sym.pad)
    return result


def _mm(self: _Prover, node) -> dict[int, _DimState]:
    name = _op_name(node)
    a, b = (node.args[1], node.args[2]) if name in ("addmm", "baddbmm") else (node.args[0], node.args[1])
    sa, sb = self.state(a), self.state(b)
    ra, rb = len(self.shape(a)), len(self.shape(b))
    if (ra - 1) in sa or (rb - 2) in sb:  # exact when one side's padded entries are zeros, the other's finite
        ka, kb = sa.get(ra - 1), sb.get(rb - 2)
        if ka is None or kb is None or ka != kb or not (
                (_const(ka.pad) == 0.0 and _fin(kb.pad)) or (_const(kb.pad) == 0.0 and _fin(ka.pad))):
            raise _NotPaddable(f"'{name}' contracts over the dynamic dim")
    fa, fb = self.value_fact(a), self.value_fact(b)

    def product(x, y):  # a padded entry of one side times finite entries of the other, summed
        return ("c", 0.0) if _const(x) == 0.0 and _fin(y) else "fin" if _fin(x) and _fin(y) else "any"

    out: dict[int, _DimState] = {}
    r = len(self.shape(node))
    for d, f in sa.items():  # batch dims and rows of A
        if d != ra - 1:
            out[d + r - ra] = replace(f, pad=product(f.pad, sb[d].pad if d in sb and d < ra - 2 else fb))
    for d, f in sb.items():
        if d == rb - 2:
            continue
        od = r - 1 if d == rb - 1 else d + r - rb
        if od in out and out[od] != f:
            raise _NotPaddable(f"'{name}' batches operands that split a dim differently")
        if od not in out:
            out[od] = replace(f, pad=product(f.pad, fa))
    if name in ("addmm", "baddbmm"):
        bias = node.args[0]
        shape = self.shape(bias)
        for d, f in self.state(bias).items():
            od = d + r - len(shape)
            if od in out and out[od] != f:
                raise _NotPaddable(f"'{name}' adds a bias split differently")
            out[od] = replace(f, pad=_sum_fact(out[od].pad if od in out else "fin", 1, f.pad))
        for od, f in out.items():
            if od - (r - len(shape)) not in self.state(bias):
                out[od] = replace(f, pad=_sum_fact(f.pad, 1, self.value_fact(bias)))
    return out


def _spatial(n: int | None):
    """Convs, pools, upsampling: the trailing `n` dims are windows (None: from the weight's rank)."""

    def rule(self: _Prover, node) -> dict[int, _DimState]:
        x = node.args[0]
        st = self.state(x)
        r = len(self.shape(x))
        sp = n if n is not None else len(self.shape(node.args[1])) - 2
        if any(d >= r - sp for d in st) or any(self.state(a) for a in _tensor_args(node)[1:]):
            raise _NotPaddable(f"'{_op_name(node)}' windows run across the dynamic dim")
        if _op_name(node) == "convolution" and 1 in st:
            raise _NotPaddable("a convolution mixes the dynamic dim as channels")
        return _values(st, self.all_finite(node))

    return rule


def _index(self: _Prover, node) -> dict[int, _DimState]:
    """x[i0, i1, ...] with index tensors on x's leading dims: a dim of dynamic size may be indexed
    only by arange along the same dim (mask[arange(b)[:, None], kv] in transformers' mask code)."""
    x, indices = node.args[0], list(node.args[1])
    sx = self.state(x)
    m = len(indices)
    if any(i is None for i in indices):
        if sx or any(self.state(i) for i in indices if i is not None):
            raise _NotPaddable("advanced indexing with gaps, on a tensor of dynamic size")
        return {}
    nb = len(self.shape(node)) - (len(self.shape(x)) - m)  # rank of the broadcast index shape
    out: dict[int, _DimState] = {}

    def put(d, f):
        if d in out and out[d] != f:
            raise _NotPaddable("index tensors split a dim differently")
        out[d] = f

    for idx in indices:
        off = nb - len(self.shape(idx))
        for d, f in self.state(idx).items():
            put(d + off, replace(f, pad=self.value_fact(x)))
    for k, f in sx.items():
        if k >= m:
            put(nb + k - m, f)
            continue
        idx = indices[k]
        if idx not in self.iota:
            raise _NotPaddable("indexing picks entries along the dynamic dim")
        j = self.iota[idx] + nb - len(self.shape(idx))
        if out.get(j) != f:
            raise _NotPaddable("indexing the dynamic dim by a range of another size")
        out[j] = replace(out[j], pad=f.pad)  # an arange picks the padded entries themselves
    return out


def _as_strided(self: _Prover, node) -> dict[int, _DimState]:
    """Only the identity: the same sizes and the input's own row-major strides (size-1 dims aside)."""
    x = node.args[0]
    shape = self.shape(x)
    sizes = [_expr(a.meta["val"]) if isinstance(a, fx.Node) else sympy.Integer(a) for a in node.args[1]]
    strides = [_expr(a.meta["val"]) if isinstance(a, fx.Node) else sympy.Integer(a) for a in node.args[2]]
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    expect, ok = sympy.Integer(1), len(sizes) == len(shape) and offset in (0, None)
    for d in reversed(range(len(shape))):
        if not ok:
            break
        ok = _is_zero(sizes[d] - shape[d]) and (_is_zero(shape[d] - 1) or _is_zero(strides[d] - expect))
        expect = expect * shape[d]
    if not ok:
        raise _NotPaddable("as_strided reads a tensor of dynamic size in another layout")
    return dict(self.state(x))


def _embedding(self: _Prover, node) -> dict[int, _DimState]:
    if self.state(node.args[0]):
        raise _NotPaddable("an embedding table of dynamic size")
    return _values(self.state(node.args[1]), _fin(self.value_fact(node.args[0])))


def _index_select(self: _Prover, node) -> dict[int, _DimState]:
    x, dim, idx = node.args[0], node.args[1], node.args[2]
    st = dict(self.state(x))
    dim %= len(self.shape(x))
    if dim in st:
        raise _NotPaddable("index_select picks entries along the dynamic dim")
    if self.state(idx):
        st[dim] = replace(self.state(idx)[0], pad=self.value_fact(x))
    return st


def _gather(self: _Prover, node) -> dict[int, _DimState]:
    x, dim, idx = node.args[0], node.args[1], node.args[2]
    dim %= len(self.shape(x))
    sx, si = self.state(x), self.state(idx)
    if dim in sx:
        raise _NotPaddable("gather picks entries along the dynamic dim")
    for d, f in si.items():
        if d in sx and sx[d] != f:
            raise _NotPaddable("gather operands split a dim differently")
    return {d: replace(f, pad=sx[d].pad if d in sx else self.value_fact(x)) for d, f in si.items()}


def _cat(self: _Prover, node) -> dict[int, _DimState]:
    parts = [p for p in node.args[0]]
    r = len(self.shape(node))
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % r
    out: dict[int, _DimState] = {}
    before = sympy.Integer(0)
    for j, p in enumerate(parts):
        shape = self.shape(p)
        if len(shape) != r:  # legacy empty 1-d operands are skipped by cat
            continue
        for d, f in self.state(p).items():
            if d == dim:
                if j != len(parts) - 1 or not f.prefix:
                    raise _NotPaddable("cat puts entries after the dynamic dim's padding")
                out[d] = _DimState(f.outer, before + f.lead, f.inner, f.pad)
            elif d in out and out[d] != f:
                raise _NotPaddable("cat operands split a dim differently")
            else:
                out[d] = replace(f, pad=_join(out[d].pad, f.pad)) if d in out else f
        if dim not in self.state(p):
            if self.carries(shape[dim]):
                raise _NotPaddable("cat of a dynamic-size part the checker does not follow")
            before = before + shape[dim]
    return out


def _pad(self: _Prover, node) -> dict[int, _DimState]:
    x, pad = node.args[0], node.args[1]
    st = dict(self.state(x))
    r = len(self.shape(x))
    padded = set()  # dims that gain entries
    for j in range(len(pad) // 2):
        d = r - 1 - j
        left, right = pad[2 * j], pad[2 * j + 1]
        if left or right:
            padded.add(d)
        if d in st:
            f = st[d]
            if right != 0 or not f.prefix or left < 0:
                raise _NotPaddable("constant_pad_nd pads after (or cuts) the dynamic dim")
            st[d] = _DimState(f.outer, f.lead + left, f.inner, f.pad)
    value = _as_fact(node.args[2] if len(node.args) > 2 else 0.0) or "any"
    return {d: replace(f, pad=_join(f.pad, value)) if padded - {d} else f for d, f in st.items()}


def _slice(self: _Prover, node) -> dict[int, _DimState]:
    x = node.args[0]
    shape = self.shape(x)
    r = len(shape)
    dim = (node.args[1] if len(node.args) > 1 else 0) % r
    st = dict(self.state(x))
    if dim not in st:
        size = self.shape(node)[dim]
        if self.carries(size):  # a static table cut to the dynamic size (position embeddings): s-independent
            st[dim] = replace(_simple(self.s, size), pad=self.value_fact(x))
        return st
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    f = st[dim]
    start = 0 if start is None else start
    end_e = None if end is None else (end.meta["val"].node.expr if isinstance(end, fx.Node) else end)
    to_end = end_e is None or (isinstance(end_e, int) and end_e >= 1 << 62) or \
        sympy.simplify(sympy.sympify(end_e) - shape[dim]).is_nonnegative
    if step != 1 or not isinstance(start, int) or start < 0 or not to_end or not f.prefix:
        raise _NotPaddable("a slice of the dynamic dim does not keep its start and run to its end")
    st[dim] = _DimState(f.outer, f.lead - start, f.inner, f.pad)
    return st


def _select(self: _Prover, node) -> dict[int, _DimState]:
    x = node.args[0]
    r = len(self.shape(x))
    dim = node.args[1] % r
    st = self.state(x)
    if dim in st:
        raise _NotPaddable("select picks one entry of the dynamic dim")
    return {(d if d < dim else d - 1): f for d, f in st.items()}


def _schema_arg(node, name: str, default=None):
    """An argument of an ATen op by its schema name, positional or keyword."""
    if name in node.kwargs:
        return node.kwargs[name]
    for i, a in enumerate(node.target._schema.arguments):
        if a.name == name:
            return node.args[i] if i < len(node.args) and not a.kwarg_only else default
    return default


def _sdpa(self: _Prover, node) -> dict[int, _DimState]:
    """Attention is exact over padded keys when the mask masks them (bool False, or -inf / at most
    -1e30 in a float mask) or it is causal with queries and keys padded alike (a valid query
    never reaches a key past itself)."""
    q, k, v = node.args[0], node.args[1], node.args[2]
    sq, sk, sv = self.state(q), self.state(k), self.state(v)
    r = len(self.shape(q))
    if (r - 1) in sq or (r - 1) in sk:
        raise _NotPaddable("attention runs over the dynamic dim as features")
    for st in (sk, sv):
        for d, f in st.items():
            if d in sq and d < r - 2 and sq[d] != f:
                raise _NotPaddable("attention operands split a dim differently")
    mask = _schema_arg(node, "attn_mask", _schema_arg(node, "attn_bias"))
    if (r - 2) in sk or (r - 2) in sv:
        key_k, key_v = sk.get(r - 2), sv.get(r - 2)
        if key_k is None or key_v is None or key_k != key_v or not _fin(key_v.pad):
            raise _NotPaddable("attention runs over keys along the dynamic dim")
        masked = False
        if isinstance(mask, fx.Node):
            f = self.state(mask).get(len(self.shape(mask)) - 1)
            boolean = mask.meta["val"].dtype == torch.bool
            masked = f is not None and (_const(f.pad) == 0.0 if boolean else _masked(f.pad))
        causal = bool(_schema_arg(node, "is_causal", False)) and sq.get(r - 2) == key_k
        if not (masked or causal):
            raise _NotPaddable("attention runs over keys along the dynamic dim, and no mask masks the padded ones")
    finite = all(_fin(f.pad) for st in (sq, sk, sv) for f in st.values())
    return _values(sq, finite)


_RULES = {
    "sum": _reduce, "mean": _reduce, "amax": _reduce, "amin": _reduce, "prod": _reduce, "any": _reduce,
    "all": _reduce, "var": _reduce, "std": _reduce, "logsumexp": _reduce, "argmax": _reduce, "argmin": _reduce,
    "norm": _reduce, "linalg_vector_norm": _reduce,  # dims at argument 2: see _reduced_dims
    "_softmax": _along(1), "_log_softmax": _along(1), "softmax": _along(1), "log_softmax": _along(1),
    "cumsum": _along(1), "cumprod": _along(1), "_safe_softmax": _along(1),
    "permute": _permute, "transpose": _transpose, "t": _transpose, "unsqueeze": _unsqueeze, "squeeze": _squeeze,
    "expand": _expand, "repeat": _repeat, "view": _view, "_unsafe_view": _view, "reshape": _view, "view_copy": _view,
    "mm": _mm, "bmm": _mm, "addmm": _mm, "baddbmm": _mm,
    "convolution": _spatial(None), "avg_pool1d": _spatial(1), "avg_pool2d": _spatial(2), "avg_pool3d": _spatial(3),
    "_adaptive_avg_pool2d": _spatial(2), "_adaptive_avg_pool3d": _spatial(3), "adaptive_avg_pool1d": _spatial(1),
    "upsample_nearest2d": _spatial(2), "upsample_bilinear2d": _spatial(2), "upsample_nearest1d": _spatial(1),
    "upsample_linear1d": _spatial(1), "upsample_nearest3d": _spatial(3), "upsample_trilinear3d": _spatial(3),
    "upsample_bicubic2d": _spatial(2), "_upsample_nearest_exact2d": _spatial(2), "_upsample_bilinear2d_aa": _spatial(2),
    "embedding": _embedding, "index": _index, "as_strided": _as_strided, "index_select": _index_select, "gather": _gather, "cat": _cat,
    "constant_pad_nd": _pad, "slice": _slice, "select": _select,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa, "scaled_dot_product_attention": _sdpa,
    "_scaled_dot_product_efficient_attention": _sdpa, "_scaled_dot_product_flash_attention": _sdpa,
}
_PREFIX_OPS = {"cumsum", "cumprod"}
# Not tagged pointwise, but each output entry is the input entry at the same index.
_IDENTITY_LIKE = {"clone", "_to_copy", "alias", "detach", "lift_fresh_copy", "contiguous", "full_like", "zeros_like",
                  "ones_like", "empty_like", "masked_fill"}
# Results without tensors to track (runtime assertions, range constraints).
_NO_RESULT = {"_assert_scalar", "sym_constrain_range_for_size", "sym_constrain_range", "_assert_tensor_metadata",
              "sym_size", "sym_numel", "sym_stride", "sym_storage_offset"}
# Factories whose entries do not depend on their size (arange's entry i is start + i * step).
_FILLS = {"full", "zeros", "ones", "empty", "empty_strided", "arange", "new_zeros", "new_ones", "new_full",
          "new_empty", "scalar_tensor", "empty_permuted"}
# (op, argument position) where the dynamic size may appear: shapes, ranges, slice ends.
_SIZE_ARGS = {("view", 1), ("_unsafe_view", 1), ("reshape", 1), ("view_copy", 1), ("expand", 1), ("repeat", 1), ("as_strided", 1), ("full", 0),
              ("zeros", 0), ("ones", 0), ("empty", 0), ("empty_strided", 0), ("empty_strided", 1), ("arange", 0),
              ("arange", 1), ("new_zeros", 1), ("new_ones", 1), ("new_full", 1), ("new_empty", 1), ("slice", 3),
              ("native_group_norm", 3), ("native_group_norm", 5), ("empty_permuted", 0)}


def padding_obstacle(ep, sym: Symbol) -> str | None:
    """None when every output's entries below add + mul * v (per dim of dynamic size) depend only on
    input entries below v along `sym`'s dims, and equal a program built for v; else why not."""
    from torch.export.graph_signature import InputKind

    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [n for spec, n in zip(ep.graph_signature.input_specs, placeholders) if spec.kind == InputKind.USER_INPUT]
    prover = _Prover(sym.expr)
    state = {**ep.state_dict, **ep.constants}
    for spec, n in zip(ep.graph_signature.input_specs, placeholders):
        t = state.get(spec.target) if spec.kind != InputKind.USER_INPUT else None
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            prover.nonfinite.add(n)  # a weight holding inf (a mask buffer): not assumed finite
    inputs = {}
    for i, dim in sym.uses:
        # The runtime pads inputs with zeros.
        inputs.setdefault(user[i], {})[dim] = _DimState(sympy.Integer(1), sympy.Integer(0), sympy.Integer(1), ("c", 0.0))
    try:
        outs = prover.run(ep.graph_module, inputs)
    except _NotPaddable as e:
        return str(e)
    for j, st in enumerate(outs):
        for d, f in st.items():
            if not f.prefix:
                return f"output {j} merges the dynamic dim inside dim {d}"
            if not (sympy.sympify(f.inner).is_Integer and sympy.sympify(f.lead).is_Integer):
                return f"output {j} dim {d} combines two dynamic dims"
    return None
