"""One focused test per rule-table entry, on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest

from ltc.errors import LtcError
from ltc.passes import RULES, ChannelGraph, RemoveDeadChannels, compress
from ltc.passes.graph import import_graph
from tests.helpers import (
    assert_equivalent,
    conv_weight,
    init_shape,
    make_model,
    node,
    run,
    vec,
    weight_shapes,
)

X = {"x": ["N", 4, 6, 6]}
DEAD = [1, 4, 6]  # dead output channels of the first conv (of 8)


def producer(bias: np.ndarray | None = None, dead=DEAD, out: str = "a") -> tuple[list, dict]:
    """x -> Conv(8 filters, some all-zero) -> ``out``."""
    inits = {"w0": conv_weight(8, 4, dead=dead)}
    ins = ["x", "w0"]
    if bias is not None:
        inits["b0"] = bias
        ins.append("b0")
    return [node("Conv", ins, [out], pads=[1, 1, 1, 1])], inits


def consumer(src: str, k: int = 1, cin: int = 8, out: str = "y") -> tuple[list, dict]:
    pad = k // 2
    return ([node("Conv", [src, "w1", "b1"], [out], pads=[pad] * 4)],
            {"w1": conv_weight(5, cin, k), "b1": vec(5)})


def compressed(model, **kw):
    r = compress(model, **kw)
    assert r.verification.passed or r.lossy
    assert_equivalent(r.reference, r.model, X)
    return r


def first_conv_out(r) -> int:
    return weight_shapes(r.model, "Conv")[0][0]


def test_conv_dead_filters_zero_bias_are_removed_with_consumer_columns():
    p, pi = producer(np.where(np.isin(np.arange(8), DEAD), 0, vec(8)).astype(np.float32))
    c, ci = consumer("a", k=3)
    r = compressed(make_model(p + c, X, ["y"], pi | ci))
    assert weight_shapes(r.model, "Conv") == [(5, 4, 3, 3), (5, 5, 3, 3)]


def test_nonzero_bias_constant_folds_into_1x1_consumer():
    p, pi = producer(vec(8, 0.5, 1.0))  # dead channels output their bias: a non-zero constant
    c, ci = consumer("r")
    model = make_model(p + [node("Relu", ["a"], ["r"])] + c, X, ["y"], pi | ci)
    r = compressed(model)
    assert first_conv_out(r) == 5


def test_nonzero_constant_before_padded_conv_goes_with_its_map():
    """A dead filter's non-zero constant through a zero-padded Conv differs at the borders: removed
    exactly, its contribution added back as Conv(ones, sum_c k_c W[:, c]) with the same padding."""
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r", k=3)
    model = make_model(p + [node("Relu", ["a"], ["r"])] + c, X, ["y"], pi | ci)
    r = compressed(model)
    assert first_conv_out(r) == 5 and not r.lossy
    assert [n.op_type for n in r.model.graph.node].count("ConstantOfShape") == 1


def _grouped_padded_consumer(dead=(1, 5)):
    """x -> Conv (dead filters with a non-zero bias) -> Relu -> grouped 3x3 Conv with zero padding."""
    p, pi = producer(vec(8, 0.5, 1.0), dead=list(dead))
    c = [node("Conv", ["r", "w1", "b1"], ["y"], pads=[1] * 4, group=2)]
    return make_model(p + [node("Relu", ["a"], ["r"])] + c, X, ["y"], pi | {"w1": conv_weight(4, 4, 3), "b1": vec(4)})


def test_nonzero_constant_before_grouped_padded_conv_goes_with_its_map():
    r = compressed(_grouped_padded_consumer())
    assert first_conv_out(r) == 6 and not r.lossy
    assert [n.op_type for n in r.model.graph.node].count("ConstantOfShape") == 1


def test_allow_lossy_folds_across_padding_into_the_bias_and_reports_error():
    """--allow-lossy trades the map (extra nodes) for a per-channel bias fold, wrong at the borders."""
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r", k=3)
    r = compress(make_model(p + [node("Relu", ["a"], ["r"])] + c, X, ["y"], pi | ci), allow_lossy=True)
    assert r.lossy and first_conv_out(r) == 5
    assert "ConstantOfShape" not in [n.op_type for n in r.model.graph.node]
    assert r.verification.max_abs > 1e-3  # border pixels differ: measured, not hidden


def test_negative_constant_through_relu_is_zero_and_removable_before_padded_conv():
    p, pi = producer(vec(8, -1.0, -0.5))
    c, ci = consumer("r", k=3)
    r = compressed(make_model(p + [node("Relu", ["a"], ["r"])] + c, X, ["y"], pi | ci))
    assert first_conv_out(r) == 5


@pytest.mark.parametrize("op,attrs", [
    ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {}), ("HardSwish", {}), ("Tanh", {}),
    ("Identity", {}), ("Dropout", {}), ("Elu", {}), ("Neg", {}),
])
def test_unary_pass_through_propagates_constants(op, attrs):
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r")
    r = compressed(make_model(p + [node(op, ["a"], ["r"], **attrs)] + c, X, ["y"], pi | ci))
    assert first_conv_out(r) == 5


def test_clip_relu6_with_constant_bounds():
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r")
    inits = pi | ci | {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    r = compressed(make_model(p + [node("Clip", ["a", "lo", "hi"], ["r"])] + c, X, ["y"], inits))
    assert first_conv_out(r) == 5


def test_silu_mul_by_own_sigmoid():
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r")
    nodes = p + [node("Sigmoid", ["a"], ["s"]), node("Mul", ["a", "s"], ["r"])] + c
    r = compressed(make_model(nodes, X, ["y"], pi | ci))
    assert first_conv_out(r) == 5


def test_batchnorm_zero_scale_gives_shift_constant():
    p, pi = producer(dead=[])
    scale = vec(8, 0.5, 1.5)
    scale[DEAD] = 0  # a channel ticket zeroes BN scale: the channel outputs the BN shift
    bn = {"s": scale, "bb": vec(8), "m": vec(8), "v": vec(8, 0.5, 2)}
    c, ci = consumer("r")
    nodes = p + [node("BatchNormalization", ["a", "s", "bb", "m", "v"], ["bn"]), node("Relu", ["bn"], ["r"])] + c
    r = compressed(make_model(nodes, X, ["y"], pi | ci | bn))
    assert first_conv_out(r) == 5
    bn_shapes = [init for init in r.model.graph.initializer if init.name in ("s", "bb", "m", "v")]
    assert all(tuple(t.dims) == (5,) for t in bn_shapes)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pools_pass_channels_through(op, attrs):
    p, pi = producer()
    c, ci = consumer("r", k=1)
    r = compressed(make_model(p + [node(op, ["a"], ["r"], **attrs)] + c, X, ["y"], pi | ci))
    assert first_conv_out(r) == 5


def test_average_pool_with_padding_turns_a_nonzero_constant_into_an_image():
    """Border averages include padding zeros: not one number per channel, so the analysis gives up on
    the constant; the dead filters still go, their image written again for them (ltc.passes.chains)."""
    p, pi = producer(vec(8, 0.5, 1.0))
    c, ci = consumer("r", k=1)
    nodes = p + [node("AveragePool", ["a"], ["r"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)] + c
    model = make_model(nodes, X, ["y"], pi | ci)
    cg = ChannelGraph(import_graph(model))
    assert np.isnan(cg.const["r"]).all()
    assert first_conv_out(compressed(model)) == 5


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_over_spatial_axes_then_reshape_to_gemm(opset):
    p, pi = producer(vec(8, 0.5, 1.0))
    if opset >= 18:
        reduce = node("ReduceMean", ["a", "axes"], ["r"], keepdims=0)
        extra = {"axes": np.array([2, 3], np.int64)}
    else:
        reduce = node("ReduceMean", ["a"], ["r"], axes=[2, 3], keepdims=0)
        extra = {}
    nodes = p + [reduce, node("Gemm", ["r", "fw", "fb"], ["y"], transB=1)]
    inits = pi | extra | {"fw": vec(40).reshape(5, 8), "fb": vec(5)}
    r = compressed(make_model(nodes, X, ["y"], inits, opset=opset))
    assert first_conv_out(r) == 5
    assert weight_shapes(r.model, "Gemm") == [(5, 5)]


def test_reduce_over_channels_freezes_and_names_the_op():
    p, pi = producer()
    c, ci = consumer("a")
    nodes = p + c + [node("ReduceMean", ["a"], ["m"], axes=[1], keepdims=1), node("Add", ["y", "m"], ["z"])]
    r = compressed(make_model(nodes, X, ["z"], pi | ci))
    assert first_conv_out(r) == 8
    assert any("ReduceMean" in reason for reason in r.layers[0]["kept_because"])


def test_flatten_to_gemm_removes_feature_blocks():
    p, pi = producer()
    nodes = p + [node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
                 node("Flatten", ["m"], ["f"], axis=1), node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = pi | {"fw": vec(5 * 72).reshape(5, 72), "fb": vec(5)}
    r = compressed(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "Gemm") == [(5, 45)]  # 5 channels x 3x3 features each


def test_reshape_with_constant_target_is_rewritten():
    p, pi = producer(vec(8, 0.5, 1.0))
    nodes = p + [node("Relu", ["a"], ["r"]), node("Reshape", ["r", "shape"], ["f"]),
                 node("MatMul", ["f", "mw"], ["mm"]), node("Add", ["mm", "mb"], ["y"])]
    inits = pi | {"shape": np.array([-1, 288], np.int64), "mw": vec(288 * 5).reshape(288, 5), "mb": vec(5)}
    r = compressed(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "MatMul") == [(180, 5)]
    shape = [t for t in r.model.graph.initializer if t.name.startswith("shape")][0]
    assert list(np.frombuffer(shape.raw_data, np.int64)) == [-1, 180]


def test_reshape_with_computed_batch_dimension():
    """The legacy exporter's x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat."""
    p, pi = producer()
    nodes = p + [
        node("Shape", ["a"], ["sh"]), node("Gather", ["sh", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n", "ax0"], ["n1"]), node("Concat", ["n1", "minus1"], ["target"], axis=0),
        node("Reshape", ["a", "target"], ["f"]), node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    inits = pi | {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64),
                  "minus1": np.array([-1], np.int64), "fw": vec(5 * 288).reshape(5, 288), "fb": vec(5)}
    r = compressed(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "Gemm") == [(5, 180)]


def test_shape_reading_channel_count_freezes():
    p, pi = producer()
    c, ci = consumer("a")
    nodes = p + c + [node("Shape", ["a"], ["sh"]), node("Gather", ["sh", "one"], ["ch"], axis=0),
                     node("Cast", ["ch"], ["chf"], to=1), node("Mul", ["y", "chf"], ["z"])]
    model = make_model(nodes, X, ["z"], pi | ci | {"one": np.array(1, np.int64)})
    # the rule freezes the class whose count is read...
    assert weight_shapes(RemoveDeadChannels()(model).model, "Conv")[0][0] == 8
    # ...and compress, which first folds the static count into the original's 8, stays exact
    compressed(model)


def test_residual_add_ties_both_branches():
    # two convs feed an Add: a channel is removable only if dead in both
    nodes = [node("Conv", ["x", "wa"], ["a"], pads=[1] * 4), node("Conv", ["x", "wb"], ["b"], pads=[1] * 4),
             node("Add", ["a", "b"], ["s"]), node("Relu", ["s"], ["r"])]
    c, ci = consumer("r", k=3)
    inits = ci | {"wa": conv_weight(8, 4, dead=[1, 2, 4]), "wb": conv_weight(8, 4, dead=[2, 4, 6])}
    r = compressed(make_model(nodes + c, X, ["y"], inits))
    assert weight_shapes(r.model, "Conv")[:2] == [(6, 4, 3, 3), (6, 4, 3, 3)]


@pytest.mark.parametrize("op", ["Sub", "Max", "Min", "Sum", "Mean"])
def test_merge_ops_between_activations(op):
    nodes = [node("Conv", ["x", "wa"], ["a"], pads=[1] * 4), node("Conv", ["x", "wb"], ["b"], pads=[1] * 4),
             node(op, ["a", "b"], ["s"])]
    c, ci = consumer("s")
    inits = ci | {"wa": conv_weight(8, 4, dead=[2, 4]), "wb": conv_weight(8, 4, dead=[2, 4])}
    r = compressed(make_model(nodes + c, X, ["y"], inits))
    assert weight_shapes(r.model, "Conv")[0] == (6, 4, 3, 3)


def test_se_gate_mul_ties_gate_and_features():
    p, pi = producer()
    nodes = p + [node("Relu", ["a"], ["r"]), node("GlobalAveragePool", ["r"], ["g"]),
                 node("Conv", ["g", "sw1", "sb1"], ["s1"]), node("Relu", ["s1"], ["s2"]),
                 node("Conv", ["s2", "sw2", "sb2"], ["s3"]), node("Sigmoid", ["s3"], ["gate"]),
                 node("Mul", ["r", "gate"], ["gated"])]
    c, ci = consumer("gated", k=3)
    inits = pi | ci | {"sw1": conv_weight(2, 8, 1), "sb1": vec(2), "sw2": conv_weight(8, 2, 1), "sb2": vec(8)}
    r = compressed(make_model(nodes + c, X, ["y"], inits))
    shapes = weight_shapes(r.model, "Conv")
    assert shapes[0][0] == 5 and shapes[1] == (2, 5, 1, 1) and shapes[2] == (5, 2, 1, 1)


@pytest.mark.parametrize("op", ["Mul", "Add", "Div"])
def test_per_channel_constant_operand_is_reindexed(op):
    p, pi = producer()
    c, ci = consumer("s")
    k = vec(8, 0.5, 1.5).reshape(1, 8, 1, 1)
    r = compressed(make_model(p + [node(op, ["a", "k"], ["s"])] + c, X, ["y"], pi | ci | {"k": k}))
    assert first_conv_out(r) == 5  # for Add, dead channels become the constant k: the 1x1 conv folds it
    assert [tuple(t.dims) for t in r.model.graph.initializer if t.name.startswith("k")] == [(1, 5, 1, 1)]


def test_per_channel_add_constant_folds_into_1x1_consumer():
    p, pi = producer()
    c, ci = consumer("s")
    k = vec(8, 0.5, 1.5).reshape(8, 1, 1)
    r = compressed(make_model(p + [node("Add", ["a", "k"], ["s"])] + c, X, ["y"], pi | ci | {"k": k}))
    assert first_conv_out(r) == 5


def test_concat_offsets_consumer_columns():
    nodes = [node("Conv", ["x", "wa"], ["a"], pads=[1] * 4), node("Conv", ["x", "wb"], ["b"], pads=[1] * 4),
             node("Concat", ["a", "b", "x"], ["c"], axis=1)]
    c, ci = consumer("c", k=3, cin=16)
    inits = ci | {"wa": conv_weight(6, 4, dead=[0, 5]), "wb": conv_weight(6, 4, dead=[3])}
    r = compressed(make_model(nodes + c, X, ["y"], inits))
    assert weight_shapes(r.model, "Conv") == [(4, 4, 3, 3), (5, 4, 3, 3), (5, 13, 3, 3)]


@pytest.mark.parametrize("opset", [13, 18])
def test_split_sizes_are_rewritten(opset):
    p, pi = producer(dead=[0, 1, 6])
    if opset >= 18:
        split = node("Split", ["a"], ["s0", "s1"], axis=1, num_outputs=2)
        extra = {}
    else:
        split = node("Split", ["a", "sizes"], ["s0", "s1"], axis=1)
        extra = {"sizes": np.array([4, 4], np.int64)}
    nodes = p + [split, node("Conv", ["s0", "wa"], ["ya"]), node("Conv", ["s1", "wb"], ["yb"])]
    inits = pi | extra | {"wa": conv_weight(3, 4, 1), "wb": conv_weight(3, 4, 1)}
    r = compress(make_model(nodes, X, ["ya", "yb"], inits, opset=opset))
    assert r.verification.passed
    assert_equivalent(r.reference, r.model, X)
    assert weight_shapes(r.model, "Conv") == [(5, 4, 3, 3), (3, 2, 1, 1), (3, 3, 1, 1)]


def test_slice_on_channel_axis_is_rewritten():
    p, pi = producer(dead=[0, 3, 6])
    nodes = p + [node("Slice", ["a", "st", "en", "ax"], ["s"]), node("Conv", ["s", "ws"], ["y"])]
    inits = pi | {"st": np.array([2], np.int64), "en": np.array([7], np.int64), "ax": np.array([1], np.int64),
                  "ws": conv_weight(3, 5, 1)}
    r = compressed(make_model(nodes, X, ["y"], inits))
    # channels 0, 1 are outside the slice and nobody reads them: removed; 3 and 6 are dead inside it
    assert weight_shapes(r.model, "Conv") == [(3, 4, 3, 3), (3, 3, 1, 1)]


def test_depthwise_conv_follows_its_input_and_updates_group():
    p, pi = producer()
    nodes = p + [node("Relu", ["a"], ["r"]), node("Conv", ["r", "dw", "db"], ["d"], group=8, pads=[1] * 4),
                 node("Relu", ["d"], ["dr"])]
    c, ci = consumer("dr")
    db = vec(8)
    db[DEAD] = -1.0  # relu(negative) = 0: exactly zero after the depthwise
    r = compressed(make_model(nodes + c, X, ["y"], pi | ci | {"dw": conv_weight(8, 1), "db": db}))
    assert [n for n in r.model.graph.node if n.op_type == "Conv"][1].attribute[0].i == 5
    assert weight_shapes(r.model, "Conv")[1] == (5, 1, 3, 3)


def test_grouped_conv_removes_equally_per_group():
    # group=2 over 8 channels: dead inputs {1, 4, 6} are 1 in group 0 and 2 in group 1 -> 1 per group goes
    p, pi = producer()
    nodes = p + [node("Conv", ["a", "gw"], ["g"], group=2, pads=[1] * 4)]
    c, ci = consumer("g", cin=6)
    r = compressed(make_model(nodes + c, X, ["y"], pi | ci | {"gw": conv_weight(6, 4)}))
    assert weight_shapes(r.model, "Conv")[:2] == [(6, 4, 3, 3), (6, 3, 3, 3)]


def test_grouped_conv_dead_output_channels_are_balanced():
    nodes = [node("Conv", ["x", "gw"], ["g"], group=2, pads=[1] * 4)]
    c, ci = consumer("g", cin=8)
    gw = conv_weight(8, 2)
    gw[[0, 1, 5]] = 0  # group 0 (rows 0-3) has 2 dead, group 1 has 1 dead
    r = compressed(make_model(nodes + c, X, ["y"], ci | {"gw": gw}))
    assert weight_shapes(r.model, "Conv") == [(6, 2, 3, 3), (5, 6, 1, 1)]


def _unequal_grouped(dead_in: list[int], groups: int = 2, hw: int = 6):
    """x -> Conv(8 filters, ``dead_in`` all-zero) -> Conv(group=groups, 8 -> 8) -> Conv 1x1."""
    dead = np.zeros(8, bool)
    dead[dead_in] = True
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
             node("Conv", ["a", "gw", "gb"], ["g"], group=groups, pads=[1] * 4)]
    c, ci = consumer("g", cin=8)
    inits = {"w0": conv_weight(8, 4, dead=list(np.flatnonzero(dead))), "gw": conv_weight(8, 8 // groups),
             "gb": vec(8)} | ci
    return make_model(nodes + c, {"x": ["N", 4, hw, hw]}, ["y"], inits)


@pytest.mark.parametrize("mode", ["never", "always"])
def test_grouped_conv_with_unequal_dead_inputs(mode):
    """Group 0 loses 3 inputs, group 1 one: "never" keeps 3 per group (equal groups), "always" splits
    the Conv into one per group (a Split, two Convs, a Concat), exact either way."""
    model = _unequal_grouped([0, 1, 2, 5])
    r = compressed(model, unequal_groups=mode)
    shapes = weight_shapes(r.model, "Conv")
    ops = [n.op_type for n in r.model.graph.node]
    if mode == "never":
        assert shapes[1] == (8, 3, 3, 3) and "Split" not in ops  # 6 inputs kept (1 extra dead in group 0)
    else:
        assert shapes[1:3] == [(4, 1, 3, 3), (4, 3, 3, 3)] and ops.count("Split") == 1 and ops.count("Concat") == 1
        assert r.after["parameters"] < compress(model, unequal_groups="never").after["parameters"]


def test_unequal_groups_auto_splits_only_where_predicted_faster():
    """auto: a tiny layer keeps equal groups (one more Conv costs more than it saves); a large one
    with one group nearly empty is split."""
    small = compress(_unequal_grouped([0, 1, 2, 5]), unequal_groups="auto")
    assert "Split" not in [n.op_type for n in small.model.graph.node]
    big = compress(_unequal_grouped([0, 1, 2], hw=64), unequal_groups="auto")
    assert big.verification.passed and "Split" in [n.op_type for n in big.model.graph.node]


def test_segment_groups_merges_runs_of_equal_widths():
    from ltc.passes.cost import segment_groups

    # widths in/out per group; a group without outputs is a boundary and in no segment
    segs, _ = segment_groups([2, 2, 2, 3, 1, 1], [2, 2, 2, 3, 0, 4], 9, overhead=1e9)
    assert segs == [(0, 3), (3, 4), (5, 6)]
    segs, _ = segment_groups([4, 4, 4, 4], [4, 4, 4, 4], 9, overhead=0.0)
    assert segs[0][0] == 0 and segs[-1][1] == 4 and all(a < b for a, b in segs)
    with pytest.raises(LtcError, match="unequal_groups must be one of"):
        RemoveDeadChannels(unequal_groups="sometimes")


def test_conv_transpose_input_and_output_axes():
    p, pi = producer()
    ct = np.random.default_rng(0).standard_normal((8, 6, 2, 2)).astype(np.float32)
    ct[:, [2]] = 0  # output channel 2 of the transposed conv is dead
    nodes = p + [node("ConvTranspose", ["a", "ct"], ["t"], strides=[2, 2])]
    c, ci = consumer("t", cin=6)
    r = compressed(make_model(nodes + c, X, ["y"], pi | ci | {"ct": ct}))
    assert weight_shapes(r.model, "ConvTranspose") == [(5, 5, 2, 2)]


def test_matmul_constant_folds_into_following_bias_add():
    nodes = [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             node("Relu", ["h"], ["r"]), node("MatMul", ["r", "w2"], ["m"]), node("Add", ["m", "b2"], ["y"])]
    w1 = vec(16 * 144).reshape(16, 144)
    w1[[3, 7, 9]] = 0
    b1 = vec(16, 0.2, 1.0)  # dead neurons output relu(b) > 0: folded into the bias Add
    inits = {"w1": w1, "b1": b1, "w2": vec(16 * 5).reshape(16, 5), "b2": vec(5)}
    r = compressed(make_model(nodes, X, ["y"], inits))
    assert weight_shapes(r.model, "MatMul") == [(13, 5)]


def test_unknown_op_freezes_and_is_named():
    p, pi = producer()
    c, ci = consumer("s")
    r = compressed(make_model(p + [node("Softmax", ["a"], ["s"], axis=1)] + c, X, ["y"], pi | ci))
    assert first_conv_out(r) == 8
    assert any("Softmax" in reason for reason in r.frozen)


def test_round_to_keeps_extra_dead_channels():
    p, pi = producer(dead=[0, 1, 2, 3, 5])
    c, ci = consumer("a")
    r = compressed(make_model(p + c, X, ["y"], pi | ci), round_to=4)
    assert first_conv_out(r) == 4  # 3 live + 1 dead kept so 4 | count
    assert sum(r.layers[0]["kept_because"].values()) == 1


def test_layer_with_every_channel_dead_keeps_one_and_says_so():
    p, pi = producer(dead=list(range(8)))
    c, ci = consumer("a")
    r = compressed(make_model(p + c, X, ["y"], pi | ci))
    assert first_conv_out(r) == 1
    assert any("every channel" in n for n in r.notes)


@pytest.mark.parametrize("opset", [13, 15, 17, 19, 21])
def test_opsets_13_to_21(opset):
    p, pi = producer()
    c, ci = consumer("r")
    nodes = p + [node("Relu", ["a"], ["r"])] + c
    r = compressed(make_model(nodes, X, ["y"], pi | ci, opset=opset))
    assert first_conv_out(r) == 5
    assert r.model.opset_import[0].version == opset


def test_graph_outputs_keep_their_channels():
    p, pi = producer()
    r = compressed(make_model(p, X, ["a"], pi))
    assert first_conv_out(r) == 8


def test_rule_table_covers_the_required_ops():
    required = {"Conv", "ConvTranspose", "BatchNormalization", "Gemm", "MatMul", "Relu", "LeakyRelu", "Clip",
                "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool",
                "ReduceMean", "Flatten", "Reshape", "Add", "Sub", "Mul", "Sum", "Concat", "Split", "Slice",
                "Dropout", "Identity", "Div"}
    assert required <= set(RULES)


def test_grouped_conv_drops_whole_groups_and_updates_group():
    # group=4 over 8 in / 8 out: group 1 (inputs 2,3 and outputs 2,3) is entirely dead
    p, pi = producer(dead=[2, 3])
    gw = conv_weight(8, 2)
    gw[[2, 3]] = 0
    nodes = p + [node("Conv", ["a", "gw"], ["g"], group=4, pads=[1] * 4)]
    c, ci = consumer("g", cin=8)
    r = compressed(make_model(nodes + c, X, ["y"], pi | ci | {"gw": gw}))
    grouped = [n for n in r.model.graph.node if n.op_type == "Conv"][1]
    assert {a.name: a.i for a in grouped.attribute}["group"] == 3
    assert weight_shapes(r.model, "Conv") == [(6, 4, 3, 3), (6, 2, 3, 3), (5, 6, 1, 1)]


def test_depthwise_with_channel_multiplier():
    # group = C_in = 4, C_out = 8: input channel c feeds outputs 2c and 2c+1
    dw = conv_weight(8, 1)
    dw[[2, 3]] = 0  # both outputs of input channel 1 dead
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
             node("Conv", ["a", "dw"], ["d"], group=4, pads=[1] * 4)]
    c, ci = consumer("d", cin=8)
    w0 = conv_weight(4, 4, dead=[1])
    r = compressed(make_model(nodes + c, X, ["y"], ci | {"w0": w0, "dw": dw}))
    assert weight_shapes(r.model, "Conv") == [(3, 4, 3, 3), (6, 1, 3, 3), (5, 6, 1, 1)]


def test_spatial_attention_map_broadcast_over_channels():
    # y = a * sigmoid(conv_to_1_channel(x)): the [N,1,H,W] map does not tie a's channels
    p, pi = producer()
    nodes = p + [node("Conv", ["x", "wm"], ["m"], pads=[1] * 4), node("Sigmoid", ["m"], ["sm"]),
                 node("Mul", ["a", "sm"], ["g"])]
    c, ci = consumer("g", k=3)
    r = compressed(make_model(nodes + c, X, ["y"], pi | ci | {"wm": conv_weight(1, 4)}))
    assert first_conv_out(r) == 5


def _decomposed_group_norm(groups: int, shape_from: str):
    """Conv (dead filters) -> GroupNorm as the exporters write it below opset 18: Reshape to
    [N, groups, -1] -> InstanceNormalization -> Reshape back (to Shape(x), or a constant) -> per-channel
    Mul/Add -> Conv."""
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
             node("Reshape", ["a", "t"], ["r"]),
             node("InstanceNormalization", ["r", "s", "b"], ["n"], epsilon=1e-5)]
    inits = {"w0": conv_weight(8, 4, dead=DEAD), "t": np.array([0, groups, -1], np.int64),
             "s": np.ones(groups, np.float32), "b": np.zeros(groups, np.float32),
             "gamma": (RNG_GN.random((8, 1, 1)) + 0.5).astype(np.float32),
             "beta": RNG_GN.standard_normal((8, 1, 1)).astype(np.float32)}
    if shape_from.startswith("shape"):  # (the dynamo exporter writes Shape with start=0 explicitly)
        nodes.append(node("Shape", ["a"], ["sa"], **({"start": 0} if shape_from == "shape-start0" else {})))
        nodes.append(node("Reshape", ["n", "sa"], ["back"]))
    else:
        inits["full"] = np.array([2, 8, 6, 6], np.int64)
        nodes.append(node("Reshape", ["n", "full"], ["back"]))
    nodes += [node("Mul", ["back", "gamma"], ["m"]), node("Add", ["m", "beta"], ["g"])]
    c, ci = consumer("g")
    x = {"x": [2, 4, 6, 6]} if shape_from == "const" else X
    return make_model(nodes + c, x, ["y"], inits | ci), x


