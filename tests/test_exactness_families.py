"""Families of graphs that once made wrong models with verification off (issue 22): ops of other
domains with standard names, order-dependent ops under ties, ORT-optimised models; and the one line a
failed verification gives."""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ltc.passes import ChannelGraph, apply_reindex, compress, permutation_plan
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.pipeline import ROUNDING_MISS, normalize, verification_failure
from ltc.passes.rules import RULES, Rule, RuleTable, op_key, register_rule
from ltc.passes.verify import Verification, _compare
from tests.helpers import conv_weight, make_model, node, run, vec
from tests.random_graphs import RandomGraph

X = {"x": ["N", 4, 6, 6]}
ELEMENTWISE = ["Relu", "Sigmoid", "Identity", "Neg", "Abs", "Tanh"]


def _between_convs(op: str, domain: str, dead=(1, 4, 6)) -> onnx.ModelProto:
    """x -> Conv (dead filters, zero bias) -> DOMAIN::OP -> Conv -> y."""
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), helper.make_node(op, ["a"], ["r"], name="mid", domain=domain),
             node("Conv", ["r", "w1"], ["y"], pads=[1] * 4)]
    model = make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4, dead=list(dead)), "w1": conv_weight(5, 8)})
    if domain not in ("", "ai.onnx"):
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


@pytest.mark.parametrize(("op", "domain"), itertools.product(ELEMENTWISE, ["com.example", "com.microsoft", "ai.onnx.ml"]))
def test_an_op_of_another_domain_with_a_standard_name_blocks(op, domain):
    """The analysis never takes ``DOMAIN::Relu`` for ONNX's Relu: every class it touches is frozen,
    and the reason names the op with its domain. The same graph in the ONNX domain loses its dead
    channels (the control: the block comes from the domain, not the graph)."""
    cg = ChannelGraph(import_graph(_between_convs(op, domain)))
    frozen = {reason for reason in cg.kept_reasons().values()}
    assert f"{domain}::{op} 'mid' is not in the rule table" in frozen
    assert cg.frozen[cg.classes_of("a")].all()
    control = ChannelGraph(import_graph(_between_convs(op, "")))
    assert not control.frozen[control.classes_of("a")].any()


def test_a_rule_registered_for_a_domain_applies_to_that_domain_only(monkeypatch):
    """``register_rule("Relu", rule, domain="com.example")`` (or ``"com.example::Relu"``) makes that
    domain's op followed; ONNX's Relu keeps its own rule."""
    import ltc.passes.rules as rules_module

    monkeypatch.setattr("ltc.passes.rules.RULES", RuleTable(RULES))
    monkeypatch.setattr("ltc.passes.channels.RULES", rules_module.RULES)
    relu = rules_module.RULES["Relu"]
    for how in ({"domain": "com.example"}, {}):
        rules_module.RULES.pop(op_key("Relu", "com.example"), None)
        register_rule("Relu", relu, **how) if how else register_rule("com.example::Relu", relu)
        assert rules_module.RULES["Relu"] is relu and op_key("Relu", "com.example") in rules_module.RULES
        cg = ChannelGraph(import_graph(_between_convs("Relu", "com.example")))
        assert not cg.frozen[cg.classes_of("a")].any()


