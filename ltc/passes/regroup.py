"""Regroup: a Conv whose non-zero kernels form G dense blocks under some permutation of its output
and input channels becomes ``Conv(group=G)``, exactly.

1. **Detect.** The bipartite graph between output and input channels (an edge where the kernel
   ``W[o, i]`` has a non-zero) splits into components; they are packed into G groups of equal
   output and input widths (:func:`block_structure`). Which G: the ticket's (``groups``), or the one
   the cost table (:data:`COST_PER_MAC`, measured on ORT CPU) predicts fastest. Widths must be a
   multiple of ``align`` (``--round-to``).
2. **Re-index.** Every target asks for its input and output channel classes to be sorted by group;
   classes no other target claimed first get that order through one :func:`apply_reindex` plan, so the
   permutations fold into the neighbouring layers' weights, biases, BatchNorms, Concats...
3. **Rewrite.** Each target's weight is cut to its diagonal blocks and ``group`` set. Where a class
   could not take the target's order (frozen, claimed by another target in another order, a record
   refusing it), a ``Gather`` on the channel axis feeds the Conv its input in group order, or puts its
   output back in the class's order. Each Gather is reported.

Exact by construction: every weight that leaves the model is zero, checked before the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ltc.errors import InternalError, LtcError
from ltc.passes.base import Pass, PassResult
from ltc.passes.channels import ChannelGraph, connected_components
from ltc.passes.cost import (
    COST_PER_MAC as COST_PER_MAC,  # re-exported: the table users know from here
)
from ltc.passes.cost import predicted_speedup, split_speedup
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.reindex import Segments, apply_reindex, lookup, ordered_plan, split_conv
from ltc.passes.reindex import fresh_name as _fresh
from ltc.passes.rules import RuleTable, const_value, is_empty, op_of


@dataclass
class Blocks:
    """G groups: the group of every output and every input channel."""

    groups: int
    out_group: np.ndarray
    in_group: np.ndarray

    @property
    def equal(self) -> bool:
        """Equal widths (one ``Conv(group=G)``); else one Conv per group between a Split and a Concat."""
        return len(set(np.bincount(self.out_group).tolist())) == 1 and len(set(np.bincount(self.in_group).tolist())) == 1


def nonzero_kernels(w: np.ndarray) -> np.ndarray:
    """[O, I] bool: which kernels of a Conv weight [O, I, *k] hold a non-zero."""
    return np.any(w.reshape(w.shape[0], w.shape[1], -1) != 0, axis=2)


def block_structure(nz: np.ndarray, groups: int | None = None, align: int = 1, kernel_size: int = 9,
                    max_groups: int = 64, unequal: bool = False) -> Blocks | None:
    """Pack the non-zero pattern ``nz`` [O, I] into G equal diagonal blocks under permutation.

    With ``groups`` only that G is tried; otherwise every feasible G (dividing O and I, widths a
    multiple of ``align``) and the fastest by the cost table wins. If none fits and ``unequal``, the
    components are packed into at most ``groups`` (or 8) blocks of unequal widths, balancing MACs.
    None when nothing fits.
    """
    n_out, n_in = nz.shape
    oi, ii = np.nonzero(nz)
    n, labels = connected_components(n_out + n_in, oi, n_out + ii)
    out_lab, in_lab = labels[:n_out], labels[n_out:]
    a, b = np.bincount(out_lab, minlength=n), np.bincount(in_lab, minlength=n)
    a_max, b_max = int(a.max(initial=0)), int(b.max(initial=0))
    limit = min(n_out // max(a_max, 1), n_in // max(b_max, 1), max_groups)
    candidates = [groups] if groups else range(2, limit + 1)
    best: tuple[float, Blocks] | None = None
    for g in candidates:
        if g < 2 or n_out % g or n_in % g or (n_out // g) % align or (n_in // g) % align:
            continue
        bins = _pack(a, b, g, n_out // g, n_in // g)
        if bins is None:
            continue
        speed = predicted_speedup(g, min(n_out, n_in) // g, kernel_size)
        if best is None or speed > best[0]:
            best = (speed, Blocks(g, bins[out_lab], bins[in_lab]))
    if best is None and unequal:
        found = _unequal(a, b, out_lab, in_lab, groups or 8)
        widths = [] if found is None else [*np.bincount(found.out_group), *np.bincount(found.in_group)]
        return found if found is not None and all(w % align == 0 for w in widths) else None
    return best[1] if best else None


def _unequal(a: np.ndarray, b: np.ndarray, out_lab: np.ndarray, in_lab: np.ndarray, k_max: int) -> Blocks | None:
    """Components into at most ``k_max`` blocks of any widths: the largest (by MACs) first, each into
    the lightest block; components with outputs but no inputs (dead filters) or inputs but no outputs
    (unread channels) fill the blocks with the fewest outputs / inputs."""
    real = np.flatnonzero((a > 0) & (b > 0))
    k = min(len(real), k_max)
    if k < 2:
        return None
    load = np.zeros(k)
    n_o, n_i = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    bins = np.zeros(len(a), dtype=np.int64)
    for c in real[np.lexsort((real, -(a[real] * b[real])))]:
        j = int(np.argmin(load))
        bins[c], load[j] = j, load[j] + a[c] * b[c]
        n_o[j] += a[c]
        n_i[j] += b[c]
    for c in np.flatnonzero((a == 0) | (b == 0)):
        counts = n_o if a[c] else n_i
        j = int(np.argmin(counts))
        bins[c] = j
        counts[j] += a[c] + b[c]
    return Blocks(k, bins[out_lab], bins[in_lab])


def _pack(a: np.ndarray, b: np.ndarray, g: int, wo: int, wi: int) -> np.ndarray | None:
    """Components (a outputs, b inputs each) into ``g`` bins of exactly ``wo`` outputs and ``wi``
    inputs: largest first, each into the emptiest bin that fits. Bin per component, or None."""
    room_o, room_i = np.full(g, wo), np.full(g, wi)
    order = np.lexsort((np.arange(len(a)), -(a / wo + b / wi)))
    bins = np.zeros(len(a), dtype=np.int64)
    for c in order:
        fits = np.flatnonzero((room_o >= a[c]) & (room_i >= b[c]))
        if not len(fits):
            return None
        k = fits[np.argmax(room_o[fits] / wo + room_i[fits] / wi)]
        bins[c] = k
        room_o[k] -= a[c]
        room_i[k] -= b[c]
    return bins


@dataclass
class GroupedLayer:
    """One Conv the pass looked at: grouped (G > 1) or left dense, and why."""

    name: str
    weight: str
    groups: int
    in_channels: int
    out_channels: int
    macs_before: int | None
    macs_after: int | None
    predicted_speedup: float
    gathers: list[str] = field(default_factory=list)  # "input" / "output": where a Gather was inserted
    reason: str = ""  # why it stayed dense
    in_widths: list[int] = field(default_factory=list)  # per group (unequal: one Conv per group)
    out_widths: list[int] = field(default_factory=list)


@dataclass
class RegroupInfo:
    layers: list[GroupedLayer]
    macs_before: dict[str, int] = field(default_factory=dict)  # every weight layer of the input, per sample

    @property
    def grouped(self) -> list[GroupedLayer]:
        return [la for la in self.layers if la.groups > 1]

    @property
    def gathers(self) -> int:
        return sum(len(la.gathers) for la in self.layers)


@dataclass
class _Target:
    node: gs.Node
    x: str
    y: str
    blocks: Blocks
    layer: GroupedLayer


class Regroup(Pass):
    """Turn block-diagonal (under permutation) Convs into grouped Convs; see the module docstring.

    ``groups``: weight initializer name -> G (a ticket's structure); a Conv with no entry gets the G
    the cost table prefers among those its zeros allow. ``align``: group widths must be a multiple
    of it. ``only_hinted``: look only at the Convs ``groups`` names. ``unequal``: blocks of unequal
    widths become one Conv per block between a Split and a Concat, when the cost table predicts a
    speed-up. ``min_speedup``: the predicted speed-up a Conv the ticket does not name (or any unequal
    split) must beat.
    """

    name = "regroup"

    def __init__(self, groups: dict[str, int] | None = None, align: int = 1, only_hinted: bool = False,
                 unequal: bool = True, min_speedup: float = 1.0, rules: RuleTable | None = None):
        if align < 1:
            raise LtcError(f"align must be >= 1, got {align}")
        bad = {k: v for k, v in (groups or {}).items() if not isinstance(v, int) or v < 1}
        if bad:
            raise LtcError(f"group counts must be integers >= 1, got {bad}")
        self.groups = dict(groups or {})
        self.align = align
        self.only_hinted = only_hinted
        self.unequal = unequal
        self.min_speedup = min_speedup
        self.rules = rules  # the rule table (None: the default one)
        self.nonfinite = ""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = import_graph(model)
        cg = ChannelGraph(graph, self.rules)
        macs = cg.macs()
        self.nonfinite = _nonfinite_constant(graph)
        layers: list[GroupedLayer] = []
        targets: list[_Target] = []
        for node in graph.nodes:
            found = self._target(cg, node, macs, layers)
            if found is not None:
                targets.append(found)
        if not targets:
            return PassResult(model, False, RegroupInfo(layers, macs))
        plan = _plan(cg, targets)
        apply_reindex(cg, plan)
        idx = lookup(cg, plan)
        names = set(graph.tensors().keys())
        alive = {id(n) for n in graph.nodes}
        for t in targets:
            if id(t.node) not in alive:  # the re-index's cleanup dropped it: nothing reads its output
                t.layer.groups, t.layer.macs_after, t.layer.reason = 1, 0, "nothing reads its output (removed)"
                continue
            t.layer.gathers = _rewrite(graph, t, idx(t.x), idx(t.y), names)
        graph.cleanup()  # (split Convs leave their original node disconnected)
        graph.toposort()
        return PassResult(export_graph(graph, model), True, RegroupInfo(layers, macs))

    def _target(self, cg: ChannelGraph, node: gs.Node, macs: dict[str, int],
                layers: list[GroupedLayer]) -> _Target | None:
        if op_of(node) != "Conv" or int(node.attrs.get("group", 1)) != 1 or len(node.inputs) < 2:
            return None
        wt = node.inputs[1]
        hint = self.groups.get(wt.name)
        if self.only_hinted and hint is None:
            return None
        w = const_value(wt)
        if w is None or w.ndim < 3:
            return None
        name = node.name or node.outputs[0].name
        n_out, n_in = w.shape[:2]
        before = macs.get(name)

        def dense(reason: str) -> None:
            layers.append(GroupedLayer(name, wt.name, 1, n_in, n_out, before, before, 1.0, [], reason))

        if hint == 1:
            return dense("the ticket keeps it dense")
        x, y = node.inputs[0], node.outputs[0]
        if is_empty(x) or x.name not in cg.tensors or y.name not in cg.tensors \
                or cg.tensors[x.name].axis != 1 or cg.tensors[x.name].stride != 1:
            return dense("its input or output is not a channel-first tensor of known width")
        if len(wt.outputs) > 1:
            return dense("its weight is shared with another node")
        if not np.isfinite(w).all():
            return dense("its weight holds NaN or infinity (a grouped Conv would not propagate it as the dense one)")
        bias = node.inputs[2] if len(node.inputs) > 2 and not is_empty(node.inputs[2]) else None
        if bias is not None and const_value(bias) is None:
            return dense("its bias is computed, not a constant")
        if self.nonfinite:
            return dense(self.nonfinite)
        kernel = int(np.prod(w.shape[2:]))
        align = 1 if hint else self.align  # a ticket's G was chosen for its runtime: it wins over --round-to
        blocks = block_structure(nonzero_kernels(w), hint, align, kernel, unequal=self.unequal)
        if blocks is None:
            if hint:
                return dense(f"its zeros do not form {hint} blocks")
            return dense("no block structure" if self.align == 1 else
                         f"no block structure with group widths a multiple of {self.align}")
        g = blocks.groups
        if blocks.equal:
            speed = predicted_speedup(g, min(n_in, n_out) // g, kernel)
            shape = f"{g} groups of {min(n_in, n_out) // g}"
        else:
            speed = split_speedup(np.bincount(blocks.out_group), np.bincount(blocks.in_group), kernel)
            shape = f"{g} unequal groups"
        if (hint is None or not blocks.equal) and speed <= self.min_speedup:
            return dense(f"the cost table predicts no speed-up ({shape}: {speed:.2f}x)")
        if blocks.equal:
            after = before // g if before is not None else None
        else:
            kept = int((blocks.out_group[:, None] == blocks.in_group[None, :]).sum())
            after = before * kept // (n_out * n_in) if before is not None else None
        layer = GroupedLayer(name, wt.name, g, n_in, n_out, before, after, round(speed, 2),
                             in_widths=np.bincount(blocks.in_group, minlength=g).tolist(),
                             out_widths=np.bincount(blocks.out_group, minlength=g).tolist())
        layers.append(layer)
        return _Target(node, x.name, y.name, blocks, layer)


def _nonfinite_constant(graph: gs.Graph) -> str:
    """Why no Conv of ``graph`` may be grouped: a float constant holding NaN or infinity can make an
    activation non-finite, and a dense Conv spreads it (0 x inf = NaN) where a grouped one does not."""
    for t in graph.tensors().values():
        v = const_value(t) if isinstance(t, gs.Constant) else None
        if v is not None and np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            return f"the model's constant '{t.name}' holds NaN or infinity (a grouped Conv would not spread it)"
    return ""


def _plan(cg: ChannelGraph, targets: list[_Target]) -> dict[str, np.ndarray]:
    """One plan sorting each target's input and output classes by group, first claim wins: a class
    already claimed, frozen, or in a record that refuses the order keeps its place (a Gather then
    does the target's re-ordering)."""
    group_key = np.zeros(cg.n_classes)
    pos_key = np.zeros(cg.n_classes)
    claimed = cg.frozen.copy()
    owners: list[np.ndarray] = []
    for t in targets:
        rank = np.arange(t.blocks.groups)
        cx = cg.classes_of(t.x)
        if claimed[cx].all() and not cg.frozen[cx].any():  # input ordered by an earlier target: follow it
            first = np.lexsort((pos_key[cx], group_key[cx]))  # input positions in the order it will have
            seen = t.blocks.in_group[first]
            _, at = np.unique(seen, return_index=True)
            rank[np.argsort(at)] = np.arange(t.blocks.groups)  # group -> rank of its first appearance
        for name, group in ((t.y, rank[t.blocks.out_group]), (t.x, rank[t.blocks.in_group])):
            cls = cg.classes_of(name)
            if claimed[cls].any() or len(np.unique(cls)) != len(cls):
                continue
            claimed[cls] = True
            group_key[cls] = group
            pos_key[cls] = np.arange(len(cls))
            owners.append(cls)
    movable = claimed & ~cg.frozen
    segments = Segments(cg)
    for _ in range(len(owners) + 1):
        plan = ordered_plan(cg, [pos_key, group_key], movable, segments)
        idx = lookup(cg, plan)
        bad = [r for r in cg.records if not r.admits(idx)]
        if not bad:
            return plan
        for r in bad:  # give up the claims this record cannot take
            for name in r.tensors():
                hit = np.isin(np.arange(cg.n_classes), cg.classes_of(name))
                for cls in owners:
                    if hit[cls].any():
                        movable[cls] = False
    return {}


def _rewrite(graph: gs.Graph, t: _Target, px: np.ndarray, py: np.ndarray, names: set[str]) -> list[str]:
    """Cut ``t``'s (already re-indexed) weight to its diagonal blocks: ``Conv(group=G)`` for equal
    blocks, else one Conv per block between a Split and a Concat; insert the Gathers its input or
    output order needs. ``px``/``py``: original channel at each new position."""
    node, g = t.node, t.blocks.groups
    gi, go = t.blocks.in_group[px], t.blocks.out_group[py]
    sigma_out, sigma_in = _block_order(go), _block_order(gi)
    sigma = sigma_out if sigma_out is not None else (sigma_in if sigma_in is not None else np.arange(g))
    rank = np.empty(g, dtype=np.int64)
    rank[sigma] = np.arange(g)
    o_order = np.arange(len(go)) if sigma_out is not None else np.lexsort((np.arange(len(go)), rank[go]))
    same_in = sigma_in is not None and np.array_equal(sigma_in, sigma)
    i_order = np.arange(len(gi)) if same_in else np.lexsort((np.arange(len(gi)), rank[gi]))
    w = const_value(node.inputs[1])[o_order][:, i_order]
    ro, ri = rank[go[o_order]], rank[gi[i_order]]  # block of each row / column, 0..g-1 in tensor order
    if np.any(w.reshape(w.shape[0], w.shape[1], -1)[ro[:, None] != ri[None, :]] != 0):
        raise InternalError(f"regroup: Conv '{node.name}' has non-zero weights outside its {g} blocks")
    bias = None
    if len(node.inputs) > 2 and not is_empty(node.inputs[2]):
        bias = const_value(node.inputs[2])[o_order]
    gathers = []
    if not same_in:  # the Conv reads its input in group order
        x = node.inputs[0]
        node.inputs[0] = _copy_var(x, names)
        _gather(graph, node, "in", x, node.inputs[0], i_order, names)
        gathers.append("input")
    if sigma_out is None:  # the Conv writes in group order; the class order is restored after it
        y = node.outputs[0]
        node.outputs[0] = _copy_var(y, names)
        _gather(graph, node, "out", node.outputs[0], y, np.argsort(o_order), names)
        gathers.append("output")
    if t.blocks.equal:
        wo, wi = len(go) // g, len(gi) // g
        blocks = w.reshape(g, wo, g, wi, *w.shape[2:])[np.arange(g), :, np.arange(g)]  # [g, wo, wi, *k]
        node.inputs[1] = gs.Constant(_fresh(names, f"{node.inputs[1].name}__grouped"),
                                     np.ascontiguousarray(blocks.reshape(g * wo, wi, *w.shape[2:])))
        if bias is not None and sigma_out is None:
            node.inputs[2] = gs.Constant(_fresh(names, f"{node.inputs[2].name}__grouped"), np.ascontiguousarray(bias))
        node.attrs["group"] = g
        return gathers
    _split_convs(graph, node, w, bias, ro, ri, g, names)
    return gathers


def _copy_var(v: gs.Variable, names: set[str]) -> gs.Variable:
    """A new variable like ``v`` (dtype, shape) for the same channels in group order."""
    return gs.Variable(_fresh(names, f"{v.name}__groups"), dtype=v.dtype, shape=list(v.shape) if v.shape is not None else None)


def _gather(graph: gs.Graph, node: gs.Node, side: str, src: gs.Tensor, dst: gs.Tensor, order: np.ndarray,
            names: set[str]) -> None:
    """``dst = Gather(src, order, axis=1)``, named after ``node`` and ``side`` (in / out)."""
    graph.nodes.append(gs.Node("Gather", _fresh(names, f"{node.name}__gather_{side}"), {"axis": 1},
                               [src, gs.Constant(_fresh(names, f"{node.name}__{side}_order"), order.astype(np.int64))],
                               [dst]))


def _split_convs(graph: gs.Graph, node: gs.Node, w: np.ndarray, bias: np.ndarray | None, ro: np.ndarray,
                 ri: np.ndarray, g: int, names: set[str]) -> None:
    """Replace ``node`` by Split (input channels per block) -> one Conv per block -> Concat."""
    in_sizes, out_sizes = np.bincount(ri, minlength=g), np.bincount(ro, minlength=g)
    if bias is not None:
        node.inputs[2] = gs.Constant(_fresh(names, f"{node.inputs[2].name}__grouped"), np.ascontiguousarray(bias))
    pieces, o0, i0 = [], 0, 0
    for k in range(g):
        o1, i1 = o0 + int(out_sizes[k]), i0 + int(in_sizes[k])
        pieces.append((int(in_sizes[k]), 1, w[o0:o1, i0:i1]))
        o0, i0 = o1, i1
    split_conv(graph, node, pieces, names)


def _block_order(groups: np.ndarray) -> np.ndarray | None:
    """The order of the groups along a tensor if each group is one contiguous run, else None."""
    starts = np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)
    runs = groups[starts]
    return runs if len(np.unique(runs)) == len(runs) else None
