"""Layout ops: pools and spatial ops (channel-first), reductions, Flatten/Reshape/Squeeze/Unsqueeze,
Transpose (moves the channel axis), Concat/Split/Slice (offsets along the channel axis), Shape."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ltc.passes.ops.elementwise import pass_through
from ltc.passes.records import (
    ConcatRecord,
    GatherRecord,
    HeadSplit,
    ReshapeTarget,
    SliceRecord,
    SplitRecord,
)
from ltc.passes.rules import (
    NAN,
    Refuse,
    Rule,
    attr_str,
    const_value,
    no_padding,
    op_of,
    register,
    static,
)

if TYPE_CHECKING:
    from ltc.passes.channels import NodeView


@register
class Pool(Rule):
    """Pools keep each channel on its own; a constant channel stays that constant (max pooling pads
    with -inf; average pooling counting zero padding does not)."""

    ops = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "LpPool", "GlobalLpPool")

    def analyze(self, v: NodeView) -> None:
        v.need_channel_first()
        averages_padding = v.op == "AveragePool" and not no_padding(v.node) and int(v.attrs.get("count_include_pad", 0))
        if v.op in ("LpPool", "GlobalLpPool") or averages_padding:
            pass_through(v, lambda k: np.where(k == 0, 0.0, NAN))
        else:
            pass_through(v, lambda k: k)


@register
class Resize(Rule):
    ops = ("Resize",)

    def analyze(self, v: NodeView) -> None:
        x = v.x(0)
        scales, sizes = v.need_value(2, "scales"), v.need_value(3, "sizes")
        if x is None or v.attrs.get("axes") is not None or (sizes is not None and sizes.size) or scales is None \
                or len(scales) != x.rank or scales[0] != 1 or scales[x.axis] != 1:
            raise Refuse(f"{v.where}: only constant scales with 1 on the batch and channel axes")
        pass_through(v, lambda k: k)  # interpolating a constant gives that constant


@register
class Pad(Rule):
    ops = ("Pad",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        pads = v.need_value(1, "pads")
        value = v.need_value(2, "constant_value")
        axes = v.need_value(3, "axes")
        if pads is None:
            raise Refuse(f"{v.where}: no pads input")
        axes = list(range(x.rank)) if axes is None else [int(a) % x.rank for a in axes.reshape(-1)]
        pads = pads.reshape(-1).astype(np.int64)
        if len(pads) != 2 * len(axes):
            raise Refuse(f"{v.where}: pads do not match the axes")
        for j, a in enumerate(axes):
            if a in (0, x.axis) and (pads[j] or pads[j + len(axes)]):
                raise Refuse(f"{v.where} pads the batch or channel axis")
        fill = float(value.reshape(-1)[0]) if value is not None and value.size else 0.0
        if attr_str(v.node, "mode", "constant") == "constant":
            pass_through(v, lambda k: np.where(k == fill, k, NAN))
        else:
            pass_through(v, lambda k: k)


_REDUCE = {
    "ReduceMean": lambda k, n: k,
    "ReduceMax": lambda k, n: k,
    "ReduceMin": lambda k, n: k,
    "ReduceSum": lambda k, n: k * n if n else np.where(k == 0, 0.0, NAN),
    "ReduceSumSquare": lambda k, n: k * k * n if n else np.where(k == 0, 0.0, NAN),
    "ReduceL1": lambda k, n: np.abs(k) * n if n else np.where(k == 0, 0.0, NAN),
    "ReduceL2": lambda k, n: np.abs(k) * math.sqrt(n) if n else np.where(k == 0, 0.0, NAN),
    "ReduceLogSumExp": lambda k, n: k + math.log(n) if n else np.full_like(k, NAN),
    "ReduceProd": lambda k, n: k ** n if n else np.full_like(k, NAN),
}


@register
class Reduce(Rule):
    """A reduction over axes other than the channel axis keeps channels apart (the channel axis may
    move when dims are dropped); over the channel axis it reads every channel together (pinned)."""

    ops = tuple(_REDUCE)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        axes = _axes(v)
        keepdims = int(v.attrs.get("keepdims", 1))
        if axes is None or np.size(axes) == 0:
            if int(v.attrs.get("noop_with_empty_axes", 0)):
                pass_through(v, lambda k: k)
                return
            axes = range(x.rank)  # empty axes: reduce over every axis
        axes = sorted({int(a) % x.rank for a in np.atleast_1d(axes)})
        if x.axis in axes:
            v.pin(x, f"{v.where} reduces over the channel axis")
            return
        if 0 in axes:
            raise Refuse(f"{v.where} reduces over the batch axis")
        n = static([x.shape[a] for a in axes])
        axis = x.axis if keepdims else x.axis - sum(a < x.axis for a in axes)
        pass_through(v, lambda k: _REDUCE[v.op](k, n), axis=axis)


@register
class Transpose(Rule):
    ops = ("Transpose",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        perm = [int(p) for p in v.attrs.get("perm", range(x.rank - 1, -1, -1))]
        if sorted(perm) != list(range(x.rank)):
            raise Refuse(f"{v.where}: perm {perm} is not a permutation of {x.rank} axes")
        pass_through(v, lambda k: k, axis=perm.index(x.axis), shape=[x.shape[p] for p in perm])


def _batch_from_shape(t: gs.Tensor) -> gs.Tensor | None:
    """The tensor whose batch size ``t`` holds: ``Shape(s)[0:1]`` through Gather/Slice/Unsqueeze."""
    node = t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
    if node is not None and op_of(node) in ("Unsqueeze", "Reshape") and node.inputs:
        inner = node.inputs[0]
        node = inner.inputs[0] if isinstance(inner, gs.Variable) and len(inner.inputs) == 1 else None
    if node is None or not node.inputs:
        return None
    src = node.inputs[0]
    shape_node = src.inputs[0] if isinstance(src, gs.Variable) and len(src.inputs) == 1 else None
    if shape_node is None or op_of(shape_node) != "Shape" or int(shape_node.attrs.get("start", 0)) != 0:
        return None
    if op_of(node) == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        idx = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        ok = idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0
    elif op_of(node) == "Slice":
        starts = const_value(node.inputs[1]) if len(node.inputs) > 2 else None
        ends = const_value(node.inputs[2]) if len(node.inputs) > 2 else None
        ok = starts is not None and ends is not None and starts.size == 1 and int(starts[0]) == 0 and int(ends[0]) == 1
    else:
        ok = False
    return shape_node.inputs[0] if ok else None


def _shape_prefix(t: gs.Tensor, x: gs.Tensor) -> int | None:
    """k when ``t`` is ``Shape(x)[0:k]`` (a Slice of the whole shape vector from its start), else None."""
    node = t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
    if node is None or op_of(node) != "Slice" or len(node.inputs) < 3:
        return None
    src = node.inputs[0]
    shape_node = src.inputs[0] if isinstance(src, gs.Variable) and len(src.inputs) == 1 else None
    if shape_node is None or op_of(shape_node) != "Shape" or shape_node.inputs[0] is not x \
            or int(shape_node.attrs.get("start", 0)) != 0:
        return None
    starts, ends = const_value(node.inputs[1]), const_value(node.inputs[2])
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
    if starts is None or ends is None or starts.size != 1 or ends.size != 1 or int(starts.reshape(-1)[0]) != 0:
        return None
    if (axes is not None and int(axes.reshape(-1)[0]) != 0) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    k = int(ends.reshape(-1)[0])
    return k if 0 < k < 8 else None


def _reshape_prefix_only(slice_out: gs.Tensor, x: gs.Tensor) -> bool:
    """``slice_out`` (``Shape(x)[0:2]``) is read only as the start of Concat targets of Reshapes of ``x``
    itself: the channel count it carries is x's own at run time, whatever removal does to x."""
    for concat in slice_out.outputs:
        if op_of(concat) != "Concat" or not concat.inputs or concat.inputs[0] is not slice_out:
            return False
        for reshape in concat.outputs[0].outputs:
            if op_of(reshape) != "Reshape" or reshape.inputs[0] is not x or reshape.inputs[1] is not concat.outputs[0]:
                return False
    return bool(slice_out.outputs)