@pytest.mark.parametrize(("op", "domain"), [("Round", ""), ("Relu", "com.example"), ("Erf", "com.microsoft")])
def test_a_table_of_ones_own_holds_a_rule_for_the_calls_given_it(op, domain):
    """``default_rules().with_rule(...)`` is a new table: passed as ``rules=`` to the analysis,
    removal, ``inspect`` and ``compress``, it follows the op (its dead channels go; exactly, verified,
    where ONNX Runtime runs the op), while the default table, and every call without it, still blocks
    there."""
    from ltc.passes import RemoveDeadChannels, default_rules
    from ltc.passes.ops.elementwise import pass_through
    from ltc.passes.pipeline import inspect
    from ltc.passes.remove import dead_filters

    class Followed(Rule):  # (element-wise, and a zero stays zero: true of all three)
        def analyze(self, v):
            v.need_x()
            pass_through(v, lambda k: np.where(k == 0, 0.0, np.nan))

    table = default_rules().with_rule(op, Followed(), domain=domain)
    key = op_key(op, domain)
    assert key in table and key not in RULES and table is not RULES and isinstance(table, RuleTable)
    model = _between_convs(op, domain)
    followed, default = ChannelGraph(import_graph(model), table), ChannelGraph(import_graph(model))
    assert not followed.frozen[followed.classes_of("a")].any() and default.frozen[default.classes_of("a")].all()
    for rules, removed in ((table, 3), (None, 0)):
        a = RemoveDeadChannels(rules=rules).analyze(normalize(model))
        assert dead_filters(a.cg, a.plan).removed == removed
    if not domain:  # (ONNX Runtime runs it: inspect and the whole compress, verified)
        assert inspect(model, rules=table)["dead_filters"]["removed"] == 3
        assert inspect(model)["dead_filters"]["removed"] == 0
        r = compress(model, rules=table)
        assert r.verification.passed and r.after["parameters"] < r.before["parameters"]
        assert compress(model).after["parameters"] == r.before["parameters"]
    with pytest.raises(TypeError):
        table.with_rule(op, object(), domain=domain)


# --------------------------------------------------------------------------- order-dependent ops
def _relu_then(op_nodes, out_shape_channels: int = 8) -> onnx.ModelProto:
    """x -> Conv -> Relu (ties: many zeros) -> ORDER-DEPENDENT OP over the channels -> y."""
    nodes = [node("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]), *op_nodes]
    bias = vec(8, -1.0, 0.2)
    return make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4, dead=[1, 4]), "b0": np.where(np.isin(np.arange(8), [1, 4]), 0, bias).astype(np.float32)}, opset=17)


ORDER_DEPENDENT = {
    "Hardmax": lambda: [node("Hardmax", ["r"], ["y"], axis=1)],
    "ArgMax": lambda: [node("ArgMax", ["r"], ["i"], axis=1, keepdims=1), node("Cast", ["i"], ["y"], to=1)],
    "ArgMax-last": lambda: [node("ArgMax", ["r"], ["i"], axis=1, keepdims=1, select_last_index=1),
                            node("Cast", ["i"], ["y"], to=1)],
    "ArgMin": lambda: [node("ArgMin", ["r"], ["i"], axis=1, keepdims=1), node("Cast", ["i"], ["y"], to=1)],
    "TopK": lambda: [node("TopK", ["r", "k"], ["y", "idx"], axis=1)],
    "CumSum": lambda: [node("CumSum", ["r", "ax"], ["y"])],
}


@pytest.mark.parametrize("name", sorted(ORDER_DEPENDENT))
def test_order_dependent_ops_over_channels_are_never_permuted(name):
    """An op that reads channel positions (first of ties, a running sum) freezes its classes: no
    permutation plan moves them, and removal leaves the model computing the same values."""
    model = _relu_then(ORDER_DEPENDENT[name]())
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([3], np.int64), "k"),
                                    onnx.numpy_helper.from_array(np.array(1, np.int64), "ax")])
    cg = ChannelGraph(import_graph(normalize(model)))
    assert cg.frozen[cg.classes_of("r")].all(), cg.kept_reasons()
    for seed in range(5):
        plan = permutation_plan(ChannelGraph(import_graph(normalize(model))), np.random.default_rng(seed))
        assert "r" not in plan
    r = compress(model, check=False)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4, 6, 6)).astype(np.float32)}
    for a, b in zip(run(model, feeds, False), run(r.model, feeds, False), strict=True):
        np.testing.assert_array_equal(a, b)


def test_hardmax_over_another_axis_still_lets_channels_move():
    """Hardmax over the width axis: each channel on its own (a dead channel becomes a one-hot map, not
    a constant, so it stays); permutations of the channels are exact."""
    model = _relu_then([node("Hardmax", ["r"], ["h"], axis=3), node("Conv", ["h", "w1"], ["y"])])
    model.graph.initializer.append(onnx.numpy_helper.from_array(conv_weight(5, 8, 1), "w1"))
    assert compress(model).verification.passed
    cg = ChannelGraph(import_graph(normalize(model)))
    plan = permutation_plan(cg, np.random.default_rng(0))
    assert "r" in plan and apply_reindex(cg, plan)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(export_graph(cg.graph, model), feeds, False)[0], run(model, feeds, False)[0],
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- ORT-optimised models
def _optimized(model: onnx.ModelProto, level) -> onnx.ModelProto | None:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 4
    with tempfile.TemporaryDirectory() as d:
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - ORT's own exception types: not a model ORT can optimise
            return None
        return onnx.load(opts.optimized_model_filepath)


