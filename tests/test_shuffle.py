"""Channel shuffles (Reshape -> Transpose -> Reshape) become one channel Gather the rules follow, so
dead channels on either side of a shuffle are removed, exactly; look-alikes that are not a pure
channel permutation stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from ltc.passes import compress
from ltc.passes.shuffle import ShuffleToGather, shuffle_indices
from tests.helpers import conv_weight, make_model, node, run
from tests.random_graphs import RandomGraph


def _shuffle_model(c: int, g: int, computed: bool, dead: list[int], opset: int = 17, perm=(0, 2, 1, 3, 4)):
    h = w = 4
    nodes = [node("Conv", ["x", "w1"], ["a"]), node("Relu", ["a"], ["r"])]
    inits = {"w1": conv_weight(c, 3, k=1, dead=dead), "w2": conv_weight(5, c, k=1)}
    if computed:  # as torch's exporters write it with a dynamic batch: targets from Shape(x)
        nodes += [node("Shape", ["r"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"], name="g0", axis=0),
                  helper.make_node("Concat", ["n", "t1tail"], ["t1"], name="c1", axis=0),
                  helper.make_node("Concat", ["n", "t2tail"], ["t2"], name="c2", axis=0)]
        inits |= {"i0": np.array([0], np.int64), "t1tail": np.array([g, c // g, h, w], np.int64),
                  "t2tail": np.array([c, h, w], np.int64)}
    else:
        inits |= {"t1": np.array([0, g, c // g, h, w], np.int64), "t2": np.array([0, c, h, w], np.int64)}
    nodes += [node("Reshape", ["r", "t1"], ["v"]), helper.make_node("Transpose", ["v"], ["t"], name="tr", perm=list(perm)),
              node("Reshape", ["t", "t2"], ["u"]), node("Conv", ["u", "w2"], ["y"])]
    return make_model(nodes, {"x": ["N", 3, h, w]}, ["y"], inits, opset)


def test_wrong_factors_or_a_batch_from_elsewhere_are_not_shuffles():
    """A first target whose factors do not multiply to C, or whose batch entry is another tensor's
    dimension, is not recognised (the element count would not pin the permutation)."""
    model = _shuffle_model(12, 3, True, [1])
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    for t in bad.graph.initializer:
        if t.name == "t1tail":
            t.CopyFrom(onnx.numpy_helper.from_array(np.array([2, 6, 4, 4], np.int64), "t1tail"))
    assert ShuffleToGather()(bad).modified  # 2 x 6 is a shuffle too
    for t in bad.graph.initializer:
        if t.name == "t1tail":
            t.CopyFrom(onnx.numpy_helper.from_array(np.array([3, 3, 4, 4], np.int64), "t1tail"))
    assert not ShuffleToGather()(bad).modified  # 3 x 3 != 12 (and the model is invalid anyway)
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for n in other.graph.node:
        if n.op_type == "Shape":
            n.input[0] = "x"  # the batch of the graph input: same value, but not the reshaped tensor
    assert not ShuffleToGather()(other).modified


def test_shuffle_indices_match_numpy():
    for g, per in ((2, 3), (3, 4), (4, 2)):
        x = np.arange(g * per)
        want = x.reshape(g, per).T.reshape(-1)
        assert shuffle_indices(g, per).tolist() == want.tolist()


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("computed", [False, True])
@pytest.mark.parametrize("c,g", [(12, 2), (12, 3), (12, 4), (8, 2)])
def test_dead_channels_go_through_a_shuffle(c, g, computed, opset):
    rng = np.random.default_rng(c * 10 + g)
    dead = sorted(rng.choice(c, c // 2, replace=False).tolist())
    model = _shuffle_model(c, g, computed, dead, opset)
    r = compress(model)
    w1 = next(t for t in r.model.graph.initializer if t.name.startswith("w1"))
    assert tuple(w1.dims)[0] == c - len(dead)
    ops = [n.op_type for n in r.model.graph.node]
    assert "Transpose" not in ops and "Gather" in ops and "Shape" not in ops
    feeds = {"x": rng.standard_normal((3, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(r.model, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(r.model)


@pytest.mark.parametrize("perm", [(0, 1, 2, 3, 4), (0, 2, 1, 4, 3), (0, 3, 2, 1, 4)])
def test_look_alikes_that_are_not_a_channel_permutation_stay(perm):
    model = _shuffle_model(12, 3, False, [1, 2], perm=perm)  # (0, 2, 1, 4, 3) also swaps H and W
    assert not ShuffleToGather()(model).modified
    r = compress(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(r.model, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_random_graphs_with_shuffles_compress_exactly_without_transposes_left():
    seen = 0
    for seed in range(400):
        g = RandomGraph(seed)
        model = g.model()
        if sum(n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 1, 3, 4] for n in model.graph.node) == 0:
            continue
        seen += 1
        r = compress(model, g.masks or None)
        if r.model is not r.reference:
            assert not any(n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 1, 3, 4]  # (attention
                           for n in r.model.graph.node), seed  # blocks keep their own rank-5 [2, 0, 3, 1, 4])
    assert seen >= 20
