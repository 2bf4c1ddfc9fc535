"""Channel classes: which channel axes of an ONNX graph must keep the same channels, in the same order.

Every tensor of rank >= 2 whose axis 1 has a static length is a *channel tensor*. Its axis 1 is cut
into *units*: a unit is one channel, or, after Flatten/Reshape, the ``stride`` consecutive features
that came from one channel. Ops tie units of different tensors together (the rule table below);
connected components of that relation are the atomic *channel classes*: a unit is kept or removed
together with every unit it is tied to. An op not in the rule table blocks (freezes) every unit of
every channel tensor it touches.

Alongside the ties, the analysis records what a removal must rewrite (``Member``: a constant whose
axis runs along a tensor's channels; shape, split, slice and group rewrites) and, for each op that
sums over channels (``Contraction``: Conv, Gemm, MatMul, ...), which input units it ignores (zero
weights) and which it sees as a known per-channel constant (``const``), which decides exactness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

NAN = float("nan")


@dataclass
class ChannelTensor:
    """Axis 1 of one tensor: ``size`` entries, ``stride`` entries per unit."""

    name: str
    size: int
    stride: int
    base: int  # global id of unit 0
    rank: int
    shape: list  # inferred shape (may hold symbols)

    @property
    def units(self) -> int:
        return self.size // self.stride

    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.units if stop is None else stop
        return np.arange(self.base + start, self.base + stop)


@dataclass
class Member:
    """Input ``index`` of ``node`` is a constant whose ``axis`` runs along ``tensor``'s channels."""

    node: gs.Node
    index: int
    axis: int
    tensor: str


@dataclass
class GroupedWeight:
    """Weight of a grouped Conv: rows follow ``out``, columns follow ``inp`` within each group.

    Every remaining group must keep the same number of input and of output channels; a group whose
    inputs and outputs all go is dropped and ``group`` shrinks.
    """

    node: gs.Node
    inp: str
    out: str
    groups: int


@dataclass
class Contraction:
    """An op that sums over the units of ``tensor`` with the weight at input ``index`` of ``node``."""

    node: gs.Node
    tensor: str
    index: int  # weight input index
    in_axis: int  # weight axis that runs along the input features
    kind: str  # conv | grouped | convtranspose | gemm | matmul
    zero: np.ndarray  # per input unit: every weight reading it is zero
    foldable: bool  # a constant input can be folded exactly into a bias
    groups: int = 1
    bias_node: gs.Node | None = None  # node holding the bias to fold into (MatMul: the Add)
    bias_index: int | None = None


@dataclass
class Producer:
    """An op whose filters create ``tensor``'s channels (Conv, Gemm, MatMul, ConvTranspose)."""

    node: gs.Node
    tensor: str
    zero: np.ndarray  # per output unit: the filter is all zero


@dataclass
class Rewrite:
    """A non-weight rewrite a removal needs: ``kind`` in reshape | split | slice | group."""

    kind: str
    node: gs.Node
    tensors: list[str]
    detail: dict = field(default_factory=dict)