@pytest.mark.parametrize("block", range(2))
def test_ort_optimised_random_graphs_compress_exactly_without_verification(block):
    """Random graphs saved by ONNX Runtime at "extended" (com.microsoft fused ops) and "all" (NCHWc
    blocked layouts, on CPUs that have them): with verification off, what ltc writes computes what
    the input computes. Ops of those domains block; ONNX ops around them are still followed."""
    levels = [ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    checked = 0
    for seed in range(block * 15, block * 15 + 15):
        g = RandomGraph(seed)
        base = compress(g.model(), g.masks or None, check=False).reference
        for level in levels:
            model = _optimized(base, level)
            if model is None:
                continue
            r = compress(model, check=False)
            feeds = {"x": np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)}
            for a, b in zip(run(model, feeds, False), run(r.model, feeds, False), strict=True):
                scale = float(np.abs(a).max()) if a.size else 0.0
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 + 1e-4 * scale, err_msg=f"seed {seed} {level}")
            checked += 1
    assert checked >= 20


# --------------------------------------------------------------------------- the failure line
def _verification(ref: dict, got: dict, rtol=1e-4, atol=1e-5) -> Verification:
    v = Verification(True, rtol, atol)
    v.passed, v.outputs = _compare(ref, got, rtol, atol)
    return v


@pytest.mark.parametrize("times", [0.5, 2.0, ROUNDING_MISS * 0.9, ROUNDING_MISS * 1.5, 100.0, 1e6, math.inf])
def test_rtol_advice_only_for_misses_near_the_tolerance(times):
    ref = {"y": np.linspace(-1, 1, 50, dtype=np.float32)}
    tol = 1e-5 + 1e-4 * 1.0
    got = {"y": ref["y"].copy()}
    got["y"][7] += np.float32(tol * (1 + times) if math.isfinite(times) else np.nan)
    v = _verification(ref, got)
    assert not v.passed
    line = verification_failure(v, 1e-4, 1e-5)
    assert "output 'y'" in line and "\n" not in line
    missed = v.outputs["y"]["max_abs"] / v.outputs["y"]["tolerance"]
    assert ("--rtol" in line) == (missed <= ROUNDING_MISS), line
    assert ("bug in ltc" in line) == (missed > ROUNDING_MISS), line


@pytest.mark.parametrize("got_shape", [None, (3,), (2, 4), (2, 2, 1), ()])
def test_a_missing_or_reshaped_output_is_named_not_a_key_error(got_shape):
    ref = {"y": np.ones((2, 3), np.float32), "z": np.zeros(4, np.float32)}
    got = {"z": np.zeros(4, np.float32)}
    if got_shape is not None:
        got["y"] = np.ones(got_shape, np.float32)
    v = _verification(ref, got)
    line = verification_failure(v, 1e-4, 1e-5)
    assert "output 'y'" in line and "(2, 3)" in line and "bug in ltc" in line
    assert ("missing" in line) == (got_shape is None)