def _same_batch(a: list, b: list) -> bool:
    return a is not None and b is not None and a[0] is not None and a[0] == b[0]


def _group_norm_all(node: gs.Node, v: NodeView):
    """The channel tensor ``x`` of a GroupNorm with one group as exporters write it below opset 18,
    ``Reshape(x, [N, 1, -1]) -> InstanceNormalization (one scale, one bias) -> Reshape(back to x's
    shape)``, when ``node`` is its first or its last Reshape; else None. Per-channel scale and shift
    follow as Mul/Add, which their own rules read."""
    def first_of(reshape: gs.Node):
        x = reshape.inputs[0]
        ct = v.cg.tensors.get(x.name)
        target = const_value(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
        if ct is None or ct.axis != 1 or ct.rank < 3 or target is None or target.size != 3:
            return None
        if int(target[1]) != 1 or int(target[2]) != -1 or int(target[0]) not in (0, -1) and \
                not (isinstance(ct.shape[0], int) and int(target[0]) == ct.shape[0]):
            return None
        if int(target[0]) == -1 or int(reshape.attrs.get("allowzero", 0)):
            return None
        readers = reshape.outputs[0].outputs
        if len(readers) != 1 or op_of(readers[0]) != "InstanceNormalization":
            return None
        norm = readers[0]
        if any(const_value(t) is None or const_value(t).size != 1 for t in norm.inputs[1:3]) or len(norm.inputs) < 3:
            return None
        after = norm.outputs[0].outputs
        if len(after) != 1 or op_of(after[0]) != "Reshape" or not _back_to(after[0], x):
            return None
        return ct, after[0]

    if node.inputs and node.inputs[0].inputs and op_of(node.inputs[0].inputs[0]) == "InstanceNormalization":
        norm = node.inputs[0].inputs[0]
        first = norm.inputs[0].inputs[0] if norm.inputs[0].inputs else None
        found = first_of(first) if first is not None and op_of(first) == "Reshape" else None
        return found[0] if found is not None and found[1] is node else None
    found = first_of(node)
    return found[0] if found is not None else None


def _back_to(reshape: gs.Node, x: gs.Tensor) -> bool:
    """``reshape`` restores ``x``'s shape: its target is ``Shape(x)`` or x's static shape."""
    if len(reshape.inputs) < 2:
        return False
    t = reshape.inputs[1]
    if t.inputs and op_of(t.inputs[0]) == "Shape" and t.inputs[0].inputs[0] is x:
        start, end = int(t.inputs[0].attrs.get("start", 0)), t.inputs[0].attrs.get("end")
        return start == 0 and (end is None or x.shape is not None and int(end) >= len(x.shape))
    target, shape = const_value(t), x.shape
    return target is not None and shape is not None and all(isinstance(d, int) for d in shape) \
        and target.tolist() == list(shape)


@register
class ReshapeLike(Rule):
    """Flatten and Reshape that keep the batch axis and regroup a channel-first tensor's other axes (a
    unit owns ``stride * prod(spatial)`` consecutive entries per sample); Reshapes of channels on a
    later axis (:func:`_reshape_channels_last`); Squeeze/Unsqueeze of non-channel axes
    (:func:`_squeeze_like`)."""

    ops = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")

    def analyze(self, v: NodeView) -> None:
        x = v.x(0)
        reason = f"{v.where} mixes channels with other axes"
        src = _group_norm_all(v.node, v) if v.op == "Reshape" else None
        if src is not None:
            if x is not None and x.name == src.name:  # the pattern's first Reshape: all channels read together
                v.pin(x, f"{v.where} starts a GroupNorm over all channels (Reshape -> InstanceNormalization "
                         "-> Reshape)")
                return
            y = v.new(0, src.size, src.stride, 1, v.shape(v.out(0)) or src.shape)  # the last: channels return
            v.tie(src, y)
            v.set_const(y, np.full(src.units, NAN))
            return
        if x is not None and v.op in ("Squeeze", "Unsqueeze"):
            _squeeze_like(v, x)
            return
        if x is not None and v.op == "Reshape" and x.axis >= 2 and _reshape_channels_last(self._entries(v, x), v, x):
            return
        if x is None or x.axis != 1:
            raise Refuse(reason)
        oshape = v.shape(v.out(0))
        entries = self._entries(v, x) if v.op == "Reshape" else None
        if entries is not None:  # shape inference may not follow a computed target: the target says
            derived = [x.shape[j] if e == 0 else x.size if e == "channels" else (e if isinstance(e, int) and e > 0 else None)
                       for j, (e, *_) in enumerate(entries)]
            derived[0] = x.shape[0]
            minus = [j for j, (e, *_) in enumerate(entries) if e == -1]
            others = [d for j, d in enumerate(derived[1:], 1) if j not in minus]
            total = static([x.size, *x.shape[2:]])
            known = static(others) if all(isinstance(d, int) and d > 0 for d in others) else None
            if len(minus) == 1 and total and known and total % known == 0:  # every other dim is known
                derived[minus[0]] = total // known  # the one -1 of the target
            if oshape is None or len(oshape) != len(derived):
                oshape = derived
            else:
                oshape = [d if j and not isinstance(o, int) and isinstance(d, int) else o
                          for j, (o, d) in enumerate(zip(oshape, derived, strict=True))]
        if oshape is None or len(oshape) < 2:
            raise Refuse(reason)
        oshape = list(oshape)
        if not self._keeps_batch(v, x, entries):
            raise Refuse(reason)
        t_in, t_out = static(x.shape[2:]), static(oshape[2:])
        if t_in is None or not t_out:
            raise Refuse(reason)
        if not isinstance(oshape[1], int):
            if (x.size * t_in) % t_out:
                raise Refuse(reason)
            oshape[1] = x.size * t_in // t_out
        per_unit = x.stride * t_in
        if x.size * t_in != oshape[1] * t_out or per_unit % t_out:
            raise Refuse(reason)
        stride = per_unit // t_out
        y = v.new(0, x.units * stride, stride, 1, oshape)
        if entries is not None:
            e1 = entries[1]
            copies = (e1[0] == 0 and not int(v.attrs.get("allowzero", 0))) or e1[0] == "channels"
            if e1[0] != -1 and not (copies and x.units == y.units and x.stride == y.stride):
                if not isinstance(e1[0], int) or e1[1] is None:
                    raise Refuse(f"{v.where}: target shape is computed, not constant")
                v.record(ReshapeTarget(e1[1], e1[2], e1[3], y))
        v.tie(x, y)
        v.set_const(y, v.const(x).copy())

    @staticmethod
    def _keeps_batch(v: NodeView, x, entries: list | None) -> bool:
        if v.op == "Flatten":
            return int(v.attrs.get("axis", 1)) == 1
        if entries is None:
            return False
        e0 = entries[0][0]
        if e0 == "batch" or (e0 == 0 and not int(v.attrs.get("allowzero", 0))):
            return True
        if e0 == -1:
            return _one_sample(x, [e[0] for e in entries[1:]])
        return isinstance(e0, int) and e0 > 0 and e0 == x.shape[0]

    @staticmethod
    def _entries(v: NodeView, x) -> list | None:
        """Per target dim (at least the first two): (value or 'batch', holder, input index, position)."""
        t = v.input(1)
        value = const_value(t)
        if value is not None:
            out = [(int(e), v.node, 1, j) for j, e in enumerate(value.reshape(-1))]
            return out if len(out) >= 2 else None
        producer = t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
        if producer is None or op_of(producer) != "Concat":
            return None
        out = []
        for i, piece in enumerate(producer.inputs):
            pv = const_value(piece)
            if pv is not None:
                out += [(int(e), producer, i, j) for j, e in enumerate(pv.reshape(-1))]
                continue
            if not out and _shape_prefix(piece, v.node.inputs[0]) == 2:  # x.flatten(2): [N, C] read off x
                out += [("batch", None, None, None), ("channels", None, None, None)]
                continue
            src = _batch_from_shape(piece)
            if src is None or not (src is v.node.inputs[0] or _same_batch(v.shape(src), x.shape)) or out:
                return None  # only the leading dim may be computed: the batch
            out.append(("batch", None, None, None))
        return out if len(out) >= 2 else None


def _axes(v: NodeView) -> np.ndarray | list | None:
    """An op's ``axes``: the attribute, or the constant input 1 (Squeeze/Unsqueeze from opset 13,
    reductions from 18); None if absent. Refuses a computed one."""
    axes = v.attrs.get("axes")
    return v.need_value(1, "axes") if axes is None else axes


def _one_sample(x, dims: list) -> bool:
    """A Reshape target whose first entry is -1 and the rest ``dims`` infers the batch: the other
    entries are static and hold exactly one sample of ``x`` (channel axis at its analysed size)."""
    per_sample = static([x.size if j == x.axis else d for j, d in enumerate(x.shape) if j])
    return all(isinstance(d, int) and d > 0 for d in dims) and per_sample is not None and static(dims) == per_sample


def _squeeze_like(v: NodeView, x) -> None:
    """Squeeze/Unsqueeze of axes other than the channel axis: no entry moves, the channel axis shifts.
    Explicit axes only: without them Squeeze would also drop a channel axis left with one channel."""
    axes = _axes(v)
    if axes is None:
        raise Refuse(f"{v.where}: no axes (it would drop a channel axis that removal leaves with one channel)")
    axes = np.atleast_1d(axes).reshape(-1)
    if v.op == "Squeeze":
        drop = {int(a) % x.rank for a in axes}
        if x.axis in drop:
            raise Refuse(f"{v.where} drops the channel axis")
        axis = x.axis - sum(a < x.axis for a in drop)
        shape = [d for j, d in enumerate(x.shape) if j not in drop]
    else:
        rank = x.rank + len(axes)
        added = {int(a) % rank for a in axes}
        if len(added) != len(axes):
            raise Refuse(f"{v.where}: repeated axes")
        rest = [j for j in range(rank) if j not in added]
        axis = rest[x.axis]
        shape = [1] * rank
        for j, d in zip(rest, x.shape, strict=True):
            shape[j] = d
    pass_through(v, lambda k: k, axis=axis, shape=v.shape(v.out(0)) or shape)


def _reshape_channels_last(entries: list | None, v: NodeView, x) -> bool:
    """A Reshape of a tensor whose channels are on axis c >= 2 (``[B, T, C]``, ``[B, T, H, D]``) that
    keeps the dims before c and regroups the channel axis with the dims after it:

    - merge (target ``[*prefix, C * rest]``): one unit per channel, ``rest`` entries each
      (``[B, T, H, D] -> [B, T, H * D]``, attention heads back to features);
    - split (target ``[*prefix, S, H, D]`` or ``[*prefix, H, D]`` of a last-axis channel tensor): the
      output's channel axis is H, unit h being D consecutive channels in each of S segments
      (``[B, T, 3C] -> [B, T, 3, heads, D]``, a fused q/k/v projection cut into heads).

    Returns False when the target is not of these forms (the caller refuses)."""
    if entries is None or len(entries) <= x.axis or x.stride != 1:
        return False
    c = x.axis
    allowzero = int(v.attrs.get("allowzero", 0))
    rest = entries[c:]
    values = [e for e, *_ in rest]
    if not all(isinstance(e, int) and (e > 0 or e == -1) for e in values):
        return False
    for j, (e, *_) in enumerate(entries[:c]):
        if e == -1 and j == 0:
            if not _one_sample(x, [d for d, *_ in entries[1:]]):
                return False
            continue
        if not ((e == 0 and not allowzero) or (e == "batch" and j == 0) or (e == "channels" and j == 1)
                or (isinstance(e, int) and e > 0 and e == x.shape[j])):
            return False
    if values.count(-1) > 1:
        return False
    prefix = list(x.shape[:c])
    if len(rest) == 1:  # merge the channel axis with every axis after it
        trailing = static(x.shape[c + 1:])
        if trailing is None or values[0] not in (-1, x.size * trailing):
            return False
        y = v.new(0, x.size * trailing, trailing, c, prefix + [x.size * trailing])
        v.tie(x, y)
        if values[0] != -1:
            v.record(ReshapeTarget(rest[0][1], rest[0][2], rest[0][3], y))
        v.set_const(y, v.const(x).copy())
        return True
    if x.rank != c + 1 or len(rest) not in (2, 3):
        return False
    known = math.prod(e for e in values if e != -1)
    if -1 in values:
        if x.size % known:
            return False
        values = [x.size // known if e == -1 else e for e in values]
    if math.prod(values) != x.size:
        return False
    segments, heads, per_head = values if len(values) == 3 else (1, *values)
    at = len(rest) - 2  # the heads entry
    y = v.new(0, heads, 1, c + at, prefix + values)
    split = HeadSplit(x, y, segments, per_head)
    v.record(split)
    if rest[at][0] != -1:
        v.record(ReshapeTarget(rest[at][1], rest[at][2], rest[at][3], y))
    k = v.const(x)[split.layout(np.arange(heads))].reshape(segments, heads, per_head)
    k = np.moveaxis(k, 1, 0).reshape(heads, -1)
    v.set_const(y, np.where(np.all(k == k[:, :1], axis=1), k[:, 0], NAN))
    return True


@register
class Concat(Rule):
    ops = ("Concat",)

    def analyze(self, v: NodeView) -> None:
        ins = [v.x(i) for i in range(len(v.node.inputs))]
        if any(ct is None for ct in ins):
            raise Refuse(f"{v.where}: an input is not a channel tensor")
        first = ins[0]
        if any(ct.rank != first.rank or ct.stride != first.stride for ct in ins):
            raise Refuse(f"{v.where}: inputs with different layouts")
        axis = int(v.attrs.get("axis", 0)) % first.rank
        shape = v.shape(v.out(0))  # (what shape inference did not say: the inputs' shape, as concatenated)
        if shape is None:
            shape = [None if i == axis else d for i, d in enumerate(first.shape)]
        if all(ct.axis == axis for ct in ins):
            y = v.new(0, sum(ct.size for ct in ins), first.stride, axis, shape)
            bounds, offset = [], 0
            for ct in ins:
                v.tie(ct, y, 0, offset, ct.units)
                bounds.append(offset)
                offset += ct.units
            v.record(ConcatRecord(y, bounds))
            v.set_const(y, np.concatenate([v.const(ct) for ct in ins]))
            return
        if axis == 0 or any(ct.axis != first.axis or ct.units != first.units for ct in ins):
            raise Refuse(f"{v.where}: inputs do not share a channel axis")
        y = v.new(0, first.size, first.stride, first.axis, shape)  # concatenated along another axis
        for ct in ins:
            v.tie(ct, y)
        ks = np.array([v.const(ct) for ct in ins])
        v.set_const(y, np.where(np.all(ks == ks[:1], axis=0), ks[0], NAN))


@register
class Split(Rule):
    ops = ("Split",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        axis = int(v.attrs.get("axis", 0)) % x.rank
        outs = v.node.outputs
        if axis != x.axis:  # (any other axis, the batch too: every piece holds every channel)
            for i in range(len(outs)):
                y = v.new(i, x.size, x.stride, x.axis)
                v.tie(x, y)
                v.set_const(y, v.const(x).copy())
            return
        split = v.need_value(1, "split")
        if split is None and v.attrs.get("split") is not None:
            split = np.array(v.attrs["split"])
        if split is None and v.attrs.get("num_outputs") is not None:
            n = int(v.attrs["num_outputs"])
            chunk = -(-x.size // n)
            sizes = [chunk] * (n - 1) + [x.size - chunk * (n - 1)]
        elif split is None:
            shapes = [v.shape(o) for o in outs]
            if any(s is None or len(s) != x.rank or not isinstance(s[axis], int) for s in shapes):
                raise Refuse(f"{v.where}: split sizes unknown")
            sizes = [s[axis] for s in shapes]
        else:
            sizes = [int(s) for s in split.reshape(-1)]
        if len(sizes) != len(outs) or any(s <= 0 or s % x.stride for s in sizes) or sum(sizes) != x.size:
            raise Refuse(f"{v.where}: split sizes {sizes} unknown or cut through a unit")
        bounds, offset = [], 0
        for i, s in enumerate(sizes):
            shape = v.shape(outs[i])
            shape = list(shape) if shape and len(shape) == x.rank else list(x.shape)
            y = v.new(i, s, x.stride, x.axis, shape)
            v.tie(x, y, offset, 0, y.units)
            v.set_const(y, v.const(x)[offset:offset + y.units].copy())
            bounds.append(offset)
            offset += y.units
        v.record(SplitRecord(x, bounds, node=v.node, opset=v.opset))


@register
class Slice(Rule):
    ops = ("Slice",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        starts, ends = v.need_value(1, "starts"), v.need_value(2, "ends")
        axes, steps = v.need_value(3, "axes"), v.need_value(4, "steps")
        if starts is None or ends is None:
            raise Refuse(f"{v.where}: starts/ends missing")
        starts, ends = starts.reshape(-1), ends.reshape(-1)
        axes = list(range(len(starts))) if axes is None else [int(a) % x.rank for a in axes.reshape(-1)]
        steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps.reshape(-1)
        if x.axis not in axes:
            pass_through(v, lambda k: k)
            return
        i = axes.index(x.axis)
        if int(steps[i]) != 1 or x.stride != 1:
            raise Refuse(f"{v.where}: channel slice with step != 1")
        start, stop, _ = slice(int(starts[i]), int(ends[i])).indices(x.size)
        if stop <= start:
            raise Refuse(f"{v.where}: empty channel slice")
        shape = list(v.shape(v.out(0)) or x.shape)
        y = v.new(0, stop - start, 1, x.axis, shape)
        v.tie(x, y, start, 0, y.units)
        v.set_const(y, v.const(x)[start:stop].copy())
        outside = np.ones(x.units, dtype=bool)
        outside[start:stop] = False
        v.ignore(x, outside)
        v.record(SliceRecord(x, [0, start, stop], node=v.node, position=i))


@register
class Gather(Rule):
    """Gather with constant 1-D indices: on the channel axis a selection or permutation of channels
    (what Regroup inserts, and channel shuffles written as a Gather), elsewhere channels pass through."""

    ops = ("Gather",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        indices = v.need_value(1, "indices")
        if indices is None or indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise Refuse(f"{v.where}: indices are not a constant 1-D integer list")
        axis = int(v.attrs.get("axis", 0)) % x.rank
        if axis != x.axis:
            pass_through(v, lambda k: k)
            return
        if x.stride != 1:
            raise Refuse(f"{v.where}: gathers single features of flattened channels")
        if len(indices) == 0 or indices.min() < -x.size or indices.max() >= x.size:
            raise Refuse(f"{v.where}: indices out of range or empty")
        indices = np.where(indices < 0, indices + x.size, indices).astype(np.int64)
        shape = list(v.shape(v.out(0)) or x.shape)
        shape[x.axis] = len(indices)
        y = v.new(0, len(indices), 1, x.axis, shape)
        for j, i in enumerate(indices):
            v.tie(x, y, int(i), j, 1)
        v.set_const(y, v.const(x)[indices].copy())
        unread = ~np.isin(np.arange(x.units), indices)
        if unread.any():
            v.ignore(x, unread)
        v.record(GatherRecord(v.node, x, y, indices))


@register
class Shape(Rule):
    """``Shape(x)`` is harmless if the dims read from it are not the channel axis (x.view(x.size(0), -1))."""

    ops = ("Shape",)

    def analyze(self, v: NodeView) -> None:
        x = v.x(0)
        r = x.rank
        start = int(v.attrs.get("start", 0))
        end = v.attrs.get("end")
        start = min(max(start + r if start < 0 else start, 0), r)
        end = r if end is None else min(max(int(end) + r if int(end) < 0 else int(end), 0), r)
        dims = list(range(start, end))
        v.read(x)
        if x.axis not in dims:
            return
        out = v.out(0)
        if out in v.cg.graph.outputs:
            v.block(x, f"{v.where} reads the channel count")
            return
        for consumer in out.outputs:
            if op_of(consumer) == "Reshape" and _group_norm_all(consumer, v) is x:
                continue  # restores x's shape after a GroupNorm over all channels: x is pinned, its count stays
            if op_of(consumer) == "Slice" and _shape_prefix(consumer.outputs[0], v.node.inputs[0]) == 2 \
                    and _reshape_prefix_only(consumer.outputs[0], v.node.inputs[0]):
                continue  # x.flatten(2): the Reshape of x reads x's own channel count (its rule checks the rest)
            read = _dims_read(consumer, dims)
            if read is None or x.axis in read:
                v.block(x, f"{v.where} reads the channel count")
                return


def _dims_read(consumer: gs.Node, dims: list[int]) -> set[int] | None:
    """Which entries of a shape vector ``consumer`` reads (Gather or Slice with constants), or None."""
    n = len(dims)
    if op_of(consumer) == "Gather" and int(consumer.attrs.get("axis", 0)) == 0 and len(consumer.inputs) > 1:
        idx = const_value(consumer.inputs[1])
        if idx is None:
            return None
        return {dims[int(i) % n] for i in np.atleast_1d(idx).reshape(-1)} if n else set()
    if op_of(consumer) == "Slice" and len(consumer.inputs) >= 3:
        starts, ends = const_value(consumer.inputs[1]), const_value(consumer.inputs[2])
        steps = const_value(consumer.inputs[4]) if len(consumer.inputs) > 4 and consumer.inputs[4].name else None
        if starts is None or ends is None or starts.size != 1 or (steps is not None and int(steps.reshape(-1)[0]) != 1):
            return None
        lo, hi, _ = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])).indices(n)
        return set(dims[lo:hi])
    return None