class ChannelGraph:
    """The channel-class analysis of one graph (see the module docstring)."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.tensors: dict[str, ChannelTensor] = {}
        self.const: dict[str, np.ndarray] = {}  # per unit: known constant value, NaN if unknown
        self.members: list[Member] = []
        self.grouped: list[GroupedWeight] = []
        self.contractions: list[Contraction] = []
        self.producers: list[Producer] = []
        self.rewrites: list[Rewrite] = []
        self.blocks: list[tuple[str, str]] = []  # (tensor, reason)
        self._edges_a: list[np.ndarray] = []
        self._edges_b: list[np.ndarray] = []
        self._next = 0
        self._build()

    # ----------------------------------------------------------------- building blocks
    def tensor(self, t: gs.Tensor | None) -> ChannelTensor | None:
        if t is None or isinstance(t, gs.Constant):
            return None
        return self.tensors.get(t.name)

    def add(self, var: gs.Variable, size: int | None = None, stride: int = 1) -> ChannelTensor | None:
        """Make ``var`` a channel tensor (size from ``size`` or its inferred shape)."""
        shape = list(var.shape) if var.shape is not None else None
        if shape is not None and len(shape) < 2:
            return None
        if size is None:
            if shape is None or not isinstance(shape[1], int):
                return None
            size = shape[1]
        if shape is None:
            shape = [None, size]
        rank = len(shape)
        if stride <= 0 or size % stride:
            return None
        ct = ChannelTensor(var.name, size, stride, self._next, rank, shape)
        self._next += ct.units
        self.tensors[var.name] = ct
        self.const[var.name] = np.full(ct.units, NAN)
        return ct

    def tie(self, a: ChannelTensor, b: ChannelTensor, a_start: int = 0, b_start: int = 0,
            count: int | None = None) -> None:
        count = min(a.units - a_start, b.units - b_start) if count is None else count
        self._edges_a.append(a.ids(a_start, a_start + count))
        self._edges_b.append(b.ids(b_start, b_start + count))

    def block(self, ct: ChannelTensor | None, reason: str) -> None:
        if ct is not None:
            self.blocks.append((ct.name, reason))

    def block_node(self, node: gs.Node, reason: str) -> None:
        """Freeze every channel tensor ``node`` touches; create its outputs as frozen tensors."""
        for t in node.inputs:
            self.block(self.tensor(t), reason)
        for t in node.outputs:
            ct = self.tensor(t) or self.add(t)
            self.block(ct, reason)

    # ----------------------------------------------------------------- analysis
    def _build(self) -> None:
        self.graph.toposort()
        for var in self.graph.inputs:
            self.block(self.add(var), f"graph input '{var.name}'")
        for node in self.graph.nodes:
            if not any(self.tensor(t) is not None for t in node.inputs):
                # shape arithmetic, constants: no channel tensor involved
                for t in node.outputs:
                    if t.shape is not None and len(t.shape) >= 2 and node.op != "Constant":
                        self.block(self.add(t), f"{node.op} '{node.name}' creates it from no channel tensor")
                continue
            rule = RULES.get(node.op)
            if rule is None:
                self.block_node(node, f"{node.op} '{node.name}' is not in the rule table")
                continue
            rule(self, node)
        for var in self.graph.outputs:
            self.block(self.tensor(var), f"graph output '{var.name}'")
        for node in self.graph.nodes:  # a subgraph reading an outer tensor is a consumer the rules never see
            for name in _subgraph_reads(node):
                self.block(self.tensors.get(name), f"read inside a subgraph of {node.op} '{node.name}'")
        self.n_units = self._next
        self._components()

    def _components(self) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = self.n_units
        if self._edges_a:
            a = np.concatenate(self._edges_a)
            b = np.concatenate(self._edges_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        self.n_classes, self.labels = connected_components(adj, directed=False)
        self.frozen = np.zeros(self.n_classes, dtype=bool)
        self.frozen_reason: dict[int, str] = {}
        for name, reason in self.blocks:
            comps = np.unique(self.labels[self.tensors[name].ids()])
            for c in comps:
                if not self.frozen[c]:
                    self.frozen[c] = True
                    self.frozen_reason[int(c)] = reason

    def classes_of(self, name: str) -> np.ndarray:
        return self.labels[self.tensors[name].ids()]


# --------------------------------------------------------------------------- helpers
def _subgraph_reads(node: gs.Node) -> set[str]:
    """Names of enclosing-scope tensors that ``node``'s subgraphs (If/Loop/Scan bodies) read."""
    reads: set[str] = set()
    for value in node.attrs.values():
        graphs = value if isinstance(value, list) else [value]
        for sub in graphs:
            if not isinstance(sub, gs.Graph):
                continue
            local = {t.name for t in sub.inputs} | {t.name for n in sub.nodes for t in n.outputs}
            for n in sub.nodes:
                reads |= {t.name for t in n.inputs if t.name not in local and not isinstance(t, gs.Constant)}
                reads |= {name for name in _subgraph_reads(n) if name not in local}
    return reads


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """Value of a constant input: an initializer, a Constant node's output, or Identity of either."""
    if t is None:
        return None
    if isinstance(t, gs.Constant):
        return _constant_array(t)
    if len(t.inputs) == 1 and t.inputs[0].op == "Identity":  # the legacy exporter dedups this way
        return const_value(t.inputs[0].inputs[0])
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs.get("value")
        if isinstance(v, gs.Constant):
            return np.asarray(v.values)
    return None


def _constant_array(c: gs.Constant) -> np.ndarray:
    """The constant's values without making graphsurgeon materialise them.

    ``Constant.values`` replaces the lazily loaded TensorProto by a numpy copy, and export must then
    serialise it again; reading the proto directly leaves untouched weights as they were, so export
    reuses them as they are.
    """
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    lazy = getattr(c, "_values", None)
    if isinstance(lazy, LazyValues) and hasattr(lazy.tensor, "raw_data"):
        return numpy_helper.to_array(lazy.tensor)
    return np.asarray(c.values)


def is_empty(t: gs.Tensor | None) -> bool:
    return t is None or (isinstance(t, gs.Variable) and t.name == "")


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if i < len(node.inputs) and not is_empty(node.inputs[i]) else None


def _per_unit(values: np.ndarray, ct: ChannelTensor) -> np.ndarray:
    """Per-unit value of a per-feature vector: the value if all of a unit's features agree, else NaN."""
    v = values.astype(np.float64).reshape(ct.units, ct.stride)
    same = np.all(v == v[:, :1], axis=1)
    return np.where(same, v[:, 0], NAN)


def _aligned_channel_dim(shape: tuple, rank: int) -> int | None:
    """Length of a broadcast operand's dimension that lines up with axis 1 of a rank-``rank`` tensor."""
    if len(shape) > rank:
        return None
    offset = rank - len(shape)
    return 1 if offset > 1 else shape[1 - offset]


