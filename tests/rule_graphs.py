"""One small graph per rule-table op: x -> Conv 'a' (8 channels) -> the op -> a consumer -> y.

Each builder returns ``(nodes, inits, inputs, op_output)``; the consumer reads ``op_output``. The
graphs are shared by the permutation property test and the removal test.
"""

from __future__ import annotations

import numpy as np

from tests.helpers import conv_weight, make_model, node, vec

X = {"x": ["N", 4, 6, 6]}


def _c(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return vec(int(np.prod(shape)), low, high).reshape(shape)


def _unary(op: str, pre: str | None = None, **attrs):
    def build():
        nodes, src = [], "a"
        if pre:
            nodes.append(node(pre, ["a"], ["p"]))
            src = "p"
        return [*nodes, node(op, [src], ["b"], **attrs)], {}, "b", 8
    return build


def _with_params(op: str, params: dict, **attrs):
    def build():
        return [node(op, ["a", *params], ["b"], **attrs)], dict(params), "b", 8
    return build


def _merge(op: str, variadic: bool = False):
    def build():
        if variadic:
            return ([node("Relu", ["a"], ["r"]), node(op, ["a", "r", "k"], ["b"])],
                    {"k": _c(1, 8, 1, 1)}, "b", 8)
        if op == "Pow":
            return [node("Abs", ["a"], ["p"]), node(op, ["p", "k"], ["b"])], {"k": np.float32(2.0)}, "b", 8
        if op == "Div":
            return [node(op, ["a", "k"], ["b"])], {"k": _c(8, 1, 1, low=0.5, high=2.0)}, "b", 8
        return [node(op, ["a", "k"], ["b"])], {"k": _c(8, 1, 1)}, "b", 8
    return build


def _softmax(op: str):
    def build():  # (Hardmax over the channels breaks ties by position: frozen, tests/test_exactness_families.py)
        return [node(op, ["a"], ["b"], axis=3 if op == "Hardmax" else 1)], {}, "b", 8
    return build


def _reduce(op: str):
    def build():
        return [node(op, ["a", "ax"], ["b"], keepdims=1)], {"ax": np.array([3], np.int64)}, "b", 8
    return build


def _concat():
    return [node("Relu", ["a"], ["r"]), node("Concat", ["a", "r"], ["b"], axis=1)], {}, "b", 16


def _split():
    nodes = [node("Split", ["a", "sp"], ["s0", "s1"], axis=1), node("Relu", ["s0"], ["r0"]),
             node("Sigmoid", ["s1"], ["r1"]), node("Concat", ["r1", "r0"], ["b"], axis=1)]
    return nodes, {"sp": np.array([3, 5], np.int64)}, "b", 8


def _slice():
    inits = {"st": np.array([2], np.int64), "en": np.array([7], np.int64), "ax": np.array([1], np.int64)}
    return [node("Slice", ["a", "st", "en", "ax"], ["b"])], inits, "b", 5


def _transpose():
    return ([node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]), node("Relu", ["t"], ["r"]),
             node("Transpose", ["r"], ["b"], perm=[0, 3, 1, 2])], {}, "b", 8)


def _layernorm():
    return ([node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             node("LayerNormalization", ["t", "g", "be"], ["n"], axis=-1),
             node("Transpose", ["n"], ["b"], perm=[0, 3, 1, 2])], {"g": _c(8), "be": _c(8)}, "b", 8)