RNG_GN = np.random.default_rng(7)


@pytest.mark.parametrize("shape_from", ["shape", "shape-start0", "const"])
def test_decomposed_group_norm_over_all_channels_pins_them(shape_from):
    """GroupNorm(1) written as Reshape -> InstanceNormalization -> Reshape reads every channel together:
    its dead channels are pinned (not frozen by the Reshape), nothing is removed, the output is exact,
    and a permutation of the class leaves the output unchanged."""
    from ltc.passes import ChannelGraph, apply_reindex, permutation_plan
    from ltc.passes.graph import export_graph, import_graph
    from ltc.passes.pipeline import inspect

    model, x = _decomposed_group_norm(1, shape_from)
    d = inspect(model)["dead_filters"]
    assert (d["dead"], d["pinned"], d["removed"], d["blocked"]) == (3, 3, 0, 0)
    r = compress(model)
    assert r.verification.passed and weight_shapes(r.model, "Conv")[0] == (8, 4, 3, 3)
    cg = ChannelGraph(import_graph(model))
    plan = permutation_plan(cg, np.random.default_rng(0))
    moved = plan.get("a")
    assert moved is not None and not np.array_equal(moved, np.arange(8))  # the class is permutable
    apply_reindex(cg, plan)
    assert_equivalent(model, export_graph(cg.graph, model), x)