def _no_padding(node: gs.Node) -> bool:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad == "VALID":
        return True
    if auto_pad not in ("NOTSET", ""):
        return False
    return not any(node.attrs.get("pads", []))


def _zero_rows(w: np.ndarray, axis: int, units: int) -> np.ndarray:
    """Per unit: every weight along ``axis`` belonging to the unit is exactly zero."""
    moved = np.moveaxis(w, axis, 0).reshape(units, -1)
    return ~np.any(moved != 0, axis=1)


def _pass_through(cg: ChannelGraph, node: gs.Node, fn: Callable[[np.ndarray], np.ndarray] | None) -> bool:
    x = cg.tensor(node.inputs[0])
    if x is None:
        cg.block_node(node, f"{node.op} '{node.name}': input shape unknown")
        return False
    y = cg.add(node.outputs[0], x.size, x.stride)
    if y is None or y.units != x.units:
        cg.block_node(node, f"{node.op} '{node.name}': output shape does not match input")
        return False
    cg.tie(x, y)
    with np.errstate(all="ignore"):
        cg.const[y.name] = fn(cg.const[x.name]) if fn is not None else np.full(y.units, NAN)
    for extra in node.outputs[1:]:
        if extra.outputs or extra in cg.graph.outputs:
            cg.block_node(node, f"{node.op} '{node.name}': second output is used")
            return False
    return True


# --------------------------------------------------------------------------- rule table
def _unary(fn: Callable[[np.ndarray, gs.Node], np.ndarray]) -> Callable[[ChannelGraph, gs.Node], bool]:
    def rule(cg: ChannelGraph, node: gs.Node) -> bool:
        for extra in node.inputs[1:]:  # Clip min/max, Dropout ratio/mode: must be constants
            if not is_empty(extra) and const_value(extra) is None:
                cg.block_node(node, f"{node.op} '{node.name}': non-constant parameter")
                return False
        return _pass_through(cg, node, lambda v: fn(v, node))

    return rule


def _clip(v: np.ndarray, node: gs.Node) -> np.ndarray:
    lo = node.attrs.get("min", -np.inf)
    hi = node.attrs.get("max", np.inf)
    lo_t, hi_t = _input(node, 1), _input(node, 2)
    if lo_t is not None:
        lo = float(const_value(lo_t))
    if hi_t is not None:
        hi = float(const_value(hi_t))
    return np.clip(v, lo, hi)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


_UNARY_FNS: dict[str, Callable[[np.ndarray, gs.Node], np.ndarray]] = {
    "Relu": lambda v, n: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, n.attrs.get("alpha", 0.01) * v),
    "Clip": _clip,
    "Sigmoid": lambda v, n: _sigmoid(v),
    "HardSigmoid": lambda v, n: np.clip(n.attrs.get("alpha", 0.2) * v + n.attrs.get("beta", 0.5), 0, 1),
    "HardSwish": lambda v, n: v * np.clip(v / 6.0 + 0.5, 0, 1),
    "Tanh": lambda v, n: np.tanh(v),
    "Elu": lambda v, n: np.where(v >= 0, v, n.attrs.get("alpha", 1.0) * (np.exp(v) - 1)),
    "Softplus": lambda v, n: np.log1p(np.exp(v)),
    "Neg": lambda v, n: -v,
    "Abs": lambda v, n: np.abs(v),
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,  # inference: identity (training-mode Dropout is not exported for eval)
    "MaxPool": lambda v, n: v,  # padding is -inf: a constant stays that constant
    "GlobalMaxPool": lambda v, n: v,
    "GlobalAveragePool": lambda v, n: v,
}


def _average_pool(cg: ChannelGraph, node: gs.Node) -> bool:
    padded = not _no_padding(node) and node.attrs.get("count_include_pad", 0)
    return _pass_through(cg, node, (lambda v: np.where(v == 0, 0.0, NAN)) if padded else (lambda v: v))


