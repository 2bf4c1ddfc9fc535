"""Channel shuffles (ShuffleNet's Reshape -> Transpose -> Reshape) as one channel Gather.

``x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W)`` permutes the channels of ``x``:
output channel ``i*g + k`` is input channel ``k*(C/g) + i``. The analysis cannot follow a channel
axis split over two axes, and the exporters compute the targets from ``Shape(x)``, which reads the
channel count. :class:`ShuffleToGather` rewrites the three nodes as ``Gather(x, perm, axis=1)``, the
same values, whose rule ties each output channel to its input channel and whose indices follow any
removal or permutation. Recognised from the inferred shapes, whatever computes the targets:

- the first Reshape splits axis 1 of a rank-r tensor into two static factors ``g * c == C`` and keeps
  every other dimension;
- the Transpose swaps exactly those two axes;
- the second Reshape restores the input's shape;
- neither intermediate has another reader or is a graph output.

The nodes that only computed the two targets go with them.

The same pass rewrites the dynamo exporter's transpose of a batched matrix (``k.transpose(-2, -1)``
in attention: ``Reshape(k, [-1, n, d]) -> Transpose(0, 2, 1) -> Reshape(to [*k.shape[:-2], d, n])``,
batch and heads flattened into one axis) as one ``Transpose`` of the last two axes of ``k``: the
same values, and a Transpose the analysis follows (the flattened axis mixes heads with the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ltc.passes.base import Pass, PassResult
from ltc.passes.reindex import fresh_name
from ltc.passes.shapes import ShapeValues, attr_int, drop_unread, inferred_dims


@dataclass
class ShuffleInfo:
    shuffles: int


def shuffle_indices(groups: int, per_group: int) -> np.ndarray:
    """Input channel of each output channel of a shuffle of ``groups`` x ``per_group`` channels."""
    return np.arange(groups * per_group).reshape(groups, per_group).T.reshape(-1)


class ShuffleToGather(Pass):
    name = "shuffle-to-gather"

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        if not any(n.op_type == "Transpose" and (_swaps_1_2(n) or _perm(n) == [0, 2, 1]) for n in g.node):
            return PassResult(model, False, ShuffleInfo(0))
        shapes = inferred_dims(model)
        readers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for x in n.input:
                readers.setdefault(x, []).append(i)
        outputs = {o.name for o in g.output}
        found = []  # (first reshape, transpose, second reshape, indices)
        targets = ShapeValues(g, shapes)
        for i, r1 in enumerate(g.node):
            match = self._match(g, i, r1, shapes, readers, outputs, targets) or \
                _match_swap(g, i, r1, shapes, readers, outputs, targets)
            if match is not None:
                found.append(match)
        if not found:
            return PassResult(model, False, ShuffleInfo(0))
        out = onnx.ModelProto()
        out.CopyFrom(model)
        nodes = list(out.graph.node)
        drop = set()
        names = {t.name for t in out.graph.initializer} | {o for n in nodes for o in n.output}
        readers_now: dict[str, set[int]] = {}
        for j, n in enumerate(nodes):
            for x in n.input:
                readers_now.setdefault(x, set()).add(j)
        for i1, it, i2, idx in found:
            r2 = nodes[i2]
            if isinstance(idx, list):  # a transpose of the last two axes: idx is its perm
                gather = helper.make_node("Transpose", [nodes[i1].input[0]], list(r2.output), name=r2.name, perm=idx,
                                          doc_string=r2.doc_string or None)
            else:
                const = fresh_name(names, f"{r2.name or r2.output[0]}__shuffle")
                out.graph.initializer.append(numpy_helper.from_array(idx.astype(np.int64), const))
                gather = helper.make_node("Gather", [nodes[i1].input[0], const], list(r2.output), name=r2.name, axis=1,
                                          doc_string=r2.doc_string or None)
            gather.metadata_props.extend(r2.metadata_props)
            for x in r2.input:
                readers_now.get(x, set()).discard(i2)
            nodes[i2] = gather
            for x in gather.input:
                readers_now.setdefault(x, set()).add(i2)
            drop |= {i1, it}
            drop |= _target_only(nodes, [nodes[i1].input[1], g.node[i2].input[1]], drop, outputs, readers_now)
        del out.graph.node[:]
        out.graph.node.extend(n for i, n in enumerate(nodes) if i not in drop)
        drop_unread(out.graph, {o for i in drop for o in nodes[i].output})
        return PassResult(out, True, ShuffleInfo(len(found)))

    @staticmethod
    def _match(g, i, r1, shapes, readers, outputs, targets=None):
        chain = _chain(g, r1, readers, outputs)
        if chain is None:
            return None
        t, r2 = chain
        a, b = r1.output[0], t.output[0]
        it, i2 = readers[a][0], readers[b][0]
        x = r1.input[0]
        dx = shapes.get(x)
        if dx is None or len(dx) < 2 or not isinstance(dx[1], int) or dx[1] <= 0:
            return None
        r, channels = len(dx), dx[1]
        perm = _perm(t)
        want = list(range(r + 1))
        want[1], want[2] = 2, 1
        if perm != want:
            return None
        targets = targets or ShapeValues(g, shapes)
        t1, t2 = targets.entries(r1.input[1]), targets.entries(r2.input[1])
        if t1 is None or t2 is None or len(t1) != r + 1 or len(t2) != r:
            return None
        zero_copies = [not attr_int(n, "allowzero", 0) for n in (r1, r2)]

        def dim(e, k: int, tensors: tuple[str, ...]) -> bool:
            return _is_dim(e, k, dx, tensors)

        groups, per = t1[1], t1[2]
        if not (isinstance(groups, int) and isinstance(per, int)):
            return None
        if groups == -1 and per > 0 and channels % per == 0:
            groups = channels // per
        elif per == -1 and groups > 0 and channels % groups == 0:
            per = channels // groups
        if groups <= 0 or per <= 0 or groups * per != channels:
            return None
        batch1 = dim(t1[0], 0, (x,)) or (t1[0] == 0 and zero_copies[0]) or t1[0] == -1
        if not batch1 or not all(dim(e, k - 1, (x,)) for k, e in enumerate(t1[3:], start=3)):
            return None
        rest2 = all(dim(e, k, (x,)) or (isinstance(e, tuple) and e[1] in (a, b) and e[2] == k + 1)
                    for k, e in enumerate(t2[2:], start=2))
        first2 = dim(t2[0], 0, (x, a, b)) or (t2[0] == 0 and zero_copies[1]) or (t2[0] == -1 and t2[1] == channels)
        if not (rest2 and first2 and (t2[1] == channels or (t2[1] == -1 and t2[0] != -1))):
            return None
        return i, it, i2, shuffle_indices(groups, per)


def _match_swap(g, i, r1, shapes, readers, outputs, targets):
    """``Reshape(x, [-1, a, b]) -> Transpose(0, 2, 1) -> Reshape(to [*x.shape[:-2], b, a])`` for x of
    rank >= 3 ending in ``[a, b]``: (first reshape, transpose, second reshape, perm of the one Transpose
    of x that computes the same)."""
    chain = _chain(g, r1, readers, outputs)
    if chain is None or _perm(chain[0]) != [0, 2, 1]:
        return None
    t, r2 = chain
    x = r1.input[0]
    dx = shapes.get(x)
    if dx is None or len(dx) < 3:
        return None
    r = len(dx)
    t1, t2 = targets.entries(r1.input[1]), targets.entries(r2.input[1])
    if t1 is None or t2 is None or len(t1) != 3 or len(t2) != r or attr_int(r2, "allowzero", 0):
        return None

    def dim(e, k: int) -> bool:
        return _is_dim(e, k, dx, (x,))

    lead = dx[:-2]
    flat = t1[0] == -1 or (all(isinstance(d, int) for d in lead) and t1[0] == int(np.prod(lead)))
    if not (flat and dim(t1[1], r - 2) and dim(t1[2], r - 1)):
        return None
    if not (all(dim(e, k) for k, e in enumerate(t2[:-2])) and dim(t2[-2], r - 1) and dim(t2[-1], r - 2)):
        return None
    return i, readers[r1.output[0]][0], readers[t.output[0]][0], [*range(r - 2), r - 1, r - 2]


def _chain(g, r1, readers: dict, outputs: set):
    """(Transpose, Reshape) when ``r1`` is a Reshape whose output only that Transpose reads, and whose
    output only that Reshape reads; else None."""
    if r1.op_type != "Reshape" or r1.domain not in ("", "ai.onnx") or len(r1.input) < 2:
        return None
    t = _sole_reader(g, r1, "Transpose", readers, outputs)
    r2 = _sole_reader(g, t, "Reshape", readers, outputs) if t is not None else None
    return None if r2 is None else (t, r2)


def _is_dim(e, k: int, dx: list, tensors: tuple[str, ...]) -> bool:
    """Shape-vector entry ``e`` (:class:`ShapeValues`) is dimension k of a tensor of shape ``dx``
    named in ``tensors``: read off it, or the same static size."""
    return (isinstance(e, tuple) and e[1] in tensors and e[2] == k) or (isinstance(e, int) and e > 0 and e == dx[k])


def _perm(n: onnx.NodeProto) -> list[int] | None:
    return next((list(att.ints) for att in n.attribute if att.name == "perm"), None)


def _swaps_1_2(n: onnx.NodeProto) -> bool:
    perm = _perm(n) or []
    return len(perm) >= 3 and perm[:3] == [0, 2, 1] and perm[3:] == list(range(3, len(perm)))



def _target_only(nodes: list[onnx.NodeProto], tensors: list[str], dropped: set[int], outputs: set[str],
                 readers: dict[str, set[int]]) -> set[int]:
    """Nodes that compute ``tensors`` and whose outputs nothing else reads (transitively).
    ``readers``: tensor -> indices of the nodes reading it, in ``nodes`` as they are now."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    drop: set[int] = set()
    stack = [t for t in tensors if t in producer]
    while stack:
        i = producer[stack.pop()]
        if i in drop or i in dropped:
            continue
        gone = drop | dropped
        if any(o in outputs or readers.get(o, set()) - gone for o in nodes[i].output):
            continue
        drop.add(i)
        stack.extend(x for x in nodes[i].input if x in producer)
    return drop


def _sole_reader(g, node, op: str, readers: dict, outputs: set):
    """The one node that reads ``node``'s output, when it is an ``op`` reading it as input 0 and the
    output is no graph output; else None."""
    a = node.output[0]
    if a in outputs or len(readers.get(a, [])) != 1:
        return None
    reader = g.node[readers[a][0]]
    return reader if reader.op_type == op and reader.input[0] == a else None
