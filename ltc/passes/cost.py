"""What grouped convolutions cost on ONNX Runtime CPU, relative to the dense Conv of the same shape:
the table Regroup and the removal of unequal groups decide by (``experiments/regroup_cost``)."""

from __future__ import annotations

import numpy as np

# Cost per MAC of Conv(group=G) relative to the dense Conv of the same shape, by group width (the
# narrower of input and output channels per group), ONNX Runtime CPU, 2 threads, AVX-512; medians over
# batch 1 and 32 and several layer sizes (experiments/regroup_cost). Speed-up predicted: G / cost.
COST_PER_MAC = {
    "spatial": {4: 6.5, 8: 4.5, 16: 1.85, 32: 1.3, 64: 1.1, 128: 1.05, 256: 1.0},
    "pointwise": {4: 6.6, 8: 3.8, 16: 3.4, 32: 2.4, 64: 1.6, 128: 1.25, 256: 1.15, 512: 1.0},
}

# What one more Conv (and its share of the Split and Concat) costs, as a fraction of the dense layer
# (measured 0.4-3.5%), and at least (small layers: ONNX Runtime's per-node cost dominates) this many
# MACs (measured: 1.05 us per node = 227k MACs of a dense 3x3 Conv). experiments/regroup_cost/split_overhead.py
SPLIT_OVERHEAD = 0.03
NODE_OVERHEAD_MACS = 225_000


def conv_overhead(dense_macs_per_pixel: float, pixels: int | None) -> float:
    """What one more Conv costs in MACs per output pixel: SPLIT_OVERHEAD of the dense layer, and at
    least NODE_OVERHEAD_MACS over the whole output when its size is known."""
    relative = SPLIT_OVERHEAD * dense_macs_per_pixel
    return max(relative, NODE_OVERHEAD_MACS / pixels) if pixels else relative


def cost_per_mac(width: int, kernel_size: int) -> float:
    """The table's cost for a group width (the nearest tabulated width at or below; wider is cheaper)."""
    table = COST_PER_MAC["pointwise" if kernel_size == 1 else "spatial"]
    below = [w for w in table if w <= width]
    return table[max(below)] if below else max(table.values()) * 4 / max(width, 1)


def predicted_speedup(groups: int, width: int, kernel_size: int) -> float:
    return groups / cost_per_mac(width, kernel_size) if groups > 1 else 1.0


def split_speedup(out_sizes: np.ndarray, in_sizes: np.ndarray, kernel_size: int) -> float:
    """Predicted speed-up of one Conv per group (Split -> Convs -> Concat) over the dense Conv."""
    dense = float(out_sizes.sum() * in_sizes.sum())
    cost = sum(float(a * b) * cost_per_mac(int(min(a, b)), kernel_size) for a, b in zip(out_sizes, in_sizes, strict=True))
    return 1.0 / (cost / dense + SPLIT_OVERHEAD * len(out_sizes))


def grouped_cost(groups: int, width_in: int, width_out: int, kernel_size: int) -> float:
    """Predicted time of ``Conv(group=groups)`` with these per-group widths, in dense-MAC units."""
    macs = float(groups * width_in * width_out * kernel_size)
    return macs * (cost_per_mac(min(width_in, width_out), kernel_size) if groups > 1 else 1.0)


def segment_groups(widths_in: list[int], widths_out: list[int], kernel_size: int,
                   overhead: float) -> tuple[list[tuple[int, int]], float]:
    """Groups of unequal widths (in order) into the fastest run of Convs: each segment of consecutive
    groups of equal widths becomes one ``Conv(group=len)``. ``overhead``: what each Conv costs besides
    its MACs (cost table units). Groups with no output are never in a segment. Returns
    ([(start, stop)], predicted cost). (No segment holds groups of different widths: one dense Conv
    holding their blocks would carry zero weights, and the output must never have more parameters.)"""
    n = len(widths_in)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        if widths_out[stop - 1] == 0:  # read by nothing here: a boundary
            best[stop], cut[stop] = best[stop - 1], stop
            continue
        start = stop - 1
        while start >= 0 and widths_out[start] == widths_out[stop - 1] and widths_in[start] == widths_in[stop - 1]:
            cost = grouped_cost(stop - start, widths_in[start], widths_out[start], kernel_size)
            if best[start] + cost + overhead < best[stop]:
                best[stop], cut[stop] = best[start] + cost + overhead, start
            start -= 1
    segments, stop = [], n
    while stop > 0:
        start = cut[stop]
        if start == stop:  # a group without outputs
            stop -= 1
            continue
        segments.append((start, stop))
        stop = start
    return segments[::-1], best[n]
