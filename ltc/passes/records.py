"""What a channel analysis records, and how each record re-indexes the graph.

A *plan* maps channel tensors to index arrays over their units (``{name: idx}``; a tensor not in the
plan keeps ``arange(units)``). Removal is the plan of sorted kept units; a permutation is a plan too.
Every record answers :meth:`Record.admits` (can this plan be applied exactly?) and contributes its
part of :meth:`Record.apply`. Ties are records as well: two tied ranges must keep the same channels
in the same order, which is what makes a plan consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

IndexOf = Callable[[str], np.ndarray]


@dataclass
class ChannelTensor:
    """The channel axis of one tensor: ``size`` entries along ``axis``, ``stride`` entries per unit."""

    name: str
    size: int
    stride: int
    base: int  # global id of unit 0
    rank: int
    shape: list  # inferred shape (may hold symbols or None)
    axis: int = 1

    @property
    def units(self) -> int:
        return self.size // self.stride

    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.units if stop is None else stop
        return np.arange(self.base + start, self.base + stop)

    def features(self, idx: np.ndarray) -> np.ndarray:
        """Entries along the axis of the units ``idx``, in that order."""
        s = self.stride
        return (np.asarray(idx)[:, None] * s + np.arange(s)[None, :]).reshape(-1)


class Edits:
    """The edits a plan makes, collected from every record before any is written (see reindex.py)."""

    def __init__(self, value: Callable[[gs.Node, int], np.ndarray]):
        self._value = value
        self.values: dict[tuple[int, int], tuple[gs.Node, int, np.ndarray]] = {}
        self.attrs: list[tuple[gs.Node, str, object]] = []
        self.inputs: list[tuple[gs.Node, int, np.ndarray, str]] = []  # (node, index, constant, name suffix)
        self.drop_attrs: list[tuple[gs.Node, str]] = []
        # Convs to split (grouped Convs left with unequal groups): node, [(input width, groups, weight)]
        self.splits: list[tuple[gs.Node, list[tuple[int, int, np.ndarray | None]]]] = []
        # Convs whose removed constant inputs come back as a map: node, kernel sums [C_out, *kernel]
        self.maps: list[tuple[gs.Node, np.ndarray]] = []

    def get(self, node: gs.Node, index: int) -> np.ndarray:
        key = (id(node), index)
        if key in self.values:
            return self.values[key][2]
        return self._value(node, index)

    def set(self, node: gs.Node, index: int, value: np.ndarray) -> None:
        self.values[(id(node), index)] = (node, index, value)


class Record:
    """A fact a plan must respect, and the rewrite it implies."""

    def tensors(self) -> list[str]:
        return []

    def edges(self, tensors: dict[str, ChannelTensor]) -> tuple[np.ndarray, np.ndarray] | None:
        """Global unit ids ``(a, b)``: ``a[i]`` and ``b[i]`` are in one channel class (ties)."""
        return None

    def admits(self, idx: IndexOf) -> bool:
        return True

    def segments(self, name: str) -> np.ndarray | None:
        """Per unit of ``name``: the segment it belongs to, when segments must stay in order."""
        return None

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        return None

    def complete(self, kept: Callable[[str], np.ndarray], unequal_groups: str = "auto") -> list[tuple[str, np.ndarray]]:
        """For a removal (``kept(name)``: bool per unit), units it must also keep to be admissible or,
        where exactness allows a choice (``unequal_groups``: see :class:`GroupedConv`), fast."""
        return []

    reason = ""  # why ``complete`` keeps units, for the report


def _identity(i: np.ndarray, units: int) -> bool:
    return len(i) == units and bool(np.array_equal(i, np.arange(units)))


def _ordered(segment_ids: np.ndarray) -> bool:
    return bool(np.all(np.diff(segment_ids) >= 0)) if len(segment_ids) > 1 else True


@dataclass
class Tie(Record):
    """Units ``a[a_start:a_start+count]`` and ``b[b_start:b_start+count]`` are the same channels."""

    a: str
    b: str
    a_start: int
    b_start: int
    count: int

    def tensors(self) -> list[str]:
        return [self.a, self.b]

    def admits(self, idx: IndexOf) -> bool:
        ia, ib = idx(self.a), idx(self.b)
        sa = ia[(ia >= self.a_start) & (ia < self.a_start + self.count)] - self.a_start
        sb = ib[(ib >= self.b_start) & (ib < self.b_start + self.count)] - self.b_start
        return bool(np.array_equal(sa, sb))

    def edges(self, tensors: dict[str, ChannelTensor]) -> tuple[np.ndarray, np.ndarray]:
        return (tensors[self.a].ids(self.a_start, self.a_start + self.count),
                tensors[self.b].ids(self.b_start, self.b_start + self.count))


@dataclass
class HeadSplit(Record):
    """A Reshape that cuts the channel axis of ``x`` (``segments * units(y) * per_head`` channels) into
    ``[segments, heads, per_head]`` (or ``[heads, per_head]``): ``y``'s unit h is head h, the
    ``per_head`` consecutive channels of x at ``s * heads * per_head + h * per_head`` in every segment
    s (an attention's fused q/k/v projection: segments 3). A plan keeps or moves whole heads, the
    same ones in every segment; each segment's channels stay in their block."""

    x: ChannelTensor
    y: ChannelTensor
    n_segments: int
    per_head: int

    def tensors(self) -> list[str]:
        return [self.x.name, self.y.name]

    def layout(self, heads: np.ndarray) -> np.ndarray:
        """The units of x that the heads ``heads`` (in that order) are, segment by segment."""
        h, d = self.y.units, self.per_head
        one = (np.asarray(heads, dtype=np.int64)[:, None] * d + np.arange(d)[None, :]).reshape(-1)
        return (np.arange(self.n_segments)[:, None] * h * d + one[None, :]).reshape(-1)

    def edges(self, tensors: dict[str, ChannelTensor]) -> tuple[np.ndarray, np.ndarray]:
        heads = np.arange(self.y.units)
        owner = np.repeat(heads, self.per_head)
        return (tensors[self.x.name].ids()[self.layout(heads)],
                tensors[self.y.name].ids()[np.tile(owner, self.n_segments)])

    def segments(self, name: str) -> np.ndarray | None:
        if name != self.x.name:
            return None
        return np.arange(self.x.units) // (self.y.units * self.per_head)

    def admits(self, idx: IndexOf) -> bool:
        return bool(np.array_equal(idx(self.x.name), self.layout(idx(self.y.name))))


@dataclass
class Take(Record):
    """Input ``index`` of ``node`` is a constant whose ``axis`` runs along ``tensor``'s channel entries."""

    node: gs.Node
    index: int
    axis: int
    tensor: ChannelTensor

    def tensors(self) -> list[str]:
        return [self.tensor.name]

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        i = idx(self.tensor.name)
        if _identity(i, self.tensor.units):
            return
        v = edits.get(self.node, self.index)
        edits.set(self.node, self.index, np.take(v, self.tensor.features(i), axis=self.axis))


@dataclass
class Segmented(Record):
    """Units of ``tensor`` fall into consecutive segments (``bounds``: starts in units, first 0) that must
    stay contiguous and in order: Concat inputs, Split outputs, a channel Slice (before, inside, after)."""

    tensor: ChannelTensor
    bounds: list[int]

    def tensors(self) -> list[str]:
        return [self.tensor.name]

    def segment_of(self, units: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.bounds), units, side="right") - 1

    def segments(self, name: str) -> np.ndarray | None:
        return self.segment_of(np.arange(self.tensor.units))

    def admits(self, idx: IndexOf) -> bool:
        return _ordered(self.segment_of(idx(self.tensor.name)))

    def counts(self, idx: IndexOf) -> list[int]:
        seg = self.segment_of(idx(self.tensor.name))
        return np.bincount(seg, minlength=len(self.bounds)).tolist()

    def full(self) -> list[int]:
        return np.diff([*self.bounds, self.tensor.units]).tolist()