def _conv_group(group: int):
    def build():
        return [node("Conv", ["a", "gw", "gb"], ["b"], group=group, pads=[1] * 4)], \
            {"gw": conv_weight(8, 8 // group), "gb": vec(8)}, "b", 8
    return build


def _conv_transpose():
    ct = _c(8, 6, 2, 2)
    return [node("ConvTranspose", ["a", "ct", "cb"], ["b"], strides=[2, 2])], {"ct": ct, "cb": vec(6)}, "b", 6


# builders whose consumer is a Gemm on [N, F] (their op ends in a 2-D tensor)
def _flatten():
    return [node("GlobalAveragePool", ["a"], ["g"]), node("Flatten", ["g"], ["b"], axis=1)], {}, "b", -8


def _reshape():
    return ([node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Reshape", ["m", "shape"], ["b"])], {"shape": np.array([-1, 72], np.int64)}, "b", -72)


def _squeeze():
    return ([node("GlobalAveragePool", ["a"], ["g"]), node("Squeeze", ["g", "sq"], ["b"])],
            {"sq": np.array([2, 3], np.int64)}, "b", -8)


def _unsqueeze():
    return ([node("GlobalAveragePool", ["a"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Unsqueeze", ["f", "uq"], ["b"])], {"uq": np.array([2, 3], np.int64)}, "b", 8)


def _shape():
    nodes = [node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2]), node("Shape", ["m"], ["s"]),
             node("Gather", ["s", "zero"], ["n0"], axis=0), node("Unsqueeze", ["n0", "uq"], ["n1"]),
             node("Concat", ["n1", "minus1"], ["tgt"], axis=0), node("Reshape", ["m", "tgt"], ["b"])]
    inits = {"zero": np.array(0, np.int64), "uq": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    return nodes, inits, "b", -72


def _gemm():
    nodes = [node("GlobalAveragePool", ["a"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "gw", "gb"], ["h"], transB=1, alpha=0.5, beta=2.0), node("Relu", ["h"], ["r"]),
             node("Transpose", ["r"], ["rt"], perm=[1, 0]),
             node("Gemm", ["rt", "gw2", "gb2"], ["b"], transA=1)]
    return nodes, {"gw": _c(12, 8), "gb": _c(12), "gw2": _c(12, 8), "gb2": _c(1)}, "b", -8


def _matmul():
    """A Linear MLP on a channel-last tensor: Transpose -> MatMul + Add -> Gelu -> MatMul + Add -> Transpose."""
    nodes = [node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             node("MatMul", ["t", "m1"], ["h"]), node("Add", ["h", "mb1"], ["hb"]), node("Gelu", ["hb"], ["ge"]),
             node("MatMul", ["ge", "m2"], ["o"]), node("Add", ["o", "mb2"], ["ob"]),
             node("Transpose", ["ob"], ["b"], perm=[0, 3, 1, 2])]
    return nodes, {"m1": _c(8, 16), "mb1": _c(16), "m2": _c(16, 8), "mb2": _c(8)}, "b", 8


def _erf_gelu():
    nodes = [node("Div", ["a", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["e1"]),
             node("Mul", ["a", "e1"], ["m"]), node("Mul", ["m", "half"], ["b"])]
    return nodes, {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}, "b", 8


def _gather():  # a channel selection with a repeat, a negative index and two channels left out
    return [node("Gather", ["a", "gi"], ["b"], axis=1)], {"gi": np.array([5, 0, -1, 2, 5, 3, 1], np.int64)}, "b", 7


def _gather_spatial():  # on a spatial axis: channels pass through
    return [node("Gather", ["a", "gi"], ["b"], axis=3)], {"gi": np.array([4, 0, 1], np.int64)}, "b", 8


HEADS, PER_HEAD, TOKENS = 4, 2, 36  # attention on conv 'a' read as 36 tokens of 8 features


def _attention(fused: bool = True, unbind: str = "Split", batch: int = 0, flat_kt: bool = False):
    """Self-attention over conv 'a''s 36 positions as tokens: ``[N, 8, 6, 6] -> [N, 36, 8]``, q/k/v
    projections cut into 4 heads of 2, ``softmax(q k^T * s) v`` per head, heads merged, an output
    projection, back to ``[N, 8, 6, 6]``. ``fused``: one q/k/v Linear cut as ``[3, heads, 2]``, then
    Transpose and ``unbind`` ("Split", the legacy exporter; "Slice", dynamo's) along the q/k/v axis;
    else three Linears. ``batch``: the reshape targets' batch entry (0 copies it, -1 infers it).
    ``flat_kt``: k transposed as the dynamo exporter writes it (flattened batch and heads)."""
    c = HEADS * PER_HEAD
    nodes = [node("Reshape", ["a", "s_tokens"], ["a3"]), node("Transpose", ["a3"], ["t"], perm=[0, 2, 1])]
    inits = {"s_tokens": np.array([0, 8, TOKENS], np.int64), "s_scale": np.float32(0.7),
             "s_merge": np.array([batch, TOKENS, c], np.int64), "wp": _c(c, 8), "bp": _c(8),
             "s_back": np.array([0, 8, 6, 6], np.int64)}
    if fused:
        inits |= {"wqkv": _c(8, 3 * c), "bqkv": _c(3 * c), "s_heads": np.array([batch, TOKENS, 3, HEADS, PER_HEAD], np.int64)}
        nodes += [node("MatMul", ["t", "wqkv"], ["qkv0"]), node("Add", ["qkv0", "bqkv"], ["qkv"]),
                  node("Reshape", ["qkv", "s_heads"], ["r5"]), node("Transpose", ["r5"], ["p"], perm=[2, 0, 3, 1, 4])]
        if unbind == "Split":
            inits["ones"] = np.array([1, 1, 1], np.int64)
            nodes.append(node("Split", ["p", "ones"], ["p0", "p1", "p2"], axis=0))
        else:
            for i in range(3):
                inits |= {f"st{i}": np.array([i], np.int64), f"en{i}": np.array([i + 1], np.int64)}
                nodes.append(node("Slice", ["p", f"st{i}", f"en{i}", "ax0"], [f"p{i}"]))
        inits["ax0"] = np.array([0], np.int64)
        nodes += [node("Squeeze", [f"p{i}", "ax0"], [name]) for i, name in enumerate("qkv")]
        if flat_kt:  # dynamo's k.transpose(-2, -1): batch and heads flattened, transposed, reshaped back
            inits |= {"s_flat": np.array([-1, TOKENS, PER_HEAD], np.int64), "i0": np.array([0], np.int64),
                      "im1": np.array([-1], np.int64), "im2": np.array([-2], np.int64),
                      "ibig": np.array([2**62], np.int64)}
            nodes += [node("Shape", ["k"], ["ks"]), node("Slice", ["ks", "i0", "im2"], ["k_lead"]),
                      node("Slice", ["ks", "im1", "ibig"], ["k_last"]), node("Slice", ["ks", "im2", "im1"], ["k_prev"]),
                      node("Concat", ["k_lead", "k_last", "k_prev"], ["k_tgt"], axis=0),
                      node("Reshape", ["k", "s_flat"], ["kf"]), node("Transpose", ["kf"], ["kft"], perm=[0, 2, 1]),
                      node("Reshape", ["kft", "k_tgt"], ["kt"])]
        else:
            nodes.append(node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]))
    else:
        inits["s_heads"] = np.array([batch, TOKENS, HEADS, PER_HEAD], np.int64)
        for name, perm in (("q", [0, 2, 1, 3]), ("kt", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            inits |= {f"w{name}": _c(8, c), f"b{name}": _c(c)}
            nodes += [node("MatMul", ["t", f"w{name}"], [f"{name}0"]), node("Add", [f"{name}0", f"b{name}"], [f"{name}1"]),
                      node("Reshape", [f"{name}1", "s_heads"], [f"{name}4"]), node("Transpose", [f"{name}4"], [name], perm=perm)]
    nodes += [node("Mul", ["q", "s_scale"], ["qs"]), node("MatMul", ["qs", "kt"], ["att"]),
              node("Softmax", ["att"], ["sm"], axis=-1), node("MatMul", ["sm", "v"], ["o"]),
              node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), node("Reshape", ["ot", "s_merge"], ["m"]),
              node("MatMul", ["m", "wp"], ["pm"]), node("Add", ["pm", "bp"], ["pr"]),
              node("Transpose", ["pr"], ["pt"], perm=[0, 2, 1]), node("Reshape", ["pt", "s_back"], ["b"])]
    return lambda: (nodes, inits, "b", 8)


UNARY = ["Relu", "Sigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Exp", "Neg", "Abs", "Sign",
         "Floor", "Ceil", "Identity", "Erf", "Selu", "Elu", "Celu"]

GRAPHS = {
    **{op: _unary(op) for op in UNARY},
    "Log": _unary("Log", pre="Abs"), "Sqrt": _unary("Sqrt", pre="Abs"), "Reciprocal": _unary("Reciprocal", pre="Exp"),
    "LeakyRelu": _unary("LeakyRelu", alpha=0.2), "ThresholdedRelu": _unary("ThresholdedRelu", alpha=0.3),
    "HardSigmoid": _unary("HardSigmoid", alpha=0.3, beta=0.4), "Gelu": _unary("Gelu"), "Cast": _unary("Cast", to=1),
    "Clip": _with_params("Clip", {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    "Dropout": _with_params("Dropout", {"ratio": np.float32(0.3)}),
    "PRelu": _with_params("PRelu", {"slope": _c(8, 1, 1)}),
    **{op: _merge(op) for op in ("Add", "Sub", "Mul", "Div", "Pow")},
    **{op: _merge(op, variadic=True) for op in ("Sum", "Mean", "Max", "Min")},
    **{op: _softmax(op) for op in ("Softmax", "LogSoftmax", "Hardmax", "LpNormalization")},
    "BatchNormalization": _with_params("BatchNormalization", {"s": _c(8), "bb": _c(8), "mu": _c(8),
                                                              "var": _c(8, low=0.5, high=2.0)}),
    "InstanceNormalization": _with_params("InstanceNormalization", {"s": _c(8), "bb": _c(8)}),
    "LayerNormalization": _layernorm,
    "GroupNormalization": _with_params("GroupNormalization", {"gs": _c(2), "gb": _c(2)}, num_groups=2),
    "MaxPool": _unary("MaxPool", kernel_shape=[3, 3], pads=[1] * 4),
    "AveragePool": _unary("AveragePool", kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1),
    "GlobalMaxPool": _unary("GlobalMaxPool"), "GlobalAveragePool": _unary("GlobalAveragePool"),
    "LpPool": _unary("LpPool", kernel_shape=[2, 2]), "GlobalLpPool": _unary("GlobalLpPool"),
    "Resize": lambda: ([node("Resize", ["a", "", "sc"], ["b"], mode="linear")],
                       {"sc": np.array([1, 1, 2, 2], np.float32)}, "b", 8),
    "Pad": lambda: ([node("Pad", ["a", "pads", "pv"], ["b"])],
                    {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pv": np.float32(0.5)}, "b", 8),
    **{op: _reduce(op) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare",
                                  "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd")},
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Shape": _shape,
    "Gather": _gather,
    "Conv": _conv_group(2), "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
}
EXTRA = {"depthwise": _conv_group(8), "gather-spatial": _gather_spatial, "erf-gelu": _erf_gelu,
         "groupnorm-per-channel": _with_params("GroupNormalization", {"gs": _c(8), "gb": _c(8)}, num_groups=4),
         "attention-fused-split": _attention(), "attention-fused-slice": _attention(unbind="Slice", batch=-1),
         "attention-separate": _attention(fused=False, batch=-1),
         "attention-dynamo": _attention(unbind="Slice", batch=-1, flat_kt=True)}


OPSET = {"Gelu": 20, "MatMul": 20, "groupnorm-per-channel": 21}  # Gelu: opset 20; per-channel GN scale: 21


def rule_model(op: str, dead: list[int] = (), zero_bias: bool = True, opset: int | None = None):
    """The graph for ``op`` with the first conv's filters ``dead`` (bias zeroed there if ``zero_bias``)."""
    opset = opset or OPSET.get(op, 18)
    nodes, inits, out, width = {**GRAPHS, **EXTRA}[op]()
    b0 = vec(8)
    if zero_bias:
        b0[list(dead)] = 0
    inits = {"w0": conv_weight(8, 4, dead=list(dead)), "b0": b0, **inits}
    head = [node("Conv", ["x", "w0", "b0"], ["a"], pads=[1] * 4), *nodes]
    if width < 0:  # a 2-D tensor of -width features: Gemm consumer
        head.append(node("Gemm", [out, "hw", "hb"], ["y"], transB=1))
        inits |= {"hw": _c(5, -width), "hb": vec(5)}
    else:
        head.append(node("Conv", [out, "w1", "b1"], ["y"]))
        inits |= {"w1": conv_weight(5, width, 1), "b1": vec(5)}
    return make_model(head, X, ["y"], inits, opset=opset)
