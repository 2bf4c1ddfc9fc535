"""The defect classes random graphs found in the old core, each as a test of its family."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ltc.errors import InternalError, LtcError
from ltc.masks import MaskSet, match_masks
from ltc.passes import RemoveDeadChannels, compress
from ltc.passes.channels import ChannelGraph
from ltc.passes.graph import import_graph
from ltc.passes.stats import count_parameters, layer_macs
from tests.helpers import (
    RNG,
    assert_equivalent,
    conv_weight,
    make_model,
    node,
    run,
    vec,
    weight_shapes,
)

X = {"x": ["N", 4, 6, 6]}
DEAD = [1, 4, 6]


def _conv_a(bias=None, dead=DEAD):
    b = np.zeros(8, np.float32) if bias is None else bias
    return node("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), {"w0": conv_weight(8, 4, dead=dead), "b0": b}


def _exact(model, **kw):
    r = compress(model, **kw)
    assert r.verification.passed
    assert_equivalent(r.reference, r.model, {k: v for k, v in X.items()} if "x" in {i.name for i in model.graph.input}
                      else {i.name: [d.dim_value or "N" for d in i.type.tensor_type.shape.dim] for i in model.graph.input})
    assert count_parameters(r.model) <= count_parameters(r.reference)
    return r


def test_removal_needs_evidence_a_broadcast_read_freezes():
    # x[1,C,H,W] + gemm_out[1,W]: the Gemm's 6 outputs line up with W, not with channels; no mask at all
    nodes = [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "gw", "gb"], ["g"], transB=1),
             node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Add", ["a", "g"], ["y"])]
    inits = {"gw": vec(6 * 144).reshape(6, 144), "gb": vec(6), "w0": conv_weight(8, 4)}
    model = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits)
    r = compress(model)
    assert not r.model.graph.node or weight_shapes(r.model, "Gemm") == [(6, 144)]


def test_shape_with_start_reads_the_channel_count():
    conv, inits = _conv_a()
    nodes = [conv, node("Conv", ["a", "w1"], ["y"]), node("Shape", ["a"], ["s"], start=1),
             node("Gather", ["s", "zero"], ["c"], axis=0), node("Cast", ["c"], ["cf"], to=1)]
    model = make_model(nodes, X, ["y", "cf"], inits | {"w1": conv_weight(5, 8, 1), "zero": np.array(0, np.int64)})
    # the rule: the channel count is read (an output here), so nothing may go
    assert weight_shapes(RemoveDeadChannels()(model).model, "Conv")[0][0] == 8
    # compress first folds the static count to the original's 8: the output stays 8, channels go, exactly
    r = compress(model)
    assert r.verification.passed
    feeds = {"x": RNG.standard_normal((2, *X["x"][1:])).astype(np.float32)}
    assert run(r.model, feeds)[1] == 8.0


def test_prelu_slope_varying_along_width_is_not_a_channel_constant():
    conv, inits = _conv_a(bias=np.where(np.isin(np.arange(8), DEAD), -1.0, 0.5).astype(np.float32))
    nodes = [conv, node("PRelu", ["a", "slope"], ["p"]), node("Conv", ["p", "w1"], ["y"])]
    r = _exact(make_model(nodes, X, ["y"], inits | {"slope": vec(6, 0.1, 0.9).reshape(1, 1, 6),
                                                    "w1": conv_weight(5, 8, 1)}))
    assert weight_shapes(r.model, "Conv")[0][0] == 8  # slope * (-1) varies along W: cannot fold


@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_with_empty_axes(noop):
    conv, inits = _conv_a()
    nodes = [conv, node("Conv", ["a", "w1"], ["y"]), node("ReduceMean", ["a", "axes"], ["m"], keepdims=1,
                                                         noop_with_empty_axes=noop), node("Relu", ["m"], ["z"])]
    model = make_model(nodes, X, ["y", "z"], inits | {"w1": conv_weight(5, 8, 1), "axes": np.zeros(0, np.int64)},
                       opset=18)
    r = _exact(model)
    assert weight_shapes(r.model, "Conv")[0][0] == 8  # reduce-all reads every channel; noop outputs them


def test_batchnorm_in_training_mode_freezes():
    conv, inits = _conv_a()
    bn = {"s": vec(8), "bb": vec(8), "mu": vec(8), "var": vec(8, 0.5, 1)}
    nodes = [conv, node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["n"], training_mode=1),
             node("Conv", ["n", "w1"], ["y"])]
    cg = ChannelGraph(import_graph(make_model(nodes, X, ["y"], inits | bn | {"w1": conv_weight(5, 8, 1)})))
    assert any("training_mode" in r for r in cg.frozen_reason.values())


def test_two_splits_without_split_input_get_their_own_sizes():
    conv, inits = _conv_a()
    nodes = [conv, node("Conv", ["x", "wb"], ["b"], pads=[1] * 4),
             node("Split", ["a"], ["a0", "a1"], axis=1, num_outputs=2),
             node("Split", ["b"], ["c0", "c1"], axis=1, num_outputs=2)]
    tail = [node("Conv", [t, f"w_{t}"], [f"y_{t}"]) for t in ("a0", "a1", "c0", "c1")]
    inits |= {"wb": conv_weight(8, 4, dead=[0, 5]), **{f"w_{t}": conv_weight(3, 4, 1) for t in ("a0", "a1", "c0", "c1")}}
    model = make_model(nodes + tail, X, [f"y_{t}" for t in ("a0", "a1", "c0", "c1")], inits, opset=18)
    r = _exact(model)
    splits = [n for n in r.model.graph.node if n.op_type == "Split"]
    assert len({n.input[1] for n in splits}) == 2


@pytest.mark.parametrize("c", [np.float32(0.3), np.array([0.3], np.float32), None])
def test_gemm_fold_into_scalar_or_missing_bias(c):
    conv, inits = _conv_a(bias=np.where(np.isin(np.arange(8), DEAD), 0.7, 0.0).astype(np.float32))
    nodes = [conv, node("Relu", ["a"], ["r"]), node("GlobalAveragePool", ["r"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "gw"] + (["gc"] if c is not None else []), ["y"], transB=1, alpha=0.5, beta=2.0)]
    inits |= {"gw": vec(40).reshape(5, 8)} | ({"gc": c} if c is not None else {})
    r = _exact(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "Gemm") == [(5, 5)]


def test_pad_with_computed_value_freezes_instead_of_crashing():
    conv, inits = _conv_a()
    nodes = [conv, node("ReduceMax", ["x"], ["mx"], keepdims=0, axes=[0, 1, 2, 3]),
             node("Pad", ["a", "pads", "mx"], ["p"]), node("Conv", ["p", "w1"], ["y"])]
    inits |= {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w1": conv_weight(5, 8, 1)}
    r = _exact(make_model(nodes, X, ["y"], inits, opset=17))
    assert any("constant_value" in reason for reason in r.frozen)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.bool_])
def test_masks_of_every_numeric_kind(dtype):
    conv, inits = _conv_a()
    inits["w0"] = conv_weight(8, 4)
    mask = np.ones((8, 4, 3, 3), dtype)
    mask[DEAD] = 0
    model = make_model([conv, node("Conv", ["a", "w1"], ["y"])], X, ["y"], inits | {"w1": conv_weight(5, 8, 1)})
    r = _exact(model, masks={"w0": mask})
    assert weight_shapes(r.model, "Conv")[0][0] == 5


def test_mask_with_values_other_than_0_and_1_is_refused():
    conv, inits = _conv_a()
    model = make_model([conv, node("Conv", ["a", "w1"], ["y"])], X, ["y"], inits | {"w1": conv_weight(5, 8, 1)})
    with pytest.raises(LtcError, match="other than 0 and 1"):
        compress(model, masks={"w0": np.full((8, 4, 3, 3), 0.5, np.float32)})


def test_value_matching_is_independent_of_mask_order():
    w = {f"w{i}": conv_weight(8, 8, 1) for i in range(2)}
    nodes = [node("Conv", ["x8", "w0"], ["a"]), node("Conv", ["a", "w1"], ["y"])]
    model = make_model(nodes, {"x8": ["N", 8, 4, 4]}, ["y"], w)
    m0, m1 = np.ones((8, 8, 1, 1), bool), np.ones((8, 8, 1, 1), bool)
    m0[2] = False  # only w0 has no entries outside... both are dense: match by the ticket's weights
    for order in (["A", "B"], ["B", "A"]):
        weights = {"A": w["w0"], "B": w["w1"]}
        ms = MaskSet({k: {"A": m0, "B": m1}[k] for k in order}, {k: weights[k] for k in order}, source="pt")
        assert match_masks(model, ms).matched == {"A": "w0", "B": "w1"}
    # B is told apart by its weights; A has neither weights nor zeros in w0: a shape left over by
    # elimination is no evidence, in any order
    for order in (["A", "B"], ["B", "A"]):
        ms = MaskSet({k: {"A": m0, "B": m1}[k] for k in order}, {"B": w["w1"]}, source="pt")
        with pytest.raises(LtcError, match=r"mask 'A'.*'w0'.*does not guess"):
            match_masks(model, ms)
    w0 = np.where(m0, w["w0"], 0)  # once w0 holds A's zeros, they confirm it
    model = make_model(nodes, {"x8": ["N", 8, 4, 4]}, ["y"], {"w0": w0, "w1": w["w1"]})
    assert match_masks(model, MaskSet({"A": m0, "B": m1}, {"B": w["w1"]}, source="pt")).matched == {"A": "w0", "B": "w1"}


def test_weight_shared_by_two_nodes_stays_one_tensor():
    w = conv_weight(8, 8, 1, dead=[2, 5])
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]),
             node("Conv", ["r", "ws"], ["s1"]), node("Relu", ["s1"], ["t"]), node("Conv", ["t", "ws"], ["s2"]),
             node("Conv", ["s2", "w1"], ["y"])]
    model = make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4), "ws": w, "w1": conv_weight(5, 8, 1)})
    r = _exact(model)
    assert sum(1 for t in r.model.graph.initializer if t.name.startswith("ws")) == 1
    assert r.model.ByteSize() <= model.ByteSize()


def test_layer_after_an_unanalysable_input_still_loses_its_dead_filters():
    nodes = [node("LRN", ["x"], ["l"], size=3), node("Conv", ["l", "w0"], ["a"], pads=[1] * 4),
             node("Relu", ["a"], ["r"]), node("Conv", ["r", "w1"], ["y"])]
    r = _exact(make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4, dead=DEAD), "w1": conv_weight(5, 8, 3)}))
    assert weight_shapes(r.model, "Conv") == [(5, 4, 3, 3), (5, 5, 3, 3)]


@pytest.mark.parametrize("opset", [13, 18])
def test_view_with_dynamic_batch_is_followed(opset):
    conv, inits = _conv_a()
    nodes = [conv, node("Relu", ["a"], ["r"]), node("Shape", ["r"], ["s"]), node("Gather", ["s", "zero"], ["n0"], axis=0),
             node("Unsqueeze", ["n0", "uq"], ["n1"]), node("Concat", ["n1", "m1"], ["tgt"], axis=0),
             node("Reshape", ["r", "tgt"], ["f"]), node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    inits |= {"zero": np.array(0, np.int64), "uq": np.array([0], np.int64), "m1": np.array([-1], np.int64),
              "gw": vec(5 * 288).reshape(5, 288), "gb": vec(5)}
    r = _exact(make_model(nodes, X, ["y"], inits, opset=opset))
    assert weight_shapes(r.model, "Gemm") == [(5, 180)]


@pytest.mark.parametrize("fused", [True, False])
def test_transformer_mlp_hidden_neurons_are_removed(fused):
    """[B, T, C] -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) + residual; half the hidden dead."""
    c, hidden = 8, 32
    w1 = vec(c * hidden).reshape(c, hidden)
    dead = np.arange(0, hidden, 2)
    w1[:, dead] = 0
    b1 = vec(hidden)
    b1[dead] = 0
    nodes = [node("LayerNormalization", ["t", "g", "be"], ["n"], axis=-1), node("MatMul", ["n", "w1"], ["h"]),
             node("Add", ["h", "b1"], ["hb"])]
    if fused:
        nodes.append(node("Gelu", ["hb"], ["ge"]))
    else:
        nodes += [node("Div", ["hb", "sq2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["e1"]),
                  node("Mul", ["hb", "e1"], ["m"]), node("Mul", ["m", "half"], ["ge"])]
    nodes += [node("MatMul", ["ge", "w2"], ["o"]), node("Add", ["o", "b2"], ["ob"]), node("Add", ["t", "ob"], ["y"])]
    inits = {"g": vec(c), "be": vec(c), "w1": w1, "b1": b1, "w2": vec(hidden * c).reshape(hidden, c), "b2": vec(c),
             "sq2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    model = make_model(nodes, {"t": ["N", 5, c]}, ["y"], inits, opset=20)
    r = compress(model)
    assert r.verification.passed
    assert weight_shapes(r.model, "MatMul") == [(c, 16), (16, c)]


@pytest.mark.parametrize("act,alpha", [("LeakyRelu", 0.2), ("Elu", 0.7), ("PRelu", None)])
def test_negative_constants_through_leaky_activations_fold(act, alpha):
    conv, inits = _conv_a(bias=np.where(np.isin(np.arange(8), DEAD), -0.8, 0.0).astype(np.float32))
    ins = ["a", "slope"] if act == "PRelu" else ["a"]
    attrs = {} if alpha is None else {"alpha": alpha}
    nodes = [conv, node(act, ins, ["p"], **attrs), node("Conv", ["p", "w1", "b1"], ["y"])]
    inits |= {"slope": vec(8, 0.1, 0.5).reshape(8, 1, 1), "w1": conv_weight(5, 8, 1), "b1": vec(5)}
    r = _exact(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "Conv")[0][0] == 5  # a non-zero constant folded into the 1x1 conv's bias


def test_absolute_parameter_and_mac_counts():
    nodes = [node("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]),
             node("Conv", ["r", "dw"], ["d"], group=8, pads=[1] * 4), node("GlobalAveragePool", ["d"], ["g"]),
             node("Flatten", ["g"], ["f"]), node("Gemm", ["f", "gw", "gb"], ["h"], transB=1),
             node("MatMul", ["h", "mw"], ["y"])]
    inits = {"w0": conv_weight(8, 4, dead=DEAD), "b0": np.zeros(8, np.float32), "dw": conv_weight(8, 1),
             "gw": vec(40).reshape(5, 8), "gb": vec(5), "mw": vec(15).reshape(5, 3)}
    model = make_model(nodes, X, ["y"], inits)
    assert count_parameters(model) == 8 * 4 * 9 + 8 + 8 * 9 + 40 + 5 + 15
    macs = layer_macs(model)
    assert sorted(macs.values()) == sorted([8 * 36 * 4 * 9, 8 * 36 * 9, 5 * 8, 3 * 5])
    r = _exact(model)
    assert count_parameters(r.model) == 5 * 4 * 9 + 5 + 5 * 9 + 25 + 5 + 15
    assert sum(layer_macs(r.model).values()) == 5 * 36 * 4 * 9 + 5 * 36 * 9 + 5 * 5 + 3 * 5


def test_an_output_that_onnx_runtimes_optimizer_miscomputes_is_refused():
    """Pad(0) read by MaxPool and by a layer nothing uses: cleanup leaves MaxPool the Pad's only reader,
    and ORT's pad fusion then pads MaxPool with 0 where it means -inf. Exact, but wrong as users run it."""
    nodes = [node("Pad", ["x", "pads"], ["p"]), node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p", "w0"], ["unused"])]
    model = make_model(nodes, X, ["y"], {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                                         "w0": conv_weight(8, 4, dead=[0, 1])})
    with pytest.raises(InternalError, match="graph optimizer"):
        compress(model, feeds={"x": -np.ones((2, 4, 6, 6), np.float32)})
    assert compress(model, check=False).model.graph.node[-1].op_type == "MaxPool"  # --no-verify still writes it


def test_a_registered_rule_lets_channels_through_an_op_the_table_lacks():
    from ltc.passes import RULES, Rule, register_rule
    from ltc.passes.ops.elementwise import pass_through

    class RoundRule(Rule):  # the README's example, for an op ORT runs and ltc has no rule for
        def analyze(self, v):
            v.need_x()
            pass_through(v, np.round)

    conv, inits = _conv_a()
    model = make_model([conv, node("Round", ["a"], ["r"]), node("Conv", ["r", "w1"], ["y"])], X, ["y"],
                       inits | {"w1": conv_weight(5, 8, 1)})
    assert weight_shapes(compress(model).model, "Conv")[0][0] == 8  # no rule: Round freezes
    assert "Round" not in RULES
    try:
        register_rule("Round", RoundRule())
        r = _exact(model)
        assert weight_shapes(r.model, "Conv")[0][0] == 5
    finally:
        RULES.pop("Round", None)
    with pytest.raises(TypeError):
        register_rule("Round", object())


def test_verification_matches_nan_position_by_position():
    """A reference output with NaN (log of negatives) verifies a correct result, and refuses a result
    whose NaN sit elsewhere."""
    from ltc.passes import verify

    conv, inits = _conv_a()
    inits["w1"] = conv_weight(5, 8, 1)
    nodes = [conv, node("Relu", ["a"], ["r"]), node("Conv", ["r", "w1"], ["y"]), node("Log", ["x"], ["lx"])]
    model = make_model(nodes, X, ["y", "lx"], inits)
    r = compress(model)
    assert r.verification.passed and weight_shapes(r.model, "Conv")[0][0] == 5
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    assert verify(model, model, feeds, optimized=False).passed
    shifted = make_model([*nodes[:3], node("Neg", ["x"], ["nx"]), node("Log", ["nx"], ["lx"])], X, ["y", "lx"], inits)
    v = verify(model, shifted, feeds, optimized=False)
    assert not v.passed and v.outputs["y"]["passed"] and not v.outputs["lx"]["passed"]


@pytest.mark.parametrize("opset,groups,params", [(18, 2, 2), (21, 4, 8), (18, 1, 1)])
def test_group_norm_loses_whole_dead_groups_only(opset, groups, params):
    dead = [4, 5, 6, 7]  # the last half: one whole group of 2, two of 4, part of the only group of 1
    conv, inits = _conv_a(dead=dead)
    nodes = [conv, node("GroupNormalization", ["a", "gs", "gb"], ["n"], num_groups=groups),
             node("Relu", ["n"], ["r"]), node("Conv", ["r", "w1"], ["y"])]
    inits |= {"gs": vec(params, 0.5, 1.5), "gb": vec(params), "w1": conv_weight(5, 8, 1)}
    r = _exact(make_model(nodes, X, ["y"], inits, opset=opset))
    gn = next(n for n in r.model.graph.node if n.op_type == "GroupNormalization")
    kept_groups = {a.name: a.i for a in gn.attribute}["num_groups"]
    assert weight_shapes(r.model, "Conv")[0][0] == (8 if groups == 1 else 4)
    assert kept_groups == (1 if groups == 1 else groups // 2)
    if groups > 1:  # a partly dead group stays whole
        conv, inits2 = _conv_a(dead=[3, 4, 5, 6, 7])
        r = _exact(make_model([conv, *nodes[1:]], X, ["y"], inits | {"w0": inits2["w0"]}, opset=opset))
        assert weight_shapes(r.model, "Conv")[0][0] == 4


def test_pass_contract_names_the_failing_pass_and_catches_input_mutation():
    from ltc.passes import Pass, PassResult, Sequential

    class Crashes(Pass):
        name = "crashes"

        def call(self, model):
            raise ValueError("boom")

    class Mutates(Pass):
        name = "mutates"

        def call(self, model):
            model.graph.node[0].name = "renamed"  # edits its input in place
            return PassResult(model, True)

    conv, inits = _conv_a()
    model = make_model([conv, node("Conv", ["a", "w1"], ["y"])], X, ["y"], inits | {"w1": conv_weight(5, 8, 1)})
    with pytest.raises(InternalError, match="crashes: ValueError: boom"):
        Sequential(Crashes())(model)
    with pytest.raises(InternalError, match="mutates: the pass modified its input model"):
        Mutates()(model)

    class EditsWeights(Pass):
        name = "edits-weights"

        def call(self, model):
            t = model.graph.initializer[0]  # same name, shape and type: only the values change
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1, t.name))
            return PassResult(model, True)

    with pytest.raises(InternalError, match="edits-weights: the pass modified its input model"):
        EditsWeights()(onnx.ModelProto.FromString(model.SerializeToString()))
    r = Sequential(RemoveDeadChannels())(model)  # typed results, with the dict view kept
    assert r.info.steps[0][1].info.removed_classes == 3 and r.details["remove-dead-channels"]["removed_classes"] == 3