@dataclass
class ConcatRecord(Segmented):
    """A Concat on the channel axis: the output is its inputs' channels, in input order."""


@dataclass
class SplitRecord(Segmented):
    """A Split on the channel axis: its sizes become the kept units per output, times the stride."""

    node: gs.Node | None = None
    opset: int = 13

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        counts = self.counts(idx)
        if counts == self.full():
            return
        sizes = np.array(counts, dtype=np.int64) * self.tensor.stride
        edits.drop_attrs.append((self.node, "num_outputs"))
        if self.opset >= 13:
            edits.inputs.append((self.node, 1, sizes, "__ltc_split"))
        else:
            edits.attrs.append((self.node, "split", sizes.tolist()))


@dataclass
class SliceRecord(Segmented):
    """A Slice on the channel axis (bounds ``[0, start, stop]``): ``starts``/``ends`` entry ``position``
    are rewritten."""

    node: gs.Node | None = None
    position: int = 0

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        counts = self.counts(idx)
        start, stop = counts[0], counts[0] + counts[1]
        if start == self.bounds[1] and stop == self.bounds[2]:
            return
        for index, val in ((1, start), (2, stop)):
            v = edits.get(self.node, index).copy()
            v.reshape(-1)[self.position] = val
            edits.set(self.node, index, v)


