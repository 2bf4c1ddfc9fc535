"""Import an ONNX model into onnx-graphsurgeon with inferred shapes, and export it back."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ltc.passes.onnx_io import infer_shapes


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
    for node in graph.nodes:  # graphsurgeon's export names Constant nodes' tensors in place: use copies
        value = node.attrs.get("value") if node.op == "Constant" else None
        lazy = getattr(value, "_values", None)
        if hasattr(lazy, "tensor"):
            copy = onnx.TensorProto()
            copy.CopyFrom(lazy.tensor)
            lazy.tensor = copy
    graph.toposort()
    return graph


def export_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` keeping ``like``'s IR version, opsets and metadata; drop stale value_info."""
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.doc_string = like.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    model.functions.extend(f for f in like.functions if f not in model.functions)
    return model
