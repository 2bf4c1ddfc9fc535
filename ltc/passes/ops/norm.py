"""Normalizations: BatchNormalization and InstanceNormalization (per channel, axis 1), and
LayerNormalization (per channel when it normalizes other axes; over the channel axis it reads every
channel together, so those channels are pinned: they may move but never go).

GroupNormalization is not here on purpose: its groups are runs of consecutive channels, which a
re-index must keep whole (not built yet), so it freezes as an op without a rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ltc.passes.ops.elementwise import pass_through
from ltc.passes.records import ChannelTensor
from ltc.passes.rules import NAN, Refuse, Rule, register

if TYPE_CHECKING:
    from ltc.passes.channels import NodeView


def _channel_first(v: NodeView) -> ChannelTensor:
    x = v.x(0)
    if x is None or x.axis != 1 or x.stride != 1:
        raise Refuse(f"{v.where}: input is not a channel-first tensor")
    return x


def _per_channel(v: NodeView, index: int, x: ChannelTensor, what: str) -> np.ndarray:
    p = v.need_value(index, what)
    if p is None or p.shape != (x.size,):
        raise Refuse(f"{v.where}: {what} is not a constant of shape [{x.size}]")
    v.take(index, 0, x)
    return p.astype(np.float64)


@register
class BatchNormalization(Rule):
    ops = ("BatchNormalization",)

    def analyze(self, v: NodeView) -> None:
        x = _channel_first(v)
        if int(v.attrs.get("training_mode", 0)):
            raise Refuse(f"{v.where}: training_mode=1 normalizes with batch statistics")
        scale, bias, mean, var = (_per_channel(v, i, x, n) for i, n in
                                  enumerate(("scale", "bias", "mean", "var"), start=1))
        eps = float(v.attrs.get("epsilon", 1e-5))

        def fn(k: np.ndarray) -> np.ndarray:
            y = (k - mean) / np.sqrt(var + eps) * scale + bias
            return np.where(scale == 0, bias, y)

        pass_through(v, fn, unknown_stays=False)


@register
class InstanceNormalization(Rule):
    ops = ("InstanceNormalization",)

    def analyze(self, v: NodeView) -> None:
        x = _channel_first(v)
        scale, bias = _per_channel(v, 1, x, "scale"), _per_channel(v, 2, x, "B")
        # a constant channel normalizes to 0: the output is the shift
        pass_through(v, lambda k: np.where(np.isfinite(k) | (scale == 0), bias, NAN), unknown_stays=False)


@register
class LayerNormalization(Rule):
    ops = ("LayerNormalization",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_x()
        first = int(v.attrs.get("axis", -1)) % x.rank
        y = pass_through(v, None, outputs=1)
        if x.axis < first:  # each channel normalized on its own; scale and shift do not follow channels
            for i in (1, 2):
                if v.input(i) is not None and v.value(i) is None:
                    raise Refuse(f"{v.where}: scale or shift is computed, not a constant")
            return
        for i in (1, 2):
            p = v.need_value(i, "scale or shift")
            if p is None:
                continue
            ci = x.axis - (x.rank - p.ndim)
            cdim = p.shape[ci] if ci >= 0 else 1
            if cdim == x.size and x.size > 1:
                v.take(i, ci, y)
            elif cdim != 1:
                raise Refuse(f"{v.where}: scale or shift has {cdim} entries along the channel axis")
        reason = f"{v.where} normalizes over the channel axis"
        v.pin(x, reason)
        v.pin(y, reason)