@dataclass
class GatherRecord(Record):
    """A Gather on the channel axis with constant indices: output unit j is input unit ``indices[j]``
    (the rule ties each pair); the indices are rewritten so every output unit still reads its own."""

    node: gs.Node
    inp: ChannelTensor
    out: ChannelTensor
    indices: np.ndarray  # normalised (non-negative), one per output unit

    def tensors(self) -> list[str]:
        return [self.inp.name, self.out.name]

    def admits(self, idx: IndexOf) -> bool:
        return bool(np.isin(self.indices[idx(self.out.name)], idx(self.inp.name)).all())

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        i_in, i_out = idx(self.inp.name), idx(self.out.name)
        position = np.full(self.inp.units, -1, dtype=np.int64)
        position[i_in] = np.arange(len(i_in))
        new = position[self.indices[i_out]]
        if np.array_equal(new, self.indices):
            return
        old = edits.get(self.node, 1)
        edits.set(self.node, 1, new.astype(old.dtype).reshape(-1))


@dataclass
class ReshapeTarget(Record):
    """Entry ``position`` of the constant at input ``index`` of ``holder`` is ``tensor``'s axis length."""

    holder: gs.Node
    index: int
    position: int
    tensor: ChannelTensor

    def tensors(self) -> list[str]:
        return [self.tensor.name]

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        n = len(idx(self.tensor.name)) * self.tensor.stride
        if n == self.tensor.size:
            return
        v = edits.get(self.holder, self.index).copy()
        v.reshape(-1)[self.position] = n
        edits.set(self.holder, self.index, v)


@dataclass
class Depthwise(Record):
    """A depthwise Conv (group = channels): ``group`` follows the channel count of ``tensor``."""

    node: gs.Node
    tensor: ChannelTensor

    def tensors(self) -> list[str]:
        return [self.tensor.name]

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        n = len(idx(self.tensor.name))
        if n != self.tensor.units:
            edits.attrs.append((self.node, "group", n))


def _equal_groups(n_in: np.ndarray, n_out: np.ndarray) -> bool:
    """Per-group kept counts that one ``Conv(group=G)`` can hold: every group that keeps an output keeps
    the same numbers of inputs and outputs, and no group keeps inputs alone."""
    alive = n_out > 0
    return len(set(n_in[alive].tolist())) == 1 and len(set(n_out[alive].tolist())) == 1 and not (n_in[~alive] > 0).any()


