"""Attention heads (issue 10): q/k/v projections cut into heads, per-head batched MatMuls, heads merged
into an output projection. A head goes, exactly, when it is provably dead: its q, k and v rows and
biases all zero (its scores are 0, its softmax uniform, its output 0), its v rows alone zero when
v has its own projection, or the output projection's columns for it zero. Heads move together
under a permutation, in every segment of a fused q/k/v projection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ltc.passes import compress
from ltc.passes.channels import ChannelGraph
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.pipeline import normalize
from ltc.passes.reindex import apply_reindex, permutation_plan
from ltc.passes.stats import count_parameters
from tests.helpers import run
from tests.rule_graphs import HEADS, PER_HEAD, X, rule_model

VARIANTS = ["attention-fused-split", "attention-fused-slice", "attention-separate", "attention-dynamo"]
C = HEADS * PER_HEAD


def _edit(model: onnx.ModelProto, name: str, fn) -> None:
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t).copy()), name))


def _kill(model: onnx.ModelProto, variant: str, head: int, parts: str = "qkv") -> None:
    """Zero head ``head``'s weight columns and bias entries in the projections named by ``parts``."""
    cols = np.arange(head * PER_HEAD, (head + 1) * PER_HEAD)

    def zero(cols_):
        def fn(a):
            a[..., cols_] = 0
            return a
        return fn

    if variant != "attention-separate":  # one fused q/k/v projection
        every = np.concatenate([s * C + cols for s, p in enumerate("qkv") if p in parts])
        _edit(model, "wqkv", zero(every))
        _edit(model, "bqkv", zero(every))
    else:
        for p in parts:
            name = "kt" if p == "k" else p
            _edit(model, f"w{name}", zero(cols))
            _edit(model, f"b{name}", zero(cols))


def _kill_proj(model: onnx.ModelProto, head: int) -> None:
    def fn(a):
        a[head * PER_HEAD:(head + 1) * PER_HEAD] = 0
        return a
    _edit(model, "wp", fn)


def _same(a, b, seed: int = 0) -> None:
    feeds = {"x": np.random.default_rng(seed).standard_normal((3, *X["x"][1:])).astype(np.float32)}
    for optimize in (False, True):
        for ra, rb in zip(run(a, feeds, optimize), run(b, feeds, optimize), strict=True):
            np.testing.assert_allclose(rb, ra, rtol=0, atol=1e-5 + 1e-5 * float(np.abs(ra).max()))


def _heads_left(model: onnx.ModelProto) -> int:
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("wp"))
    assert w.shape[0] % PER_HEAD == 0
    return w.shape[0] // PER_HEAD


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_permutation_of_heads_leaves_the_output_unchanged(variant):
    model = normalize(rule_model(variant))  # (what compress analyses: dynamo's flattened k^T as one Transpose)
    for seed in range(3):
        cg = ChannelGraph(import_graph(model))
        plan = permutation_plan(cg, np.random.default_rng(seed))
        merged = plan.get("m")  # the heads merged back into features, one unit per head
        assert merged is not None and not np.array_equal(merged, np.arange(HEADS)), (variant, seed)
        apply_reindex(cg, plan)
        _same(model, export_graph(cg.graph, model), seed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_head_dead_in_q_k_and_v_and_one_dead_in_the_output_projection_go(variant):
    model = rule_model(variant)
    _kill(model, variant, 2)
    _kill_proj(model, 0)
    r = compress(model)
    assert r.verification.passed
    _same(r.reference, r.model)
    assert _heads_left(r.model) == HEADS - 2
    assert count_parameters(r.model) < count_parameters(model)


def test_a_head_with_only_its_v_projection_dead_goes_when_v_has_its_own_projection():
    model = rule_model("attention-separate")
    _kill(model, "attention-separate", 1, parts="v")
    r = compress(model)
    _same(r.reference, r.model)
    assert _heads_left(r.model) == HEADS - 1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(8))
def test_random_dead_heads_and_partial_heads(variant, seed):
    """Whole heads dead (in every projection, or in the output projection) go; heads with only some
    of their rows dead (a live q, k or v row left) stay; the result is always exact."""
    rng = np.random.default_rng(seed)
    model = rule_model(variant)
    fate = rng.choice(["live", "dead", "proj", "partial"], HEADS)
    for h, f in enumerate(fate):
        if f == "dead":
            _kill(model, variant, h)
        elif f == "proj":
            _kill_proj(model, h)
        elif f == "partial":  # q and k dead, v live: the head outputs the mean of v, not 0
            _kill(model, variant, h, parts="qk")
    r = compress(model)
    assert r.verification.passed
    _same(r.reference, r.model, seed)
    gone = int(np.isin(fate, ["dead", "proj"]).sum())
    assert _heads_left(r.model) == max(HEADS - gone, 1), fate
    assert count_parameters(r.model) <= count_parameters(model)


def test_dynamos_flattened_transpose_of_k_becomes_one_transpose():
    """``Reshape(k, [-1, n, d]) -> Transpose -> Reshape(Shape(k) pieces)`` is rewritten as one Transpose
    of k's last two axes (its flattened axis mixes heads with the batch, which no rule follows)."""
    model = rule_model("attention-dynamo")
    nodes = normalize(model).graph.node
    assert "Shape" not in [n.op_type for n in nodes]
    readers = [n for n in nodes if "k" in n.input]
    assert [(n.op_type, list(n.attribute[0].ints)) for n in readers] == [("Transpose", [0, 1, 3, 2])]
    assert readers[0].output[0] == "kt"
    cg = ChannelGraph(import_graph(normalize(model)))
    assert not cg.frozen.any() or all("graph" in r for r in cg.frozen_reason.values()), cg.frozen_reason
