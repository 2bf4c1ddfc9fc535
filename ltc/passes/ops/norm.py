"""Normalizations: BatchNormalization and InstanceNormalization (per channel, axis 1), and
LayerNormalization (per channel when it normalizes other axes; over the channel axis it reads every
channel together, so those channels are pinned: they may move but never go).

GroupNormalization normalizes runs of consecutive channels together: channels move only inside their
group, and go only as whole groups (one group: pinned)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ltc.passes.ops.elementwise import pass_through
from ltc.passes.records import ChannelTensor, WholeGroups
from ltc.passes.rules import NAN, Refuse, Rule, register

if TYPE_CHECKING:
    from ltc.passes.channels import NodeView


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
        x = v.need_channel_first()
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
        x = v.need_channel_first()
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
                v.need_value(i, "scale or shift")
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


@register
class GroupNormalization(Rule):
    ops = ("GroupNormalization",)

    def analyze(self, v: NodeView) -> None:
        x = v.need_channel_first()
        groups = int(v.attrs.get("num_groups", 0))
        if groups <= 0 or x.size % groups:
            raise Refuse(f"{v.where}: num_groups={groups} does not divide {x.size} channels")
        scale, bias = v.need_value(1, "scale"), v.need_value(2, "bias")
        if scale is None or bias is None or scale.shape != bias.shape or scale.shape not in ((groups,), (x.size,)):
            raise Refuse(f"{v.where}: scale and bias are not constants of [num_groups] or [channels]")
        per_group = scale.shape == (groups,) and groups != x.size
        eps = float(v.attrs.get("epsilon", 1e-5))
        size = x.size // groups
        s = np.repeat(scale.astype(np.float64), size) if per_group else scale.astype(np.float64)
        b = np.repeat(bias.astype(np.float64), size) if per_group else bias.astype(np.float64)

        def fn(k: np.ndarray) -> np.ndarray:  # a group of constant channels normalizes to known constants
            kg = k.reshape(groups, size)
            mean = kg.mean(axis=1, keepdims=True)
            var = ((kg - mean) ** 2).mean(axis=1, keepdims=True)
            out = ((kg - mean) / np.sqrt(var + eps)).reshape(-1) * s + b
            return np.where(np.repeat(np.isfinite(kg).all(axis=1), size), out, NAN)

        y = pass_through(v, fn, unknown_stays=False)
        if not per_group:
            v.take(1, 0, y)
            v.take(2, 0, y)
        if groups == 1:
            v.pin(x, f"{v.where} normalizes over every channel")
        else:
            v.record(WholeGroups(v.node, x, groups, per_group))
