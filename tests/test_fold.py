"""FoldConstants: a model whose constants arrive through chains (exports without constant folding)
compresses as the same model with plain initializers does, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ltc.passes import ApplyMasks, FoldConstants, compress
from ltc.passes.stats import count_parameters
from tests.helpers import make_model, node, run
from tests.random_graphs import RandomGraph


def unfold(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """``model`` with each initializer replaced, at random, by a chain that computes it: stored
    transposed + Transpose, split in two + Concat, stored as float64 + Cast, a Constant node +
    Identity, an initializer + Identity (the legacy exporter's dedup), or (1-D int64) one Constant
    scalar per entry + Unsqueeze + Concat. Values are exact."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    chains, keep = [], []
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    for t in g.initializer:
        v = numpy_helper.to_array(t)
        kind = rng.choice(["keep", "transpose", "concat", "cast", "constant", "scalars", "identity"])
        name = t.name
        if kind == "transpose" and v.ndim >= 2:
            perm = rng.permutation(v.ndim)
            keep.append(numpy_helper.from_array(np.ascontiguousarray(v.transpose(perm)), f"{name}__t"))
            chains.append(helper.make_node("Transpose", [f"{name}__t"], [name], perm=np.argsort(perm).tolist()))
        elif kind == "concat" and v.ndim >= 1 and v.shape[0] >= 2:
            cut = int(rng.integers(1, v.shape[0]))
            keep += [numpy_helper.from_array(v[:cut], f"{name}__a"), numpy_helper.from_array(v[cut:], f"{name}__b")]
            chains.append(helper.make_node("Concat", [f"{name}__a", f"{name}__b"], [name], axis=0))
        elif kind == "cast" and v.dtype == np.float32:
            keep.append(numpy_helper.from_array(v.astype(np.float64), f"{name}__d"))
            chains.append(helper.make_node("Cast", [f"{name}__d"], [name], to=TensorProto.FLOAT))
        elif kind == "identity":  # the legacy exporter's dedup of equal tensors: initializer -> Identity
            keep.append(numpy_helper.from_array(v, f"{name}__i"))
            chains.append(helper.make_node("Identity", [f"{name}__i"], [name]))
        elif kind == "constant":
            chains.append(helper.make_node("Constant", [], [f"{name}__c"], value=numpy_helper.from_array(v, "v")))
            chains.append(helper.make_node("Identity", [f"{name}__c"], [name]))
        elif kind == "scalars" and v.ndim == 1 and v.dtype == np.int64 and 0 < v.size <= 6:
            parts = []
            for i, x in enumerate(v):
                chains.append(helper.make_node("Constant", [], [f"{name}__s{i}"],
                                               value=numpy_helper.from_array(np.array(x, np.int64), "v")))
                if opset >= 13:
                    keep.append(numpy_helper.from_array(np.array([0], np.int64), f"{name}__ax{i}"))
                    chains.append(helper.make_node("Unsqueeze", [f"{name}__s{i}", f"{name}__ax{i}"], [f"{name}__u{i}"]))
                parts.append(f"{name}__u{i}")
            chains.append(helper.make_node("Concat", parts, [name], axis=0))
        else:
            keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)
    computed = {o for n in chains for o in n.output}  # (an initializer listed as an input is computed now)
    inputs = [i for i in g.input if i.name not in computed]
    del g.input[:]
    g.input.extend(inputs)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(chains + nodes)
    return out


