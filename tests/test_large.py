"""Models over 2 GB (protobuf's limit for one file): external data in, external data out. Slow."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ltc.api import compress_file
from ltc.onnx_io import TWO_GB

HIDDEN = 2**18  # each first-layer weight: 262144 x 1024 float32 = 1.07 GB; two of them: 2.15 GB


def _branch(tag: str, rng: np.random.Generator) -> tuple[list, list]:
    w1 = rng.standard_normal((HIDDEN, 1024), dtype=np.float32)
    w1[1::2] = 0  # every other neuron dead
    b1 = rng.uniform(0.1, 1.0, HIDDEN).astype(np.float32)  # dead neurons output relu(b1) > 0: folded
    w2 = rng.standard_normal((4, HIDDEN), dtype=np.float32) * 1e-3
    nodes = [helper.make_node("Gemm", ["x", f"w1{tag}", f"b1{tag}"], [f"h{tag}"], transB=1),
             helper.make_node("Relu", [f"h{tag}"], [f"r{tag}"]),
             helper.make_node("Gemm", [f"r{tag}", f"w2{tag}"], [f"y{tag}"], transB=1)]
    return nodes, [numpy_helper.from_array(a, n) for n, a in ((f"w1{tag}", w1), (f"b1{tag}", b1), (f"w2{tag}", w2))]


@pytest.mark.slow
def test_model_over_2gb_with_external_data(tmp_path):
    rng = np.random.default_rng(0)
    na, ia = _branch("a", rng)
    nb, ib = _branch("b", rng)
    graph = helper.make_graph(
        [*na, *nb, helper.make_node("Add", ["ya", "yb"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [*ia, *ib])
    del ia, ib
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, tmp_path / "big.onnx", save_as_external_data=True, location="big.onnx.data")
    del model, graph
    assert (tmp_path / "big.onnx.data").stat().st_size > TWO_GB
    doc = compress_file(tmp_path / "big.onnx", tmp_path / "small.onnx", round_to=1)
    assert doc["verification"]["passed"]
    # half the neurons go (their rows, biases and columns); each second Gemm gains a bias [4] to fold into
    assert doc["after"]["parameters"] == doc["before"]["parameters"] - 2 * (HIDDEN // 2) * (1024 + 1 + 4) + 2 * 4
    assert (tmp_path / "small.onnx.data").exists()  # stored as the input was
    out = onnx.load(tmp_path / "small.onnx")
    assert [tuple(t.dims) for t in out.graph.initializer if t.name.startswith("w1")] == [(HIDDEN // 2, 1024)] * 2
