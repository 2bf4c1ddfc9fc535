"""Import an ONNX model into onnx-graphsurgeon with inferred shapes, and export it back.

Export reuses the input's own NodeProto of every node a pass left as it was (same op, name, domain,
input and output names, attributes), and the input's TensorProto of every untouched initializer:
a compress then pays per-node Python only for the nodes it rewrote, and untouched nodes keep the
fields graphsurgeon does not carry (doc strings, metadata).
"""

from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, constant_to_onnx_tensor
from onnx_graphsurgeon.ir.tensor import LazyValues

from ltc.onnx_io import infer_shapes

_PLAIN = (int, float, str, bytes)
_SMALL = 64


def _frozen_attrs(attrs: dict) -> tuple | None:
    """``attrs`` as a comparable value, or None when an attribute is not a plain value (a subgraph, a
    reference, a tensor of more than ``_SMALL`` values): such nodes are always exported afresh. A
    small tensor attribute (a Constant's scalar ``value``) compares by its type, shape and bytes."""
    out = []
    for key, value in attrs.items():
        if isinstance(value, gs.Constant):
            if math.prod(value.shape) > _SMALL:
                return None
            array = value.values
            value = ("tensor", value.name, array.dtype.str, array.shape, array.tobytes())
        elif isinstance(value, list | tuple):
            if not all(isinstance(v, _PLAIN) for v in value):
                return None
            value = (type(value).__name__, *value)
        elif not isinstance(value, _PLAIN):
            return None
        out.append((key, value))
    return tuple(out)


def _signature(node: gs.Node) -> tuple:
    return (node.op, node.domain or "", node.name, tuple(t.name for t in node.inputs),
            tuple(t.name for t in node.outputs), _frozen_attrs(node.attrs))


def _is_sorted(graph: gs.Graph) -> bool:
    """Every node reads only graph inputs, constants and outputs of nodes before it (no subgraphs)."""
    produced = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return False
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.inputs and id(t) not in produced:
                return False
        produced.update(id(t) for t in node.outputs)
    return True


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """A graphsurgeon graph of ``model`` whose variables carry inferred shapes (``model`` unchanged)."""
    inferred = infer_shapes(model)
    saved = list(model.graph.value_info)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    try:
        graph = gs.import_onnx(model)
    finally:
        del model.graph.value_info[:]
        model.graph.value_info.extend(saved)
    inferred_out = {o.name: o for o in inferred.graph.output}
    for var in graph.outputs:  # outputs declared without a shape: take the inferred one
        vi = inferred_out.get(var.name)
        if var.shape is None and vi is not None and vi.type.tensor_type.HasField("shape"):
            var.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in vi.type.tensor_type.shape.dim]
    for node in graph.nodes:  # graphsurgeon's export names tensor attributes in place (Constant's and
        for value in node.attrs.values():  # ConstantOfShape's value, any op's): give it copies
            lazy = getattr(value, "_values", None) if isinstance(value, gs.Constant) else None
            if isinstance(lazy, LazyValues) and isinstance(lazy.tensor, onnx.TensorProto):
                copy = onnx.TensorProto()
                copy.CopyFrom(lazy.tensor)
                lazy.tensor = copy
    # what each node was on import, for export to reuse the protos of those unchanged
    origin = {}
    if len(graph.nodes) == len(model.graph.node):
        for node, proto in zip(graph.nodes, model.graph.node, strict=True):
            if node.op == proto.op_type:
                origin[id(node)] = (node, proto, _signature(node))
    graph._ltc_origin = origin
    if not _is_sorted(graph):
        graph.toposort()
    return graph


def _node_proto(node: gs.Node, origin: dict) -> onnx.NodeProto:
    """The input's proto of ``node`` if the node is unchanged; else a copy of it with the new name,
    tensor names and attributes (keeping its doc string and metadata); a new node is exported afresh."""
    entry = origin.get(id(node))
    sig = _signature(node)
    if entry is None or entry[0] is not node or sig[:2] != entry[2][:2]:
        return OnnxExporter.export_node(node)
    old = entry[2]
    if sig == old and sig[5] is not None:
        return entry[1]
    proto = onnx.NodeProto()
    proto.CopyFrom(entry[1])
    proto.name = node.name or ""
    if sig[3:5] != old[3:5]:
        del proto.input[:], proto.output[:]
        proto.input.extend(sig[3])
        proto.output.extend(sig[4])
    if sig[5] is None or sig[5] != old[5]:
        del proto.attribute[:]
        proto.attribute.extend(_attributes(node.attrs))
    return proto


def _attributes(attrs: dict) -> list[onnx.AttributeProto]:
    """``attrs`` as AttributeProtos: ints, floats, strings and their lists directly (onnx.helper's
    ``make_attribute`` pays abstract-class checks per value), anything else through graphsurgeon."""
    out = []
    for key, value in attrs.items():
        a = onnx.AttributeProto(name=key)
        if isinstance(value, bool | int):
            a.type, a.i = onnx.AttributeProto.INT, int(value)
        elif isinstance(value, float):
            a.type, a.f = onnx.AttributeProto.FLOAT, value
        elif isinstance(value, list | tuple) and value and all(type(v) is int for v in value):
            a.type = onnx.AttributeProto.INTS
            a.ints.extend(value)
        elif isinstance(value, list | tuple) and value and all(type(v) is float for v in value):
            a.type = onnx.AttributeProto.FLOATS
            a.floats.extend(value)
        else:
            a = OnnxExporter.export_attributes({key: value})[0]
        out.append(a)
    return out


def _tensor_proto(t: gs.Constant) -> onnx.TensorProto:
    values = t._values
    if isinstance(values, LazyValues):
        if values.tensor.name == t.name:
            return values.tensor
        proto = onnx.TensorProto()  # renamed: never rename the input's proto in place
        proto.CopyFrom(values.tensor)
        proto.name = t.name
        return proto
    proto = constant_to_onnx_tensor(t)
    if t.data_location is not None:
        proto.data_location = t.data_location
    return proto


def export_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` keeping ``like``'s IR version, opsets, functions and metadata; no value_info
    (shapes are re-inferred by whoever needs them)."""
    origin = getattr(graph, "_ltc_origin", {})
    model = onnx.ModelProto()
    model.ir_version = like.ir_version
    model.opset_import.extend(like.opset_import)
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.domain = like.domain
    model.model_version = like.model_version
    model.doc_string = like.doc_string
    model.metadata_props.extend(like.metadata_props)
    model.functions.extend(like.functions)
    g = model.graph
    g.name = graph.name or like.graph.name
    g.doc_string = like.graph.doc_string
    g.node.extend([_node_proto(n, origin) for n in graph.nodes])
    g.input.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs])
    g.output.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs])
    g.initializer.extend([_tensor_proto(t) for t in graph.tensors().values() if isinstance(t, gs.Constant)])
    return model
