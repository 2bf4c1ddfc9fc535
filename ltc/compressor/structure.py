"""Structured tickets (Chen et al., ICML 2022): after each round's magnitude pruning, **refill** whole
channels or **regroup** the survivors into dense diagonal blocks, so that ``ltc compress`` can make the
model really smaller (channels removed) or faster (``Conv(group=G)``).

- ``refill``: per layer (not the output layer), the parameter budget left by pruning buys
  ``round(surviving weights / weights per channel)`` channels; the most important ones (by surviving-
  weight count or by the L1 norm of the trained filter's surviving weights; ties to the lower index)
  become fully dense, every other channel is dropped with its bias and BatchNorm scale and shift.
- ``refill+``: also re-activates ``rate`` of the dropped channels, the best of them first.
- ``regroup``: per layer, output and input channels are co-clustered into G balanced groups that keep
  the most surviving weight magnitude (alternating optimal balanced assignments, no partitioner
  binary); the mask is block-diagonal under those permutations with dense blocks of whole kernels.
  G comes from ``groups``/``group_width``, or is the G the grouped-conv cost table predicts fastest
  among those whose block density 1/G is near what pruning left (see :func:`choose_groups`).

Each returns the new mask and per-layer detail for the ticket's ``structure``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ltc.compressor.pruning import Mask, _following_bn, _kill, prunable_layers

STRUCTURES = ("unstructured", "refill", "refill+", "regroup")
CRITERIA = ("l1", "count")


def channel_scores(w: torch.Tensor, m: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per output channel: how much it matters (surviving-weight count, or L1 of its surviving weights)."""
    alive = m.flatten(1)
    if criterion == "count":
        return alive.sum(1).to(torch.float64)
    return (w.detach().abs() * m).flatten(1).sum(1).to(torch.float64)


def top_channels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best channels: highest score, ties to the lower index (deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


@torch.no_grad()
def dead_inputs(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """Per prunable weight: which of its input columns (channels of a Conv, features of a Linear) read
    a tensor that is exactly zero whatever the input, under ``mask``.

    A structural probe: a float64 copy of the model with every kept weight positive (1/fan-in), every
    masked one zero, BatchNorm statistics neutral, runs on an all-ones input; a channel is zero there
    exactly when no path of kept weights reaches it. Models without ``input_shape`` give {}.
    """
    shape = getattr(model, "input_shape", None)
    if not shape:
        return {}
    probe = copy.deepcopy(model).double().eval()
    for name, p in probe.named_parameters():
        m = mask.get(name)
        v = torch.ones_like(p) if m is None else m.to(p.dtype)
        p.copy_(v / max(1, p[0].numel()) if p.dim() > 1 else v)
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda _m, inp, _o, n=name: seen.__setitem__(n, inp[0]))
             for name, (module, _) in prunable_layers(probe).items()]
    try:
        probe(torch.ones(1, *shape, dtype=torch.float64))
    finally:
        for h in hooks:
            h.remove()
    return {f"{n}.weight": (x == 0).reshape(x.shape[0], x.shape[1], -1).all(dim=2).all(dim=0) for n, x in seen.items()}


def _zero_dead_columns(model: nn.Module, mask: Mask) -> Mask:
    """``mask`` with every weight that reads a dead input column masked too."""
    out = dict(mask)
    for name, dead in dead_inputs(model, mask).items():
        if name in out and dead.any() and out[name].dim() > 1 and out[name].shape[1] == len(dead):
            out[name] = out[name].clone()
            out[name][:, dead] = False
    return out