def test_a_dead_filter_both_frozen_and_pinned_counts_as_pinned():
    """A class an op ltc does not handle freezes and a LayerNorm over the channels pins: no exact tool
    could remove it (the pin alone forbids it), so it is not counted against ltc as blocked."""
    from ltc.passes.pipeline import inspect

    nodes = [node("Conv", ["x", "wj"], ["j"]), node("LRN", ["j"], ["jl"], size=3),
             node("Transpose", ["j"], ["jt"], perm=[0, 2, 3, 1]),
             node("LayerNormalization", ["jt", "ln_s", "ln_b"], ["jn"], axis=-1), node("MatMul", ["jn", "wm"], ["ym"])]
    inits = {"wj": conv_weight(6, 4, 1, dead=[4]), "wm": RNG.standard_normal((6, 3)).astype(np.float32),
             "ln_s": np.ones(6, np.float32), "ln_b": np.zeros(6, np.float32)}
    d = inspect(make_model(nodes, {"x": ["N", 4, 6, 6]}, ["jl", "ym"], inits))["dead_filters"]
    assert (d["dead"], d["pinned"], d["blocked"]) == (1, 1, 0)


def test_inspect_sorts_every_dead_filter_into_removed_coupled_pinned_unfoldable_or_blocked():
    from ltc.passes.pipeline import inspect

    x4 = {"x": ["N", 4, 6, 6]}
    w = {"wa": conv_weight(6, 4, 1, dead=[1, 2]), "wb": conv_weight(3, 6, 1),  # removable
         "wc": conv_weight(6, 4, 1, dead=[0]), "wd": conv_weight(6, 4, 1), "we": conv_weight(3, 6, 1),  # coupled
         "wf": conv_weight(6, 4, 1, dead=[3]), "bf": np.where(np.arange(6) == 3, 1.0, 0.0).astype(np.float32),
         "wg": conv_weight(6, 3, 3),  # a transposed conv reading a constant 1: unfoldable
         "wh": conv_weight(6, 4, 1, dead=[2]), "wi": conv_weight(3, 6, 1),  # behind LRN (no rule): blocked
         "wj": conv_weight(6, 4, 1, dead=[4]), "wm": RNG.standard_normal((6, 3)).astype(np.float32)}  # pinned
    nodes = [node("Conv", ["x", "wa"], ["a"]), node("Relu", ["a"], ["ar"]), node("Conv", ["ar", "wb"], ["yb"]),
             node("Conv", ["x", "wc"], ["c"]), node("Conv", ["x", "wd"], ["d"]), node("Add", ["c", "d"], ["cd"]),
             node("Relu", ["cd"], ["cdr"]), node("Conv", ["cdr", "we"], ["ye"]),
             node("Conv", ["x", "wf", "bf"], ["f"]), node("Relu", ["f"], ["fr"]),
             node("ConvTranspose", ["fr", "wg"], ["yg"], pads=[1, 1, 1, 1]),
             node("Conv", ["x", "wh"], ["h"]), node("LRN", ["h"], ["hl"], size=3), node("Conv", ["hl", "wi"], ["yi"]),
             node("Conv", ["x", "wj"], ["j"]), node("Transpose", ["j"], ["jt"], perm=[0, 2, 3, 1]),
             node("LayerNormalization", ["jt", "ln_s", "ln_b"], ["jn"], axis=-1),
             node("MatMul", ["jn", "wm"], ["ym"])]
    inits = w | {"ln_s": np.ones(6, np.float32), "ln_b": np.zeros(6, np.float32)}
    model = make_model(nodes, x4, ["yb", "ye", "yg", "yi", "ym"], inits)
    d = inspect(model)["dead_filters"]
    assert (d["dead"], d["removed"], d["coupled"], d["pinned"], d["unfoldable"], d["blocked"]) == (6, 2, 1, 1, 1, 1)
    assert d["removable_share"] == pytest.approx(2 / 3)
    assert any("LRN" in reason for reason in d["blockers"])


