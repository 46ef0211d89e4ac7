"""Graph-level optimizations on the ATen graph, done once at build time:

- fold eval-mode BatchNorm into the convolution that feeds it (scaled weights, shifted bias), and
  turn any other into one multiply and one add by per-channel vectors computed here (the
  decompositions would leave four elementwise ops); BatchNorm is kept whole by the decompositions
  for this;
- compute variance (`var_mean`, as LayerNorm decomposes) in the input's dtype: torch-mlir lowers
  it through float64, which doubles the memory traffic of every LayerNorm and halves its vector
  width; a two-pass mean / mean of squared deviations in float32 is what eager PyTorch's own
  kernels match to float rounding;
- constant-fold every op whose inputs are all weights (weight transposes for Linear, the scale
  vectors of a BatchNorm not after a conv, ...), storing the result as a new weight instead of
  recomputing it on every run; runs after the decompositions, which create such ops.

The graph's placeholders are the model's weights (their tensors in `values`) and its inputs.
Passes add new weight placeholders and drop the ones nothing uses any more.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

aten = torch.ops.aten

# Folding must not blow up the bundle: a folded result may be at most this many times larger than
# the stored weights it is computed from (an expand of a bias to a full activation would be huge;
# so would a copy of an expanded weight, MultiheadAttention's bmm operand at batch > 1).
MAX_GROWTH = 1.0


class WeightGraph:
    """The graph plus the tensor of each weight placeholder."""

    def __init__(self, graph: fx.Graph, values: dict[fx.Node, torch.Tensor]):
        self.graph = graph
        self.values = values
        self._counter = 0

    def add_weight(self, tensor: torch.Tensor, hint: str) -> fx.Node:
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._counter += 1
        with self.graph.inserting_after(placeholders[-1] if placeholders else None):
            node = self.graph.placeholder(f"folded_{self._counter}_{hint}"[:60])
        self.values[node] = tensor.detach().contiguous()
        return node

    def drop_unused(self) -> None:
        self.graph.eliminate_dead_code()
        for node in list(self.graph.nodes):
            if node.op == "placeholder" and node in self.values and not node.users:
                self.graph.erase_node(node)
                del self.values[node]


def fold_batchnorm(wg: WeightGraph) -> int:
    """conv -> _native_batch_norm_legit_no_training -> getitem 0  ==>  conv with folded weights."""
    folded = 0
    for bn in list(wg.graph.nodes):
        if bn.op != "call_function" or bn.target != aten._native_batch_norm_legit_no_training.default:
            continue
        conv, gamma, beta, mean, var, _momentum, eps = bn.args
        if not (isinstance(conv, fx.Node) and conv.target == aten.convolution.default and len(conv.users) == 1):
            continue
        x, w, b, stride, padding, dilation, transposed, output_padding, groups = conv.args
        params = [w, b, gamma, beta, mean, var]
        if transposed or any(p is not None and p not in wg.values for p in params):
            continue
        uses = list(bn.users)
        if not all(u.target == operator.getitem and u.args[1] == 0 for u in uses):
            continue
        W = wg.values[w]
        scale = wg.values[gamma] / torch.sqrt(wg.values[var] + eps) if gamma is not None \
            else 1.0 / torch.sqrt(wg.values[var] + eps)
        bias = wg.values[b] if b is not None else torch.zeros(W.shape[0], dtype=W.dtype)
        shift = wg.values[beta] if beta is not None else 0.0
        new_w = wg.add_weight(W * scale.reshape(-1, *([1] * (W.dim() - 1))), "conv_bn_w")
        new_b = wg.add_weight((bias - wg.values[mean]) * scale + shift, "conv_bn_b")
        with wg.graph.inserting_before(bn):
            new_conv = wg.graph.call_function(
                aten.convolution.default,
                (x, new_w, new_b, stride, padding, dilation, transposed, output_padding, groups))
        new_conv.meta = dict(conv.meta)
        for u in uses:
            u.replace_all_uses_with(new_conv)
            wg.graph.erase_node(u)
        wg.graph.erase_node(bn)
        wg.graph.erase_node(conv)
        folded += 1
    wg.drop_unused()
    return folded


def batchnorm_scale_shift(wg: WeightGraph) -> int:
    """_native_batch_norm_legit_no_training (no conv absorbed it) -> getitem 0  ==>  x * scale + shift,
    per channel; computed here in float64 when the statistics are weights, else as graph ops."""
    done = 0
    for bn in list(wg.graph.nodes):
        if bn.op != "call_function" or bn.target != aten._native_batch_norm_legit_no_training.default:
            continue
        x, gamma, beta, mean, var, _momentum, eps = bn.args
        uses = list(bn.users)
        if not uses or not all(u.target == operator.getitem and u.args[1] == 0 for u in uses):
            continue
        val = uses[0].meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() < 2:
            continue
        channels = [-1] + [1] * (val.dim() - 2)  # [C, 1, ...] against [N, C, ...]
        g = wg.graph
        with g.inserting_before(bn):
            if all(p is None or p in wg.values for p in (gamma, beta, mean, var)):
                scale = 1.0 / torch.sqrt(wg.values[var].double() + eps)
                if gamma is not None:
                    scale = scale * wg.values[gamma].double()
                shift = -wg.values[mean].double() * scale
                if beta is not None:
                    shift = shift + wg.values[beta].double()
                s = wg.add_weight(scale.to(val.dtype).reshape(channels), "bn_scale")
                b = wg.add_weight(shift.to(val.dtype).reshape(channels), "bn_shift")
            else:  # statistics computed by the model: the same arithmetic as graph ops
                s = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
                if gamma is not None:
                    s = g.call_function(aten.mul.Tensor, (s, gamma))
                b = g.call_function(aten.neg.default, (g.call_function(aten.mul.Tensor, (mean, s)),))
                if beta is not None:
                    b = g.call_function(aten.add.Tensor, (b, beta))
                s = g.call_function(aten.view.default, (s, channels))
                b = g.call_function(aten.view.default, (b, channels))
            mul = g.call_function(aten.mul.Tensor, (x, s))
            add = g.call_function(aten.add.Tensor, (mul, b))
        mul.meta = dict(uses[0].meta)
        add.meta = dict(uses[0].meta)
        for u in uses:
            u.replace_all_uses_with(add)
            g.erase_node(u)
        g.erase_node(bn)
        done += 1
    wg.drop_unused()
    return done


def _weight_only(node, values, seen=None) -> bool:
    """True when `node` is computed from weights alone (no input reaches it)."""
    seen = set() if seen is None else seen
    if node in seen:
        return True
    seen.add(node)
    if node.op == "placeholder":
        return node in values
    return node.op == "call_function" and all(_weight_only(i, values, seen) for i in node.all_input_nodes)


def _shape(node) -> tuple:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def unbatch_weight_matmuls(wg: WeightGraph) -> int:
    """bmm(x, expand(w)) with a 2-D weight `w` copied across the batch ==> mm(rows of x, w).

    torch's matmul decomposition makes that bmm of a 3-D activation and a weight whenever the
    activation is not contiguous (MultiheadAttention's projections at batch > 1): folded, the
    weight would be stored once per batch item and read unpacked. As one mm, the weight is
    stored once, packed, and all rows are one GEMM (the activation is copied to rows first)."""
    done = 0
    for node in list(wg.graph.nodes):
        if node.op != "call_function" or node.target != aten.bmm.default:
            continue
        x, y = node.args
        while y.op == "call_function" and y.target in (aten.view.default, aten._unsafe_view.default) \
                and _shape(y) == _shape(y.args[0]):
            y = y.args[0]
        if not (y.op == "call_function" and y.target == aten.expand.default):
            continue
        w = y.args[0]
        shape_w, shape_x = _shape(w), _shape(x)
        if not (len(shape_w) == 2 or (len(shape_w) == 3 and shape_w[0] == 1)):  # [k, n] or [1, k, n]
            continue
        if len(shape_x) != 3 or not all(isinstance(d, int) for d in shape_x) or not _weight_only(w, wg.values):
            continue
        b, m, k = shape_x
        n = shape_w[-1]
        with wg.graph.inserting_before(node):
            w2 = w if len(shape_w) == 2 else wg.graph.call_function(aten.view.default, (w, [k, n]))
            rows = wg.graph.call_function(aten.reshape.default, (x, [b * m, k]))
            mm = wg.graph.call_function(aten.mm.default, (rows, w2))
            out = wg.graph.call_function(aten.view.default, (mm, [b, m, n]))
        out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        wg.graph.erase_node(node)
        done += 1
    wg.drop_unused()
    return done


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


_VIEWS_KEPT = (torch.ops.aten.slice.Tensor, torch.ops.aten.select.int)


def fold_constants(wg: WeightGraph) -> int:
    """Evaluate ops whose inputs are all weights; keep results that feed the rest of the graph."""
    const: dict[fx.Node, torch.Tensor] = dict(wg.values)
    for node in wg.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, (torch._ops.OpOverload, type(operator.getitem))):
            continue
        if isinstance(node.target, torch._ops.OpOverload) and (
                node.target._schema.is_mutable or "rand" in node.target._schema.name
                or "empty" in node.target._schema.name):
            continue
        inputs = node.all_input_nodes
        if not inputs or any(i not in const for i in inputs):
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: const[n])
        with torch.no_grad():
            result = node.target(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            const[node] = result
    roots: dict[fx.Node, set] = {}  # the weights each folded value is computed from
    for node in const:
        roots[node] = {node} if node.op == "placeholder" else set().union(*(roots[i] for i in node.all_input_nodes))
    materialize: list[fx.Node] = []

    def need(node: fx.Node) -> None:
        """`node`'s value is needed at run time: store it, or (if too big) what it is computed from.
        A slice of a weight stays a view of it (position embeddings cut to the sequence length): the
        programs of a dynamic bundle then share the whole weight instead of storing each cut."""
        if node.op == "placeholder" or node in materialize:
            return
        if node.target in _VIEWS_KEPT and node.args[0].op == "placeholder":
            return
        sources = sum(_numel(const[i]) for i in roots[node])
        if const[node].numel() <= MAX_GROWTH * max(sources, 1):
            materialize.append(node)
        else:  # cheaper to compute at run time than to store
            for i in node.all_input_nodes:
                need(i)

    for node in list(const):
        if any(u not in const for u in node.users):
            need(node)
    for node in materialize:
        node.replace_all_uses_with(wg.add_weight(const[node], "const"))
    wg.drop_unused()
    return len(materialize)


def var_mean_in_input_dtype(wg: WeightGraph) -> int:
    """aten.var_mean.correction(x, dims, correction=c, keepdim=k) -> (var, mean) as two-pass
    float32 arithmetic: mean = mean(x); var = mean((x - mean)^2) * n / (n - c)."""
    count = 0
    for node in list(wg.graph.nodes):
        if node.op != "call_function" or node.target != aten.var_mean.correction:
            continue
        x, dims = node.args[0], node.args[1] if len(node.args) > 1 else None
        correction = node.kwargs.get("correction", 1)
        keepdim = node.kwargs.get("keepdim", False)
        val = x.meta.get("val")
        if val is None or val.dtype != torch.float32 or dims is None or not isinstance(correction, (int, float)):
            continue
        dims = list(dims)
        n = 1
        for d in dims:
            n *= int(val.shape[d])
        if n - correction <= 0:
            continue
        users = list(node.users)
        if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
            continue
        g = wg.graph
        with g.inserting_before(node):
            mean_k = g.call_function(aten.mean.dim, (x, dims, True))
            dev = g.call_function(aten.sub.Tensor, (x, mean_k))
            sq = g.call_function(aten.mul.Tensor, (dev, dev))
            var = g.call_function(aten.mean.dim, (sq, dims, keepdim))
            if correction:
                var = g.call_function(aten.mul.Tensor, (var, float(n) / float(n - correction)))
            mean = mean_k if keepdim else g.call_function(aten.mean.dim, (x, dims, False))
        for u in users:
            u.replace_all_uses_with(var if u.args[1] == 0 else mean)
            g.erase_node(u)
        g.erase_node(node)
        count += 1
    return count


def run_pass(graph: fx.Graph, values: dict[fx.Node, torch.Tensor], fn) -> int:
    """Run one pass (fold_batchnorm / fold_constants) over `graph`; returns how much it folded."""
    done = fn(WeightGraph(graph, values))
    graph.lint()
    return done
