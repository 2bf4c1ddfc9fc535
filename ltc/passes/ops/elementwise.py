"""Element-wise ops: activations (a constant channel maps to a known constant), broadcasting
arithmetic (operands with the output's channels are tied), PRelu, and Softmax-like ops that read a
whole axis (pinned when that axis is the channel axis)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ltc.passes.records import ChannelTensor
from ltc.passes.rules import NAN, Refuse, Rule, attr_str, per_unit, register

if TYPE_CHECKING:
    from ltc.passes.channels import NodeView


def broadcast_shape(shapes: list[list | None]) -> list | None:
    """The shape that numpy-style broadcasting makes of ``shapes`` (a dimension that is not a known 1
    and not the same everywhere is None), or None if one is unknown or they do not broadcast."""
    if not shapes or any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0} - {1}
        known = {d for d in dims if isinstance(d, int)}
        if len(known) > 1:
            return None
        out.append(1 if not dims else dims.pop() if len(dims) == 1 else known.pop() if known else None)
    return out


def pass_through(v: NodeView, fn: Callable[[np.ndarray], np.ndarray] | None, outputs: int = 1,
                 axis: int | None = None, shape: list | None = None, unknown_stays: bool = True) -> ChannelTensor:
    """Output 0 has input 0's channels on ``axis`` (default: the same axis); ``fn`` maps constants.

    An unknown (NaN) input channel stays unknown unless ``unknown_stays`` is False (an op that outputs
    a constant whatever its input, as BatchNormalization with a zero scale)."""
    x = v.x(0)
    if x is None:
        raise Refuse(f"{v.where}: input shape unknown")
    v.extra_outputs_unused(outputs)
    axis = x.axis if axis is None else axis
    shape = shape if shape is not None else v.shape(v.out(0))
    if shape is None and axis == x.axis:
        shape = list(x.shape)
    if shape is None:
        raise Refuse(f"{v.where}: output shape unknown")
    y = v.new(0, x.size, x.stride, axis, shape)
    v.tie(x, y)
    k = v.const(x)
    with np.errstate(all="ignore"):
        out = fn(k) if fn is not None else np.full(y.units, NAN)
    v.set_const(y, np.where(np.isnan(k), NAN, out) if unknown_stays else out)
    return y


def broadcast_values(v: NodeView, index: int, value: np.ndarray, y: ChannelTensor) -> np.ndarray:
    """Per-unit values of constant operand ``index`` broadcast against ``y``; records a Take when the
    constant runs along the channels. Refuses shapes that do not broadcast per channel."""
    rank = y.rank
    if value.ndim > rank:
        raise Refuse(f"{v.where}: operand {index} has a higher rank than the output")
    ci = y.axis - (rank - value.ndim)
    cdim = value.shape[ci] if ci >= 0 else 1
    if cdim not in (1, y.size):
        raise Refuse(f"{v.where}: operand {index} has {cdim} entries along the channel axis, not 1 or {y.size}")
    if cdim == y.size and y.size > 1:
        v.take(index, ci, y)
        rows = np.moveaxis(value, ci, 0).reshape(y.size, -1).astype(np.float64)
    else:
        rows = value.reshape(1, -1).astype(np.float64)
    uniform = np.where(np.all(rows == rows[:, :1], axis=1), rows[:, 0], NAN) if rows.shape[1] else np.full(len(rows), NAN)
    if len(uniform) == 1:
        return np.full(y.units, uniform[0])
    return per_unit(uniform, y.units, y.stride)


def _clip(v: NodeView) -> Callable[[np.ndarray], np.ndarray]:
    lo, hi = v.need_value(1, "min"), v.need_value(2, "max")
    for bound in (lo, hi):
        if bound is not None and bound.size != 1:
            raise Refuse(f"{v.where}: min/max are not scalars")
    lo = float(lo.reshape(-1)[0]) if lo is not None else v.attrs.get("min", -np.inf)
    hi = float(hi.reshape(-1)[0]) if hi is not None else v.attrs.get("max", np.inf)
    return lambda k: np.clip(k, lo, hi)


def _dropout(v: NodeView) -> Callable[[np.ndarray], np.ndarray]:
    training = v.need_value(2, "training_mode")
    if training is not None and bool(np.any(training)):
        raise Refuse(f"{v.where}: training_mode is on (random at inference)")
    v.need_value(1, "ratio")
    return lambda k: k


def _erf(k: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(k)


def _gelu(v: NodeView) -> Callable[[np.ndarray], np.ndarray]:
    if attr_str(v.node, "approximate", "none") == "tanh":
        return lambda k: 0.5 * k * (1 + np.tanh(np.sqrt(2 / np.pi) * (k + 0.044715 * k ** 3)))
    return lambda k: 0.5 * k * (1 + _erf(k / np.sqrt(2)))


def _attr(name: str, default: float) -> Callable[[NodeView], float]:
    return lambda v: float(v.attrs.get(name, default))


_FLOATS = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _cast(v: NodeView) -> Callable[[np.ndarray], np.ndarray]:
    if int(v.attrs.get("to", 0)) not in _FLOATS:
        raise Refuse(f"{v.where}: casts to a non-float type")
    return lambda k: k


# op -> (parameters from the node, constant map); a constant channel maps to fn(k)
UNARY: dict[str, Callable[[NodeView], Callable[[np.ndarray], np.ndarray]]] = {
    "Relu": lambda v: lambda k: np.maximum(k, 0.0),
    "LeakyRelu": lambda v: (lambda a: lambda k: np.where(k >= 0, k, a * k))(_attr("alpha", 0.01)(v)),
    "Elu": lambda v: (lambda a: lambda k: np.where(k >= 0, k, a * (np.exp(k) - 1)))(_attr("alpha", 1.0)(v)),
    "Selu": lambda v: (lambda a, g: lambda k: g * np.where(k > 0, k, a * (np.exp(k) - 1)))(
        _attr("alpha", 1.67326319217681884765625)(v), _attr("gamma", 1.05070102214813232421875)(v)),
    "Celu": lambda v: (lambda a: lambda k: np.maximum(k, 0) + np.minimum(0, a * (np.exp(k / a) - 1)))(
        _attr("alpha", 1.0)(v)),
    "ThresholdedRelu": lambda v: (lambda a: lambda k: np.where(k > a, k, 0.0))(_attr("alpha", 1.0)(v)),
    "Clip": _clip,
    "Sigmoid": lambda v: lambda k: 1.0 / (1.0 + np.exp(-k)),
    "HardSigmoid": lambda v: (lambda a, b: lambda k: np.clip(a * k + b, 0, 1))(_attr("alpha", 0.2)(v), _attr("beta", 0.5)(v)),
    "HardSwish": lambda v: lambda k: k * np.clip(k / 6.0 + 0.5, 0, 1),
    "Tanh": lambda v: np.tanh,
    "Softplus": lambda v: lambda k: np.log1p(np.exp(k)),
    "Softsign": lambda v: lambda k: k / (1 + np.abs(k)),
    "Mish": lambda v: lambda k: k * np.tanh(np.log1p(np.exp(k))),
    "Gelu": _gelu,
    "Erf": lambda v: _erf,
    "Exp": lambda v: np.exp,
    "Log": lambda v: np.log,
    "Sqrt": lambda v: np.sqrt,
    "Reciprocal": lambda v: lambda k: 1.0 / k,
    "Neg": lambda v: lambda k: -k,
    "Abs": lambda v: np.abs,
    "Sign": lambda v: np.sign,
    "Floor": lambda v: np.floor,
    "Ceil": lambda v: np.ceil,
    "Identity": lambda v: lambda k: k,
    "Dropout": _dropout,
    "Cast": _cast,
}


@register
class Unary(Rule):
    """An element-wise function of one tensor (parameters must be constants)."""

    ops = tuple(UNARY)

    def analyze(self, v: NodeView) -> None:
        fn = UNARY[v.op](v)
        for i in range(1, len(v.node.inputs)):
            v.need_value(i, f"parameter {i}")
        pass_through(v, fn, outputs=2 if v.op == "Dropout" else 1)


@register
class PRelu(Rule):
    ops = ("PRelu",)

    def analyze(self, v: NodeView) -> None:
        x, slope = v.x(0), v.value(1)
        if x is None or slope is None:
            raise Refuse(f"{v.where}: slope is computed, not a constant")
        y = pass_through(v, None)
        s = broadcast_values(v, 1, slope, y)  # NaN where a channel's slope varies along other axes
        k = v.const(x)
        with np.errstate(all="ignore"):
            v.set_const(y, np.where(k >= 0, k, np.where(np.isfinite(s), s * k, NAN)))


MERGE: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "Add": lambda vs: vs[0] + vs[1],
    "Sub": lambda vs: vs[0] - vs[1],
    "Div": lambda vs: vs[0] / vs[1],
    "Pow": lambda vs: vs[0] ** vs[1],
    "Max": lambda vs: np.maximum.reduce(vs),
    "Min": lambda vs: np.minimum.reduce(vs),
    "Sum": lambda vs: np.sum(vs, axis=0),
    "Mean": lambda vs: np.mean(vs, axis=0),
    "Mul": lambda vs: np.where(np.any([k == 0 for k in vs], axis=0), 0.0, np.prod(vs, axis=0)),
}


@register
class Merge(Rule):
    """Element-wise ops with broadcasting. Operands carrying the output's channels on the same axis
    are tied; constants must be per-channel or the same for every channel; any other operand must
    have one entry along the channel axis (it is read by every channel: a channel tensor there is
    frozen), as shape inference sees it — an operand of unknown shape refuses."""

    ops = tuple(MERGE)

    def analyze(self, v: NodeView) -> None:
        shape = v.shape(v.out(0))
        if shape is None:  # (what shape inference did not say: the operands' shapes, broadcast)
            shape = broadcast_shape([list(ct.shape) if (ct := v.x(i)) is not None else v.shape(t)
                                     for i, t in enumerate(v.node.inputs)])
        if shape is None:
            raise Refuse(f"{v.where}: output shape unknown")
        rank = len(shape)
        chans = [(i, ct) for i in range(len(v.node.inputs)) if (ct := v.x(i)) is not None]
        aligned = {i: ct.axis + rank - ct.rank for i, ct in chans}
        main = None
        for i, ct in sorted(chans, key=lambda ic: -ic[1].size):
            if ct.rank <= rank and (not isinstance(shape[aligned[i]], int) or shape[aligned[i]] == ct.size):
                main = ct
                axis = aligned[i]
                break
        if main is None:
            raise Refuse(f"{v.where}: no operand carries the output's channels")
        y = v.new(0, main.size, main.stride, axis, shape)
        values = []
        for i in range(len(v.node.inputs)):
            t = v.input(i)
            if t is None:
                raise Refuse(f"{v.where}: operand {i} is missing")
            ct = v.x(i)
            if ct is not None:
                if aligned[i] == axis and ct.size == y.size and ct.stride == y.stride:
                    v.tie(ct, y)
                    values.append(v.const(ct))
                else:
                    v.block(ct, f"{v.where} broadcasts it across the channels of '{y.name}'")
                    values.append(np.full(y.units, NAN))
                    self._broadcasts(v, i, ct.shape, y)
                continue
            value = v.value(i)
            if value is not None:
                values.append(broadcast_values(v, i, value, y))
                continue
            self._broadcasts(v, i, v.shape(t), y)
            values.append(np.full(y.units, NAN))
        with np.errstate(all="ignore"):
            v.set_const(y, MERGE[v.op](values))

    @staticmethod
    def _broadcasts(v: NodeView, i: int, shape: list | None, y: ChannelTensor) -> None:
        """A non-constant operand must have one entry (or none) along the channel axis."""
        if shape is None:
            raise Refuse(f"{v.where}: operand {i} has an unknown shape")
        ci = y.axis - (y.rank - len(shape))
        if len(shape) > y.rank or (ci >= 0 and shape[ci] != 1):
            raise Refuse(f"{v.where}: operand {i} does not broadcast along the channel axis")


@register
class Softmax(Rule):
    """Softmax-like ops over one axis: over the channel axis they read every channel together
    (pinned: channels may move, never go; Hardmax, which breaks ties by position, freezes them);
    over another axis each channel is on its own."""

    ops = ("Softmax", "LogSoftmax", "Hardmax", "LpNormalization")

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        axis = int(v.attrs.get("axis", -1)) % x.rank
        if axis == x.axis and v.op == "Hardmax":  # (ties are common: zeros after a ReLU)
            raise Refuse(f"{v.where} picks the first of tied channels: their order matters")
        if axis == x.axis:
            y = pass_through(v, None)
            v.pin(x, f"{v.where} normalizes over the channel axis")
            v.pin(y, f"{v.where} normalizes over the channel axis")
            return
        n = x.shape[axis] if isinstance(x.shape[axis], int) else None
        if v.op == "Softmax" and n:
            fn = lambda k: np.where(np.isfinite(k), 1.0 / n, NAN)  # noqa: E731
        elif v.op == "LogSoftmax" and n:
            fn = lambda k: np.where(np.isfinite(k), -np.log(n), NAN)  # noqa: E731
        else:
            fn = None
        pass_through(v, fn)