def test_decomposed_group_norm_with_several_groups_stays_frozen_and_exact():
    """With 2 groups the channels could go in whole groups only; ltc does not rewrite that pattern, so
    they stay (frozen by the Reshape, named as the reason) and the output is exact."""
    from ltc.passes.pipeline import inspect

    model, x = _decomposed_group_norm(2, "shape")
    d = inspect(model)["dead_filters"]
    assert d["removed"] == 0 and d["blocked"] == 3 and any("Reshape" in k for k in d["blockers"])
    r = compress(model)
    assert r.verification.passed
    assert_equivalent(model, r.model, x)


@pytest.mark.parametrize("n", [2, "N"])
def test_flatten2_with_a_shape_read_target_lets_dead_channels_go(n):
    """``x.flatten(2)`` as the legacy exporter writes it with a dynamic batch: Reshape(x, Concat(Shape(x)[0:2],
    [-1])). The target reads x's own channel count at run time, so removal stays exact and the dead
    channels go (EfficientFormer's move from conv stages to token stages); the Shape is not a blocker."""
    rng = np.random.default_rng(3)
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["ar"]),
             node("Shape", ["ar"], ["s"]), node("Slice", ["s", "st", "en", "ax"], ["nc"]),
             node("Concat", ["nc", "m1"], ["tgt"], axis=0), node("Reshape", ["ar", "tgt"], ["f"]),
             node("Transpose", ["f"], ["t"], perm=[0, 2, 1]), node("MatMul", ["t", "wl"], ["y"])]
    inits = {"w0": conv_weight(8, 4, dead=DEAD), "st": np.array([0], np.int64), "en": np.array([2], np.int64),
             "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64),
             "wl": rng.standard_normal((8, 5)).astype(np.float32)}
    x = {"x": [n, 4, 6, 6]}
    model = make_model(nodes, x, ["y"], inits)
    r = compress(model)
    assert r.verification.passed
    assert_equivalent(model, r.model, {"x": [2, 4, 6, 6]})
    assert weight_shapes(r.model, "Conv")[0][0] == 5  # the 3 dead filters are gone
    assert sorted(tuple(t.dims) for t in r.model.graph.initializer if t.name.startswith("wl"))[0] == (5, 5)