# --------------------------------------------------------------------------- initializers as inputs
@pytest.mark.parametrize("seed", range(6))
def test_initializers_that_are_graph_inputs_are_constants(seed, tmp_path):
    """Random graphs whose initializers (some or all, weights, biases and shape constants alike) are
    also graph inputs, as older converters write them: compressed like the same graph without them
    (the same parameters), exact, the output lists none of them as inputs, the report says so, and
    the input file is untouched."""
    from click.testing import CliRunner

    from ltc.cli import main

    g = RandomGraph(seed)
    model = compress(g.model(), g.masks or None, check=False).reference
    rng = np.random.default_rng(seed)
    inits = [t for t in model.graph.initializer if rng.random() < 0.7] or list(model.graph.initializer)
    plain = compress(model)
    for t in inits:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.save(model, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    r = CliRunner().invoke(main, ["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--round-to", "1",
                                  "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").read_bytes() == before
    out = onnx.load(tmp_path / "o.onnx")
    assert [i.name for i in out.graph.input] == ["x"]
    import json

    doc = json.loads((tmp_path / "r.json").read_text())
    assert f"{len(inits)} initializer(s) were also graph inputs" in doc["notes"][0]
    assert doc["after"]["parameters"] == plain.after["parameters"]
    feeds = {"x": np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    for a, b in zip(run(model, feeds, False), run(out, feeds, False), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 + 1e-4 * float(np.abs(a).max(initial=0)))


# --------------------------------------------------------------------------- review findings as families
@pytest.mark.parametrize("readers", [2, 3, 4])
def test_constant_maps_never_grow_the_model(readers):
    """One 3x3 weight shared by several padded readers of one dead constant channel, or a grouped
    Conv losing one channel: a map per reader would add more than the removal saves; then the
    channel stays (same parameters, per use and stored), and the model is exact either way."""
    from ltc.passes.stats import count_parameters

    p = [node("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"])]
    reads = [node("Conv", ["r", "w1"], [f"y{i}"], pads=[1] * 4) for i in range(readers)]
    bias = np.where(np.arange(8) == 3, 0.7, 0.0).astype(np.float32)
    model = make_model(p + reads, X, [f"y{i}" for i in range(readers)],
                       {"w0": conv_weight(8, 4, dead=[3]), "b0": bias, "w1": conv_weight(8, 8, 3)})
    r = compress(model)
    assert count_parameters(r.model) <= count_parameters(model)
    assert sum(math.prod(t.dims) for t in r.model.graph.initializer) <= sum(math.prod(t.dims) for t in model.graph.initializer)
    assert r.verification.passed


@pytest.mark.parametrize("empty", ["roi", "scales"])
def test_an_empty_auxiliary_constant_does_not_block(empty):
    """Resize's unused roi (or scales beside sizes) written as an empty initializer is a placeholder."""
    roi = np.zeros(0, np.float32)
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]),
             node("Resize", ["r", "roi", "sc"], ["z"], mode="nearest"), node("Conv", ["z", "w1"], ["y"])]
    model = make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4, dead=[1, 2]), "w1": conv_weight(5, 8, 1), "roi": roi,
                                         "sc": np.array([1, 1, 2, 2], np.float32)})
    r = compress(model)
    assert r.after["parameters"] < r.before["parameters"] and r.verification.passed


def test_an_infinity_in_the_reference_is_no_scale():
    """An infinity in the reference must not widen the tolerance to infinity (every output would pass)."""
    ref = {"y": np.array([np.inf, 1, 2, 3], np.float32)}
    assert not _compare(ref, {"y": np.array([7, 100, -50, 3], np.float32)}, 1e-4, 1e-5)[0]
    assert _compare(ref, {"y": np.array([np.inf, 1, 2, 3], np.float32)}, 1e-4, 1e-5)[0]


def test_float16_rounding_is_called_rounding():
    """A miss of one float16 unit in the last place at the output's scale gets the --rtol advice."""
    ref = {"y": np.array([149.0, 1.0], np.float16)}
    got = {"y": np.array([149.125, 1.0], np.float16)}
    v = _verification(ref, got)
    assert not v.passed
    line = verification_failure(v, 1e-4, 1e-5)
    assert "--rtol" in line and "bug in ltc" not in line


def test_register_rule_with_the_onnx_domain_spelled_out(monkeypatch):
    import ltc.passes.rules as rules_module

    monkeypatch.setattr(rules_module, "RULES", RuleTable(RULES))
    register_rule("ai.onnx::MyOp", rules_module.RULES["Relu"])
    assert "MyOp" in rules_module.RULES and "ai.onnx::MyOp" not in rules_module.RULES


