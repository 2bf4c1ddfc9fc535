"""Small helpers for the passes that edit the graph before the analysis (FoldConstants,
ShuffleToGather): small constants, inferred dimensions, the dimensions a ``Shape`` node returns,
and dropping what an edit left unread."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper


def small_constants(g: onnx.GraphProto, limit: int) -> dict[str, np.ndarray]:
    """Values of the initializers and Constant-node outputs of at most ``limit`` elements."""
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer if math.prod(t.dims) <= limit}
    for n in g.node:
        value = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if n.op_type == "Constant" and value is not None and math.prod(value.dims) <= limit:
            out[n.output[0]] = numpy_helper.to_array(value)
    return out


def inferred_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Per tensor with an inferred shape: each dimension as an int, its symbol, or None."""
    from ltc.onnx_io import infer_shapes

    inferred = infer_shapes(model).graph
    dims: dict[str, list] = {}
    for vi in (*inferred.value_info, *inferred.input, *inferred.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return dims


def shape_range(n: onnx.NodeProto, rank: int) -> range:
    """The dimensions ``Shape`` node ``n`` returns of a rank-``rank`` input (``start``/``end``)."""
    attrs = {a.name: a.i for a in n.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return range(start, end)


def drop_unread(g: onnx.GraphProto, gone: set[str]) -> None:
    """After nodes were removed from ``g`` (a copy the pass owns): drop the initializers nothing reads
    any more and the value_info of the ``gone`` tensors."""
    read = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep)
    infos = [vi for vi in g.value_info if vi.name not in gone]
    del g.value_info[:]
    g.value_info.extend(infos)


def attr_int(n: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in n.attribute if a.name == name), default)


class ShapeValues:
    """The entries of a shape vector the graph computes: an int, ``("dim", tensor, axis)`` for a
    dimension inference leaves symbolic, from constants and Shape/Gather/Slice/Unsqueeze/Squeeze/
    Concat/Cast and integer arithmetic with constants (the exporters' ``x.size(i)`` chains)."""

    def __init__(self, g: onnx.GraphProto, shapes: dict):
        self.producer = {o: n for n in g.node for o in n.output}
        self.shapes = shapes
        self.consts = small_constants(g, 16)
        self.memo: dict[str, list | None] = {}

    def entries(self, name: str) -> list | None:
        if name not in self.memo:
            self.memo[name] = None  # (cycles cannot occur in a valid graph; this guards a broken one)
            self.memo[name] = self._entries(name)
        return self.memo[name]

    def _int_const(self, name: str) -> list[int] | None:
        v = self.consts.get(name)
        if v is None or not np.issubdtype(v.dtype, np.integer):
            return None
        return [int(e) for e in np.ravel(v)]

    def _entries(self, name: str) -> list | None:
        const = self._int_const(name)
        if const is not None:
            return const
        n = self.producer.get(name)
        if n is None or n.domain not in ("", "ai.onnx"):
            return None
        op, ins = n.op_type, list(n.input)
        if op == "Shape":
            d = self.shapes.get(ins[0])
            if d is None:
                return None
            return [d[k] if isinstance(d[k], int) and d[k] > 0 else ("dim", ins[0], k) for k in shape_range(n, len(d))]
        if op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
            return self.entries(ins[0])
        if op == "Concat":
            parts = [self.entries(x) for x in ins]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and attr_int(n, "axis", 0) == 0:
            v, idx = self.entries(ins[0]), self._int_const(ins[1])
            if v is None or idx is None or any(not -len(v) <= k < len(v) for k in idx):
                return None
            return [v[k] for k in idx]
        if op == "Slice" and len(ins) >= 3:
            v, starts, ends = self.entries(ins[0]), self._int_const(ins[1]), self._int_const(ins[2])
            steps = self._int_const(ins[4]) if len(ins) > 4 and ins[4] else [1]
            if v is None or starts is None or ends is None or steps is None or len(starts) != 1 or steps[0] == 0:
                return None
            return v[slice(starts[0], min(ends[0], len(v)) if steps[0] > 0 else ends[0], steps[0])]
        if op in ("Div", "Mul", "Add", "Sub") and len(ins) == 2:
            p, q = self.entries(ins[0]), self.entries(ins[1])
            if p is None or q is None or not all(isinstance(e, int) for e in p + q):
                return None
            if len(p) != len(q):
                if len(p) == 1:
                    p = p * len(q)
                elif len(q) == 1:
                    q = q * len(p)
                else:
                    return None
            if op == "Div" and any(e == 0 for e in q):
                return None
            f = {"Div": lambda u, w: int(u / w), "Mul": lambda u, w: u * w, "Add": lambda u, w: u + w,
                 "Sub": lambda u, w: u - w}[op]
            return [f(u, w) for u, w in zip(p, q, strict=True)]
        return None