def _prelu(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    slope = const_value(node.inputs[1])
    if x is None or slope is None:
        cg.block_node(node, f"PRelu '{node.name}': slope is not a constant")
        return False
    dim = _aligned_channel_dim(slope.shape, x.rank)
    if dim not in (1, x.size) or (dim == x.size and x.stride != 1):
        cg.block_node(node, f"PRelu '{node.name}': slope shape {slope.shape} is not per-channel")
        return False
    s = np.full(x.units, float(slope.reshape(-1)[0])) if dim == 1 else slope.reshape(-1).astype(np.float64)
    if dim == x.size:
        cg.members.append(Member(node, 1, 1 - (x.rank - slope.ndim), x.name))
    return _pass_through(cg, node, lambda v: np.where(v >= 0, v, s * v))


def _batchnorm(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    params = [const_value(_input(node, i)) for i in range(1, 5)]
    if x is None or any(p is None for p in params) or x.stride != 1:
        cg.block_node(node, f"BatchNormalization '{node.name}': parameters are not constants")
        return False
    scale, bias, mean, var = (p.astype(np.float64) for p in params)
    eps = node.attrs.get("epsilon", 1e-5)
    for i in range(1, 5):
        cg.members.append(Member(node, i, 0, x.name))

    def fn(v: np.ndarray) -> np.ndarray:
        y = (v - mean) / np.sqrt(var + eps) * scale + bias
        return np.where(scale == 0, bias, y)

    return _pass_through(cg, node, fn)


def _instancenorm(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    scale, bias = const_value(_input(node, 1)), const_value(_input(node, 2))
    if x is None or scale is None or bias is None or x.stride != 1:
        cg.block_node(node, f"InstanceNormalization '{node.name}': parameters are not constants")
        return False
    cg.members += [Member(node, 1, 0, x.name), Member(node, 2, 0, x.name)]
    b = bias.astype(np.float64)
    return _pass_through(cg, node, lambda v: np.where(np.isfinite(v) | (scale == 0), b, NAN))


def _reduce(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    if x is None:
        cg.block_node(node, f"{node.op} '{node.name}': input shape unknown")
        return False
    axes = node.attrs.get("axes")
    if axes is None and _input(node, 1) is not None:
        axes = const_value(node.inputs[1])
        if axes is None:
            cg.block_node(node, f"{node.op} '{node.name}': axes are not constant")
            return False
    if axes is None:
        cg.block_node(node, f"{node.op} '{node.name}' reduces over every axis, channels included")
        return False
    axes = sorted(int(a) % x.rank for a in np.atleast_1d(axes))
    if 0 in axes or 1 in axes or x.stride != 1:
        cg.block_node(node, f"{node.op} '{node.name}' reduces over the channel axis")
        return False
    if node.op == "ReduceSum":
        spatial = [x.shape[a] for a in axes]
        n = math.prod(spatial) if all(isinstance(d, int) for d in spatial) else None
        fn = (lambda v: v * n) if n else (lambda v: np.where(v == 0, 0.0, NAN))
    else:
        fn = (lambda v: v) if node.op != "ReduceSumSquare" else (lambda v: np.where(v == 0, 0.0, NAN))
    return _pass_through(cg, node, fn)


def _trailing(shape: list, start: int = 2) -> int | None:
    dims = shape[start:]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _reshape_like(cg: ChannelGraph, node: gs.Node) -> bool:
    """Flatten, Reshape, Squeeze, Unsqueeze that keep axis 0 and regroup the rest.

    A unit of the input owns ``stride * prod(spatial)`` consecutive elements per sample; the output's
    stride is that divided by the output's trailing size.
    """
    x = cg.tensor(node.inputs[0])
    out = node.outputs[0]
    reason = f"{node.op} '{node.name}' mixes channels with other axes"
    if x is None or out.shape is None or len(out.shape) < 2:
        cg.block_node(node, reason)
        return False
    if node.op == "Flatten" and node.attrs.get("axis", 1) != 1:
        cg.block_node(node, reason)
        return False
    oshape = list(out.shape)
    t_in, t_out = _trailing(x.shape), _trailing(oshape)
    if not isinstance(oshape[1], int) and t_in is not None and t_out and oshape[0] == x.shape[0] \
            and oshape[0] is not None and (x.size * t_in) % t_out == 0:
        oshape[1] = x.size * t_in // t_out  # Reshape to [N, -1]: axis 1 follows from the per-sample count
        out.shape = oshape
    # axis 0 is kept iff the per-sample element counts agree (the target may say -1 for the batch)
    if t_in is None or t_out is None or not isinstance(oshape[1], int) or x.size * t_in != oshape[1] * t_out:
        cg.block_node(node, reason)
        return False
    per_unit = x.stride * t_in
    if per_unit % t_out:
        cg.block_node(node, reason)
        return False
    stride = per_unit // t_out
    y = cg.add(out, x.units * stride, stride)
    if y is None:
        cg.block_node(node, reason)
        return False
    if node.op == "Reshape":
        target = _reshape_target(node, x, y)
        if target is False:
            cg.block_node(node, f"Reshape '{node.name}': target shape is computed, not constant")
            return False
        if target is not None:
            cg.rewrites.append(Rewrite("reshape", node, [y.name], target))
    cg.tie(x, y)
    cg.const[y.name] = cg.const[x.name].copy()
    return True


def _reshape_target(node: gs.Node, x: ChannelTensor, y: ChannelTensor) -> dict | None | bool:
    """Where axis 1 of a Reshape's target shape is written: None if it needs no rewrite (0 or -1)."""
    shape_t = node.inputs[1]
    value = const_value(shape_t)
    if value is not None:
        v = int(value.reshape(-1)[1])
        if v == -1 or (v == 0 and x.size // x.stride == y.size // y.stride and x.stride == y.stride):
            return None
        return {"holder": node, "index": 1, "position": 1}
    producer = shape_t.inputs[0] if len(shape_t.inputs) == 1 else None
    if producer is None or producer.op != "Concat":
        return False
    offset = 0
    for i, piece in enumerate(producer.inputs):
        length = piece.shape[0] if piece.shape and isinstance(piece.shape[0], int) else None
        if length is None:
            return False
        if offset <= 1 < offset + length:
            pv = const_value(piece)
            if pv is None:
                return False
            v = int(pv.reshape(-1)[1 - offset])
            if v == -1:
                return None
            return {"holder": producer, "index": i, "position": 1 - offset}
        offset += length
    return False


_MERGE_FNS: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "Add": lambda vs: vs[0] + vs[1],
    "Sub": lambda vs: vs[0] - vs[1],
    "Div": lambda vs: vs[0] / vs[1],
    "Max": lambda vs: np.maximum.reduce(vs),
    "Min": lambda vs: np.minimum.reduce(vs),
    "Sum": lambda vs: np.sum(vs, axis=0),
    "Mean": lambda vs: np.mean(vs, axis=0),
    "Mul": lambda vs: np.where(np.any([v == 0 for v in vs], axis=0), 0.0, np.prod(vs, axis=0)),
}


def _merge(cg: ChannelGraph, node: gs.Node) -> bool:
    """Element-wise ops with broadcasting: activations with the output's channels are tied."""
    out = node.outputs[0]
    if out.shape is None or len(out.shape) < 2 or not isinstance(out.shape[1], int):
        cg.block_node(node, f"{node.op} '{node.name}': output shape unknown")
        return False
    rank, size = len(out.shape), out.shape[1]
    tied = [ct for ct in map(cg.tensor, node.inputs) if ct is not None and ct.size == size and ct.rank == rank]
    if not tied or any(t.stride != tied[0].stride for t in tied):
        cg.block_node(node, f"{node.op} '{node.name}': operands do not share a channel layout")
        return False
    y = cg.add(out, size, tied[0].stride)
    values: list[np.ndarray] = []
    for i, t in enumerate(node.inputs):
        ct = cg.tensor(t)
        if ct is not None and ct in tied:
            cg.tie(ct, y)
            values.append(cg.const[ct.name])
            continue
        v = const_value(t)
        if v is not None:
            dim = _aligned_channel_dim(v.shape, rank)
            if dim is None:
                cg.block_node(node, f"{node.op} '{node.name}': operand broadcasts to a higher rank")
                return False
            if dim == size and size > 1:
                axis = 1 - (rank - v.ndim)
                cg.members.append(Member(node, i, axis, y.name))
                per_feature = np.moveaxis(v, axis, 0).reshape(size, -1)
                const_feat = np.where(np.all(per_feature == per_feature[:, :1], axis=1), per_feature[:, 0], NAN)
                values.append(_per_unit(const_feat, y))
            else:
                values.append(np.full(y.units, float(v.reshape(-1)[0]) if v.size == 1 else NAN))
            continue
        # an activation broadcast along channels (e.g. a [N,1,H,W] attention map)
        src = cg.tensor(t)
        if src is not None and _aligned_channel_dim(tuple(src.shape), rank) not in (1,):
            cg.block_node(node, f"{node.op} '{node.name}': operand with a different channel count")
            return False
        values.append(np.full(y.units, NAN))
    with np.errstate(all="ignore"):
        cg.const[y.name] = _MERGE_FNS[node.op](values)
    return True


def _concat(cg: ChannelGraph, node: gs.Node) -> bool:
    ins = [cg.tensor(t) for t in node.inputs]
    if any(ct is None for ct in ins):
        cg.block_node(node, f"Concat '{node.name}': an input is not a channel tensor")
        return False
    rank = ins[0].rank
    axis = node.attrs.get("axis") % rank
    if axis != 1:
        return _merge_same(cg, node, ins)
    stride = ins[0].stride
    if any(ct.stride != stride for ct in ins):
        cg.block_node(node, f"Concat '{node.name}': inputs with different feature strides")
        return False
    y = cg.add(node.outputs[0], sum(ct.size for ct in ins), stride)
    offset = 0
    consts = []
    for ct in ins:
        cg.tie(ct, y, 0, offset, ct.units)
        consts.append(cg.const[ct.name])
        offset += ct.units
    cg.const[y.name] = np.concatenate(consts)
    return True


def _merge_same(cg: ChannelGraph, node: gs.Node, ins: list[ChannelTensor]) -> bool:
    """Concat on a non-channel axis: every input carries the output's channels."""
    first = ins[0]
    if any(ct.units != first.units or ct.stride != first.stride for ct in ins):
        cg.block_node(node, f"{node.op} '{node.name}': inputs with different channel counts")
        return False
    y = cg.add(node.outputs[0], first.size, first.stride)
    for ct in ins:
        cg.tie(ct, y)
    cg.const[y.name] = np.full(y.units, NAN)
    return True


def _split(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    if x is None:
        cg.block_node(node, f"Split '{node.name}': input shape unknown")
        return False
    axis = node.attrs.get("axis", 0) % x.rank
    outs = node.outputs
    if axis != 1:
        for o in outs:
            y = cg.add(o, x.size, x.stride)
            if y is None:
                cg.block_node(node, f"Split '{node.name}': output shape unknown")
                return False
            cg.tie(x, y)
        return True
    sizes = [o.shape[1] if o.shape is not None and isinstance(o.shape[1], int) else None for o in outs]
    if None in sizes or any(s % x.stride for s in sizes) or sum(sizes) != x.size:
        cg.block_node(node, f"Split '{node.name}': split sizes unknown or cut through a unit")
        return False
    offset = 0
    for o, s in zip(outs, sizes, strict=True):
        y = cg.add(o, s, x.stride)
        cg.tie(x, y, offset, 0, y.units)
        cg.const[y.name] = cg.const[x.name][offset:offset + y.units].copy()
        offset += y.units
    cg.rewrites.append(Rewrite("split", node, [o.name for o in outs], {"stride": x.stride}))
    return True


def _slice(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    if x is None or node.attrs.get("starts") is not None:
        cg.block_node(node, f"Slice '{node.name}': unsupported form (opset < 10 or unknown shape)")
        return False
    vals = [const_value(_input(node, i)) if _input(node, i) is not None else None for i in range(1, 5)]
    starts, ends, axes, steps = vals
    if starts is None or ends is None or (_input(node, 3) is not None and axes is None) or (
            _input(node, 4) is not None and steps is None):
        cg.block_node(node, f"Slice '{node.name}': starts/ends/axes/steps are not constant")
        return False
    axes = np.arange(len(starts)) if axes is None else axes % x.rank
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    if 0 in axes.tolist():
        cg.block_node(node, f"Slice '{node.name}' slices the batch axis")
        return False
    y_shape = node.outputs[0].shape
    if 1 not in axes.tolist():
        return _pass_through(cg, node, lambda v: v)
    i = axes.tolist().index(1)
    if steps[i] != 1 or x.stride != 1:
        cg.block_node(node, f"Slice '{node.name}': channel slice with step != 1")
        return False
    start, stop, _ = slice(int(starts[i]), int(ends[i])).indices(x.size)
    if stop <= start:
        cg.block_node(node, f"Slice '{node.name}': empty channel slice")
        return False
    if y_shape is None:
        node.outputs[0].shape = [x.shape[0], stop - start, *x.shape[2:]]
    y = cg.add(node.outputs[0], stop - start, 1)
    cg.tie(x, y, start, 0, y.units)
    cg.const[y.name] = cg.const[x.name][start:stop].copy()
    cg.rewrites.append(Rewrite("slice", node, [x.name], {"position": i, "start": start, "stop": stop}))
    return True


def _shape(cg: ChannelGraph, node: gs.Node) -> bool:
    """Shape(x) is harmless if only the batch dimension is read (x.view(x.size(0), -1))."""
    x = cg.tensor(node.inputs[0])
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    if end is not None and start % x.rank == 0 and (end if end >= 0 else x.rank + end) <= 1:
        return True
    for consumer in node.outputs[0].outputs:
        idx = const_value(consumer.inputs[1]) if consumer.op == "Gather" and len(consumer.inputs) > 1 else None
        if idx is None or np.any(np.atleast_1d(idx) % x.rank != 0):
            cg.block(x, f"Shape '{node.name}' reads the channel count")
            return False
    return True


def _weight(cg: ChannelGraph, node: gs.Node, index: int) -> np.ndarray | None:
    t = _input(node, index)
    return const_value(t) if t is not None else None


def _conv(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    w = _weight(cg, node, 1)
    b_t = _input(node, 2)
    b = const_value(b_t) if b_t is not None else None
    if x is None or w is None or (b_t is not None and b is None) or x.stride != 1:
        cg.block_node(node, f"Conv '{node.name}': weights are not constants or input shape unknown")
        return False
    groups = int(node.attrs.get("group", 1))
    c_out = w.shape[0]
    bias = b.astype(np.float64) if b is not None else np.zeros(c_out)
    nz = np.any(w.reshape(c_out, w.shape[1], -1) != 0, axis=2)  # [C_out, C_in/G]: kernel reads channel
    filt_zero = ~nz.any(axis=1)
    if groups == 1:
        y = cg.add(node.outputs[0], c_out)
        cg.members += [Member(node, 1, 0, y.name), Member(node, 1, 1, x.name)]
        if b is not None:
            cg.members.append(Member(node, 2, 0, y.name))
        cg.producers.append(Producer(node, y.name, filt_zero))
        cg.contractions.append(Contraction(node, x.name, 1, 1, "conv", ~nz.any(axis=0), _no_padding(node)))
        cg.const[y.name] = _conv_const(w, nz, cg.const[x.name], bias, 1, _no_padding(node))
        return True
    if groups == x.size == c_out:  # depthwise, multiplier 1: channel c in, channel c out
        y = cg.add(node.outputs[0], c_out)
        cg.tie(x, y)
        cg.members.append(Member(node, 1, 0, y.name))
        if b is not None:
            cg.members.append(Member(node, 2, 0, y.name))
        cg.rewrites.append(Rewrite("group", node, [y.name]))
        k = cg.const[x.name]
        wsum = w.reshape(c_out, -1).sum(axis=1).astype(np.float64)
        through = k * wsum + bias if _no_padding(node) else np.where(k == 0, bias, NAN)
        cg.const[y.name] = np.where(filt_zero, bias, through)
        return True
    if x.size % groups or c_out % groups:
        cg.block_node(node, f"Conv '{node.name}': channels not divisible by group={groups}")
        return False
    y = cg.add(node.outputs[0], c_out)
    cg.grouped.append(GroupedWeight(node, x.name, y.name, groups))
    if b is not None:
        cg.members.append(Member(node, 2, 0, y.name))
    cg.producers.append(Producer(node, y.name, filt_zero))
    zero_in = ~nz.reshape(groups, c_out // groups, -1).any(axis=1).reshape(-1)  # W[g rows, c mod C_in/G]
    cg.contractions.append(Contraction(node, x.name, 1, 1, "grouped", zero_in, _no_padding(node), groups))
    cg.const[y.name] = _conv_const(w, nz, cg.const[x.name], bias, groups, _no_padding(node))
    return True


def _conv_const(w: np.ndarray, nz: np.ndarray, k_in: np.ndarray, bias: np.ndarray, groups: int,
                no_padding: bool) -> np.ndarray:
    """Per output channel: its value if every input it reads is a known constant, else NaN.

    An all-zero filter outputs its bias; otherwise ``bias + sum_c k_c * sum(W[o, c])``, exact only
    without zero padding (or when every constant read is 0: padding adds zeros to zeros).
    ``nz[o, c]``: the kernel of output o reads input c (of its group).
    """
    c_out, per_in = nz.shape
    if not np.isfinite(k_in).any():  # the common case: only all-zero filters give constants
        return np.where(nz.any(axis=1), NAN, bias)
    k = np.repeat(k_in.reshape(groups, per_in), c_out // groups, axis=0)
    finite = np.isfinite(k)
    ok = np.all(~nz | (finite if no_padding else (k == 0)), axis=1)
    value = np.full(c_out, NAN)
    rows = np.flatnonzero(ok)
    if len(rows):
        sums = w.reshape(c_out, per_in, -1)[rows].sum(axis=2, dtype=np.float64)
        value[rows] = bias[rows] + np.where(nz[rows] & finite[rows], np.nan_to_num(k[rows]) * sums, 0.0).sum(axis=1)
    return value


def _dense_const(nz: np.ndarray, w_mk: np.ndarray, k_units: np.ndarray, stride: int, bias: np.ndarray,
                 scale: float) -> np.ndarray:
    """Gemm/MatMul: output m is constant if every input feature it reads is (``nz``, W as [M, K])."""
    k = np.repeat(k_units, stride)
    finite = np.isfinite(k)
    ok = ~np.any(nz & ~finite[None, :], axis=1)
    value = np.full(len(ok), NAN)
    rows = np.flatnonzero(ok)
    if len(rows):
        value[rows] = bias[rows] + scale * (w_mk[rows].astype(np.float64) @ np.nan_to_num(k))
    return value


def _conv_transpose(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    w = _weight(cg, node, 1)
    b_t = _input(node, 2)
    b = const_value(b_t) if b_t is not None else None
    groups = int(node.attrs.get("group", 1))
    if x is None or w is None or (b_t is not None and b is None) or groups != 1 or x.stride != 1 \
            or node.attrs.get("output_shape") is not None:
        cg.block_node(node, f"ConvTranspose '{node.name}': grouped, explicit output_shape or non-constant weights")
        return False
    c_out = w.shape[1]
    y = cg.add(node.outputs[0], c_out)
    cg.members += [Member(node, 1, 0, x.name), Member(node, 1, 1, y.name)]
    if b is not None:
        cg.members.append(Member(node, 2, 0, y.name))
    filt_zero = _zero_rows(w, 1, c_out)
    bias = b.astype(np.float64) if b is not None else np.zeros(c_out)
    cg.producers.append(Producer(node, y.name, filt_zero))
    cg.contractions.append(Contraction(node, x.name, 1, 0, "convtranspose", _zero_rows(w, 0, x.units), False))
    cg.const[y.name] = np.where(filt_zero, bias, NAN)
    return True


def _gemm(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    w = _weight(cg, node, 1)
    c_t = _input(node, 2)
    c = const_value(c_t) if c_t is not None else None
    if x is None or w is None or x.rank != 2 or node.attrs.get("transA", 0) or (c_t is not None and c is None):
        cg.block_node(node, f"Gemm '{node.name}': transposed or non-constant operands")
        return False
    trans_b = node.attrs.get("transB", 0)
    out_axis = 0 if trans_b else 1
    m = w.shape[out_axis]
    y = cg.add(node.outputs[0], m)
    if c is not None and c.size not in (1, m):
        cg.block_node(node, f"Gemm '{node.name}': bias shape {c.shape} is not per-output")
        return False
    if c is not None and c.size == m and m > 1:
        cg.members.append(Member(node, 2, c.ndim - 1, y.name))
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    bias = beta * np.broadcast_to(c.astype(np.float64).reshape(-1), (m,)) if c is not None else np.zeros(m)
    _dense_layer(cg, node, x, y, w, out_axis, "gemm", beta != 0 and alpha != 0, bias, alpha)
    return True


def _matmul(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    w = _weight(cg, node, 1)
    if x is None or w is None or x.rank != 2 or w.ndim != 2:
        cg.block_node(node, f"MatMul '{node.name}': only [N, K] x constant [K, M] is in the rule table")
        return False
    m = w.shape[1]
    y = cg.add(node.outputs[0], m)
    bias_node, bias_index = _following_bias(node, m)
    _dense_layer(cg, node, x, y, w, 1, "matmul", bias_node is not None, np.zeros(m), 1.0, bias_node, bias_index)
    return True


def _dense_layer(cg: ChannelGraph, node: gs.Node, x: ChannelTensor, y: ChannelTensor, w: np.ndarray, out_axis: int,
                 kind: str, foldable: bool, bias: np.ndarray, scale: float, bias_node: gs.Node | None = None,
                 bias_index: int | None = None) -> None:
    """What Gemm and MatMul share: the weight follows ``y`` on ``out_axis`` and ``x`` on the other; the
    layer produces ``y``'s channels and sums over ``x``'s."""
    in_axis = 1 - out_axis
    cg.members += [Member(node, 1, out_axis, y.name), Member(node, 1, in_axis, x.name)]
    w_mk = w if out_axis == 0 else w.T
    nz = w_mk != 0
    cg.producers.append(Producer(node, y.name, ~nz.any(axis=1)))
    zero_in = ~nz.reshape(y.units, x.units, x.stride).any(axis=(0, 2))
    cg.contractions.append(Contraction(node, x.name, 1, in_axis, kind, zero_in, foldable, 1, bias_node, bias_index))
    cg.const[y.name] = _dense_const(nz, w_mk, cg.const[x.name], x.stride, bias, scale)


def _following_bias(node: gs.Node, m: int) -> tuple[gs.Node | None, int | None]:
    """The bias Add right after a MatMul (x @ W + b), if its other operand is a [M] constant."""
    consumers = node.outputs[0].outputs
    if len(consumers) != 1 or consumers[0].op != "Add":
        return None, None
    add = consumers[0]
    for i, t in enumerate(add.inputs):
        v = const_value(t)
        if v is not None and isinstance(t, gs.Constant) and v.shape in ((m,), (1, m)):
            return add, i
    return None, None


def _resize(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    scales = const_value(_input(node, 2))
    sizes = _input(node, 3)
    if x is None or sizes is not None or scales is None or len(scales) < 2 or scales[0] != 1 or scales[1] != 1:
        cg.block_node(node, f"Resize '{node.name}': only constant scales with 1 on batch and channels")
        return False
    return _pass_through(cg, node, lambda v: v)


def _pad(cg: ChannelGraph, node: gs.Node) -> bool:
    x = cg.tensor(node.inputs[0])
    pads = const_value(_input(node, 1))
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if x is None or pads is None or _input(node, 3) is not None:
        cg.block_node(node, f"Pad '{node.name}': non-constant pads or explicit axes")
        return False
    r = x.rank
    if pads[0] or pads[1] or pads[r] or pads[r + 1]:
        cg.block_node(node, f"Pad '{node.name}' pads the batch or channel axis")
        return False
    value_t = _input(node, 2)
    value = float(const_value(value_t)) if value_t is not None else 0.0
    if mode != "constant":
        return _pass_through(cg, node, lambda v: v)
    return _pass_through(cg, node, lambda v: np.where(v == value, v, NAN))


RULES: dict[str, Callable[[ChannelGraph, gs.Node], bool]] = {
    **{op: _unary(fn) for op, fn in _UNARY_FNS.items()},
    "AveragePool": _average_pool,
    "PRelu": _prelu,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instancenorm,
    **{op: _reduce for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")},
    **{op: _reshape_like for op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze")},
    **{op: _merge for op in _MERGE_FNS},
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Shape": _shape,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Resize": _resize,
    "Pad": _pad,
}