def _params(model: onnx.ModelProto) -> int:
    """Parameters once chains are folded and Identity reads of initializers resolved (so weights read
    through an Identity count as the layer's)."""
    m = FoldConstants()(model).model
    inits = {t.name for t in m.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = [n for n in out.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in nodes:
        for i, x in enumerate(n.input):
            n.input[i] = alias.get(x, x)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return count_parameters(out)


def _feeds(seed: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("seed", range(60))
def test_an_unfolded_export_compresses_like_the_folded_one(seed):
    g = RandomGraph(seed)
    model = g.model()
    masked = ApplyMasks(g.masks)(model).model if g.masks else model
    chained = unfold(masked, seed)
    plain = compress(masked)
    unfolded = compress(chained)
    assert _params(unfolded.model) == _params(plain.model), seed  # (a model left as it came keeps its chains)
    for a, b in zip(run(masked, _feeds(seed)), run(unfolded.model, _feeds(seed)), strict=True):
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 + 1e-4 * scale, equal_nan=True, err_msg=f"seed {seed}")


@pytest.mark.parametrize("seed", range(20))
def test_folding_alone_is_exact_and_leaves_no_chain(seed):
    g = RandomGraph(seed)
    chained = unfold(g.model(), seed)
    r = FoldConstants()(chained)
    # no chain is left, except a float constant read through Identity (the exporters' dedup; no copy)
    reads = [x for n in r.model.graph.node for x in n.input]
    assert not any(x.endswith(("__t", "__a", "__b", "__d")) or "__u" in x for x in reads), seed
    identities = {n.input[0] for n in r.model.graph.node if n.op_type == "Identity"}
    assert all(o in identities for n in r.model.graph.node if n.op_type == "Constant" for o in n.output), seed
    for a, b in zip(run(chained, _feeds(seed), False), run(r.model, _feeds(seed), False), strict=True):
        scale = float(np.max(np.abs(a))) if a.size else 0.0  # (kernels may differ: a constant weight is prepacked)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 + 1e-5 * scale, equal_nan=True, err_msg=f"seed {seed}")


def test_a_model_nothing_removes_is_written_as_it_came_not_folded():
    w = np.ones((4, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0, 2, 3]), node("Conv", ["x", "w"], ["y"])]
    model = make_model(nodes, {"x": ["N", 3, 4, 4]}, ["y"], {"wt": w.transpose(1, 0, 2, 3).copy()})
    r = compress(model)
    assert [n.op_type for n in r.model.graph.node] == ["Transpose", "Conv"]


def test_results_larger_than_what_they_read_stay_computed():
    """ConstantOfShape of a small shape into a big tensor is not stored in the file; the rest folds."""
    big = helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                           value=numpy_helper.from_array(np.array([0.0], np.float32), "v"))
    nodes = [big, node("Add", ["x", "zeros"], ["a"]),
             helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0, 2, 3]), node("Conv", ["a", "w"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 64, 64]}, ["y"],
                       {"shape": np.array([1, 3, 64, 64], np.int64),
                        "wt": np.ones((3, 4, 1, 1), np.float32)})
    r = FoldConstants(max_elements=1 << 20)(model)
    ops = [n.op_type for n in r.model.graph.node]
    assert ops == ["ConstantOfShape", "Add", "Conv"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run(r.model, feeds)[0], run(model, feeds)[0])


def test_large_weights_behind_a_transpose_fold_and_compress():
    """An unfolded export hands a big Linear weight over through a Transpose (ConvNeXt-Tiny's last stage:
    768 x 3072, more than a million values): it folds, so the MatMul is a layer and its dead neurons go."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((1536, 1024)).astype(np.float32)  # [out, in] as torch stores it
    w1[::2] = 0  # every other hidden neuron dead
    w2 = rng.standard_normal((1536, 8)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w1t"], ["w1"], perm=[1, 0]), node("MatMul", ["x", "w1"], ["h"]),
             node("Relu", ["h"], ["r"]), node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, {"x": [1, 4, 1024]}, ["y"], {"w1t": w1, "w2": w2})
    r = compress(model)
    assert r.verification.passed
    shapes = sorted(tuple(t.dims) for t in r.model.graph.initializer)
    assert shapes == [(768, 8), (1024, 768)]


def test_non_deterministic_and_foreign_ops_are_not_folded():
    nodes = [helper.make_node("RandomNormalLike", ["c"], ["r"]), node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, {"x": [1, 4]}, ["y"], {"c": np.zeros((1, 4), np.float32)})
    assert not FoldConstants()(model).modified
