"""Decide which channel classes can go, exactly, and rewrite the graph without them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ltc.passes.channels import ChannelGraph, ChannelTensor, Member, const_value

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class RemovalPlan:
    """Which classes go, and why every class with dead evidence that stays, stays."""

    removed: np.ndarray  # per class
    reasons: dict[int, str]  # class -> why it stays (only classes with dead evidence or kept by a rule)
    lossy: bool = False
    notes: list[str] = field(default_factory=list)

    def kept_units(self, cg: ChannelGraph, name: str) -> np.ndarray:
        return ~self.removed[cg.classes_of(name)]


def plan_removal(cg: ChannelGraph, allow_lossy: bool = False, round_to: int = 1) -> RemovalPlan:
    """Mark classes removable where every reader ignores them or sees a foldable constant."""
    n = cg.n_classes
    removable = ~cg.frozen.copy()
    evidence = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {c: r for c, r in cg.frozen_reason.items()}
    lossy_classes = np.zeros(n, dtype=bool)
    for p in cg.producers:
        evidence[cg.classes_of(p.tensor)[p.zero]] = True
    for c in cg.contractions:
        classes = cg.classes_of(c.tensor)
        evidence[classes[c.zero]] = True
        k = cg.const[c.tensor]
        finite = np.isfinite(k)
        lossy_ok = allow_lossy and c.kind in ("conv", "grouped") and not c.foldable
        ok = c.zero | (finite & ((k == 0) | c.foldable | lossy_ok))
        lossy_classes[classes[~c.zero & finite & (k != 0) & lossy_ok]] = True
        for u in np.flatnonzero(~ok):
            cls = int(classes[u])
            removable[cls] = False
            if cls not in reasons:
                if finite[u]:
                    why = ("zero padding; --allow-lossy folds it" if c.kind in ("conv", "grouped")
                           else "no bias to fold into")
                    reasons[cls] = f"non-zero constant cannot be folded into {c.node.op} '{c.node.name}' ({why})"
                else:
                    reasons[cls] = f"read by {c.node.op} '{c.node.name}'"
    plan = RemovalPlan(removable, {c: r for c, r in reasons.items() if evidence[c]})
    _enforce(cg, plan, round_to)
    plan.lossy = bool(np.any(lossy_classes & plan.removed))
    return plan


def _enforce(cg: ChannelGraph, plan: RemovalPlan, round_to: int) -> None:
    """Keep extra (dead) classes until every constraint holds; keeping a class is always exact."""

    def keep(name: str, units: np.ndarray, reason: str) -> None:
        classes = cg.classes_of(name)[units]
        for c in classes:
            if plan.removed[c]:
                plan.removed[c] = False
                plan.reasons[int(c)] = reason

    changed = True
    while changed:
        changed = False
        for name, ct in cg.tensors.items():
            kept = plan.kept_units(cg, name)
            n_kept = int(kept.sum())
            if ct.units and n_kept == 0:
                keep(name, np.array([0]), f"every channel of '{name}' was removable; kept 1 so the layer stays")
                plan.notes.append(f"'{name}': every channel was removable; kept channel 0 (its output is constant)")
                changed = True
            elif round_to > 1 and ct.stride == 1 and n_kept < ct.units and n_kept % round_to:
                target = min(-(-n_kept // round_to) * round_to, ct.units)
                extra = np.flatnonzero(~kept)[: target - n_kept]
                keep(name, extra, f"--round-to {round_to}")
                changed = True
        for gw in cg.grouped:
            changed |= _balance_groups(cg, plan, gw, keep)


def _balance_groups(cg: ChannelGraph, plan: RemovalPlan, gw, keep) -> bool:
    """Equal kept input and output channels in every group that stays (at least one of each)."""
    kin = plan.kept_units(cg, gw.inp).reshape(gw.groups, -1)
    kout = plan.kept_units(cg, gw.out).reshape(gw.groups, -1)
    n_in, n_out = kin.sum(axis=1), kout.sum(axis=1)
    alive = (n_in > 0) | (n_out > 0)
    if not alive.any():
        alive[0] = True
    t_in, t_out = max(int(n_in[alive].max()), 1), max(int(n_out[alive].max()), 1)
    reason = f"grouped Conv '{gw.node.name}' needs equal channels per group"
    changed = False
    for g in np.flatnonzero(alive):
        for name, kept, n, target in ((gw.inp, kin, n_in, t_in), (gw.out, kout, n_out, t_out)):
            if n[g] < target:
                missing = np.flatnonzero(~kept[g])[: target - n[g]] + g * kept.shape[1]
                keep(name, missing, reason)
                changed = True
    return changed


# --------------------------------------------------------------------------- rewriting
class _Rewriter:
    def __init__(self, cg: ChannelGraph, plan: RemovalPlan):
        self.cg = cg
        self.plan = plan
        self.vars = cg.graph.tensors()
        self.private: set[tuple[int, int]] = set()
        self.kept: dict[str, np.ndarray] = {}
        for name in cg.tensors:
            k = plan.kept_units(cg, name)
            if not k.all():
                self.kept[name] = np.flatnonzero(k)

    def features(self, name: str) -> np.ndarray | None:
        """Kept indices along axis 1 of ``name`` (units expanded by stride); None if unchanged."""
        units = self.kept.get(name)
        if units is None:
            return None
        s = self.cg.tensors[name].stride
        return (units[:, None] * s + np.arange(s)[None, :]).reshape(-1)

    def value(self, node: gs.Node, index: int) -> np.ndarray:
        return const_value(node.inputs[index])

    def set_value(self, node: gs.Node, index: int, value: np.ndarray) -> None:
        """Give ``node`` its own copy of input ``index`` (shared or Constant-node inputs) and set it."""
        t = node.inputs[index]
        key = (id(node), index)
        owned = key in self.private or len(t.outputs) <= 1
        if isinstance(t, gs.Constant) and owned:
            t.values = value
            self.private.add(key)
            return
        name = f"{t.name}__ltc_{len(self.private)}"
        while name in self.vars:
            name += "_"
        new = gs.Constant(name, np.ascontiguousarray(value))
        self.vars[name] = new
        node.inputs[index] = new
        self.private.add(key)

    # ------------------------------------------------------------------ steps
    def fold_constants(self) -> None:
        """Fold the constant value of removed input channels into each reader's bias."""
        cg = self.cg
        for c in cg.contractions:
            units = self.kept.get(c.tensor)
            if units is None:
                continue
            removed = np.ones(cg.tensors[c.tensor].units, dtype=bool)
            removed[units] = False
            k = cg.const[c.tensor]
            fold = removed & ~c.zero & np.isfinite(k) & (k != 0)
            if not fold.any():
                continue
            w = self.value(c.node, c.index).astype(np.float64)
            ct = cg.tensors[c.tensor]
            contribution = self._contribution(c.kind, c.node, w, c.in_axis, ct, np.flatnonzero(fold), k, c.groups)
            self._add_bias(c, contribution)

    @staticmethod
    def _contribution(kind: str, node: gs.Node, w: np.ndarray, in_axis: int, ct: ChannelTensor,
                      units: np.ndarray, k: np.ndarray, groups: int) -> np.ndarray:
        if kind == "conv":
            return w[:, units].reshape(w.shape[0], len(units), -1).sum(axis=2) @ k[units]
        if kind == "grouped":
            per_in = ct.size // groups
            rows = w.shape[0] // groups
            out = np.zeros(w.shape[0])
            for u in units:
                g, j = divmod(int(u), per_in)
                out[g * rows:(g + 1) * rows] += k[u] * w[g * rows:(g + 1) * rows, j].reshape(rows, -1).sum(axis=1)
            return out
        # gemm / matmul: unit u owns features u*stride .. (u+1)*stride-1 along in_axis
        wi = np.moveaxis(w, in_axis, 0).reshape(ct.units, ct.stride, -1)
        out = np.einsum("usm,u->m", wi[units], k[units])
        if kind == "gemm":
            alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
            out = out * alpha / beta
        return out

    def _add_bias(self, c, contribution: np.ndarray) -> None:
        node = c.node
        if c.kind == "matmul":
            holder, index = c.bias_node, c.bias_index
        else:
            holder, index = node, 2
            out_name = node.outputs[0].name
            if len(node.inputs) < 3 or node.inputs[2].name == "":
                dtype = const_value(node.inputs[1]).dtype
                bias = gs.Constant(f"{node.name or out_name}__ltc_bias", np.zeros(len(contribution), dtype=dtype))
                if len(node.inputs) < 3:
                    node.inputs.append(bias)
                else:
                    node.inputs[2] = bias
                self.cg.members.append(Member(node, 2, 0, out_name))
        b = self.value(holder, index)
        new = (b.astype(np.float64) + contribution.reshape(b.shape)).astype(b.dtype)
        self.set_value(holder, index, new)

    def reindex_members(self) -> None:
        for m in self.cg.members:
            idx = self.features(m.tensor)
            if idx is None:
                continue
            self.set_value(m.node, m.index, np.take(self.value(m.node, m.index), idx, axis=m.axis))

    def reindex_grouped(self) -> None:
        for gw in self.cg.grouped:
            kin, kout = self.kept.get(gw.inp), self.kept.get(gw.out)
            if kin is None and kout is None:
                continue
            w = self.value(gw.node, 1)
            g = gw.groups
            c_in = self.cg.tensors[gw.inp].size
            per_in, rows = c_in // g, w.shape[0] // g
            kin = np.arange(c_in) if kin is None else kin
            kout = np.arange(w.shape[0]) if kout is None else kout
            blocks = []
            for gi in range(g):
                r = kout[(kout >= gi * rows) & (kout < (gi + 1) * rows)]
                cols = kin[(kin >= gi * per_in) & (kin < (gi + 1) * per_in)] - gi * per_in
                if len(r) or len(cols):  # a group with no channels left is dropped
                    blocks.append(w[r][:, cols])
            self.set_value(gw.node, 1, np.concatenate(blocks, axis=0))
            gw.node.attrs["group"] = len(blocks)

    def rewrite(self) -> None:
        opset = self.cg.graph.opset
        for rw in self.cg.rewrites:
            if rw.kind == "group":
                units = self.kept.get(rw.tensors[0])
                if units is not None:
                    rw.node.attrs["group"] = len(units)
            elif rw.kind == "reshape":
                y = self.cg.tensors[rw.tensors[0]]
                units = self.kept.get(y.name)
                if units is None:
                    continue
                holder, index, pos = rw.detail["holder"], rw.detail["index"], rw.detail["position"]
                v = self.value(holder, index).copy()
                v.reshape(-1)[pos] = len(units) * y.stride
                self.set_value(holder, index, v)
            elif rw.kind == "split":
                if not any(t in self.kept for t in rw.tensors):
                    continue
                sizes = [len(self.kept.get(t, np.arange(self.cg.tensors[t].units))) * rw.detail["stride"]
                         for t in rw.tensors]
                rw.node.attrs.pop("num_outputs", None)
                if opset >= 13:
                    arr = np.array(sizes, dtype=np.int64)
                    if len(rw.node.inputs) >= 2 and rw.node.inputs[1].name:
                        self.set_value(rw.node, 1, arr)
                    else:
                        while len(rw.node.inputs) > 1:
                            rw.node.inputs.pop()
                        rw.node.inputs.append(gs.Constant(f"{rw.node.name}__ltc_split", arr))
                else:
                    rw.node.attrs["split"] = sizes
            elif rw.kind == "slice":
                x = rw.tensors[0]
                units = self.kept.get(x)
                if units is None:
                    continue
                start, stop, pos = rw.detail["start"], rw.detail["stop"], rw.detail["position"]
                new_start = int(np.sum(units < start))
                new_stop = new_start + int(np.sum((units >= start) & (units < stop)))
                for index, val in ((1, new_start), (2, new_stop)):
                    v = self.value(rw.node, index).copy()
                    v.reshape(-1)[pos] = val
                    self.set_value(rw.node, index, v)

    def update_shapes(self) -> None:
        for name in self.kept:
            var = self.vars.get(name)
            ct = self.cg.tensors[name]
            if var is not None and var.shape is not None:
                shape = list(var.shape)
                shape[1] = len(self.kept[name]) * ct.stride
                var.shape = shape


