"""Decide which channel classes can go, exactly, and remove them through :func:`apply_reindex`.

A class goes only with positive evidence that it is dead (a filter producing it is all zero, or a
layer reading it has zero weights for it) and when every reader ignores it or sees a known constant
that folds exactly into a bias. Frozen and pinned classes stay.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ltc.errors import LtcError
from ltc.hardware import UNEQUAL_GROUPS
from ltc.passes.channels import ChannelGraph
from ltc.passes.records import BiasSlot, MapSlot, Record
from ltc.passes.reindex import Plan, apply_reindex


@dataclass
class RemovalPlan:
    """Which classes go, and why every class with dead evidence that stays, stays."""

    removed: np.ndarray  # per class
    reasons: dict[int, str]  # class -> why it stays (classes with dead evidence, or kept by a constraint)
    lossy: bool = False
    notes: list[str] = field(default_factory=list)
    folds: list[tuple[BiasSlot, np.ndarray]] = field(default_factory=list)
    maps: list[tuple[MapSlot, np.ndarray]] = field(default_factory=list)  # padded Convs: kernel sums to map

    def kept_units(self, cg: ChannelGraph, name: str) -> np.ndarray:
        return ~self.removed[cg.classes_of(name)]

    def index(self, cg: ChannelGraph) -> Plan:
        """The re-index plan: sorted kept units of every tensor that loses some."""
        plan: Plan = {}
        for name in cg.tensors:
            kept = self.kept_units(cg, name)
            if not kept.all():
                plan[name] = np.flatnonzero(kept)
        return plan



# The two reasons a contraction keeps a class; :func:`dead_filters` sorts dead filters by them.
UNFOLDABLE = "non-zero constant cannot be folded into"  # a known constant its reader cannot fold exactly
READ_LIVE = "read by"  # a reader sees a value that is not a known constant (a live partner)


def check_unequal_groups(mode: str) -> None:
    if mode not in UNEQUAL_GROUPS:
        raise LtcError(f"unequal_groups must be one of {', '.join(UNEQUAL_GROUPS)}, got {mode!r}")


def plan_removal(cg: ChannelGraph, allow_lossy: bool = False, round_to: int = 1,
                 unequal_groups: str = "auto", maps: bool = True) -> RemovalPlan:
    """Mark classes removable where there is evidence and every reader ignores them or sees a foldable
    constant. ``unequal_groups``: whether a grouped Conv may lose different numbers of channels per
    group (it is then split): "always", "never", or "auto" (where the cost table predicts it faster).
    ``maps``: constants through zero padding may come back as maps (see :func:`apply_reindex`)."""
    check_unequal_groups(unequal_groups)
    n = cg.n_classes
    evidence = cg.evidence()
    removable = ~cg.frozen & ~cg.pinned & evidence
    reasons = cg.kept_reasons()
    lossy_classes = np.zeros(n, dtype=bool)
    for c in cg.contractions:
        classes = cg.classes_of(c.tensor)
        k = cg.const[c.tensor]
        finite = np.isfinite(k)
        lossy_ok = allow_lossy and c.lossy_foldable and not c.foldable and c.bias is not None
        mappable = maps and c.map_fold is not None and not c.foldable and not lossy_ok  # exact, borders included
        foldable = (c.bias is not None and (c.foldable or lossy_ok)) or mappable
        ok = c.zero | (finite & ((k == 0) | foldable))
        lossy_classes[classes[~c.zero & finite & (k != 0) & lossy_ok]] = True
        for u in np.flatnonzero(~ok):
            cls = int(classes[u])
            removable[cls] = False
            if cls not in reasons:
                if finite[u]:
                    reasons[cls] = f"{UNFOLDABLE} {c.node.op} '{c.node.name}' ({c.blocked_why})"
                else:
                    reasons[cls] = f"{READ_LIVE} {c.node.op} '{c.node.name}'"
    plan = RemovalPlan(removable, {c: r for c, r in reasons.items() if evidence[c]})
    _enforce(cg, plan, round_to, unequal_groups)
    plan.lossy = bool(np.any(lossy_classes & plan.removed))
    plan.folds, plan.maps = _folds(cg, plan, allow_lossy or not maps)
    return plan


def _enforce(cg: ChannelGraph, plan: RemovalPlan, round_to: int, unequal_groups: str = "auto") -> None:
    """Keep extra (dead) classes until every constraint holds; keeping a class is always exact."""

    def keep(name: str, units: np.ndarray, reason: str) -> bool:
        classes = cg.classes_of(name)[units]
        hit = plan.removed[classes]
        for c in classes[hit]:
            plan.removed[c] = False
            plan.reasons[int(c)] = reason
        return bool(hit.any())

    completing = [r for r in cg.records if type(r).complete is not Record.complete]
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
                changed |= keep(name, np.flatnonzero(~kept)[: target - n_kept], f"--round-to {round_to}")
        for r in completing:  # records that admit only some removals: grouped Conv, GroupNormalization
            for name, units in r.complete(lambda name: plan.kept_units(cg, name), unequal_groups):
                changed |= keep(name, units, r.reason)


def _folds(cg: ChannelGraph, plan: RemovalPlan, allow_lossy: bool = False) -> tuple[
        list[tuple[BiasSlot, np.ndarray]], list[tuple[MapSlot, np.ndarray]]]:
    """What removed constant channels contributed to each reader: per output channel, to be added to
    its bias, or (a padded Conv) as kernel sums whose map is added to its output; ``allow_lossy``
    folds those into the bias too (no map, wrong at the borders, measured)."""
    folds, maps = [], []
    for c in cg.contractions:
        removed = plan.removed[cg.classes_of(c.tensor)]
        k = cg.const[c.tensor]
        fold = removed & ~c.zero & np.isfinite(k) & (k != 0)
        if not fold.any():
            continue
        if c.map_fold is not None and not c.foldable and not (allow_lossy and c.lossy_foldable and c.bias is not None):
            maps.append((MapSlot(c.node, c.out), c.map_fold(np.flatnonzero(fold), k)))
        else:
            folds.append((c.bias, c.contribution(np.flatnonzero(fold), k)))
    return folds, maps


def apply_removal(cg: ChannelGraph, plan: RemovalPlan) -> bool:
    """Rewrite ``cg.graph`` in place; returns whether anything changed."""
    index = plan.index(cg)
    if not index:
        return False
    return apply_reindex(cg, index, plan.folds, plan.maps)


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
    dead: int  # output channels whose own filter is all zero
    kept_because: dict[str, int]


def layer_channels(cg: ChannelGraph, plan: RemovalPlan) -> list[LayerChannels]:
    rows = []
    own_dead = {id(p.node): int(p.zero.sum()) for p in cg.producers}
    for node in cg.graph.nodes:
        if not cg.is_layer(node) or not node.outputs or node.name in cg.replicas:
            continue
        out = cg.tensors.get(node.outputs[0].name)
        if out is None or id(node) not in cg.layer_inputs:  # refused: not a layer with constant weights
            continue
        name, size = cg.layer_inputs[id(node)]
        inp = cg.tensors.get(name) if name is not None else None
        out_cls = cg.classes_of(out.name)
        kept_out = ~plan.removed[out_cls]
        why = Counter(plan.reasons[int(c)] for c in out_cls[kept_out] if int(c) in plan.reasons)
        in_before = inp.units if inp is not None else size
        in_after = int((~plan.removed[cg.classes_of(inp.name)]).sum()) if inp is not None else size
        rows.append(LayerChannels(node.name or out.name, node.op, out.name, in_before, in_after,
                                  out.units, int(kept_out.sum()), own_dead.get(id(node), 0), dict(why)))
    return rows


@dataclass
class DeadFilters:
    """What became of the dead filters (all-zero output channels of a weight layer), each counted once:

    - ``removed``: the plan removes it;
    - ``coupled``: kept because a reader sees a value in its class that is not a known constant (a
      residual sum, a Concat or an SE gate with a live partner): no exact rewrite removes it;
    - ``pinned``: its class is read by an op that reads all channels together (LayerNorm, Softmax,
      a reduction over channels), where removing even a zero channel changes the others;
    - ``unfoldable``: the constant it outputs cannot be folded exactly into a reader (a transposed
      conv spreads it unevenly; a zero-padded conv folds it as a map);
    - ``blocked``: kept for any other reason (an op or pattern ltc does not handle, a graph output,
      ``--round-to``, grouped-conv balance), with the reasons in ``blockers``.

    Where constant propagation gives up, a dead partner reads as live: that counts as coupled."""

    dead: int
    removed: int
    coupled: int
    pinned: int
    unfoldable: int
    blocked: int
    blockers: dict[str, int]

    @property
    def removable_share(self) -> float:
        """Removed / (removed + blocked): the share of what an exact tool could remove."""
        return self.removed / (self.removed + self.blocked) if self.removed + self.blocked else 1.0


def dead_filters(cg: ChannelGraph, plan: RemovalPlan) -> DeadFilters:
    counts: Counter = Counter()
    blockers: Counter = Counter()
    for p in cg.producers:
        if p.node.name in cg.replicas:
            continue
        for c in cg.classes_of(p.tensor)[p.zero]:
            c = int(c)
            reason = plan.reasons.get(c, "")
            if plan.removed[c]:
                counts["removed"] += 1
            elif cg.pinned[c]:  # an op reads all channels together: no exact tool removes it, frozen or not
                counts["pinned"] += 1
            elif reason.startswith(READ_LIVE):
                counts["coupled"] += 1
            elif reason.startswith(UNFOLDABLE):
                counts["unfoldable"] += 1
            else:
                counts["blocked"] += 1
                blockers[reason or "no evidence it is dead"] += 1
    return DeadFilters(sum(counts.values()), counts["removed"], counts["coupled"], counts["pinned"],
                       counts["unfoldable"], counts["blocked"], dict(blockers.most_common()))