@pytest.mark.parametrize("delta", [1e-3, 0.05, 2.0])
def test_a_failed_verification_says_the_rtol_that_would_have_passed(delta):
    from ltc.passes import verify

    x = {"x": ["N", 4]}
    ref = make_model([node("Mul", ["x", "k"], ["y"])], x, ["y"], {"k": np.full(4, 3.0, np.float32)})
    cand = make_model([node("Mul", ["x", "k"], ["y"])], x, ["y"], {"k": np.full(4, 3.0 + delta, np.float32)})
    feeds = {"x": RNG.standard_normal((2, 4)).astype(np.float32)}
    atol = 1e-5
    out = verify(ref, cand, feeds, rtol=1e-4, atol=atol).outputs["y"]
    needed = out["rtol_needed"]
    assert needed > 0
    assert verify(ref, cand, feeds, rtol=needed * 1.001, atol=atol).passed
    assert not verify(ref, cand, feeds, rtol=needed * 0.999, atol=atol).passed


@pytest.mark.parametrize("through_identity", [False, True])
@pytest.mark.parametrize("layout", ["channel-first", "channel-last"])
def test_layer_scale_lets_dead_channels_go(layout, through_identity):
    """Mul by a learned per-channel scale (ConvNeXt/CaiT layer scale), channel-first ``[C, 1, 1]`` or
    channel-last ``[C]`` between permutes, given directly or through the legacy exporter's Identity
    dedup: dead channels are removed on both sides, exactly."""
    gamma = (RNG.random(8) + 0.5).astype(np.float32)
    g_shape = gamma.reshape(8, 1, 1) if layout == "channel-first" else gamma
    inits = {"w0": conv_weight(8, 4, 1, dead=[1, 3, 6]), "w1": conv_weight(5, 8, 1)}
    nodes = [node("Conv", ["x", "w0"], ["a"])]
    gname = "gamma"
    if through_identity:
        inits["gamma_src"] = g_shape
        nodes.append(node("Identity", ["gamma_src"], ["gamma"]))
    else:
        inits["gamma"] = g_shape
    if layout == "channel-first":
        nodes += [node("Mul", ["a", gname], ["s"])]
    else:
        nodes += [node("Transpose", ["a"], ["at"], perm=[0, 2, 3, 1]), node("Mul", ["at", gname], ["st"]),
                  node("Transpose", ["st"], ["s"], perm=[0, 3, 1, 2])]
    nodes += [node("Relu", ["s"], ["r"]), node("Conv", ["r", "w1"], ["y"])]
    model = make_model(nodes, X, ["y"], inits)
    r = compress(model)
    assert weight_shapes(r.model, "Conv") == [(5, 4, 1, 1), (5, 5, 1, 1)]
    assert_equivalent(model, r.model, X)


@pytest.mark.parametrize("elem", [onnx.TensorProto.FLOAT16, onnx.TensorProto.UINT8, onnx.TensorProto.INT8,
                                  onnx.TensorProto.INT32, onnx.TensorProto.BOOL])
def test_random_inputs_for_every_numeric_input_type(elem):
    """Verification makes seeded inputs for any numeric input type (onnx's own dtype table), so a model
    taking uint8 images or float16 runs; strings are refused with the way out."""
    from onnx import helper

    from ltc.passes.verify import random_inputs

    x = helper.make_tensor_value_info("x", elem, ["N", 3])
    y = helper.make_tensor_value_info("y", elem, ["N", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = random_inputs(model)
    assert feeds["x"].shape == (2, 3) and feeds["x"].dtype == helper.tensor_dtype_to_np_dtype(elem)
    s = helper.make_tensor_value_info("s", onnx.TensorProto.STRING, [1])
    bad = helper.make_model(helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g", [s],
                                              [helper.make_tensor_value_info("t", onnx.TensorProto.STRING, [1])]))
    with pytest.raises(LtcError, match="give real inputs with --inputs"):
        random_inputs(bad)
