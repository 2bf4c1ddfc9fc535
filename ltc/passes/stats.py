"""Parameters and multiply-accumulates of an ONNX model, per layer and in total (per sample)."""

from __future__ import annotations

import math

import onnx

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of the floating-point constants that ops read (weights, biases, BN statistics).

    A constant read by several ops counts once per op, and Identity/Constant nodes are looked
    through: exporters deduplicate equal tensors (the legacy exporter shares equal biases through
    Identity), and counting per use makes the figure independent of that.
    """
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
                    sizes[node.output[0]] = math.prod(a.t.dims)
    for node in model.graph.node:  # Identity of a constant is that constant
        if node.op_type == "Identity" and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    return sum(sizes.get(i, 0) for node in model.graph.node if node.op_type != "Identity" for i in node.input)


def stored_parameters(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers the file stores (a tensor shared by several ops counts
    once, unlike :func:`count_parameters`)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)


def graph_macs(graph, rules: dict, shape_of) -> dict[str, int]:
    """MACs per sample of every weight layer of a graphsurgeon graph, from each op's rule, with
    ``shape_of(tensor)`` giving shapes (the analysis' own: no second shape inference)."""
    from ltc.passes.rules import rule_for

    macs: dict[str, int] = {}
    for node in graph.nodes:
        rule = rule_for(rules, node)
        if rule is None or not rule.layer or not node.outputs:
            continue
        value = rule.macs(node, shape_of)
        if value is not None:
            macs[node.name or node.outputs[0].name] = int(value)
    return macs


def shapes_of(shapes: dict[str, list | None]):
    """``shape_of`` over a name -> shape table; constants answer with their own shape."""
    import onnx_graphsurgeon as gs

    def shape_of(t):
        if isinstance(t, gs.Constant):
            return list(t.shape)
        return shapes.get(t.name)

    return shape_of


def layer_macs(model: onnx.ModelProto, rules: dict | None = None) -> dict[str, int]:
    """MACs per sample for each weight layer (Conv, ConvTranspose, Gemm, MatMul, and registered
    layers), keyed by node name or output, from the rules' formulas (of ``rules``, default: the
    default table) and inferred shapes."""
    from ltc.passes.channels import ChannelGraph
    from ltc.passes.graph import import_graph

    graph = import_graph(model)
    shapes = {name: list(t.shape) if t.shape is not None else None for name, t in graph.tensors().items()}
    return graph_macs(graph, ChannelGraph.default_rules() if rules is None else rules, shapes_of(shapes))


def model_stats(model: onnx.ModelProto, macs: dict[str, int] | None = None) -> dict:
    """Parameters and MACs of ``model``; ``macs`` per layer when the caller has them already (the
    analysis does), else from shape inference."""
    macs = layer_macs(model) if macs is None else macs
    return {"parameters": count_parameters(model), "macs": sum(macs.values()), "layer_macs": macs}