@dataclass
class GroupedConv(Record):
    """Weight of a grouped Conv: rows follow ``out`` and columns follow ``inp`` within each group.

    Admissible plans keep each group's channels together and in group order, keep the same number
    of input and of output channels in every group that stays, and drop a group only whole.
    """

    node: gs.Node
    inp: ChannelTensor
    out: ChannelTensor
    groups: int

    def tensors(self) -> list[str]:
        return [self.inp.name, self.out.name]

    def segments(self, name: str) -> np.ndarray | None:
        ct = self.inp if name == self.inp.name else self.out
        return np.arange(ct.units) // (ct.units // self.groups)

    def _groups(self, idx: IndexOf) -> tuple[np.ndarray, np.ndarray]:
        gi = idx(self.inp.name) // (self.inp.units // self.groups)
        go = idx(self.out.name) // (self.out.units // self.groups)
        return gi, go

    def admits(self, idx: IndexOf) -> bool:
        """Groups in order with their channels together, and every group that keeps an output keeps
        an input. Unequal groups are exact too: :meth:`apply` then splits the Conv."""
        gi, go = self._groups(idx)
        if not (_ordered(gi) and _ordered(go)):
            return False
        ni, no = np.bincount(gi, minlength=self.groups), np.bincount(go, minlength=self.groups)
        return bool((no > 0).any() and np.all(ni[no > 0] > 0))

    def _kernel(self) -> int:
        return int(np.prod(self.node.inputs[1].shape[2:]))

    def _overhead(self) -> float:
        """What one more Conv costs, in MACs per output pixel (cost table units)."""
        from ltc.passes.cost import conv_overhead

        spatial = self.out.shape[2:] if self.out.shape and len(self.out.shape) > 2 else None
        pixels = int(np.prod(spatial)) if spatial and all(isinstance(d, int) and d > 0 for d in spatial) else None
        return conv_overhead(self.inp.units * self.out.units * self._kernel(), pixels)

    def _costs(self, n_in: np.ndarray, n_out: np.ndarray) -> tuple[float, float]:
        """Predicted time (cost table) of the Conv with equal groups (each as wide as the widest kept
        one) and with these unequal groups split into the fastest run of Convs."""
        from ltc.passes.cost import grouped_cost, segment_groups

        k, overhead = self._kernel(), self._overhead()
        alive = n_out > 0
        balanced = grouped_cost(int(alive.sum()), int(n_in[alive].max()), int(n_out[alive].max()), k) + overhead
        present = n_in > 0
        segments, unequal = segment_groups(n_in[present].tolist(), n_out[present].tolist(), k, overhead)
        return balanced, unequal + (overhead if len(segments) > 1 else 0.0)

    def balance(self, kept_in: np.ndarray, kept_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Units to keep besides the kept ones so that the plan keeps equal groups."""
        kin, kout = kept_in.reshape(self.groups, -1), kept_out.reshape(self.groups, -1)
        n_in, n_out = kin.sum(axis=1), kout.sum(axis=1)
        alive = (n_in > 0) | (n_out > 0)
        if not alive.any():
            alive[0] = True
        t_in, t_out = max(int(n_in[alive].max()), 1), max(int(n_out[alive].max()), 1)
        extra_in, extra_out = [], []
        for g in np.flatnonzero(alive):
            extra_in += (np.flatnonzero(~kin[g])[: t_in - n_in[g]] + g * kin.shape[1]).tolist()
            extra_out += (np.flatnonzero(~kout[g])[: t_out - n_out[g]] + g * kout.shape[1]).tolist()
        return np.array(extra_in, dtype=np.int64), np.array(extra_out, dtype=np.int64)

    def complete(self, kept: Callable[[str], np.ndarray], unequal_groups: str = "auto") -> list[tuple[str, np.ndarray]]:
        """Equal groups (``unequal_groups`` "never"), unequal ones ("always": every group that keeps
        an output keeps at least one input), or whichever the cost table predicts faster ("auto")."""
        kept_in, kept_out = kept(self.inp.name), kept(self.out.name)
        kin, kout = kept_in.reshape(self.groups, -1), kept_out.reshape(self.groups, -1)
        n_in, n_out = kin.sum(axis=1), kout.sum(axis=1)
        starved = np.flatnonzero((n_out > 0) & (n_in == 0))
        extra_in = np.array([g * kin.shape[1] for g in starved], dtype=np.int64)  # the group's first input
        n_in = n_in.copy()
        n_in[starved] = 1
        if unequal_groups == "never" or not (n_out > 0).any():
            keep_equal = True
        elif unequal_groups == "auto" and not _equal_groups(n_in, n_out):
            balanced, unequal = self._costs(n_in, n_out)
            keep_equal = unequal >= balanced
        else:
            keep_equal = False
        if keep_equal:
            extra_in, extra_out = self.balance(kept_in, kept_out)
            return [(self.inp.name, extra_in), (self.out.name, extra_out)]
        return [(self.inp.name, extra_in), (self.out.name, np.zeros(0, dtype=np.int64))]

    @property
    def reason(self) -> str:
        return (f"grouped Conv '{self.node.name}' keeps equal channels per group (--unequal-groups always "
                "splits it instead)")

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        ii, io = idx(self.inp.name), idx(self.out.name)
        if _identity(ii, self.inp.units) and _identity(io, self.out.units):
            return
        w = edits.get(self.node, 1)
        per_in, rows = self.inp.units // self.groups, self.out.units // self.groups
        gi, go = ii // per_in, io // rows
        ni, no = np.bincount(gi, minlength=self.groups), np.bincount(go, minlength=self.groups)
        if _equal_groups(ni, no):
            blocks = [w[io[go == g]][:, ii[gi == g] - g * per_in] for g in dict.fromkeys(go.tolist())]
            edits.set(self.node, 1, np.concatenate(blocks, axis=0))
            if len(blocks) != self.groups:
                edits.attrs.append((self.node, "group", len(blocks)))
            return
        edits.splits.append((self.node, self._pieces(w, ii, io, gi, go, ni, no)))

    def _pieces(self, w: np.ndarray, ii: np.ndarray, io: np.ndarray, gi: np.ndarray, go: np.ndarray,
                ni: np.ndarray, no: np.ndarray) -> list[tuple[int, int, np.ndarray | None]]:
        """Unequal groups: the input split into pieces (input width, groups, weight or None for
        channels nothing here reads), each segment of :func:`segment_groups` (a run of groups of equal
        widths) one grouped Conv."""
        from ltc.passes.cost import segment_groups

        present = np.flatnonzero(ni > 0)
        per_in = self.inp.units // self.groups
        block = {g: w[io[go == g]][:, ii[gi == g] - g * per_in] for g in present.tolist()}
        segments, _ = segment_groups(ni[present].tolist(), no[present].tolist(), self._kernel(), self._overhead())
        starts = {a: b for a, b in segments}
        pieces: list[tuple[int, int, np.ndarray | None]] = []
        j = 0
        while j < len(present):
            if j not in starts:  # a group nothing here reads (no output kept)
                pieces.append((int(ni[present[j]]), 1, None))
                j += 1
                continue
            blocks = [block[g] for g in present[j:starts[j]].tolist()]  # equal widths: one grouped Conv
            pieces.append((sum(b.shape[1] for b in blocks), len(blocks), np.concatenate(blocks, axis=0)))
            j = starts[j]
        return pieces


@dataclass
class WholeGroups(Record):
    """GroupNormalization: its groups (runs of ``units / groups`` channels) stay in order and go only
    whole; ``num_groups`` follows, and per-group scale and shift (opset 18) lose the groups that go."""

    node: gs.Node
    tensor: ChannelTensor
    groups: int
    per_group_params: bool

    def tensors(self) -> list[str]:
        return [self.tensor.name]

    def segments(self, name: str) -> np.ndarray | None:
        return np.arange(self.tensor.units) // (self.tensor.units // self.groups)

    def admits(self, idx: IndexOf) -> bool:
        g = idx(self.tensor.name) // (self.tensor.units // self.groups)
        counts = np.bincount(g, minlength=self.groups)
        return _ordered(g) and bool(np.all((counts == 0) | (counts == self.tensor.units // self.groups)))

    def complete(self, kept: Callable[[str], np.ndarray], unequal_groups: str = "auto") -> list[tuple[str, np.ndarray]]:
        k = kept(self.tensor.name).reshape(self.groups, -1)
        partial = k.any(axis=1) & ~k.all(axis=1)
        return [(self.tensor.name, np.flatnonzero(partial[:, None] & ~k))]

    @property
    def reason(self) -> str:
        return f"GroupNormalization '{self.node.name}' removes whole groups only"

    def apply(self, idx: IndexOf, edits: Edits) -> None:
        present = np.unique(idx(self.tensor.name) // (self.tensor.units // self.groups))
        if len(present) == self.groups:
            return
        edits.attrs.append((self.node, "num_groups", int(len(present))))
        if self.per_group_params:
            for index in (1, 2):
                edits.set(self.node, index, np.take(edits.get(self.node, index), present, axis=0))


@dataclass
class Producer:
    """An op whose filters create ``tensor``'s channels: ``zero`` per unit, the filter is all zero."""

    node: gs.Node
    tensor: str
    zero: np.ndarray


@dataclass
class BiasSlot:
    """Where a contraction's constant contribution goes: input ``index`` of ``node``, along ``out``.

    ``materialize`` turns the current (reindexed) bias, or None when there is none, into a full
    per-output vector of the kept length, shaped as the slot needs; contributions are added to it.
    """

    node: gs.Node
    index: int
    out: ChannelTensor
    shape: Callable[[int], tuple]  # bias shape for a given output length
    dtype: np.dtype
    scale: float = 1.0  # contribution is divided by this (Gemm's beta)


@dataclass
class Contraction:
    """An op that sums over the units of ``tensor`` (Conv, Gemm, MatMul, ...).

    ``zero`` per input unit: every weight reading it is zero. ``foldable``: a known constant input
    can be folded exactly into ``bias``; ``lossy_foldable``: only approximately (zero padding).
    ``contribution(units, k)`` is the per-output-feature sum a constant ``k`` on ``units`` adds.
    """

    node: gs.Node
    tensor: str
    zero: np.ndarray
    foldable: bool
    contribution: Callable[[np.ndarray, np.ndarray], np.ndarray]
    bias: BiasSlot | None
    lossy_foldable: bool = False
    blocked_why: str = "no bias to fold into"
    # a padded Conv: ``map_fold(units, k)`` is the kernel ``S[o, *kernel] = sum_u k_u W[o, u, *kernel]``
    # whose convolution of a ones image (same padding, strides, dilations) is exactly what constants
    # ``k`` on ``units`` add, border terms included; the rewrite adds it as a map (see :class:`MapSlot`)
    map_fold: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    out: ChannelTensor | None = None  # the output channels ``map_fold`` rows run along


@dataclass
class MapSlot:
    """A Conv whose output gets ``Conv(ones, S)``: the map of removed constant input channels."""

    node: gs.Node
    out: ChannelTensor


@dataclass
class Analysis:
    """Everything the rules recorded for one node, committed together or not at all."""

    tensors: list[ChannelTensor] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    contractions: list[Contraction] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    pins: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)
    ignores: list[tuple[str, np.ndarray]] = field(default_factory=list)
    layer_input: tuple[str | None, int] | None = None  # a weight layer's contracted input: (tensor, size)
    read: set[str] = field(default_factory=set)
