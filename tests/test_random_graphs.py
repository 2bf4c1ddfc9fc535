"""Random graphs: compression is exact, valid, never larger, and removes what is provably removable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

import ltc
from ltc.errors import InternalError
from ltc.passes import ApplyMasks, ChannelGraph, apply_reindex, compress, permutation_plan, verify
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.pipeline import normalize
from ltc.passes.stats import count_parameters, layer_macs
from tests.helpers import run
from tests.random_graphs import RandomGraph


def _run_optimized(model, feeds):
    """ONNX Runtime with its optimizer on. Its pad fusion rejects Pad -> Pad -> Pool once the pads add
    up to the kernel (a valid model; an ONNX Runtime bug that removal can expose by dropping the Pad's
    other readers): then the comparison runs without graph optimizations."""
    try:
        return run(model, feeds)
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        if "Pad should be smaller than kernel" not in str(exc):
            raise
        return run(model, feeds, optimize=False)


def check_graph(seed: int, unequal_groups: str = "auto"):
    g = RandomGraph(seed)
    model = g.model()
    try:
        r = compress(model, g.masks or None, unequal_groups=unequal_groups)
    except InternalError as exc:  # refused, not silently wrong: ORT's optimizer miscomputes the output
        assert "graph optimizer" in str(exc), f"seed {seed}: {exc}"
        r = compress(model, g.masks or None, check=False, unequal_groups=unequal_groups)
        assert verify(r.reference, r.model, {"x": np.ones((2, 4, 8, 8), np.float32)}, optimized=False).passed
        return None
    assert r.verification.passed and r.verification.optimizer_ok, seed
    feeds = {"x": np.random.default_rng(seed).standard_normal((3, 4, 8, 8)).astype(np.float32)}
    for a, b in zip(_run_optimized(r.reference, feeds), _run_optimized(r.model, feeds), strict=True):  # optimisations on
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 + 1e-4 * scale, equal_nan=True, err_msg=f"seed {seed}")
    try:  # the output passes the checker whenever the input does (the checker deems GroupNormalization-18
        onnx.checker.check_model(model)  # deprecated, so graphs using it fail it before ltc sees them)
    except onnx.checker.ValidationError:
        pass
    else:
        onnx.checker.check_model(r.model)
    assert count_parameters(r.model) <= count_parameters(r.reference), seed
    assert stored_parameters(r.model) <= stored_parameters(model), seed  # (shared weights stay shared)
    dims = {t.name: tuple(t.dims) for t in r.model.graph.initializer}
    for weight, live, _ in g.provable:  # (a layer nothing reads is gone altogether)
        assert dims.get(weight, (0,))[0] <= max(live, 1), f"seed {seed}: '{weight}' kept {dims[weight][0]} rows, {live} live"
    return r


def stored_parameters(model: onnx.ModelProto) -> int:
    """Float elements the file stores (a tensor shared by several ops counts once)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _grouped(model: onnx.ModelProto) -> bool:
    """A Conv with 1 < group < its output channels (not depthwise)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return any(n.op_type == "Conv" and 1 < next((a.i for a in n.attribute if a.name == "group"), 1)
               < shapes.get(n.input[1], (0,))[0] for n in model.graph.node)


@pytest.mark.parametrize("block", range(2))
def test_random_graphs_with_unequal_groups(block):
    """Graphs with grouped Convs, compressed letting groups lose different numbers of channels (split
    into Convs) and never: both exact and valid (check_graph), and unequal groups never keep more."""
    done = fewer = 0
    for seed in range(block * 150, block * 150 + 150):
        if not _grouped(RandomGraph(seed).model()):
            continue
        always, never = check_graph(seed, "always"), check_graph(seed, "never")
        if always is not None and never is not None:
            assert count_parameters(always.model) <= count_parameters(never.model), seed
            for r in (always, never):  # the reported MACs are the written model's (split Convs counted)
                assert r.after["macs"] == sum(layer_macs(r.model).values()), seed
            done += 1
            fewer += count_parameters(always.model) < count_parameters(never.model)
    assert done >= 20 and fewer >= 3  # (the split path is exercised, not only equal removals)


@pytest.mark.parametrize("block", range(8))
def test_random_graphs(block):
    for seed in range(block * 40, block * 40 + 40):  # 320 graphs
        check_graph(seed)


@pytest.mark.slow
def test_many_random_graphs():
    for seed in range(1000, 6000):
        check_graph(seed)


def check_permutation(seed: int) -> int:
    """A random admissible permutation of every class of a random graph leaves its outputs unchanged
    (after normalisation, as compress analyses it: channel shuffles are Gathers, constants folded)."""
    g = RandomGraph(seed)
    model = ApplyMasks(g.masks)(g.model()).model if g.masks else g.model()
    normal = normalize(model)
    cg = ChannelGraph(import_graph(normal))
    plan = permutation_plan(cg, np.random.default_rng(seed))
    if not plan:
        return 0
    assert apply_reindex(cg, plan)
    permuted = export_graph(cg.graph, normal)
    feeds = {"x": np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    for a, b in zip(run(model, feeds, False), run(permuted, feeds, False), strict=True):
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 + 1e-5 * scale, equal_nan=True, err_msg=f"seed {seed}")
    return len(plan)


def test_random_permutations_of_random_graphs():
    permuted = [check_permutation(seed) for seed in range(10_000, 10_100)]
    assert sum(n > 0 for n in permuted) >= 80  # most graphs have classes free to move


@pytest.mark.slow
def test_many_random_permutations():
    for seed in range(20_000, 22_000):
        check_permutation(seed)


def test_inspect_reports_of_random_graphs_follow_their_schema(tmp_path):
    """`ltc inspect --json` (ltc.api.inspect_file) on random graphs: every report validates against
    ltc/passes/inspect-schema.json, and ltc's own reader (what `ltc report` uses) accepts it."""
    import json

    import jsonschema

    from ltc.api import inspect_file
    from ltc.reporting.report import load_report_json
    from ltc.reports import to_json

    schema = json.loads((Path(ltc.__file__).parent / "passes/inspect-schema.json").read_text())
    checked = 0
    for seed in range(40):
        onnx.save(RandomGraph(seed).model(), tmp_path / "m.onnx")
        doc = json.loads(json.dumps(inspect_file(tmp_path / "m.onnx"), default=to_json))
        jsonschema.validate(doc, schema)
        (tmp_path / "i.json").write_text(json.dumps(doc))
        assert load_report_json(tmp_path / "i.json", "inspect") == doc
        d = doc["dead_filters"]
        assert d["dead"] == d["removed"] + d["coupled"] + d["pinned"] + d["unfoldable"] + d["blocked"]
        checked += 1
    assert checked == 40
