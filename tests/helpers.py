"""Small hand-built ONNX graphs and an independent equivalence check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=f"{op}_{outputs[0]}", **attrs)


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, list], outputs: list[str],
               inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_weight(cout: int, cin: int, k: int = 3, dead: list[int] = (), dead_in: list[int] = ()) -> np.ndarray:
    w = RNG.standard_normal((cout, cin, k, k)).astype(np.float32)
    w[list(dead)] = 0
    w[:, list(dead_in)] = 0
    return w


def vec(n: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, n).astype(np.float32)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """ONNX Runtime with all graph optimisations on (unlike ltc's own verifier), or with none."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_equivalent(a: onnx.ModelProto, b: onnx.ModelProto, shapes: dict[str, tuple], batch_sizes=(1, 3),
                      rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for batch in batch_sizes:
        feeds = {n: RNG.standard_normal((batch, *s[1:]) if s[0] in (None, "N") else s).astype(np.float32)
                 for n, s in shapes.items()}
        for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
            np.testing.assert_allclose(y, x, rtol=rtol, atol=atol)


def init_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    for t in model.graph.initializer:
        if t.name == name:
            return tuple(t.dims)
    raise KeyError(name)


def weight_shapes(model: onnx.ModelProto, op: str) -> list[tuple[int, ...]]:
    """Shapes of input 1 (the weight) of every ``op`` node, in graph order."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op]
