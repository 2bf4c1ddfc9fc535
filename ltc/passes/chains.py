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
than the channels it replaces); one that reads no input is computed once when ONNX Runtime loads the
model, if its shapes are static.

A squeeze-excitation gate (a Mul by one input-dependent number per channel) is followed too: the copy
multiplies by a copy of the gate's rows for those channels (its writer, a plain Conv, and the
channel-wise ops after it), so the dead filter, its depthwise channel and its gate row still go; the
copy then has the input's batch. A constant times a live gate starts a chain the same way. Two chains
that meet at an elementwise op (a residual Add of two such images) become one, and constants beside a
chain's images that the next op turns into images (a Concat of a module's two halves read by a padded
depthwise conv) join it. A chain stops at anything else: a layer that is not a plain Conv, an
input-dependent partner that is not such a gate, a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ltc.passes.channels import ChannelGraph
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.reindex import add_to_output, fresh_name, image_dims
from ltc.passes.rules import const_value, is_empty, op_of

UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
                   "Softplus", "Softsign", "Exp", "Abs", "Neg", "Erf", "Identity", "Mish", "Gelu",
                   "ThresholdedRelu", "Clip", "Sqrt", "Reciprocal", "Log", "Floor", "Ceil", "Round", "Sign"})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"})
POOLS = frozenset({"AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                    "ReduceSumSquare", "ReduceLogSumExp"})

# How a replica node gets one input, by kind: "chain" (the copy of a chain tensor), "seed" (the image
# of a seed's constants), "rows" (a constant whose first axis is the channel: its rows for the units),
# "operand" (a [1, C, 1, ...] constant: its channels for the units), "copied" (a constant without the
# channel axis), "per_channel" (a computed tensor whose units are known constants), "live" (a gate:
# the steps that compute it, written again for the units), "input" (an original tensor, read whole),
# "empty" (an absent optional input).
Spec = tuple[str, object]


@dataclass
class _Step:
    output: str  # the original node's first output (names are unique; the node is found by it)
    op: str  # "" for a Concat or Slice on channels: the copy passes on unchanged
    attrs: dict
    inputs: list[Spec]
    offset: int = 0  # where the chain's unit 0 sits in the step's input (a Concat moves it)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the units its copy carries, in order
    rank: int = 4  # of its output


@dataclass
class Seed:
    """A tensor whose channels are known constants where a chain starts."""

    name: str
    offset: int  # where the chain's unit 0 sits in it
    values: np.ndarray  # its constants, per channel (NaN where unknown)
    order: np.ndarray  # the units it starts, in the order its copy holds them
    rank: int = 4


@dataclass
class Chain:
    """The chain's ``units`` are channels of its seeds, constants that ``steps`` carry, as images, to
    the Convs whose outputs are ``readers``. Unit ``u`` is channel ``offset + u`` of each seed and of
    each tensor of the chain (``offsets``); a tensor carries the units ``orders`` lists, in the order
    its copy holds them. Two chains that meet become one, and constants of a chain tensor that become
    images where the chain goes on join it: a chain can have several seeds."""

    channels: int  # how many units the chain could have
    units: np.ndarray  # bool per unit: replicated
    seeds: list[Seed]
    steps: list[_Step] = field(default_factory=list)
    readers: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # (output, offset, order) of its input
    offsets: dict[str, int] = field(default_factory=dict)  # chain tensor -> where unit 0 sits in it
    orders: dict[str, np.ndarray] = field(default_factory=dict)  # chain tensor -> the units it carries
    failed: str = ""  # why the chain cannot be written again (its channels stay)

    def fail(self, why: str) -> None:
        self.failed = self.failed or why

    @property
    def index(self) -> np.ndarray:
        return np.flatnonzero(self.units)

    @property
    def tensors(self) -> list[str]:
        return list(self.offsets)

    @property
    def gated(self) -> bool:
        """Some step multiplies by a live gate (the copy reads the input)."""
        return any(kind == "live" for st in self.steps for kind, _ in st.inputs)

    def written(self, order: np.ndarray) -> np.ndarray:
        """The units of ``order`` that are written, in its order."""
        return order[self.units[order]]

    def carried(self, name: str) -> np.ndarray:
        """Bool per unit: tensor ``name`` carries it."""
        out = np.zeros(self.channels, dtype=bool)
        out[self.orders[name]] = True
        return out

    def used(self) -> np.ndarray:
        """Bool per unit: some seed or tensor of the chain carries it (it may have stopped since: a
        unit that stopped never starts again, whatever joins the chain later)."""
        out = np.zeros(self.channels, dtype=bool)
        for order in [*(s.order for s in self.seeds), *self.orders.values()]:
            out[order] = True
        return out

    def widen(self, lo: int, hi: int) -> None:
        """Units ``lo .. hi - 1`` become possible (unit numbers move up by ``-lo`` if ``lo < 0``)."""
        shift, grow = max(0, -lo), max(0, hi - self.channels)
        if not shift and not grow:
            return
        self.units = np.concatenate([np.zeros(shift, bool), self.units, np.zeros(grow, bool)])
        self.channels += shift + grow
        for s in self.seeds:
            s.offset, s.order = s.offset - shift, s.order + shift
        for st in self.steps:
            st.offset, st.order = st.offset - shift, st.order + shift
        self.readers = [(r, off - shift, order + shift) for r, off, order in self.readers]
        self.offsets = {t: off - shift for t, off in self.offsets.items()}
        self.orders = {t: order + shift for t, order in self.orders.items()}


def _window(values: np.ndarray, offset: int, n: int, fill=False) -> np.ndarray:
    """``values[offset + u]`` for ``u`` in ``range(n)``, ``fill`` where that is outside ``values``."""
    pos = offset + np.arange(n)
    inside = (pos >= 0) & (pos < len(values))
    out = np.full(n, fill, dtype=values.dtype)
    out[inside] = values[pos[inside]]
    return out


def _plain(cg: ChannelGraph, name: str, channels: int | None = None) -> bool:
    """``name`` is a channel tensor along axis 1 of rank >= 3, one entry per channel."""
    ct = cg.tensors.get(name)
    return (ct is not None and ct.axis == 1 and ct.stride == 1 and ct.rank >= 3
            and (channels is None or ct.units == channels))


def _one_output(node: gs.Node, graph_outputs: set[str]) -> bool:
    return all(is_empty(t) or (not t.outputs and t.name not in graph_outputs) for t in node.outputs[1:])


def _constant_operand(value: np.ndarray, rank: int, width: int) -> Spec | None:
    """How a replica reads a constant operand of an elementwise op on a ``width``-channel tensor."""
    if value.ndim > rank:
        return None
    dims = (1,) * (rank - value.ndim) + value.shape
    if dims[0] != 1 or dims[1] not in (1, width) or any(d != 1 for d in dims[2:]):
        return None
    v = value.reshape(dims)
    return ("operand", v) if dims[1] == width and width != 1 else ("copied", v)


def _params(node: gs.Node, op: str, width: int) -> list[Spec] | None:
    """How a replica reads the inputs after the data input of a channel-wise op: an activation's
    scalar bounds, BatchNorm's per-channel parameters; None if it cannot."""
    extra = node.inputs[1:]
    if op in UNARY:
        if any(not is_empty(t) and (const_value(t) is None or const_value(t).size != 1) for t in extra):
            return None
        return [("empty", None) if is_empty(t) else ("copied", const_value(t)) for t in extra]
    if op == "BatchNormalization":
        params = [const_value(t) for t in extra]
        if int(node.attrs.get("training_mode", 0)) or len(params) != 4:
            return None
        if any(p is None or p.shape != (width,) for p in params):
            return None
        return [("rows", p) for p in params]
    return None


def _conv_rows(node: gs.Node, width: int, group: int) -> list[Spec] | None:
    """How a replica reads a Conv's constant weight and optional bias, ``width`` filters in ``group``
    groups: their rows for the units; None if they are not such constants."""
    extra = node.inputs[1:]
    w = const_value(extra[0]) if extra else None
    has_b = len(extra) > 1 and not is_empty(extra[1])
    b = const_value(extra[1]) if has_b else None
    if (w is None or w.ndim < 3 or int(node.attrs.get("group", 1)) != group or w.shape[0] != width
            or not np.issubdtype(w.dtype, np.floating) or (has_b and (b is None or b.shape != (width,)))):
        return None
    return [("rows", w)] + ([("rows", b)] if has_b else [])


def _gate(cg: ChannelGraph, t: gs.Tensor, width: int) -> list[_Step] | None:
    """The steps that compute ``t``, a gate (one input-dependent number per channel and sample,
    [N, C, 1, ...]), from its writer, a plain Conv with constant weights, through channel-wise ops
    with constant parameters (a squeeze-excitation's second layer and its sigmoid); None if ``t`` is
    not such a gate."""
    shape = cg.shapes.get(t.name)
    if shape is None or len(shape) < 3 or any(s != 1 for s in shape[2:]):
        return None
    rank, tail = len(shape), []
    while len(tail) < 16 and t.inputs:
        p = t.inputs[0]
        op = op_of(p)
        if not p.outputs or p.outputs[0].name != t.name:
            return None
        if op == "Conv":
            rows = _conv_rows(p, width, group=1)
            if rows is None or is_empty(p.inputs[0]):
                return None
            tail.append(_Step(t.name, "Conv", dict(p.attrs), [("input", p.inputs[0].name), *rows], rank=rank))
            return tail[::-1]
        if op in BINARY:
            values = [const_value(u) for u in p.inputs] if len(p.inputs) == 2 else []
            if len(values) != 2 or sum(v is None for v in values) != 1:
                return None
            k = values.index(None)
            operand = _constant_operand(values[1 - k], rank, width)
            if operand is None:
                return None
            data = p.inputs[k]
            specs = [("chain", data.name), operand][:: 1 if k == 0 else -1]
        else:
            data = p.inputs[0] if p.inputs else None
            params = _params(p, op, width) if data is not None and not is_empty(data) else None
            if params is None:
                return None
            specs = [("chain", data.name), *params]
        if not _plain(cg, data.name, width) or cg.shapes.get(data.name) != shape:
            return None
        tail.append(_Step(t.name, op, dict(p.attrs), specs, rank=rank))
        t = data
    return None


def _spatial_kept(cg: ChannelGraph, x: str, y: str) -> bool:
    """An elementwise op's output has the chain tensor's spatial shape (it does not broadcast it up)."""
    a, b = cg.shapes.get(x), cg.shapes.get(y)
    return a is not None and b is not None and len(a) == len(b) and list(a[2:]) == list(b[2:])


def _step(cg: ChannelGraph, node: gs.Node, ch: Chain, this: int, chain_of: dict[str, int],
          graph_outputs: set[str]) -> tuple[_Step | None, np.ndarray | None, int]:
    """``node`` as a step of chain ``this`` (its data input is a chain tensor, or the seed), the
    units it lets through, and where the chain sits in its output; (None, None, 0) if it ends the chain."""
    stop = None, None, 0
    y = node.outputs[0] if node.outputs else None
    if y is None or is_empty(y) or not _plain(cg, y.name) or not _one_output(node, graph_outputs):
        return stop
    in_chain = [not is_empty(t) and chain_of.get(t.name) == this for t in node.inputs]
    offsets = {ch.offsets.get(t.name, 0) for t, c in zip(node.inputs, in_chain, strict=True) if c}
    if len(offsets) != 1:
        return stop
    off = offsets.pop()
    x = next(t for t, c in zip(node.inputs, in_chain, strict=True) if c)
    # two chain inputs carry the units both carry on (the copy puts them in the first's order)
    carries = [ch.carried(t.name) for t, c in zip(node.inputs, in_chain, strict=True) if c]
    common, some = np.logical_and.reduce(carries), np.logical_or.reduce(carries)
    order = ch.orders[x.name][common[ch.orders[x.name]]]
    carried = ch.units & common
    step, mask, out_off = _step_of(cg, node, ch, x, off, in_chain, carried, y)
    if step is not None:
        step.order, step.rank = order, cg.tensors[y.name].rank
        mask = ~(some & ~common) if mask is None else mask & ~(some & ~common)
    return step, mask, out_off


def _step_of(cg: ChannelGraph, node: gs.Node, ch: Chain, x: gs.Tensor, off: int, in_chain: list[bool],
             carried: np.ndarray, y: gs.Tensor) -> tuple[_Step | None, np.ndarray | None, int]:
    """:func:`_step` for the op itself, ``x`` its (first) chain input, ``carried`` the units it carries."""
    stop = None, None, 0
    op = op_of(node)
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
        return _channel_slice(cg, node, ch, x.name, off, in_chain, carried)
    if cg.tensors[y.name].units != width:
        return stop
    rank = cg.tensors[y.name].rank
    if op in BINARY:
        if len(node.inputs) != 2 or not _spatial_kept(cg, x.name, y.name):
            return stop
        specs: list[Spec] = []
        mask = np.ones(ch.channels, dtype=bool)
        for t, c in zip(node.inputs, in_chain, strict=True):
            value = None if c else const_value(t)
            if c:
                specs.append(("chain", t.name))
            elif value is not None:
                specs.append(_constant_operand(value, rank, width))
            elif not _plain(cg, t.name, width):
                return stop
            else:  # a computed partner: known constants where the units are, or a gate written again
                known = _window(np.isfinite(cg.const[t.name]), off, ch.channels)
                tail = None if (known | ~carried).all() or op != "Mul" else _gate(cg, t, width)
                specs.append(("per_channel", cg.const[t.name]) if tail is None else ("live", tail))
                if tail is None:
                    mask &= known | ~carried
        if any(s is None for s in specs):
            return stop
        return _Step(y.name, op, attrs, specs, off), mask, off
    if not in_chain[0] or any(in_chain[1:]):
        return stop
    extra = node.inputs[1:]
    specs = [("chain", x.name)]
    if op in UNARY or op == "BatchNormalization":
        params = _params(node, op, width)
        if params is None:
            return stop
        specs += params
    elif op in POOLS:
        pass
    elif op in REDUCE:
        axes = attrs.get("axes") if len(extra) == 0 or is_empty(extra[0]) else const_value(extra[0])
        if axes is None or np.size(axes) == 0 or int(attrs.get("keepdims", 1)) != 1:
            return stop
        if any(int(a) % rank < 2 for a in np.atleast_1d(axes)):
            return stop
        specs += [("copied", np.asarray(axes, np.int64))] if extra and not is_empty(extra[0]) else []
    elif op == "Conv":  # depthwise, one filter per channel
        rows = _conv_rows(node, width, group=width)
        if rows is None or np.shape(rows[0][1])[1] != 1:
            return stop
        specs += rows
        attrs["group"] = -1  # the chain's channel count, when written
    else:
        return stop
    return _Step(y.name, op, attrs, specs, off), None, off


def _channel_slice(cg: ChannelGraph, node: gs.Node, ch: Chain, x: str, off: int, in_chain: list[bool],
                   carried: np.ndarray) -> tuple[_Step | None, np.ndarray | None, int]:
    """A Slice of the channel axis alone, step 1: the units it keeps go on."""
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
    pos = off + np.arange(ch.channels)
    return (_Step(node.outputs[0].name, "", dict(node.attrs), [("chain", x)], off),
            (pos >= start) & (pos < end) | ~carried, off - start)


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
        if len(ids) > 1:
            merged = _merge(cg, node, chains, chain_of)
            if merged is None:
                for i in ids:
                    chains[i].fail(f"meets another at {op_of(node)} '{node.name}'")
                continue
            ids = {merged}
        i = ids.pop()
        ch = chains[i]
        if ch.failed:  # (its later ops need no look: its channels stay)
            continue
        data = node.inputs[0] if node.inputs else None
        if data is not None and chain_of.get(data.name) == i and _reader(cg, node, data.name):
            ch.readers.append((node.outputs[0].name, ch.offsets[data.name], ch.orders[data.name]))
            continue
        _absorb(cg, node, ch, i, chain_of)
        step, ok, off = _step(cg, node, ch, i, chain_of, graph_outputs)
        if step is None:
            ch.fail(f"reaches {op_of(node)} '{node.name}'")
            continue
        if ok is not None:
            ch.units &= ok
        ch.steps.append(step)
        ch.offsets[step.output] = off
        ch.orders[step.output] = step.order
        chain_of[step.output] = i
    frozen = cg.frozen | cg.pinned
    for ch in chains:
        carriers = [*((s.name, s.offset, s.order) for s in ch.seeds),
                    *((t, ch.offsets[t], ch.orders[t]) for t in ch.tensors)]
        for name, off, order in carriers:  # (any freeze keeps its channels)
            classes = cg.classes_of(name)
            pos = off + order
            inside = (pos >= 0) & (pos < len(classes))
            ch.units[order[~inside]] = False
            ch.units[order[inside][frozen[classes[pos[inside]]]]] = False
        out = next((t for t in ch.tensors if t in graph_outputs), None)
        if out is not None:
            ch.fail(f"is the graph output '{out}'")
        elif not ch.readers:
            ch.fail("reaches no Conv")
    return [ch for ch in chains if ch.units.any()]


def _absorb(cg: ChannelGraph, node: gs.Node, ch: Chain, this: int, chain_of: dict[str, int]) -> None:
    """Constants of a chain tensor that ``node`` makes images (a depthwise Conv that reads a Concat
    of an image and constants; a gate that multiplies constants as well as images) join the chain
    there: the tensor becomes one of its seeds, and its copy the images' copy joined with theirs."""
    y = node.outputs[0] if node.outputs else None
    if y is None or is_empty(y) or op_of(node) in ("Concat", "Slice") or not _plain(cg, y.name):
        return
    for x in sorted({t.name for t in node.inputs if not is_empty(t) and chain_of.get(t.name) == this}):
        if not _plain(cg, x, cg.tensors[y.name].units) or any(s.name == x for s in ch.seeds):
            continue  # (a tensor is a seed once: its other constants stay where they are)
        new = np.isfinite(cg.const[x]) & np.isnan(cg.const[y.name])
        new[np.clip(ch.offsets[x] + ch.orders[x], 0, len(new) - 1)] = False
        if not new.any():
            continue
        at = np.flatnonzero(new)
        ch.widen(int(at.min()) - ch.offsets[x], int(at.max()) + 1 - ch.offsets[x])
        off, order = ch.offsets[x], ch.orders[x]
        units = at - off
        ch.units[units[~ch.used()[units]]] = True
        ch.seeds.append(Seed(x, off, cg.const[x], units, cg.tensors[x].rank))
        joined = np.concatenate([order, units])
        ch.steps.append(_Step(x, "join", {}, [("chain", x), ("seed", x)], off, joined))
        ch.orders[x] = joined


def _merge(cg: ChannelGraph, node: gs.Node, chains: list[Chain], chain_of: dict[str, int]) -> int | None:
    """Two chains that meet at an elementwise op (a residual Add of two images) become one, the first
    (the second's units numbered so that those that meet here are the same); which one, or None if
    they cannot. Where only one of them carries a unit here, the other operand's constant joins it
    (:func:`_absorb`), or the unit stops."""
    if op_of(node) not in BINARY or len(node.inputs) != 2 or any(is_empty(t) for t in node.inputs):
        return None
    a, b = sorted(node.inputs, key=lambda t: chain_of.get(t.name, -1))
    if a.name not in chain_of or chain_of[a.name] == chain_of[b.name]:
        return None
    i, j = chain_of[a.name], chain_of[b.name]
    first, second = chains[i], chains[j]
    if first.failed or second.failed or cg.tensors[a.name].units != cg.tensors[b.name].units:
        return None
    if {s.name for s in first.seeds} & {s.name for s in second.seeds}:
        return None
    delta = first.offsets[a.name] - second.offsets[b.name]  # unit v of the second is unit v - delta of the first
    moved = np.flatnonzero(second.units) - delta
    if moved.size:
        lo = min(0, int(moved.min()))
        first.widen(lo, max(first.channels, int(moved.max()) + 1))
        delta += lo if lo < 0 else 0
    fresh = np.flatnonzero(second.units) - delta
    first.units[fresh[~first.used()[fresh]]] = True  # (a number the first has used keeps its state)

    def moved_order(order: np.ndarray) -> np.ndarray:  # the second's units that go on, numbered as the first's
        return order[second.units[order]] - delta

    first.seeds += [Seed(s.name, s.offset + delta, s.values, moved_order(s.order), s.rank) for s in second.seeds]
    first.steps += [_Step(s.output, s.op, s.attrs, s.inputs, s.offset + delta, moved_order(s.order), s.rank)
                    for s in second.steps]
    first.readers += [(r, off + delta, moved_order(order)) for r, off, order in second.readers]
    for name, off in second.offsets.items():
        first.offsets[name], first.orders[name] = off + delta, moved_order(second.orders[name])
        chain_of[name] = i
    second.units[:] = False
    return i


def _start(cg: ChannelGraph, node: gs.Node, chains: list[Chain], chain_of: dict[str, int],
           graph_outputs: set[str]) -> None:
    """A chain starts where a channel-wise op turns known constants of its input into unknowns (zero
    padding; a live gate)."""
    if not node.outputs or is_empty(node.outputs[0]):
        return
    y = node.outputs[0].name
    for x in node.inputs[: 2 if op_of(node) in BINARY else 1]:
        if is_empty(x) or not _plain(cg, x.name) or not _plain(cg, y, cg.tensors[x.name].units):
            continue
        kx, ky = cg.const[x.name], cg.const[y]
        units = np.isfinite(kx) & np.isnan(ky)
        if not units.any():
            continue
        i = len(chains)
        order = np.flatnonzero(units)
        ch = Chain(int(len(kx)), units, [Seed(x.name, 0, kx, order, cg.tensors[x.name].rank)], orders={x.name: order})
        step, ok, _ = _step(cg, node, ch, i, {x.name: i}, graph_outputs)
        del ch.orders[x.name]
        if step is None or not step.op:
            continue
        if ok is not None:
            ch.units &= ok
        if not ch.units.any():
            continue
        step.inputs = [("seed", x.name) if kind == "chain" else (kind, arg) for kind, arg in step.inputs]
        step.order = order
        ch.steps.append(step)
        ch.offsets[y], ch.orders[y] = 0, order
        chains.append(ch)
        chain_of[y] = i
        return


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
        written += _Writer(ch, tensors, names).write(by_output)
    graph.nodes.extend(written)
    graph.toposort()
    return export_graph(graph, model), {n.name for n in written}


class _Writer:
    """Writes one chain again for its units."""

    def __init__(self, ch: Chain, tensors: dict, names: set[str]):
        self.ch, self.tensors, self.names = ch, tensors, names
        self.base = f"{ch.seeds[0].name}__chain"
        self.new: list[gs.Node] = []
        self.batched: set[str] = set()  # copies with the input's batch (after a gate), not 1
        self.gates: dict[tuple, gs.Tensor] = {}

    def write(self, by_output: dict) -> list[gs.Node]:
        ch = self.ch
        first = by_output[ch.readers[0][0]]
        x = self.tensors[ch.seeds[0].name]
        self.dtype = np.dtype(x.dtype) if x.dtype is not None else const_value(first.inputs[1]).dtype
        seeds: dict[str, tuple[gs.Tensor, np.ndarray]] = {}  # copy, and the units it holds in order
        for seed in ch.seeds:
            d = ch.written(seed.order)
            if d.size:
                x = self.tensors[seed.name]
                values = seed.values[seed.offset + d].astype(self.dtype).reshape(1, len(d), *([1] * (seed.rank - 2)))
                nodes, dims = image_dims(x, [1, len(d)], seed.rank, self.names, self.base)
                self.new += nodes
                seeds[seed.name] = self.node("Expand", {}, [self.const("_values", values), dims], x, len(d)), d
        copies: dict[str, tuple[gs.Tensor, np.ndarray]] = {}
        for step in ch.steps:
            d = ch.written(step.order)
            if step.op == "join":  # a chain tensor whose constants join the chain: the images, then them
                parts = [p for p in (copies.pop(step.output, None), seeds.get(step.output)) if p is not None]
                if len(parts) == 2:
                    parts = [(self.node("Concat", {"axis": 1}, [t for t, _ in parts], self.tensors.get(step.output),
                                        len(d)), d)]
                if parts:
                    copies[step.output] = parts[0]
            elif not step.op:  # a Concat or Slice of channels: the copy holds the chain's channels only
                if step.inputs[0][1] in copies:
                    copies[step.output] = copies[step.inputs[0][1]]
            elif d.size:
                copies[step.output] = self.step(step, d, {**seeds, **copies}), d
        for reader, off, _ in ch.readers:
            if n_in := copies.get(by_output[reader].inputs[0].name):
                self.share(by_output[reader], reader, off, *n_in)
        return self.new

    def share(self, n: gs.Node, reader: str, off: int, copy: gs.Tensor, d: np.ndarray) -> None:
        """``n``, a Conv that reads the chain's units ``d`` (its channels ``off + d``), gets their
        share from the copy added to its output, and zero weights for them."""
        w = const_value(n.inputs[1])
        share = self.node("Conv", {k: v for k, v in n.attrs.items() if k != "group"},
                          [copy, self.const("_columns", w[:, off + d])], None, len(d), dtype=n.outputs[0].dtype)
        zeroed = np.array(w, copy=True)
        zeroed[:, off + d] = 0
        n.inputs[1] = gs.Constant(fresh_name(self.names, n.name or reader, "__chain_weight"), zeroed)
        self.new.append(add_to_output(n, share, self.names, self.base))

    def const(self, suffix: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(self.names, self.base, suffix), np.ascontiguousarray(value))

    def node(self, op: str, attrs: dict, inputs: list, like: gs.Tensor | None, units: int, dtype=None) -> gs.Variable:
        """A node writing one new tensor, shaped as ``like`` for ``units`` channels (batch 1 unless it
        reads the input)."""
        out = gs.Variable(fresh_name(self.names, self.base, "_" + op), dtype=dtype if dtype is not None else self.dtype)
        batched = any(t.name in self.batched for t in inputs)
        if like is not None and like.shape is not None:
            out.shape = [like.shape[0] if batched else 1, units, *like.shape[2:]]
        if batched:
            self.batched.add(out.name)
        self.new.append(gs.Node(op, fresh_name(self.names, self.base, f"_{op}"), attrs, inputs, [out]))
        return out

    def step(self, step: _Step, d: np.ndarray, source: dict) -> gs.Variable:
        """``step`` written for units ``d``, reading ``source``'s copies (each with the units it holds,
        in order: gathered into ``d``'s order where that differs)."""
        like = self.tensors.get(step.output)
        at = step.offset + d
        inputs = []
        for kind, arg in step.inputs:
            if kind in ("chain", "seed"):
                copy, held = source[arg]
                if not np.array_equal(held, d):
                    where = {u: k for k, u in enumerate(held.tolist())}
                    index = self.const("_index", np.array([where[u] for u in d.tolist()], np.int64))
                    copy = self.node("Gather", {"axis": 1}, [copy, index], like, len(d))
                inputs.append(copy)
            elif kind == "input":
                inputs.append(self.tensors[arg])
                self.batched.add(arg)
            elif kind == "live":
                inputs.append(self.gate(arg, step.offset, d))
            elif kind == "empty":
                inputs.append(gs.Variable.empty())
            elif kind == "rows":
                inputs.append(self.const("_c", np.asarray(arg)[at]))
            elif kind == "operand":
                inputs.append(self.const("_c", np.asarray(arg)[:, at]))
            elif kind == "copied":
                inputs.append(self.const("_c", np.asarray(arg)))
            else:  # per_channel: a computed tensor whose units are known constants
                value = np.asarray(arg)[at].astype(self.dtype).reshape(1, len(at), *([1] * (step.rank - 2)))
                inputs.append(self.const("_c", value))
        attrs = dict(step.attrs)
        if attrs.get("group") == -1:
            attrs["group"] = len(at)
        return self.node(step.op, attrs, inputs, like, len(at))

    def gate(self, tail: list[_Step], offset: int, d: np.ndarray) -> gs.Tensor:
        """A gate's rows for units ``d`` (its channels ``offset + d``), written once per chain."""
        key = (tail[-1].output, offset, d.tobytes())
        if key not in self.gates:
            copies: dict[str, tuple[gs.Tensor, np.ndarray]] = {}
            for step in tail:
                copies[step.output] = self.step(_Step(step.output, step.op, step.attrs, step.inputs, offset,
                                                      rank=step.rank), d, copies), d
            self.gates[key] = copies[tail[-1].output][0]
        return self.gates[key]


def chain_units(cg: ChannelGraph, chains: list[Chain]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per chain, each written unit in each seed that starts it, and its class there (in ``cg``, an
    analysis of the model or its rewrite): (units, classes), aligned."""
    out = []
    for ch in chains:
        pairs = [(d, cg.classes_of(s.name)[s.offset + d]) for s in ch.seeds for d in [ch.written(s.order)]]
        out.append((np.concatenate([u for u, _ in pairs]), np.concatenate([c for _, c in pairs])))
    return out


def removed_units(cg: ChannelGraph, chains: list[Chain], removed: np.ndarray) -> list[np.ndarray]:
    """Per chain, bool per written unit (``ch.index``): every class it has in a seed is ``removed``."""
    out = []
    for ch, (units, classes) in zip(chains, chain_units(cg, chains), strict=True):
        gone = np.ones(ch.channels, dtype=bool)
        np.logical_and.at(gone, units, removed[classes])
        out.append(gone[ch.index])
    return out


__all__ = ["Chain", "Seed", "chain_units", "find_chains", "removed_units", "replicate_chains"]