def apply_removal(cg: ChannelGraph, plan: RemovalPlan) -> bool:
    """Rewrite ``cg.graph`` in place; returns whether anything changed."""
    rw = _Rewriter(cg, plan)
    if not rw.kept:
        return False
    rw.fold_constants()
    rw.reindex_members()
    rw.reindex_grouped()
    rw.rewrite()
    rw.update_shapes()
    cg.graph.cleanup()
    return True


@dataclass
class LayerChannels:
    """One weight layer's channel counts before and after, and why channels stayed."""

    name: str
    op: str
    tensor: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    dead: int  # output channels with dead evidence
    kept_because: dict[str, int]


def layer_channels(cg: ChannelGraph, plan: RemovalPlan) -> list[LayerChannels]:
    rows = []
    evidence = np.zeros(cg.n_classes, dtype=bool)
    for p in cg.producers:
        evidence[cg.classes_of(p.tensor)[p.zero]] = True
    for c in cg.contractions:
        evidence[cg.classes_of(c.tensor)[c.zero]] = True
    for node in cg.graph.nodes:
        if node.op not in LAYER_OPS or not node.outputs:
            continue
        out = cg.tensors.get(node.outputs[0].name)
        inp = cg.tensors.get(node.inputs[0].name)
        if out is None or inp is None:
            continue
        out_cls = cg.classes_of(out.name)
        kept_out = ~plan.removed[out_cls]
        why = Counter(plan.reasons[int(c)] for c in out_cls[kept_out] if int(c) in plan.reasons)
        rows.append(LayerChannels(
            node.name or out.name, node.op, out.name,
            inp.units, int((~plan.removed[cg.classes_of(inp.name)]).sum()),
            out.units, int(kept_out.sum()), int(evidence[out_cls].sum()), dict(why),
        ))
    return rows
