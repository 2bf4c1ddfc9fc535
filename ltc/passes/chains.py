"""Constant chains: dead channels whose constant becomes an image before a layer reads it.

A dead filter whose bias or BN shift stays outputs a constant ``k``. Where a zero-padded depthwise
conv or pool reads it, the border sees zeros, so the channel leaves as an input-independent *image*;
after an activation it is no longer a known number, and the layer that finally reads it (a 1x1
projection, an SE squeeze) would keep it. Such a channel is still removable exactly: its share of the
reader's output does not depend on the input. :func:`find_chains` follows each such run of
channel-wise ops from the constant to the layers that read it; :func:`replicate_chains` writes it
again for the dead channels only, on a batch-1 image of the constants, adds that copy's share to each
reader's output, and zeroes the reader's weights for those channels, so that removal drops them
everywhere. The copy stores the dead channels' depthwise kernels and the readers' columns (never more
than the channels it replaces), and it reads no input: with static shapes ONNX Runtime computes it
once when it loads the model.

A chain stops at anything else: an input-dependent partner (a squeeze-excitation gate whose channel
is live keeps that channel, which is then coupled), a layer that is not a plain Conv, a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ltc.passes.channels import ChannelGraph
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.reindex import fresh_name
from ltc.passes.rules import const_value, is_empty, op_of

UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
                   "Softplus", "Softsign", "Exp", "Abs", "Neg", "Erf", "Identity", "Mish", "Gelu",
                   "ThresholdedRelu", "Clip", "Sqrt", "Reciprocal", "Log", "Floor", "Ceil", "Round", "Sign"})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"})
POOLS = frozenset({"AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                    "ReduceSumSquare", "ReduceLogSumExp"})

# How a replica node gets one input: the copy of a chain tensor, the seed image, a constant with the
# channel axis (sliced to the chain's units), a constant without it (copied), or a per-channel
# constant of a computed tensor (known for the chain's units).
Spec = tuple[str, object]


@dataclass
class _Step:
    output: str  # the original node's first output (names are unique; the node is found by it)
    op: str  # "" for a Concat or Slice on channels: the copy passes on unchanged
    attrs: dict
    inputs: list[Spec]
    offset: int = 0  # where the chain's channel 0 sits in the step's input (a Concat moves it)


@dataclass
class Chain:
    """Channels ``units`` of ``seed`` are the constants ``values``; ``steps`` carry them, as images, to
    the Convs whose outputs are ``readers``."""

    seed: str
    channels: int
    values: np.ndarray  # per channel of seed (NaN where unknown)
    units: np.ndarray  # bool per channel: replicated
    steps: list[_Step] = field(default_factory=list)
    readers: list[tuple[str, int]] = field(default_factory=list)  # (output, offset of the chain in its input)
    offsets: dict[str, int] = field(default_factory=dict)  # chain tensor -> where channel 0 sits in it
    failed: str = ""  # why the chain cannot be written again (its channels stay)

    def fail(self, why: str) -> None:
        self.failed = self.failed or why

    @property
    def index(self) -> np.ndarray:
        return np.flatnonzero(self.units)

    @property
    def tensors(self) -> list[str]:
        return list(self.offsets)


def _plain(cg: ChannelGraph, name: str, channels: int | None = None) -> bool:
    """``name`` is a channel tensor along axis 1 of rank >= 3, one entry per channel."""
    ct = cg.tensors.get(name)
    return (ct is not None and ct.axis == 1 and ct.stride == 1 and ct.rank >= 3
            and (channels is None or ct.units == channels))


def _one_output(node: gs.Node, graph_outputs: set[str]) -> bool:
    return all(is_empty(t) or (not t.outputs and t.name not in graph_outputs) for t in node.outputs[1:])


def _operand(cg: ChannelGraph, t: gs.Tensor, rank: int, channels: int) -> tuple[Spec | None, np.ndarray | None]:
    """How a replica reads ``t``, a non-chain input of an elementwise op on a chain tensor, and for
    which channels that works (None: for all); (None, None) if it cannot."""
    value = const_value(t)
    if value is not None:
        if value.ndim > rank:
            return None, None
        dims = (1,) * (rank - value.ndim) + value.shape
        if dims[0] != 1 or dims[1] not in (1, channels) or any(d != 1 for d in dims[2:]):
            return None, None
        v = value.reshape(dims)
        return (("sliced", v) if dims[1] == channels and channels != 1 else ("copied", v)), None
    if not _plain(cg, t.name, channels):
        return None, None
    k = cg.const[t.name]
    return ("per_channel", k), np.isfinite(k)


def _spatial_kept(cg: ChannelGraph, x: str, y: str) -> bool:
    """An elementwise op's output has the chain tensor's spatial shape (it does not broadcast it up)."""
    a, b = cg.shapes.get(x), cg.shapes.get(y)
    return a is not None and b is not None and len(a) == len(b) and list(a[2:]) == list(b[2:])


def _step(cg: ChannelGraph, node: gs.Node, ch: Chain, this: int, chain_of: dict[str, int],
          graph_outputs: set[str]) -> tuple[_Step | None, np.ndarray | None, int]:
    """``node`` as a step of chain ``this`` (its data input is a chain tensor, or the seed), the
    channels it lets through, and where the chain sits in its output; (None, None, 0) if it ends the chain."""
    stop = None, None, 0
    op = op_of(node)
    y = node.outputs[0] if node.outputs else None
    if y is None or is_empty(y) or not _plain(cg, y.name) or not _one_output(node, graph_outputs):
        return stop
    in_chain = [not is_empty(t) and chain_of.get(t.name) == this for t in node.inputs]
    offsets = {ch.offsets.get(t.name, 0) for t, c in zip(node.inputs, in_chain, strict=True) if c}
    if len(offsets) != 1:
        return stop
    off = offsets.pop()
    x = next(t for t, c in zip(node.inputs, in_chain, strict=True) if c)
    width = cg.tensors[x.name].units
    attrs = dict(node.attrs)
    if op == "Concat":
        if sum(in_chain) != 1 or int(attrs.get("axis", 0)) % cg.tensors[y.name].rank != 1:
            return stop
        before = 0
        for t in node.inputs[: in_chain.index(True)]:
            ct = cg.tensors.get(t.name)
            if ct is None or ct.axis != 1 or ct.stride != 1:
                return stop
            before += ct.units
        return _Step(y.name, "", attrs, [("chain", x.name)], off), None, off + before
    if op == "Slice":
        return _channel_slice(cg, node, ch, x.name, off, in_chain)
    if cg.tensors[y.name].units != width:
        return stop
    specs: list[Spec] = [("chain", x.name)]
    span = slice(off, off + ch.channels)
    if op in BINARY:
        if len(node.inputs) != 2 or not _spatial_kept(cg, x.name, y.name):
            return stop
        rank = cg.tensors[y.name].rank
        specs, mask = [], np.ones(ch.channels, dtype=bool)
        for t, c in zip(node.inputs, in_chain, strict=True):
            if c:
                specs.append(("chain", t.name))
                continue
            spec, ok = _operand(cg, t, rank, width)
            if spec is None:
                return stop
            specs.append(spec)
            if ok is not None:
                mask &= ok[span]
        return _Step(y.name, op, attrs, specs, off), mask, off
    if not in_chain[0] or any(in_chain[1:]):
        return stop
    extra = node.inputs[1:]
    if op in UNARY:
        for t in extra:
            if not is_empty(t) and (const_value(t) is None or const_value(t).size != 1):
                return stop
        specs += [("empty", None) if is_empty(t) else ("copied", const_value(t)) for t in extra]
    elif op in POOLS:
        pass
    elif op in REDUCE:
        axes = attrs.get("axes") if len(extra) == 0 or is_empty(extra[0]) else const_value(extra[0])
        rank = cg.tensors[y.name].rank
        if axes is None or np.size(axes) == 0 or int(attrs.get("keepdims", 1)) != 1:
            return stop
        if any(int(a) % rank < 2 for a in np.atleast_1d(axes)):
            return stop
        specs += [("copied", np.asarray(axes, np.int64))] if extra and not is_empty(extra[0]) else []
    elif op == "BatchNormalization":
        if int(attrs.get("training_mode", 0)) or len(extra) != 4:
            return stop
        params = [const_value(t) for t in extra]
        if any(p is None or p.shape != (width,) for p in params):
            return stop
        specs += [("sliced", p) for p in params]
    elif op == "Conv":  # depthwise, one filter per channel
        w = const_value(extra[0]) if extra else None
        b = const_value(extra[1]) if len(extra) > 1 and not is_empty(extra[1]) else None
        if (w is None or int(attrs.get("group", 1)) != width or w.shape[:2] != (width, 1)
                or (len(extra) > 1 and not is_empty(extra[1]) and (b is None or b.shape != (width,)))):
            return stop
        specs += [("sliced", w)] + ([("sliced", b)] if b is not None else [])
        attrs["group"] = -1  # the chain's channel count, when written
    else:
        return stop
    return _Step(y.name, op, attrs, specs, off), None, off


def _channel_slice(cg: ChannelGraph, node: gs.Node, ch: Chain, x: str, off: int,
                   in_chain: list[bool]) -> tuple[_Step | None, np.ndarray | None, int]:
    """A Slice of the channel axis alone, step 1, that keeps every channel of the chain."""
    stop = None, None, 0
    if not in_chain[0] or any(in_chain[1:]) or len(node.inputs) < 3:
        return stop
    args = [const_value(t) if not is_empty(t) else None for t in node.inputs[1:5]]
    starts, ends = args[0], args[1]
    rank = cg.tensors[x].rank
    axes = args[2] if len(args) > 2 and args[2] is not None else np.arange(len(np.atleast_1d(starts)))
    steps = args[3] if len(args) > 3 and args[3] is not None else np.ones(len(np.atleast_1d(starts)), np.int64)
    if starts is None or ends is None or np.size(axes) != 1 or int(np.atleast_1d(axes)[0]) % rank != 1:
        return stop
    if int(np.atleast_1d(steps)[0]) != 1:
        return stop
    width = cg.tensors[x].units
    start, end = (int(np.clip(v + width if v < 0 else v, 0, width)) for v in
                  (int(np.atleast_1d(starts)[0]), int(np.atleast_1d(ends)[0])))
    if start > off or end < off + ch.channels:
        return stop
    return _Step(node.outputs[0].name, "", dict(node.attrs), [("chain", x)], off), None, off - start


def _reader(cg: ChannelGraph, node: gs.Node, name: str) -> bool:
    """A Conv (not grouped) that reads chain tensor ``name`` as its data input, with constant weights."""
    if op_of(node) != "Conv" or int(node.attrs.get("group", 1)) != 1 or len(node.inputs) < 2:
        return False
    if node.inputs[0].name != name or any(not is_empty(t) and t.name == name for t in node.inputs[1:]):
        return False
    w = const_value(node.inputs[1])
    return (w is not None and w.ndim >= 3 and w.shape[1] == cg.tensors[name].units
            and np.issubdtype(w.dtype, np.floating))


def find_chains(cg: ChannelGraph) -> list[Chain]:
    """Every run of channel-wise ops that turns known constants into images (zero padding) and ends
    in Convs, with the channels it can carry exactly."""
    graph_outputs = {t.name for t in cg.graph.outputs}
    chains: list[Chain] = []
    chain_of: dict[str, int] = {}
    for node in cg.graph.nodes:
        ids = {chain_of[t.name] for t in node.inputs if not is_empty(t) and t.name in chain_of}
        if not ids:
            _start(cg, node, chains, chain_of, graph_outputs)
            continue
        if len(ids) > 1:  # two chains meet: leave both
            for i in ids:
                chains[i].fail(f"meets another at {op_of(node)} '{node.name}'")
            continue
        i = ids.pop()
        ch = chains[i]
        if ch.failed:  # (its later ops need no look: its channels stay)
            continue
        data = node.inputs[0] if node.inputs else None
        if data is not None and chain_of.get(data.name) == i and _reader(cg, node, data.name):
            ch.readers.append((node.outputs[0].name, ch.offsets[data.name]))
            continue
        step, ok, off = _step(cg, node, ch, i, chain_of, graph_outputs)
        if step is None:
            ch.fail(f"reaches {op_of(node)} '{node.name}'")
            continue
        if ok is not None:
            ch.units &= ok
        ch.steps.append(step)
        ch.offsets[step.output] = off
        chain_of[step.output] = i
    frozen = cg.frozen | cg.pinned
    for ch in chains:
        for name, off in [(ch.seed, 0), *ch.offsets.items()]:  # (any freeze keeps its channels)
            ch.units &= ~frozen[cg.classes_of(name)[off: off + ch.channels]]
        out = next((t for t in ch.tensors if t in graph_outputs), None)
        if out is not None:
            ch.fail(f"is the graph output '{out}'")
        elif not ch.readers:
            ch.fail("reaches no Conv")
    return [ch for ch in chains if ch.units.any()]


def _start(cg: ChannelGraph, node: gs.Node, chains: list[Chain], chain_of: dict[str, int],
           graph_outputs: set[str]) -> None:
    """A chain starts where a channel-wise op turns known constants of its input into unknowns."""
    if not node.inputs or not node.outputs or is_empty(node.inputs[0]) or is_empty(node.outputs[0]):
        return
    x, y = node.inputs[0].name, node.outputs[0].name
    if not _plain(cg, x) or not _plain(cg, y, cg.tensors[x].units):
        return
    kx, ky = cg.const[x], cg.const[y]
    units = np.isfinite(kx) & np.isnan(ky)
    if not units.any() or op_of(node) in BINARY:
        return
    i = len(chains)
    ch = Chain(x, int(len(kx)), kx, units)
    step, ok, _ = _step(cg, node, ch, i, {x: i}, graph_outputs)
    if step is None or not step.op:
        return
    step.inputs[0] = ("seed", x)
    if ok is not None:
        ch.units &= ok
    ch.steps.append(step)
    ch.offsets[y] = 0
    chains.append(ch)
    chain_of[y] = i


# ---------------------------------------------------------------------------------------------- rewrite

def replicate_chains(model: onnx.ModelProto, chains: list[Chain]) -> tuple[onnx.ModelProto, set[str]]:
    """``model`` with every chain written again for its units only, added to its readers' outputs, and
    the readers' weights for those units zeroed (the originals are then unread: removal drops them);
    and the names of the nodes written."""
    graph = import_graph(model)
    tensors = graph.tensors()
    by_output = {n.outputs[0].name: n for n in graph.nodes if n.outputs}
    names = set(tensors) | {n.name for n in graph.nodes if n.name}
    written: list[gs.Node] = []
    for ch in chains:
        written += _replicate(ch, tensors, by_output, names)
    graph.nodes.extend(written)
    graph.toposort()
    return export_graph(graph, model), {n.name for n in written}


def _replicate(ch: Chain, tensors: dict, by_output: dict, names: set[str]) -> list[gs.Node]:
    d = ch.index
    x = tensors[ch.seed]
    first = by_output[ch.readers[0][0]]
    dtype = np.dtype(x.dtype) if x.dtype is not None else const_value(first.inputs[1]).dtype
    base = f"{ch.seed}__chain"
    new: list[gs.Node] = []

    def var(suffix: str, like: gs.Tensor | None = None, vtype=None) -> gs.Variable:
        v = gs.Variable(fresh_name(names, base, suffix), dtype=vtype if vtype is not None else dtype)
        if like is not None and like.shape is not None:
            v.shape = [1, len(d), *like.shape[2:]]
        return v

    def const(suffix: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(names, base, suffix), np.ascontiguousarray(value))

    def node(op: str, attrs: dict, inputs: list, outputs: list) -> None:
        new.append(gs.Node(op, fresh_name(names, base, f"_{op}"), attrs, inputs, outputs))

    rank = len(x.shape) if x.shape is not None else None
    seed = var("_seed", x)
    values = ch.values[d].astype(dtype).reshape(1, len(d), *([1] * (rank - 2)))
    spatial = list(x.shape[2:])
    if all(isinstance(s, int) for s in spatial):
        shape = const("_shape", np.array([1, len(d), *spatial], np.int64))
    else:  # the image takes the seed's spatial size at run time
        full, hw = var("_full", vtype=np.int64), var("_hw", vtype=np.int64)
        shape = var("_dims", vtype=np.int64)
        node("Shape", {}, [x], [full])
        node("Slice", {}, [full, const("_from", np.array([2], np.int64)), const("_to", np.array([rank], np.int64))], [hw])
        node("Concat", {"axis": 0}, [const("_lead", np.array([1, len(d)], np.int64)), hw], [shape])
    node("Expand", {}, [const("_values", values), shape], [seed])
    copies = {ch.seed: seed}
    for step in ch.steps:
        if not step.op:  # a Concat or Slice of channels: the copy holds the chain's channels only
            copies[step.output] = copies[step.inputs[0][1]]
            continue
        at = step.offset + d
        inputs = []
        for kind, arg in step.inputs:
            if kind in ("chain", "seed"):
                inputs.append(copies[arg])
            elif kind == "empty":
                inputs.append(gs.Variable.empty())
            elif kind == "sliced":  # [width, ...] parameters, or a [1, width, 1, ...] operand
                value = np.asarray(arg)
                inputs.append(const("_c", value[:, at] if value.ndim == rank and value.shape[0] == 1 else value[at]))
            elif kind == "copied":
                inputs.append(const("_c", np.asarray(arg)))
            else:  # per_channel: a computed tensor whose chain channels are known constants
                inputs.append(const("_c", np.asarray(arg)[at].astype(dtype).reshape(1, len(d), *([1] * (rank - 2)))))
        attrs = dict(step.attrs)
        if attrs.get("group") == -1:
            attrs["group"] = len(d)
        out = var("_" + step.op, tensors.get(step.output))
        node(step.op, attrs, inputs, [out])
        copies[step.output] = out
    for reader, off in ch.readers:
        n = by_output[reader]
        w = const_value(n.inputs[1])
        source = n.inputs[0].name
        share = gs.Variable(fresh_name(names, base, "_share"), dtype=n.outputs[0].dtype)
        node("Conv", {k: v for k, v in n.attrs.items() if k != "group"},
             [copies[source], const("_columns", np.ascontiguousarray(w[:, off + d]))], [share])
        zeroed = np.array(w, copy=True)
        zeroed[:, off + d] = 0
        n.inputs[1] = gs.Constant(fresh_name(names, n.name or reader, "__chain_weight"), zeroed)
        out = n.outputs[0]
        pre = gs.Variable(fresh_name(names, n.name or reader, "__conv"), dtype=out.dtype, shape=out.shape)
        n.outputs[0] = pre
        new.append(gs.Node("Add", fresh_name(names, base, "_Add"), {}, [pre, share], [out]))
    return new


def chain_units(cg: ChannelGraph, chains: list[Chain]) -> list[np.ndarray]:
    """Per chain, the classes (in ``cg``, an analysis of the model or its rewrite) of its seed's units."""
    return [cg.classes_of(ch.seed)[ch.index] for ch in chains]


__all__ = ["Chain", "chain_units", "find_chains", "replicate_chains"]