def test_without_verification_a_result_that_does_not_run_is_not_written(monkeypatch):
    """--no-verify still runs the result once: a rewrite that loads but fails at run time (here a
    Reshape target broken after the rewrite, as a stand-in for any such defect) is ltc's bug, not a
    written model; with a valid rewrite the same call succeeds."""
    import sys

    from ltc.errors import InternalError

    compress_module = sys.modules["ltc.passes.pipeline"]

    p = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]), node("Conv", ["r", "w1"], ["y"])]
    model = make_model(p, X, ["y"], {"w0": conv_weight(8, 4, dead=[1, 2]), "w1": conv_weight(5, 8, 1)})
    assert compress(model, check=False).after["parameters"] < compress(model, check=False).before["parameters"]
    real = compress_module.RemoveDeadChannels.call

    def broken(self, m):
        result = real(self, m)
        out = onnx.ModelProto()
        out.CopyFrom(result.model)
        y = out.graph.output[0].name
        for n in out.graph.node:
            if y in n.output:
                n.output[list(n.output).index(y)] = "pre_y"
        # a target only known at run time: [int(max(pre_y) > -inf) * 7, -1] does not divide the size
        out.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([7], np.int64), "seven"),
                                      onnx.numpy_helper.from_array(np.array([-1], np.int64), "rest")])
        out.graph.node.extend([
            helper.make_node("ReduceMax", ["pre_y"], ["top"], keepdims=0),
            helper.make_node("IsInf", ["top"], ["inf"]), helper.make_node("Not", ["inf"], ["finite"]),
            helper.make_node("Cast", ["finite"], ["one"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["one", "zero_axis"], ["one1"]),
            helper.make_node("Mul", ["one1", "seven"], ["n7"]),
            helper.make_node("Concat", ["n7", "rest"], ["bad_shape"], axis=0),
            helper.make_node("Reshape", ["pre_y", "bad_shape"], ["flat"]),
            helper.make_node("Reshape", ["flat", "out_shape"], [y])])
        out.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
                                      onnx.numpy_helper.from_array(np.array([-1, 5, 6, 6], np.int64), "out_shape")])
        result.model = out
        return result

    monkeypatch.setattr(compress_module.RemoveDeadChannels, "call", broken)
    with pytest.raises(InternalError, match="cannot run the compressed model"):
        compress(model, check=False)


def test_the_readme_rule_example_runs_as_written(monkeypatch):
    """The README's custom-rule example, executed as it stands on a model with a ``com.example::MyGelu``
    between two Convs: its table lets the dead filters through (removed), and its ``register_rule``
    line adds the rule to the default table."""
    import re

    import ltc.passes.rules as rules_module

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class MyGelu" in block)
    monkeypatch.setattr(rules_module, "RULES", RuleTable(RULES))
    monkeypatch.setattr("ltc.passes.channels.RULES", rules_module.RULES)
    namespace = {"model": _between_convs("MyGelu", "com.example")}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    assert namespace["result"].modified and namespace["result"].info.removed_classes > 0
    assert op_key("MyGelu", "com.example") in rules_module.RULES


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_a_weight_layer_rule_that_names_no_summed_input_is_still_reported(op):
    """A weight-layer rule from outside that records its filters and contraction but never says which
    input it sums over (``v.layer_input``) still has its row in the per-layer report (the input is
    input 0): it used to drop out silently. Same rows, same counts as the built-in rule."""
    from ltc.passes import RemoveDeadChannels, default_rules
    from ltc.passes.ops import layers
    from ltc.passes.pipeline import normalize

    builtin = getattr(layers, op)

    class Forgetful(builtin):
        def analyze(self, v):
            super().analyze(v)
            v.a.layer_input = None  # (as a rule that never calls v.layer_input)

    if op == "Conv":
        model = _between_convs("Relu", "")
    else:
        nodes = [node("Gemm", ["x", "w0"], ["a"], transB=1), node("Relu", ["a"], ["r"]), node("Gemm", ["r", "w1"], ["y"], transB=1)]
        model = make_model(nodes, {"x": ["N", 4]}, ["y"],
                           {"w0": conv_weight(8, 4, 1, dead=[1, 4, 6])[:, :, 0, 0], "w1": conv_weight(5, 8, 1)[:, :, 0, 0]})
    rows = {}
    for rules in (None, default_rules().with_rule(op, Forgetful())):
        a = RemoveDeadChannels(rules=rules).analyze(normalize(model))
        rows[rules is None] = [(r.name, r.in_before, r.in_after, r.out_before, r.out_after, r.dead) for r in a.layers]
    assert len(rows[True]) == 2 and rows[False] == rows[True], rows
