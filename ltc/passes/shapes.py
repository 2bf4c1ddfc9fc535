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
    from ltc.passes.onnx_io import infer_shapes

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
