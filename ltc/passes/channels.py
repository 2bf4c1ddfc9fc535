"""Channel classes: which channel axes of an ONNX graph must keep the same channels, in the same order.

A *channel tensor* is one axis of a tensor (axis 1 for NCHW, the last axis for channel-last and
``[B, T, C]`` tensors, wherever the rules say) cut into *units*: one channel, or after Flatten the
``stride`` consecutive features of one channel. Ops tie units of different tensors together (the
rules in ``ltc/passes/ops``); connected components of that relation are the atomic *channel
classes*: a unit is kept, removed or moved together with every unit tied to it.

A class is *frozen* (never re-indexed) when an op that touches it has no rule, or its rule refuses,
or a graph input/output or subgraph reads it. It is *pinned* (may be permuted, never removed) when
an op reads all channels together (LayerNorm, Softmax or a reduction over the channel axis).

The analysis only reads the graph; ``ltc.passes.reindex.apply_reindex`` rewrites it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from ltc.passes import ops  # noqa: F401 - registers the built-in rules
from ltc.passes.records import (
    Analysis,
    ChannelTensor,
    Contraction,
    Producer,
    Record,
    Take,
    Tie,
)
from ltc.passes.rules import NAN, RULES, Refuse, Rule, const_value, is_empty, op_of, rule_for

__all__ = ["ChannelGraph", "NodeView"]


class NodeView:
    """One node as a rule sees it; what the rule records is kept only if it does not refuse.

    Attributes: ``node`` (the graphsurgeon node), ``op`` (its type), ``attrs`` (its attributes),
    ``opset`` (the model's ONNX opset), ``cg`` (the analysis so far). Reading: :meth:`input`,
    :meth:`x`, :meth:`need_x`, :meth:`need_channel_first`, :meth:`value`, :meth:`need_value`,
    :meth:`shape`, :meth:`out`, :attr:`where`, :meth:`const`. Recording: :meth:`new`, :meth:`tie`,
    :meth:`take`, :meth:`record`, :meth:`set_const`, :meth:`pin`, :meth:`block`, :meth:`ignore`,
    :meth:`read`; weight layers also :meth:`produce`, :meth:`contract`, :meth:`layer_input`.
    Checks: :meth:`extra_outputs_unused`. A channel tensor the node reads that the rule neither tied,
    recorded, pinned, blocked, contracted nor declared read is frozen."""

    def __init__(self, cg: ChannelGraph, node: gs.Node):
        self.cg = cg
        self.node = node
        self.op = node.op
        self.attrs = node.attrs
        self.opset = cg.opset
        self.a = Analysis()
        self._new: dict[str, ChannelTensor] = {}

    @property
    def where(self) -> str:
        """The node as reasons name it: ``Op 'name'``."""
        return f"{self.op} '{self.node.name}'"

    # ---------------------------------------------------------------- reading
    def input(self, i: int) -> gs.Tensor | None:
        """Input ``i``, None if absent or empty (an optional input left out)."""
        ins = self.node.inputs
        return ins[i] if i < len(ins) and not is_empty(ins[i]) else None

    def x(self, i: int = 0) -> ChannelTensor | None:
        """Input ``i``'s channel tensor (its channel axis, units, shape), None for a constant or a
        tensor the analysis does not know."""
        t = self.input(i)
        return None if t is None or isinstance(t, gs.Constant) else self.cg.tensors.get(t.name)

    def need_x(self, i: int = 0) -> ChannelTensor:
        """Input ``i``'s channel tensor; refuses when the analysis does not know it."""
        x = self.x(i)
        if x is None:
            raise Refuse(f"{self.where}: input {i} shape unknown")
        return x

    def need_channel_first(self) -> ChannelTensor:
        """Input 0 with its channels on axis 1, one entry each (what pools and norms need); refuses otherwise."""
        x = self.x(0)
        if x is None or x.axis != 1 or x.stride != 1:
            raise Refuse(f"{self.where}: input is not a channel-first tensor")
        return x

    def value(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value if it is a constant (an initializer, a Constant node, or Identity of
        either), else None."""
        return const_value(self.input(i))

    def need_value(self, i: int, what: str) -> np.ndarray | None:
        """The constant at input ``i``, None if absent; refuses if present but computed."""
        t = self.input(i)
        if t is None:
            return None
        v = const_value(t)
        if v is None:
            raise Refuse(f"{self.where}: {what} is computed, not a constant")
        return v

    def shape(self, t: gs.Tensor | None) -> list | None:
        """``t``'s shape (dims may be symbolic names or None), None if unknown."""
        if t is None:
            return None
        if t.name in self._new:
            return self._new[t.name].shape
        if isinstance(t, gs.Constant):
            return list(const_value(t).shape)
        return self.cg.shapes.get(t.name)

    def out(self, i: int = 0) -> gs.Tensor:
        """Output ``i``."""
        return self.node.outputs[i]

    def const(self, ct: ChannelTensor) -> np.ndarray:
        """The known constant of each unit of ``ct`` (NaN where it depends on the input)."""
        if ct.name in self.a.consts:
            return self.a.consts[ct.name]
        return self.cg.const[ct.name]

    # ---------------------------------------------------------------- recording
    def new(self, i: int, size: int, stride: int = 1, axis: int = 1, shape: list | None = None,
            rank: int | None = None) -> ChannelTensor:
        """Output ``i`` becomes a channel tensor with ``size`` entries along ``axis`` (of a tensor of
        ``rank`` dims when shape inference did not say)."""
        var = self.out(i)
        shape = list(shape) if shape is not None else self.shape(var)
        if shape is None and rank is not None:
            shape = [None] * rank
        if shape is None:
            raise Refuse(f"{self.where}: output shape unknown")
        if not 0 <= axis < len(shape) or stride <= 0 or size <= 0 or size % stride:
            raise Refuse(f"{self.where}: output has no channel axis {axis} of {size} entries")
        if isinstance(shape[axis], int) and shape[axis] != size:
            raise Refuse(f"{self.where}: output axis {axis} has {shape[axis]} entries, expected {size}")
        shape[axis] = size
        ct = ChannelTensor(var.name, size, stride, -1, len(shape), shape, axis)
        self._new[var.name] = ct
        self.a.tensors.append(ct)
        self.a.consts[var.name] = np.full(ct.units, NAN)
        return ct

    def tie(self, a: ChannelTensor, b: ChannelTensor, a_start: int = 0, b_start: int = 0,
            count: int | None = None) -> None:
        """Units ``a_start..`` of ``a`` and ``b_start..`` of ``b`` (``count`` of them, default as many as
        both have) are the same channels: one class each, kept or removed together."""
        count = min(a.units - a_start, b.units - b_start) if count is None else count
        self.a.records.append(Tie(a.name, b.name, a_start, b_start, count))
        self.a.read |= {a.name, b.name}

    def take(self, index: int, axis: int, ct: ChannelTensor) -> None:
        """A re-index of ``ct`` rewrites input ``index`` (a weight or parameter) along ``axis``."""
        self.a.records.append(Take(self.node, index, axis, ct))

    def record(self, rec: Record) -> None:
        """What a re-index must rewrite in this node (a :class:`~ltc.passes.records.Record`)."""
        self.a.records.append(rec)
        self.a.read |= set(rec.tensors())

    def produce(self, y: ChannelTensor, zero: np.ndarray) -> None:
        """Weight layers: this node writes ``y``, and ``zero`` (bool per unit) marks its all-zero
        filters (the dead filters the report accounts for)."""
        self.a.producers.append(Producer(self.node, y.name, zero))

    def contract(self, c: Contraction) -> None:
        """Weight layers: this node sums over an input's channels with these weights (a
        :class:`~ltc.passes.records.Contraction`: where its columns are zero, the channel is unread)."""
        self.a.contractions.append(c)
        self.a.read.add(c.tensor)

    def set_const(self, y: ChannelTensor, values: np.ndarray) -> None:
        """The known constant of each unit of output ``y`` (NaN where it depends on the input)."""
        self.a.consts[y.name] = np.asarray(values, dtype=np.float64)

    def pin(self, ct: ChannelTensor, reason: str) -> None:
        """This node reads every channel of ``ct`` together: they may be permuted, never removed."""
        self.a.pins.append((ct.name, reason))
        self.a.read.add(ct.name)

    def block(self, ct: ChannelTensor | None, reason: str) -> None:
        """Freeze ``ct``'s classes (neither removed nor permuted), with the reason the report gives."""
        if ct is not None:
            self.a.blocks.append((ct.name, reason))
            self.a.read.add(ct.name)

    def ignore(self, ct: ChannelTensor, units: np.ndarray) -> None:
        """Evidence: this node reads ``ct`` but never the ``units`` (a mask)."""
        self.a.ignores.append((ct.name, np.asarray(units, dtype=bool)))
        self.a.read.add(ct.name)

    def layer_input(self, ct: ChannelTensor | None, size: int) -> None:
        """For the per-layer report: the input this weight layer sums over (``ct`` when the analysis
        follows it, else None) and its size."""
        self.a.layer_input = (ct.name if ct is not None else None, size)

    def read(self, ct: ChannelTensor) -> None:
        """Declare ``ct`` read in a way that does not depend on its channels (e.g. its batch size)."""
        self.a.read.add(ct.name)

    def extra_outputs_unused(self, keep: int = 1) -> None:
        """Refuse if any output after the first ``keep`` is read (the rule describes only those)."""
        for extra in self.node.outputs[keep:]:
            if extra.name and (extra.outputs or extra in self.cg.graph.outputs):
                raise Refuse(f"{self.where}: output '{extra.name}' is used")


class ChannelGraph:
    """The channel-class analysis of one graph (see the module docstring)."""

    def __init__(self, graph: gs.Graph, rules: dict[str, Rule] | None = None):
        self.graph = graph
        self.rules = RULES if rules is None else rules
        self.opset = graph.opset
        self.shapes: dict[str, list | None] = {}
        self.tensors: dict[str, ChannelTensor] = {}
        self.const: dict[str, np.ndarray] = {}
        self.records: list[Record] = []
        self.producers: list[Producer] = []
        self.contractions: list[Contraction] = []
        self.blocks: list[tuple[str, str]] = []
        self.pins: list[tuple[str, str]] = []
        self.ignores: list[tuple[str, np.ndarray]] = []
        self.layer_inputs: dict[int, tuple[str | None, int]] = {}
        self.replicas: set[str] = set()  # nodes ltc wrote to carry removed constants (not the user's layers)
        self._next = 0
        for t in graph.tensors().values():
            if isinstance(t, gs.Variable):
                self.shapes[t.name] = list(t.shape) if t.shape is not None else None
        self._build()

    # ----------------------------------------------------------------- building blocks
    def _add(self, ct: ChannelTensor) -> ChannelTensor:
        ct.base = self._next
        self._next += ct.units
        self.tensors[ct.name] = ct
        self.const.setdefault(ct.name, np.full(ct.units, NAN))
        return ct

    def _default(self, var: gs.Variable) -> ChannelTensor | None:
        """Axis 1 of ``var`` as a channel tensor, if it has rank >= 2 and a static axis 1."""
        shape = self.shapes.get(var.name)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or shape[1] <= 0:
            return None
        return self._add(ChannelTensor(var.name, shape[1], 1, -1, len(shape), list(shape), 1))

    def block(self, name: str | None, reason: str) -> None:
        if name is not None and name in self.tensors:
            self.blocks.append((name, reason))

    def _block_node(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            if not is_empty(t) and not isinstance(t, gs.Constant):
                self.block(t.name, reason)
        for t in node.outputs:
            if t.name not in self.tensors:
                self._default(t)
            self.block(t.name, reason)

    def _commit(self, v: NodeView, rule: Rule) -> None:
        a = v.a
        for ct in a.tensors:
            self._add(ct)
        self.const.update(a.consts)
        self.records += a.records
        self.producers += a.producers
        self.contractions += a.contractions
        self.pins += a.pins
        self.ignores += a.ignores
        if a.layer_input is None and rule.layer and (x := v.x(0)) is not None:  # (the weight-layer
            a.layer_input = (x.name, x.units)                                     # default: input 0)
        if a.layer_input is not None:
            self.layer_inputs[id(v.node)] = a.layer_input
        self.blocks += a.blocks
        for t in v.node.inputs:  # a channel tensor read in a way the rule did not account for freezes
            if is_empty(t) or isinstance(t, gs.Constant) or t.name not in self.tensors or t.name in a.read:
                continue
            self.block(t.name, f"read by {v.where} in a way its rule does not track")
        for t in v.node.outputs:  # outputs the rule did not describe are not channel tensors: freeze if used
            if t.name and t.name not in self.tensors and self._default(t) is not None:
                self.block(t.name, f"{v.where}: output '{t.name}' has no channel rule")

    # ----------------------------------------------------------------- analysis
    def _build(self) -> None:
        for var in self.graph.inputs:
            if self._default(var) is not None:
                self.block(var.name, f"graph input '{var.name}'")
        for node in self.graph.nodes:
            rule = rule_for(self.rules, node)
            reads_channels = any(not is_empty(t) and t.name in self.tensors for t in node.inputs)
            if rule is None:
                if reads_channels:
                    self._block_node(node, f"{op_of(node)} '{node.name}' is not in the rule table")
                else:
                    self._no_channel_inputs(node)
                continue
            if not reads_channels and not rule.layer:
                self._no_channel_inputs(node)
                continue
            empty = self._zero_sized(node, rule)
            if empty is not None:  # (no rule is written for tensors without elements)
                self._block_node(node, f"{op_of(node)} '{node.name}' reads or writes '{empty}', which has no elements")
                continue
            view = NodeView(self, node)
            try:
                rule.analyze(view)
            except Refuse as refusal:
                self._block_node(node, str(refusal))
                continue
            self._commit(view, rule)
        for var in self.graph.outputs:
            self.block(var.name, f"graph output '{var.name}'")
        for node in self.graph.nodes:  # a subgraph reading an outer tensor is a consumer the rules never see
            for name in _subgraph_reads(node):
                self.block(name, f"read inside a subgraph of {node.op} '{node.name}'")
        self._tie_shared_weights()
        self.n_units = self._next
        self._components()

    def _zero_sized(self, node: gs.Node, rule: Rule) -> str | None:
        """The name of an output, a computed input or a layer's weight of ``node`` with a zero-sized
        dimension (an empty auxiliary constant, such as Resize's unused ``roi``, is no reason)."""
        weight = node.inputs[1] if rule.layer and len(node.inputs) > 1 else None
        for t in [*node.inputs, *node.outputs]:
            if is_empty(t):
                continue
            value = const_value(t) if isinstance(t, gs.Constant) or t.inputs else None
            if value is not None and t is not weight:
                continue
            shape = value.shape if value is not None else self.shapes.get(t.name)
            if shape is not None and any(isinstance(d, int) and d == 0 for d in shape):
                return t.name
        return None

    def _no_channel_inputs(self, node: gs.Node) -> None:
        """Shape arithmetic and constants: outputs of rank >= 2 are channel tensors nobody may change."""
        if op_of(node) == "Constant" or (op_of(node) == "Identity" and const_value(node.outputs[0]) is not None):
            return  # (a constant, possibly through the exporters' Identity dedup: rules read it as one)
        for t in node.outputs:
            if t.name and t.name not in self.tensors and self._default(t) is not None:
                self.block(t.name, f"{node.op} '{node.name}' creates it from no channel tensor")

    def _tie_shared_weights(self) -> None:
        """A weight read by several layers (a module called twice) keeps one layout: the channel
        tensors its axes follow are tied, so the compressed model shares one smaller weight."""
        by_weight: dict[tuple[int, int], list[Take]] = defaultdict(list)
        for r in self.records:
            if isinstance(r, Take):
                src = _source(r.node.inputs[r.index])  # (read directly or through Identity: counted by takes)
                if src is not None and _rank(src) >= 2:
                    by_weight[(id(src), r.axis)].append(r)
        for takes in by_weight.values():
            first = takes[0].tensor
            for r in takes[1:]:
                ct = r.tensor
                if ct.name == first.name:
                    continue
                if ct.units == first.units and ct.stride == first.stride:
                    self.records.append(Tie(first.name, ct.name, 0, 0, ct.units))
                else:
                    reason = f"weight '{_source(r.node.inputs[r.index]).name}' is shared by layers of different layouts"
                    self.block(first.name, reason)
                    self.block(ct.name, reason)

    def _components(self) -> None:
        n = self.n_units
        ea, eb = [], []
        for r in self.records:
            edges = r.edges(self.tensors)
            if edges is not None:
                ea.append(edges[0])
                eb.append(edges[1])
        a = np.concatenate(ea) if ea else np.zeros(0, dtype=np.int64)
        b = np.concatenate(eb) if eb else np.zeros(0, dtype=np.int64)
        self.n_classes, self.labels = connected_components(n, a, b)
        self.frozen = np.zeros(self.n_classes, dtype=bool)
        self.frozen_reason: dict[int, str] = {}
        self.pinned = np.zeros(self.n_classes, dtype=bool)
        self.pinned_reason: dict[int, str] = {}
        for marks, reasons, source in ((self.frozen, self.frozen_reason, self.blocks),
                                       (self.pinned, self.pinned_reason, self.pins)):
            for name, reason in source:
                for c in np.unique(self.labels[self.tensors[name].ids()]):
                    if not marks[c]:
                        marks[c] = True
                        reasons[int(c)] = reason

    def kept_reasons(self) -> dict[int, str]:
        """Class -> why it can never go: frozen (its reason wins) or pinned."""
        reasons = dict(self.pinned_reason)
        reasons.update(self.frozen_reason)
        return reasons

    def classes_of(self, name: str) -> np.ndarray:
        return self.labels[self.tensors[name].ids()]

    def evidence(self) -> np.ndarray:
        """Per class: it is a known constant somewhere (an all-zero filter, a zero BN scale), or some
        reader ignores it (zero weights for it, a Slice that leaves it out)."""
        evidence = np.zeros(self.n_classes, dtype=bool)
        for name, k in self.const.items():
            if name in self.tensors:
                evidence[self.classes_of(name)[np.isfinite(k)]] = True
        for p in self.producers:
            evidence[self.classes_of(p.tensor)[p.zero]] = True
        for c in self.contractions:
            evidence[self.classes_of(c.tensor)[c.zero]] = True
        for name, mask in self.ignores:
            evidence[self.classes_of(name)[mask]] = True
        return evidence

    @staticmethod
    def default_rules() -> dict[str, Rule]:
        return RULES

    def macs(self, plan: dict[str, np.ndarray] | None = None) -> dict[str, int]:
        """MACs per sample of every weight layer, from the analysis' shapes; with ``plan``, the
        shapes after that re-index (call it after :func:`apply_reindex` so weights are rewritten)."""
        from ltc.passes.stats import graph_macs, shapes_of

        shapes = self.shapes
        if plan:
            shapes = dict(shapes)
            for name, t in self.graph.tensors().items():  # tensors the rewrite made (a split Conv's pieces)
                if name not in shapes and isinstance(t, gs.Variable) and t.shape is not None:
                    shapes[name] = list(t.shape)
            for name, idx in plan.items():
                ct = self.tensors[name]
                if shapes.get(name) is not None:
                    shape = list(shapes[name])
                    shape[ct.axis] = len(idx) * ct.stride
                    shapes[name] = shape
        return graph_macs(self.graph, self.rules, shapes_of(shapes))

    def is_layer(self, node: gs.Node) -> bool:
        rule = rule_for(self.rules, node)
        return rule is not None and rule.layer


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    """Components of the undirected graph on ``n`` nodes with edges ``a[i] -- b[i]``: (count, label
    per node, numbered in order of each component's smallest node). Hook-and-compress in numpy:
    every round hooks both ends of each edge and their roots to the smaller label, then jumps
    pointers; a fixed point has equal labels across every edge."""
    labels = np.arange(n)
    while len(a):
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        for ends in (a, b, labels[a], labels[b]):
            np.minimum.at(new, ends, m)
        while True:  # pointer jumping until every label is a root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            break
        labels = new
    roots, inverse = np.unique(labels, return_inverse=True)
    return len(roots), inverse


def _source(t: gs.Tensor) -> gs.Tensor | None:
    """The constant behind an input (through Identity): an initializer, or a Constant node's output;
    None if the input is computed."""
    while isinstance(t, gs.Variable) and len(t.inputs) == 1 and op_of(t.inputs[0]) == "Identity" and t.inputs[0].inputs:
        t = t.inputs[0].inputs[0]
    if isinstance(t, gs.Constant) or (isinstance(t, gs.Variable) and len(t.inputs) == 1 and op_of(t.inputs[0]) == "Constant"):
        return t
    return None


def _rank(c: gs.Tensor) -> int:
    if c.shape is not None:
        return len(c.shape)
    value = const_value(c)
    return value.ndim if value is not None else 0


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