@pytest.mark.parametrize(("join", "seed"), [(j, s) for j in ("Concat", "Add", "Mul", "Max") for s in range(3)])
def test_after_a_group_norm_whose_shapes_are_not_inferred_joins_still_remove(join, seed):
    """A group norm as the exporters write it below opset 18 (Reshape -> InstanceNormalization ->
    Reshape to the input's Shape -> Mul -> Add), where ONNX shape inference stops, leaves every later
    tensor without a shape. A Concat or an elementwise op there takes its shape from its inputs, so
    the dead filters (zero bias) of the Convs that meet at it still go, and the model is exact."""
    rng = np.random.default_rng(seed)
    c = 8
    dead = [np.flatnonzero(rng.random(c) < 0.5) for _ in range(2)]
    inits = {"to": np.array([0, 2, -1], np.int64), "ones": np.ones(2, np.float32), "zeros": np.zeros(2, np.float32),
             "gs": rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32), "gb": rng.standard_normal((4, 1, 1)).astype(np.float32)}
    nodes = [node("Reshape", ["x", "to"], ["gr"]), node("InstanceNormalization", ["gr", "ones", "zeros"], ["gi"]),
             node("Shape", ["x"], ["gx"]), node("Reshape", ["gi", "gx"], ["gn"]), node("Mul", ["gn", "gs"], ["gm"]),
             node("Add", ["gm", "gb"], ["g"])]
    for k in range(2):
        w = rng.standard_normal((c, 4, 3, 3)).astype(np.float32)
        w[dead[k]] = 0
        inits[f"w{k}"] = w
        nodes += [node("Conv", ["g", f"w{k}"], [f"c{k}"], pads=[1] * 4), node("Relu", [f"c{k}"], [f"r{k}"])]
    nodes.append(node(join, ["r0", "r1"], ["j"], **({"axis": 1} if join == "Concat" else {})))
    width = 2 * c if join == "Concat" else c
    inits["w2"] = rng.standard_normal((5, width, 1, 1)).astype(np.float32)
    nodes.append(node("Conv", ["j", "w2"], ["y"]))
    model = make_model(nodes, {"x": ["N", 4, 6, 6]}, ["y"], inits, opset=13)  # (Shape-13: no data propagation)
    r = compress(model)
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    want, got = run(model, {"x": x})[0], run(r.model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 + 1e-4 * float(np.abs(want).max()))
    # Concat: each dead filter goes; Add/Max: where both are dead (0 + 0); Mul: where either is (0 * x)
    both, either = np.intersect1d(*dead), np.union1d(*dead)
    gone = {"Concat": dead, "Add": [both, both], "Max": [both, both], "Mul": [either, either]}[join]
    for k in range(2):
        assert init_shape(r.model, f"w{k}")[0] == c - len(gone[k]), (join, seed, dead)
