"""Parameters and multiply-accumulates of an ONNX model, per layer and in total (per sample)."""

from __future__ import annotations

import math

import onnx

from ltc.passes.onnx_io import infer_shapes

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


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs per sample for each Conv, ConvTranspose, Gemm and MatMul node, keyed by node name or output."""
    inferred = infer_shapes(model)
    shapes = {vi.name: _dims(vi) for vi in [*inferred.graph.value_info, *inferred.graph.input,
                                            *inferred.graph.output]}
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    macs: dict[str, int] = {}
    for node in model.graph.node:
        key = node.name or node.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out = shapes.get(node.output[0]) if node.output else None
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if out is None or w is None or any(d is None for d in (out[1:] if out else [None])):
            continue
        if node.op_type == "Conv":
            macs[key] = math.prod(out[1:]) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0])
            if x and all(d is not None for d in x[1:]):
                macs[key] = math.prod(x[1:]) * math.prod(w[1:])
        elif node.op_type == "Gemm":
            k = w[1] if attrs.get("transB", 0) else w[0]
            macs[key] = math.prod(out[1:]) * k
        elif node.op_type == "MatMul" and len(w) == 2:
            macs[key] = math.prod(out[1:]) * w[0]
    return macs


def model_stats(model: onnx.ModelProto) -> dict:
    macs = layer_macs(model)
    return {"parameters": count_parameters(model), "macs": sum(macs.values()), "layer_macs": macs}
