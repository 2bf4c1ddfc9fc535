"""The passes core: a random admissible permutation of every channel class leaves the output
unchanged (for every rule-table op), and removal through every op is exact."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from ltc.errors import InternalError
from ltc.passes import RULES, compress
from ltc.passes.channels import ChannelGraph
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.reindex import apply_reindex, permutation_plan
from ltc.passes.stats import count_parameters
from tests.helpers import run
from tests.rule_graphs import EXTRA, GRAPHS, X, rule_model

OPS = sorted({**GRAPHS, **EXTRA})
# ops that read every channel together (pinned) or turn a zero channel into something no consumer folds
KEEPS_DEAD = {"Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "LayerNormalization", "Log", "Pad",
              "GroupNormalization", "groupnorm-per-channel"}  # (dead 1, 4, 6 fill no whole group)


def _same(a, b, batch: int = 2, seed: int = 0) -> None:
    feeds = {"x": np.random.default_rng(seed).standard_normal((batch, *X["x"][1:])).astype(np.float32)}
    for optimize in (False, True):
        for ra, rb in zip(run(a, feeds, optimize), run(b, feeds, optimize), strict=True):
            scale = float(np.nanmax(np.abs(ra), initial=0.0))  # float32 rounding grows with the output's scale
            np.testing.assert_allclose(rb, ra, rtol=0, atol=1e-5 + 1e-5 * scale, equal_nan=True)


def test_every_rule_has_a_graph_test():
    assert set(RULES) <= set(GRAPHS), sorted(set(RULES) - set(GRAPHS))


@pytest.mark.parametrize("op", OPS)
def test_random_permutation_leaves_the_output_unchanged(op):
    model = rule_model(op)
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    for _ in range(2):
        cg = ChannelGraph(import_graph(model))
        plan = permutation_plan(cg, rng)
        assert "a" in plan, f"{op}: the conv output was not permuted ({cg.frozen_reason})"
        assert apply_reindex(cg, plan)
        permuted = export_graph(cg.graph, model)
        _same(model, permuted)


@pytest.mark.parametrize("zero_bias", [True, False])
@pytest.mark.parametrize("op", OPS)
def test_removal_through_every_op_is_exact(op, zero_bias):
    model = rule_model(op, dead=[1, 4, 6], zero_bias=zero_bias)
    r = compress(model)
    assert r.verification.passed
    _same(r.reference, r.model, batch=3, seed=1)
    assert count_parameters(r.model) <= count_parameters(model)
    first = next(t for t in r.model.graph.initializer if t.name.startswith("w0"))
    if zero_bias and op not in KEEPS_DEAD:
        assert first.dims[0] < 8, f"{op}: no dead channel was removed"


def test_a_plan_that_breaks_a_record_is_refused():
    cg = ChannelGraph(import_graph(rule_model("Slice")))
    plan = {"a": np.array([0, 1, 2, 3, 4, 7, 6, 5])}  # moves channel 7 into the slice [2:7)
    with pytest.raises(InternalError, match="re-index plan refused"):
        apply_reindex(cg, plan)


def test_a_plan_that_moves_a_frozen_channel_is_refused():
    cg = ChannelGraph(import_graph(rule_model("Relu")))
    with pytest.raises(InternalError, match="frozen"):
        apply_reindex(cg, {"x": np.array([1, 0, 2, 3])})


@pytest.mark.parametrize("seed", range(20))
def test_connected_components_match_a_reference_union_find(seed):
    from ltc.passes.channels import connected_components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    e = int(rng.integers(0, 2 * n))
    a, b = rng.integers(0, n, e), rng.integers(0, n, e)
    parent = list(range(n))

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        parent[find(u)] = find(v)
    k, labels = connected_components(n, a, b)
    roots = [find(u) for u in range(n)]
    assert k == len(set(roots))
    for u in range(n):  # same component <=> same label
        assert all((labels[u] == labels[v]) == (roots[u] == roots[v]) for v in range(0, n, 7))