@torch.no_grad()
def refill(model: nn.Module, mask: Mask, criterion: str = "l1", rate: float = 0.0) -> tuple[Mask, dict]:
    """Refill (``rate`` 0) or refill+ (``rate`` > 0): see the module docstring. ``model`` holds the
    trained weights the pruning looked at. ``mask`` must hold the bias/BN entries (``full_mask(model,
    "channel")``).

    Weights that read a dead input (a channel an earlier layer dropped) buy nothing: the budget (the
    layer's surviving weights) buys channels at their live inputs times the kernel, and the refilled
    rows leave dead inputs masked, so the layer keeps about as many weights as pruning left it. Passes repeat until the inputs the refill leaves dead stop changing
    (a layer settles once the layers before it have: at most one pass per layer)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown refill criterion {criterion!r}")
    dead: dict[str, torch.Tensor] = {}
    for _ in range(len(prunable_layers(model)) + 1):
        new, layers = _refill_pass(model, mask, criterion, rate, dead)
        now = dead_inputs(model, new)
        if now.keys() == dead.keys() and all(torch.equal(now[k], dead[k]) for k in now):
            break
        dead = now
    return _zero_dead_columns(model, new), layers


def _refill_pass(model: nn.Module, mask: Mask, criterion: str, rate: float,
                 dead: dict[str, torch.Tensor]) -> tuple[Mask, dict]:
    params = dict(model.named_parameters())
    bns = _following_bn(model)
    new = {k: v.clone() for k, v in mask.items()}
    layers = {}
    for layer, (_module, kind) in prunable_layers(model).items():
        name = f"{layer}.weight"
        if kind == "output":
            continue
        m = mask[name]
        n_out = m.shape[0]
        live = ~dead[name] if name in dead and len(dead[name]) == m.shape[1] else torch.ones(m.shape[1], dtype=torch.bool)
        m_live = m & live.reshape(1, -1, *([1] * (m.dim() - 2)))
        per_channel = max(1, int(live.sum()) * (m[0, 0].numel() if m.dim() > 2 else 1))
        alive_channels = m.flatten(1).any(dim=1)
        k = min(max(1, round(int(m.sum()) / per_channel)), int(alive_channels.sum()) or 1)
        scores = channel_scores(params[name], m_live, criterion)
        scores[~alive_channels] = -1.0  # a channel that is already gone never comes back first
        keep = top_channels(scores, k)
        dropped = torch.tensor([i for i in range(n_out) if i not in set(keep.tolist())], dtype=torch.long)
        extra = round(rate * len(dropped)) if rate > 0 else 0
        if extra:
            back = dropped[top_channels(scores[dropped], extra)]
            keep = torch.sort(torch.cat([keep, back])).values
            dropped = torch.tensor([i for i in range(n_out) if i not in set(keep.tolist())], dtype=torch.long)
        new[name][:] = False
        new[name][keep] = True
        for extra_name in (f"{layer}.bias", f"{bns.get(layer)}.weight", f"{bns.get(layer)}.bias"):
            if extra_name in new:
                new[extra_name][:] = True
        if len(dropped):
            _kill(new, layer, bns, dropped)
        layers[name] = {"channels": int(len(keep)), "of": n_out, "budget": k, "reactivated": extra,
                        "refilled_from": int(m.sum())}
    return new, layers


# ----------------------------------------------------------------------------------------------- regroup
def _balanced_assign(score: np.ndarray, groups: int) -> np.ndarray:
    """Each of n items (rows of ``score`` [n, G]) to one group, n/G per group, maximizing the total score:
    an optimal assignment of items to G x n/G slots."""
    from scipy.optimize import linear_sum_assignment

    n = score.shape[0]
    slots = np.repeat(score, n // groups, axis=1)  # [n, n]: slot j is group j // (n/G)
    rows, cols = linear_sum_assignment(-slots)
    out = np.empty(n, dtype=np.int64)
    out[rows] = cols // (n // groups)
    return out


def cocluster(m: np.ndarray, groups: int, iters: int = 20) -> tuple[np.ndarray, np.ndarray, float]:
    """Balanced co-clustering of ``m`` [O, I] (non-negative weights) into ``groups`` diagonal blocks:
    (out_group, in_group, fraction of the total kept inside the blocks).

    Starts from the order of the leading singular vectors, then alternates optimal balanced
    assignments of inputs (given the output groups) and outputs (given the input groups) while the kept
    total grows. Deterministic.
    """
    n_out, n_in = m.shape
    total = float(m.sum())
    if groups == 1:
        return np.zeros(n_out, dtype=np.int64), np.zeros(n_in, dtype=np.int64), 1.0
    u, _, _ = np.linalg.svd(m + 1e-12, full_matrices=False)
    lead = u[:, 1] if u.shape[1] > 1 else u[:, 0]
    out_group = np.empty(n_out, dtype=np.int64)
    out_group[np.argsort(lead, kind="stable")] = np.arange(n_out) // (n_out // groups)
    best, kept = None, -1.0
    for _ in range(iters):
        to_in = np.stack([m[out_group == g].sum(axis=0) for g in range(groups)], axis=1)  # [I, G]
        in_group = _balanced_assign(to_in, groups)
        to_out = np.stack([m[:, in_group == g].sum(axis=1) for g in range(groups)], axis=1)  # [O, G]
        out_group = _balanced_assign(to_out, groups)
        now = float(m[out_group[:, None] == in_group[None, :]].sum())
        if now <= kept + 1e-12 * max(total, 1.0):
            break
        best, kept = (out_group.copy(), in_group.copy()), now
    return best[0], best[1], kept / total if total else 1.0


def choose_groups(n_out: int, n_in: int, kernel: int, density: float, groups: int = 0, group_width: int = 0,
                  align: int = 8, window: float = 2.0) -> int:
    """G for a layer: ``groups`` if given; else from ``group_width``; else what the runtime runs fastest
    among the G that fit what pruning left.

    Candidates divide both widths into multiples of ``align`` and the cost table predicts them faster
    than dense. Of those whose block density 1/G is within a factor ``window`` of the ``density``
    pruning left, the one the cost table predicts fastest (ties: the nearer density); if none is that
    close, the nearest by ratio. 1 when dense is nearer than any candidate or nothing fits.

    Near the density, not "at least" it: blocks are refilled dense, so a rule that keeps 1/G >= density
    would settle at one G for good once pruning and refilling balance (each round would prune inside
    the blocks and the regroup would fill them again). Fastest within the window, not the nearest:
    narrow groups run far below dense speed per MAC (``COST_PER_MAC``), so the nearest G can be slower
    than a coarser one that keeps more weights."""
    from ltc.passes.regroup import predicted_speedup

    if groups:
        return groups if n_out % groups == 0 and n_in % groups == 0 else 1
    if group_width:
        g = min(n_out, n_in) // group_width
        return g if g >= 2 and n_out % g == 0 and n_in % g == 0 else 1
    density = min(max(density, 1e-9), 1.0)
    candidates = []  # (distance in log ratio, -speed-up, G)
    for g in range(2, min(n_out, n_in) + 1):
        if n_out % g or n_in % g or (n_out // g) % align or (n_in // g) % align:
            continue
        s = predicted_speedup(g, min(n_out, n_in) // g, kernel)
        if s > 1.0:
            candidates.append((abs(math.log(g * density)), -s, g))
    dense = abs(math.log(density))
    near = [c for c in candidates if c[0] <= math.log(window) + 1e-9]
    if near:
        best = min(near, key=lambda c: (c[1], c[0]))
        return best[2] if dense > math.log(window) + 1e-9 or best[0] < dense else 1
    nearest = min(candidates, default=None)
    return nearest[2] if nearest is not None and nearest[0] < dense else 1


@torch.no_grad()
def regroup(model: nn.Module, mask: Mask, groups: int = 0, group_width: int = 0, align: int = 8) -> tuple[Mask, dict]:
    """Regroup every Conv and hidden Linear (see the module docstring); a layer no G fits keeps its mask."""
    params = dict(model.named_parameters())
    new = {k: v.clone() for k, v in mask.items()}
    layers = {}
    for layer, (module, kind) in prunable_layers(model).items():
        name = f"{layer}.weight"
        if kind == "output" or getattr(module, "groups", 1) != 1:
            continue
        m = mask[name]
        w = params[name]
        n_out, n_in = w.shape[:2]
        kernel = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
        g = choose_groups(n_out, n_in, kernel, float(m.float().mean()), groups, group_width, align)
        if g < 2:
            layers[name] = {"groups": 1}
            continue
        mag = (w.abs() * m).reshape(n_out, n_in, -1).sum(-1).double().numpy()
        out_group, in_group, kept = cocluster(mag, g)
        new[name] = block_mask(out_group, in_group, m)
        layers[name] = {"groups": g, "out_perm": np.argsort(out_group, kind="stable").tolist(),
                        "in_perm": np.argsort(in_group, kind="stable").tolist(), "kept_magnitude": round(kept, 4)}
    return new, layers


def block_mask(out_group: np.ndarray, in_group: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A mask shaped like ``like`` keeping whole kernels where output and input share a group."""
    block = torch.from_numpy(out_group[:, None] == in_group[None, :])
    return block.reshape(*block.shape, *([1] * (like.dim() - 2))).expand_as(like).clone()


def random_regroup(mask: Mask, layers: dict, generator: torch.Generator) -> Mask:
    """The random control of a regroup ticket: the same G per layer, random balanced groups."""
    new = {k: v.clone() for k, v in mask.items()}
    for name, info in layers.items():
        g = info.get("groups", 1)
        if g < 2:
            continue
        m = new[name]
        n_out, n_in = m.shape[:2]
        og = (torch.randperm(n_out, generator=generator) % g).numpy()
        ig = (torch.randperm(n_in, generator=generator) % g).numpy()
        new[name] = block_mask(og, ig, m)
    return new
