"""Weight layers: Conv (dense, grouped, depthwise), ConvTranspose, Gemm, MatMul.

A layer's filters define its output channels whatever its input is, so its outputs are analysed even
when its input cannot be (that input alone freezes). Each layer records: the weight axes that follow
its input and output channels, which output filters are all zero (evidence of dead channels), which
input units its weights ignore, how a constant input folds into its bias, and its MAC formula.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ltc.passes.records import BiasSlot, ChannelTensor, Contraction, Depthwise, GroupedConv
from ltc.passes.rules import (
    NAN,
    Refuse,
    Rule,
    ShapeOf,
    const_value,
    no_padding,
    op_of,
    register,
    static,
    zero_rows,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from ltc.passes.channels import NodeView


def _weight(v: NodeView, computed: str = "weight is computed, not a constant") -> np.ndarray:
    w = v.value(1)
    if w is None:
        raise Refuse(f"{v.where}: {computed}")
    if not np.issubdtype(w.dtype, np.floating):
        raise Refuse(f"{v.where}: weight is not floating point")
    if not np.isfinite(w).all():  # ONNX Runtime's kernels disagree on NaN x padding: nothing around it may change
        raise Refuse(f"{v.where}: weight holds NaN or infinity")
    return w


def _bias(v: NodeView, n: int) -> np.ndarray | None:
    b = v.need_value(2, "bias")
    if b is not None and b.shape != (n,):
        raise Refuse(f"{v.where}: bias shape {b.shape} is not [{n}]")
    return b


def _input_or_block(v: NodeView, ok: bool, why: str) -> ChannelTensor | None:
    """Input 0 if the layer can follow its channels; otherwise it is frozen (and None)."""
    x = v.x(0)
    if x is not None and not ok:
        v.block(x, f"{v.where}: {why}")
        return None
    return x


def conv_const(w: np.ndarray, nz: np.ndarray, k_in: np.ndarray, bias: np.ndarray, groups: int,
               no_pad: bool) -> np.ndarray:
    """Per output channel: its value if every input it reads is a known constant, else NaN.

    An all-zero filter outputs its bias; otherwise ``bias + sum_c k_c * sum(W[o, c])``, exact only
    without zero padding (or when every constant read is 0: padding adds zeros to zeros).
    ``nz[o, c]``: the kernel of output o reads input c (of its group).
    """
    c_out, per_in = nz.shape
    known = np.isfinite(k_in) if no_pad else (k_in == 0)  # per input channel: its constant can pass
    if not known.any():  # the common case: only all-zero filters give constants
        return np.where(nz.any(axis=1), NAN, bias)
    rows_per = c_out // groups
    reads_unknown = (nz.reshape(groups, rows_per, per_in) & ~known.reshape(groups, 1, per_in)).any(axis=2)
    value = np.full(c_out, NAN)
    rows = np.flatnonzero(~reads_unknown.reshape(c_out))
    value[rows] = bias[rows]  # an all-zero filter outputs its bias
    rows = rows[nz[rows].any(axis=1)]  # filters that read known constants add them up
    if len(rows):
        k = np.nan_to_num(k_in.reshape(groups, per_in)[rows // rows_per])  # [rows, per_in]
        sums = w.reshape(c_out, per_in, -1)[rows].sum(axis=2, dtype=np.float64)
        value[rows] = bias[rows] + np.where(nz[rows], k * sums, 0.0).sum(axis=1)
    return value


def dense_const(nz: np.ndarray, w_mk: np.ndarray, k_units: np.ndarray, stride: int, bias: np.ndarray,
                scale: float) -> np.ndarray:
    """Gemm/MatMul: output m is constant if every input feature it reads is (``nz``, W as [M, K])."""
    k = np.repeat(k_units, stride)
    finite = np.isfinite(k)
    ok = ~np.any(nz & ~finite[None, :], axis=1) & np.isfinite(bias)
    value = np.full(len(ok), NAN)
    rows = np.flatnonzero(ok)
    if len(rows):
        value[rows] = bias[rows] + scale * (w_mk[rows].astype(np.float64) @ np.nan_to_num(k))
    return value


@register
class Conv(Rule):
    ops = ("Conv",)
    layer = True

    def analyze(self, v: NodeView) -> None:
        w = _weight(v)
        groups = int(v.attrs.get("group", 1))
        c_out, per_in = w.shape[0], w.shape[1]
        b = _bias(v, c_out)
        x = _input_or_block(v, (x0 := v.x(0)) is not None and x0.axis == 1 and x0.stride == 1
                            and x0.size == per_in * groups, "input is not a channel-first tensor")
        if groups > 1 and x is None:
            raise Refuse(f"{v.where}: a grouped convolution needs its input's channels")
        v.layer_input(x, per_in * groups)
        bias = b.astype(np.float64) if b is not None else np.zeros(c_out)
        kernel = w.reshape(c_out, per_in, -1)
        nz = kernel[:, :, 0] != 0 if kernel.shape[2] == 1 else np.any(kernel != 0, axis=2)  # [C_out, C_in/G]
        filt_zero = ~nz.any(axis=1)
        pad_free = no_padding(v.node)
        if groups > 1 and groups == x.size == c_out:  # depthwise, multiplier 1: channel c in, channel c out
            y = v.new(0, c_out, rank=w.ndim)
            v.tie(x, y)
            v.take(1, 0, y)
            if b is not None:
                v.take(2, 0, y)
            v.record(Depthwise(v.node, y))
            v.produce(y, filt_zero)
            k = v.const(x)
            wsum = w.reshape(c_out, -1).sum(axis=1, dtype=np.float64)
            through = k * wsum + bias if pad_free else np.where(k == 0, bias, NAN)
            v.set_const(y, np.where(filt_zero, bias, through))
            return
        if groups > 1 and (x.size % groups or c_out % groups):
            raise Refuse(f"{v.where}: channels not divisible by group={groups}")
        y = v.new(0, c_out, rank=w.ndim)
        if b is not None:
            v.take(2, 0, y)
        v.produce(y, filt_zero)
        if x is None:
            v.take(1, 0, y)
            v.set_const(y, np.where(filt_zero, bias, NAN))
            return
        if groups == 1:
            v.take(1, 0, y)
            v.take(1, 1, x)
            zero_in = ~nz.any(axis=0)
        else:
            v.record(GroupedConv(v.node, x, y, groups))
            zero_in = ~nz.reshape(groups, c_out // groups, -1).any(axis=1).reshape(-1)
        mappable = not pad_free and np.issubdtype(w.dtype, np.floating)
        v.contract(Contraction(
            v.node, x.name, zero_in, pad_free, lambda units, k: _conv_contribution(w, units, k, groups),
            BiasSlot(v.node, 2, y, lambda n: (n,), w.dtype), lossy_foldable=True,
            blocked_why="zero padding; --allow-lossy folds it",
            map_fold=(lambda units, k: _conv_kernel_sums(w, units, k, groups)) if mappable else None, out=y))
        v.set_const(y, conv_const(w, nz, v.const(x), bias, groups, pad_free))

    def macs(self, node: gs.Node, shape: ShapeOf) -> int | None:
        out, w = shape(node.outputs[0]), shape(node.inputs[1])
        a, b = static(out[1:]) if out else None, static(w[1:]) if w else None
        return a * b if a is not None and b is not None else None


def _conv_kernel_sums(w: np.ndarray, units: np.ndarray, k: np.ndarray, groups: int) -> np.ndarray:
    """``S[o] = sum over input channels u of o's group: k_u W[o, u mod C_in/G]``, [C_out, *kernel]: a
    Conv of a ones image with ``S`` (group 1, the Conv's own padding) is what the constants add."""
    c_out, per_in = w.shape[0], w.shape[1]
    if groups == 1:
        return np.einsum("u,ou...->o...", k[units], w[:, units].astype(np.float64))
    rows = c_out // groups
    sums = np.zeros((c_out, *w.shape[2:]))
    for u in units:
        g, j = divmod(int(u), per_in)
        sums[g * rows:(g + 1) * rows] += k[u] * w[g * rows:(g + 1) * rows, j].astype(np.float64)
    return sums


def _conv_contribution(w: np.ndarray, units: np.ndarray, k: np.ndarray, groups: int) -> np.ndarray:
    """Per output channel: what constant inputs ``k`` on input channels ``units`` add (no padding):
    the kernel sums, summed over the kernel."""
    return _conv_kernel_sums(w, units, k, groups).reshape(w.shape[0], -1).sum(axis=1)


@register
class ConvTranspose(Rule):
    ops = ("ConvTranspose",)
    layer = True

    def analyze(self, v: NodeView) -> None:
        w = _weight(v)
        if int(v.attrs.get("group", 1)) != 1 or v.attrs.get("output_shape") is not None:
            raise Refuse(f"{v.where}: grouped, or an explicit output_shape")
        c_in, c_out = w.shape[0], w.shape[1]
        b = _bias(v, c_out)
        x = _input_or_block(v, (x0 := v.x(0)) is not None and x0.axis == 1 and x0.stride == 1 and x0.size == c_in,
                            "input is not a channel-first tensor")
        v.layer_input(x, c_in)
        y = v.new(0, c_out, rank=w.ndim)
        v.take(1, 1, y)
        if b is not None:
            v.take(2, 0, y)
        filt_zero = zero_rows(w, 1, c_out)
        v.produce(y, filt_zero)
        bias = b.astype(np.float64) if b is not None else np.zeros(c_out)
        v.set_const(y, np.where(filt_zero, bias, NAN))
        if x is not None:
            v.take(1, 0, x)
            v.contract(Contraction(v.node, x.name, zero_rows(w, 0, c_in), False, lambda u, k: None, None,
                                   blocked_why="a transposed convolution spreads a constant unevenly"))

    def macs(self, node: gs.Node, shape: ShapeOf) -> int | None:
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        a, b = static(x[1:]) if x else None, static(w[1:]) if w else None
        return a * b if a is not None and b is not None else None


def _dense_contribution(w_mk: np.ndarray, stride: int, scale: float):
    def contribution(units: np.ndarray, k: np.ndarray) -> np.ndarray:
        m = w_mk.shape[0]
        wu = w_mk.reshape(m, -1, stride)[:, units, :].astype(np.float64)  # [M, units, stride]
        return scale * np.einsum("mus,u->m", wu, k[units])

    return contribution


@register
class Gemm(Rule):
    """``alpha * A' B' + beta * C`` with A' = A or Aᵀ (transA) and B' = B or Bᵀ (transB); B constant."""

    ops = ("Gemm",)
    layer = True

    def analyze(self, v: NodeView) -> None:
        w = _weight(v)
        if w.ndim != 2:
            raise Refuse(f"{v.where}: weight is not 2-D")
        trans_a, trans_b = int(v.attrs.get("transA", 0)), int(v.attrs.get("transB", 0))
        alpha, beta = float(v.attrs.get("alpha", 1.0)), float(v.attrs.get("beta", 1.0))
        out_axis = 0 if trans_b else 1
        m, k = w.shape[out_axis], w.shape[1 - out_axis]
        x = _input_or_block(v, (x0 := v.x(0)) is not None and x0.rank == 2 and x0.axis == (0 if trans_a else 1)
                            and x0.size == k, "input's features are not on the contracted axis")
        v.layer_input(x, k)
        c = v.need_value(2, "C")
        y = v.new(0, m, 1, 1, rank=2)
        v.take(1, out_axis, y)
        w_mk = w if out_axis == 0 else w.T
        nz = w_mk != 0
        v.produce(y, ~nz.any(axis=1))
        foldable = alpha != 0 and beta != 0
        if c is None:
            bias, shape_of = np.zeros(m), (lambda n: (n,))
        elif c.size == 1:
            bias, shape_of = np.full(m, beta * float(c.reshape(-1)[0])), (lambda n: (n,))
        elif c.shape in ((m,), (1, m)):
            v.take(2, c.ndim - 1, y)
            bias, shape_of = beta * c.astype(np.float64).reshape(-1), (lambda n, nd=c.ndim: (n,) if nd == 1 else (1, n))
        else:  # a bias that varies along the batch: per-channel values unknown, nothing folds into it
            if c.shape[-1] == m and m > 1:
                v.take(2, c.ndim - 1, y)
            bias, shape_of, foldable = np.full(m, NAN), None, False
        if x is None:
            v.set_const(y, np.where(~nz.any(axis=1), bias, NAN))
            return
        v.take(1, 1 - out_axis, x)
        zero_in = ~nz.reshape(m, x.units, x.stride).any(axis=(0, 2))
        slot = BiasSlot(v.node, 2, y, shape_of, w.dtype, beta) if shape_of is not None else None
        v.contract(Contraction(v.node, x.name, zero_in, foldable, _dense_contribution(w_mk, x.stride, alpha), slot,
                               blocked_why="no bias to fold into" if beta else "beta is 0"))
        v.set_const(y, dense_const(nz, w_mk, v.const(x), x.stride, bias, alpha))

    def macs(self, node: gs.Node, shape: ShapeOf) -> int | None:
        out, w = shape(node.outputs[0]), shape(node.inputs[1])
        if not out or not w or len(w) != 2:
            return None
        a = static(out[1:])
        k = w[1] if node.attrs.get("transB", 0) else w[0]
        return a * k if a is not None and isinstance(k, int) else None


@register
class MatMul(Rule):
    """``x @ W`` with a constant 2-D ``W`` and the features on x's last axis (rank 2 or more: a Linear
    on ``[B, T, C]`` too); a constant ``[M]`` Add right after it is its bias."""

    ops = ("MatMul",)
    layer = True

    def analyze(self, v: NodeView) -> None:
        if v.input(1) is not None and v.value(1) is None and v.x(1) is not None:
            _batched_matmul(v)
            return
        w = _weight(v, "only x @ constant weight or a batched product over channels is in the rule table")
        if w.ndim != 2:
            raise Refuse(f"{v.where}: weight is not 2-D")
        k, m = w.shape
        shape = v.shape(v.out(0))
        if shape is None or len(shape) < 2:
            raise Refuse(f"{v.where}: output shape unknown")
        x = _input_or_block(v, (x0 := v.x(0)) is not None and x0.axis == x0.rank - 1 and x0.size == k,
                            "input's features are not on its last axis")
        v.layer_input(x, k)
        y = v.new(0, m, 1, len(shape) - 1, shape)
        v.take(1, 1, y)
        w_mk = w.T
        nz = w_mk != 0
        v.produce(y, ~nz.any(axis=1))
        if x is None:
            v.set_const(y, np.where(~nz.any(axis=1), 0.0, NAN))
            return
        v.take(1, 0, x)
        zero_in = ~nz.reshape(m, x.units, x.stride).any(axis=(0, 2))
        add, index, bshape = _following_bias(v.node, m)
        slot = BiasSlot(add, index, y, lambda n: (*bshape[:-1], n), w.dtype) if add is not None else None
        v.contract(Contraction(v.node, x.name, zero_in, add is not None, _dense_contribution(w_mk, x.stride, 1.0),
                               slot))
        v.set_const(y, dense_const(nz, w_mk, v.const(x), x.stride, np.zeros(m), 1.0))

    def macs(self, node: gs.Node, shape: ShapeOf) -> int | None:
        out, w = shape(node.outputs[0]), shape(node.inputs[1])
        if not out or not w or len(w) != 2 or not isinstance(w[0], int):
            return None
        a = static(out[1:])
        return a * w[0] if a is not None else None


def _batched_matmul(v: NodeView) -> None:
    """``A @ B`` of two activations whose channels lie on the same batch axis (not one of the two
    matrix axes): attention's ``q @ k^T`` and ``attn @ v`` per head. Channel h of the output is
    ``A_h @ B_h``: the three are tied, and it is 0 where either operand's channel is 0."""
    a, b = v.x(0), v.x(1)
    if a is None or b is None or a.rank != b.rank or a.rank < 3 or a.axis != b.axis or a.axis >= a.rank - 2 \
            or a.units != b.units or a.stride != 1 or b.stride != 1:
        raise Refuse(f"{v.where}: the operands' channels are not on the same batch axis of both")
    shape = v.shape(v.out(0))
    if shape is None:
        shape = [*a.shape[:-1], b.shape[-1]]
    y = v.new(0, a.size, 1, a.axis, shape)
    v.tie(a, y)
    v.tie(b, y)
    ka, kb = v.const(a), v.const(b)
    inner = a.shape[-1] if isinstance(a.shape[-1], int) else None
    both = np.isfinite(ka) & np.isfinite(kb) & (inner is not None)
    with np.errstate(all="ignore"):
        value = np.where(both, ka * kb * (inner or 0), NAN)
    v.set_const(y, np.where((ka == 0) | (kb == 0), 0.0, value))


def _following_bias(node: gs.Node, m: int) -> tuple[gs.Node | None, int | None, tuple]:
    """The bias Add right after a MatMul (x @ W + b), if its other operand is a constant ``[..., M]``
    with ones elsewhere."""

    consumers = node.outputs[0].outputs
    if len(consumers) != 1 or op_of(consumers[0]) != "Add" or len(consumers[0].inputs) != 2:
        return None, None, ()
    add = consumers[0]
    for i, t in enumerate(add.inputs):
        if t is node.outputs[0]:
            continue
        val = const_value(t)
        if val is not None and val.ndim >= 1 and val.shape[-1] == m \
                and math.prod(val.shape[:-1]) == 1 and np.issubdtype(val.dtype, np.floating):
            return add, i, tuple(val.shape)
    return None, None, ()
