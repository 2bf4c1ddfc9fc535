"""Plan -> ``{tensor: unit index array}`` -> :func:`apply_reindex`: the one structural rewrite.

Removal is the plan of sorted kept units (after folding dead constants into biases); a permutation
plan moves channels (:func:`ordered_plan`); regroup is a permutation plus a grouped-Conv rewrite. Every record of the
analysis must admit the plan (:func:`refusals`), frozen tensors keep every channel in place, and
pinned ones keep every channel.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ltc.errors import InternalError
from ltc.passes.channels import ChannelGraph, _source
from ltc.passes.records import BiasSlot, Edits, IndexOf, MapSlot, Record
from ltc.passes.rules import const_value, is_empty, op_of

Plan = dict[str, np.ndarray]


def lookup(cg: ChannelGraph, plan: Plan) -> IndexOf:
    def idx(name: str) -> np.ndarray:
        found = plan.get(name)
        return found if found is not None else np.arange(cg.tensors[name].units)

    return idx


def refusals(cg: ChannelGraph, plan: Plan) -> list[str]:
    """Why ``plan`` cannot be applied exactly (empty if it can)."""
    idx = lookup(cg, plan)
    problems = [f"{type(r).__name__} on {', '.join(r.tensors())}" for r in cg.records if not r.admits(idx)]
    for name, i in plan.items():
        ct = cg.tensors.get(name)
        if ct is None:
            problems.append(f"'{name}' is not a channel tensor")
            continue
        i = np.asarray(i)
        if i.ndim != 1 or (len(i) and (i.min() < 0 or i.max() >= ct.units)) or len(np.unique(i)) != len(i):
            problems.append(f"'{name}': not an index array of distinct units below {ct.units}")
            continue
        cls = cg.classes_of(name)
        frozen, pinned = cg.frozen[cls], cg.pinned[cls]
        if frozen.any() and not np.array_equal(i[frozen[i]], np.flatnonzero(frozen)):
            problems.append(f"'{name}': a frozen channel moves or goes")
        if (pinned & ~frozen).any() and not np.isin(np.flatnonzero(pinned), i).all():
            problems.append(f"'{name}': a pinned channel goes")
    for name, _ in cg.blocks:
        i = plan.get(name)
        if i is not None and not np.array_equal(i, np.arange(cg.tensors[name].units)):
            problems.append(f"'{name}' is frozen but re-indexed")
    return problems


def apply_reindex(cg: ChannelGraph, plan: Plan, folds: list[tuple[BiasSlot, np.ndarray]] = (),
                  maps: list[tuple[MapSlot, np.ndarray]] = ()) -> bool:
    """Rewrite ``cg.graph`` in place so every channel tensor holds its plan's units, in that order.

    ``folds`` add per-output-entry vectors (in the original indexing) to biases: the constants that
    removed channels contributed. ``maps`` do it for padded Convs, where the contribution varies at
    the borders: kernel sums ``[C_out, *kernel]`` (original indexing) whose convolution of a ones
    image with the Conv's own padding is added to its output. Raises :class:`InternalError` if the plan is not admissible (a
    plan's author is ltc or a pipeline, never the model). Returns whether anything changed.
    """
    problems = refusals(cg, plan)
    if problems:
        raise InternalError(f"re-index plan refused: {'; '.join(problems[:5])}")
    idx = lookup(cg, plan)
    edits = Edits(_value)
    records: list[Record] = cg.records
    for r in records:
        r.apply(idx, edits)
    for slot, contribution in folds:
        _add_to_bias(edits, slot, np.asarray(contribution, dtype=np.float64)[slot.out.features(idx(slot.out.name))])
    for slot, sums in maps:
        edits.maps.append((slot.node, np.asarray(sums)[slot.out.features(idx(slot.out.name))]))
    if not (edits.values or edits.attrs or edits.inputs or edits.splits or edits.maps):
        return False
    _write(cg.graph, edits)
    if edits.maps:
        cg.graph.toposort()
    cg.graph.cleanup()
    return True


def _value(node: gs.Node, index: int) -> np.ndarray | None:
    if index >= len(node.inputs) or is_empty(node.inputs[index]):
        return None
    return const_value(node.inputs[index])


def _add_to_bias(edits: Edits, slot: BiasSlot, add: np.ndarray) -> None:
    shape = slot.shape(len(add))
    current = edits.get(slot.node, slot.index)
    base = np.zeros(shape) if current is None else np.broadcast_to(current.astype(np.float64), shape)
    new = (base + (add / slot.scale).reshape(shape)).astype(slot.dtype)
    if current is None:
        edits.inputs.append((slot.node, slot.index, new, "__ltc_bias"))
    else:
        edits.set(slot.node, slot.index, new)


def _write(graph: gs.Graph, edits: Edits) -> None:
    """Write the edits. A constant read by several nodes stays one constant where all of them get the
    same new value, and is copied only where they differ; names are fresh and unique."""
    names = set(graph.tensors().keys())
    outputs = {id(v) for v in graph.outputs}

    def fresh(base: str, suffix: str = "__ltc") -> str:
        return fresh_name(names, base, suffix)

    groups: dict[int, tuple[gs.Tensor, list[tuple[gs.Node, int, np.ndarray]]]] = {}
    for node, index, value in edits.values.values():
        t = _behind_identity(node.inputs[index])  # (the legacy exporter shares a weight through Identity)
        groups.setdefault(id(t), (t, []))[1].append((node, index, value))
    for t, users in groups.values():
        readers, passing = _readers(t, outputs)
        first = users[0][2]
        same = all(_equal(first, v) for _, _, v in users)
        if isinstance(t, gs.Constant) and same and len(users) == len(readers):
            t.values = np.ascontiguousarray(first)  # one tensor stays one tensor, never a copy per reader
            for var in passing:
                var.shape = list(first.shape)
            continue
        made: list[tuple[np.ndarray, gs.Constant]] = []
        for node, index, value in users:
            c = next((c for v, c in made if _equal(v, value)), None)
            if c is None:
                c = gs.Constant(fresh(t.name or node.name), np.ascontiguousarray(value))
                made.append((value, c))
            node.inputs[index] = c
    for node, index, value, suffix in edits.inputs:
        c = gs.Constant(fresh(node.name or node.outputs[0].name, suffix), np.ascontiguousarray(value))
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        if index < len(node.inputs):
            node.inputs[index] = c
        else:
            node.inputs.append(c)
    for node, name, value in edits.attrs:
        node.attrs[name] = value
    for node, name in edits.drop_attrs:
        node.attrs.pop(name, None)
    for node, sums in edits.maps:  # (before splits: a split Conv's pieces then write the map's input)
        add_constant_map(graph, node, sums, names)
    for node, pieces in edits.splits:
        split_conv(graph, node, pieces, names)


def add_constant_map(graph: gs.Graph, node: gs.Node, sums: np.ndarray, names: set[str]) -> None:
    """``node`` (a Conv) outputs ``Conv(x) + Conv(ones, sums)``: what removed input channels that were
    a constant ``k_c`` everywhere contributed through its zero padding, exactly (``sums`` is
    ``sum_c k_c W[:, c]``, [C_out, *kernel]). The ones image takes ``x``'s spatial shape (at run time
    when it is dynamic), and ONNX Runtime folds it when it loads the model."""
    out = node.outputs[0]
    base = node.name or out.name
    dtype = np.dtype(out.dtype) if out.dtype is not None else const_value(node.inputs[1]).dtype
    ones = gs.Variable(fresh_name(names, base, "__map_ones"), dtype=dtype)
    conv_map = gs.Variable(fresh_name(names, base, "__map"), dtype=dtype)
    new, full = image_dims(node.inputs[0], [1, 1], sums.ndim + 1, names, base + "__map")
    new += [
        gs.Node("ConstantOfShape", fresh_name(names, base, "__map_ConstantOfShape"),
                {"value": gs.Constant(fresh_name(names, base, "__map_one"), np.ones(1, dtype))}, [full], [ones]),
        gs.Node("Conv", fresh_name(names, base, "__map_Conv"), {k: v for k, v in node.attrs.items() if k != "group"},
                [ones, gs.Constant(fresh_name(names, base, "__map_kernel"), np.ascontiguousarray(sums[:, None].astype(dtype)))],
                [conv_map]),
    ]
    if out.shape is not None:  # (shapes as written: the MACs of the rewritten graph are counted from them)
        conv_map.shape = [1, len(sums), *out.shape[2:]]
    x_shape = node.inputs[0].shape
    if x_shape is not None:
        ones.shape = [1, 1, *x_shape[2:]]
    new.append(add_to_output(node, conv_map, names, base + "__map", len(sums)))
    graph.nodes.extend(new)


def image_dims(x: gs.Tensor, lead: list[int], rank: int, names: set[str], base: str) -> tuple[list[gs.Node], gs.Tensor]:
    """The shape ``[*lead, *x.shape[2:rank]]`` and the nodes that compute it: a constant when ``x``'s
    spatial sizes are known and static, else read from ``x`` at run time (Shape -> Slice -> Concat)."""
    spatial = list(x.shape[2:]) if x.shape is not None and len(x.shape) == rank else None
    if spatial is not None and all(isinstance(s, int) and s >= 0 for s in spatial):
        return [], gs.Constant(fresh_name(names, base, "_dims"), np.array([*lead, *spatial], np.int64))
    full, hw, dims = (gs.Variable(fresh_name(names, base, s), dtype=np.int64) for s in ("_shape", "_hw", "_dims"))
    nodes = [
        gs.Node("Shape", fresh_name(names, base, "_Shape"), {}, [x], [full]),
        gs.Node("Slice", fresh_name(names, base, "_Slice"), {},
                [full, gs.Constant(fresh_name(names, base, "_from"), np.array([2], np.int64)),
                 gs.Constant(fresh_name(names, base, "_to"), np.array([rank], np.int64))], [hw]),
        gs.Node("Concat", fresh_name(names, base, "_Concat"), {"axis": 0},
                [gs.Constant(fresh_name(names, base, "_lead"), np.array(lead, np.int64)), hw], [dims]),
    ]
    return nodes, dims


def add_to_output(node: gs.Node, extra: gs.Tensor, names: set[str], base: str, channels: int | None = None) -> gs.Node:
    """The Add that makes ``node``'s first output ``node(...) + extra``: the node now writes a fresh
    tensor, which the Add reads; ``channels``: the output's channel count if its shape is not yet
    the rewritten one."""
    out = node.outputs[0]
    pre = gs.Variable(fresh_name(names, node.name or out.name, "__conv"), dtype=out.dtype)
    if out.shape is not None:  # (shapes as written: the MACs of the rewritten graph are counted from them)
        pre.shape = [out.shape[0], out.shape[1] if channels is None else channels, *out.shape[2:]]
    node.outputs[0] = pre
    return gs.Node("Add", fresh_name(names, base, "_Add"), {}, [pre, extra], [out])


def _behind_identity(t: gs.Tensor) -> gs.Tensor:
    """The initializer ``t`` passes on through Identity nodes, or ``t`` itself."""
    src = _source(t)
    return src if isinstance(src, gs.Constant) else t


def _readers(t: gs.Tensor, graph_outputs: set[int]) -> tuple[list, list[gs.Variable]]:
    """Every (node, input) that reads ``t``, directly or through Identity nodes (a graph output on the
    way counts as a reader), and the Identity outputs on the way (which carry ``t``'s shape)."""
    readers, passing, todo, seen = [], [], [t], set()
    while todo:
        cur = todo.pop()
        if id(cur) in graph_outputs:
            readers.append((None, -1))
        for n in cur.outputs:
            if op_of(n) == "Identity" and n.inputs and n.inputs[0] is cur:
                out = n.outputs[0]
                if id(out) not in seen:
                    seen.add(id(out))
                    passing.append(out)
                    todo.append(out)
                    continue
            readers += [(n, i) for i, inp in enumerate(n.inputs) if inp is cur]
    return readers, passing


def split_conv(graph: gs.Graph, node: gs.Node, pieces: list[tuple[int, int, np.ndarray | None]],
               names: set[str]) -> None:
    """Replace the Conv ``node`` by Split (input channels) -> one Conv per piece -> Concat, in place in
    the node order. ``pieces``: (input width, groups, weight [out, width / groups, *k]), or weight None
    for input channels nothing reads. The node's bias (already re-indexed) is cut along the pieces.
    ``node`` itself becomes the first Conv (it keeps its name); a single piece needs no Split."""
    x, y = node.inputs[0], node.outputs[0]
    bias = const_value(node.inputs[2]) if len(node.inputs) > 2 and not is_empty(node.inputs[2]) else None
    attrs = {k: v for k, v in node.attrs.items() if k != "group"}
    at = graph.nodes.index(node)
    if len(pieces) == 1:
        _, g, w = pieces[0]
        node.inputs[1] = gs.Constant(fresh_name(names, node.inputs[1].name, "__ltc"), np.ascontiguousarray(w))
        node.attrs = {**attrs, "group": g}
        return

    def var(like: gs.Variable, base: str, channels: int) -> gs.Variable:
        shape = list(like.shape) if like.shape is not None else None
        if shape is not None and len(shape) > 1:
            shape[1] = channels
        return gs.Variable(fresh_name(names, base), dtype=like.dtype, shape=shape)

    sizes = np.array([p[0] for p in pieces], dtype=np.int64)
    parts = [var(x, f"{node.name or y.name}__in{k}", int(s)) for k, s in enumerate(sizes)]
    if (graph.opset or 13) >= 13:
        split = gs.Node("Split", fresh_name(names, f"{node.name}__split"), {"axis": 1},
                        [x, gs.Constant(fresh_name(names, f"{node.name}__split_sizes"), sizes)], parts)
    else:  # Split-11 and earlier take the sizes as an attribute
        split = gs.Node("Split", fresh_name(names, f"{node.name}__split"), {"axis": 1, "split": sizes.tolist()},
                        [x], parts)
    new, outs, o0 = [split], [], 0
    w_name = node.inputs[1].name
    for k, (part, (_, g, w)) in enumerate(zip(parts, pieces, strict=True)):
        if w is None:
            continue
        out = var(y, f"{y.name}__part{k}", w.shape[0])
        inputs = [part, gs.Constant(fresh_name(names, w_name, f"__part{k}"), np.ascontiguousarray(w))]
        if bias is not None:
            inputs.append(gs.Constant(fresh_name(names, node.inputs[2].name, f"__part{k}"),
                                      np.ascontiguousarray(bias[o0:o0 + w.shape[0]])))
        o0 += w.shape[0]
        if len(outs) == 0:  # the first Conv is the node itself
            node.inputs.clear()
            node.inputs.extend(inputs)
            node.outputs.clear()
            node.outputs.append(out)
            node.attrs = {**attrs, "group": g}
            new.append(node)
        else:
            new.append(gs.Node("Conv", fresh_name(names, f"{node.name}__part{k}"), {**attrs, "group": g}, inputs, [out]))
        outs.append(out)
    new.append(gs.Node("Concat", fresh_name(names, f"{node.name}__concat"), {"axis": 1}, outs, [y]))
    graph.nodes[at:at + 1] = new


def fresh_name(names: set[str], base: str, suffix: str = "") -> str:
    """``base + suffix``, or ``base_N + suffix`` with the first N not in ``names``; added to ``names``."""
    name, n = f"{base}{suffix}", 0
    while name in names:
        n += 1
        name = f"{base}_{n}{suffix}"
    names.add(name)
    return name


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def permutation_plan(cg: ChannelGraph, rng: np.random.Generator, attempts: int = 20) -> Plan:
    """A random admissible plan that permutes every channel class it can and removes none.

    Classes get random sort keys (see :func:`ordered_plan`). Classes of a record that still refuses
    are left in place.
    """
    key = rng.random(cg.n_classes)
    fixed = cg.frozen.copy()
    segments = Segments(cg)
    for _ in range(attempts):
        plan = ordered_plan(cg, [key], ~fixed, segments)
        idx = lookup(cg, plan)
        bad = [r for r in cg.records if not r.admits(idx)]
        if not bad:
            return plan
        for r in bad:
            for name in r.tensors():
                fixed[cg.classes_of(name)] = True
    return {}


class Segments:
    """Where records cut tensors into segments (Concat, Split, Slice, groups, heads): per tensor its
    own segment numbers; per unit layout (the class of each unit, in order) the segments of a tensor
    laid out so, which a tensor of the same layout follows (a bias Add after a cut projection); and
    per set of classes the segment ranks of a tensor holding exactly them, where each class lies in
    one segment (a GroupNormalization's output)."""

    def __init__(self, cg: ChannelGraph):
        self.own: dict[str, list[np.ndarray]] = {}
        self.by_layout: dict[bytes, list[np.ndarray]] = {}
        self.by_classes: dict[frozenset, list[np.ndarray]] = {}
        for r in cg.records:
            for name in r.tensors():
                seg = r.segments(name)
                if seg is None:
                    continue
                self.own.setdefault(name, []).append(seg)
                cls = cg.classes_of(name)
                self.by_layout.setdefault(cls.tobytes(), []).append(seg)
                rank = np.full(cg.n_classes, -1)
                rank[cls] = seg
                if np.array_equal(rank[cls], seg):  # every class in one segment
                    self.by_classes.setdefault(frozenset(cls.tolist()), []).append(rank)


def ordered_plan(cg: ChannelGraph, keys: list[np.ndarray], movable: np.ndarray,
                 segments: Segments | None = None) -> Plan:
    """Every tensor's units of ``movable`` classes sorted among their own positions by their classes'
    ``keys`` (per class; the last key is the primary one); the other units stay where they are.

    A tensor that records cut into segments is ordered by its segments first, and so is a tensor
    holding exactly the same classes (a GroupNormalization's output), so segments stay in place with
    their contents sorted. The plan may still be refused (:func:`refusals`).
    """
    segments = segments or Segments(cg)
    movable = movable & ~cg.frozen
    plan: Plan = {}
    for name, ct in cg.tensors.items():
        cls = cg.classes_of(name)
        free = np.flatnonzero(movable[cls])
        if len(free) < 2:
            continue
        own = segments.own.get(name) or segments.by_layout.get(cls.tobytes(), [])
        ranks = segments.by_classes.get(frozenset(cls.tolist()), []) if not own else []
        sort_keys = [*(k[cls[free]] for k in keys), *(rank[cls[free]] for rank in reversed(ranks)),
                     *(seg[free] for seg in reversed(own))]
        order = np.arange(ct.units)
        order[free] = free[np.lexsort(sort_keys)]
        if not np.array_equal(order, np.arange(ct.units)):
            plan[name] = order
    return plan
