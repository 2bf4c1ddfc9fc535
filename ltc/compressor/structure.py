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
from dataclasses import dataclass

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
        in_group = _balanced_assign(_toward(m.T, out_group, groups), groups)
        out_group = _balanced_assign(_toward(m, in_group, groups), groups)
        now = _kept(m, out_group, in_group)
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
    from ltc.passes.cost import predicted_speedup

    if groups:
        return groups if n_out % groups == 0 and n_in % groups == 0 else 1
    if group_width:
        g = min(n_out, n_in) // group_width
        return g if g >= 2 and n_out % g == 0 and n_in % g == 0 else 1
    density = min(max(density, 1e-9), 1.0)
    candidates = []  # (distance in log ratio, -speed-up, G)
    for g in range(2, min(n_out, n_in) + 1):
        if not _divides_aligned(n_out, n_in, g, align):
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
def regroup(model: nn.Module, mask: Mask, groups: int = 0, group_width: int = 0, align: int = 8,
            chain: bool = True) -> tuple[Mask, dict]:
    """Regroup every Conv and hidden Linear (see the module docstring); a layer no G fits keeps its mask.

    With ``chain`` (the default), Convs that share channels (a residual stream, a block's hidden
    width) are co-clustered together (:func:`chained_groups`), so every Conv reading or writing a
    channel puts it in the same group: the permutations then fold into the neighbouring layers and
    the grouped model needs no channel Gathers. Layers the analysis cannot link are clustered alone."""
    params = dict(model.named_parameters())
    new = {k: v.clone() for k, v in mask.items()}
    layers: dict[str, dict] = {}
    todo: dict[str, _Layer] = {}
    convs = False  # a Conv to regroup: worth asking the channel analysis for links
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
        todo[name] = _Layer(name, mag, g, kernel)
        convs |= isinstance(module, nn.Conv2d)
    links = channel_links(model) if chain and convs else {}
    for la in todo.values():
        if la.name in links:
            la.x_ids, la.y_ids, la.macs = links[la.name]
    chained = chained_groups([v for v in todo.values() if v.x_ids is not None], groups, group_width, align)
    for la in todo.values():
        if la.name in chained:
            out_group, in_group, g, chain_id = chained[la.name]
        elif la.x_ids is None:  # not linked: clustered alone
            (out_group, in_group, _), g, chain_id = cocluster(la.mag, la.g), la.g, None
        else:  # the chain gave its G up (its neighbours run another G): dense
            layers[la.name] = {"groups": 1}
            continue
        new[la.name] = block_mask(out_group, in_group, mask[la.name])
        total = float(la.mag.sum())
        kept = _kept(la.mag, out_group, in_group) / total if total else 1.0
        layers[la.name] = {"groups": g, "out_perm": np.argsort(out_group, kind="stable").tolist(),
                           "in_perm": np.argsort(in_group, kind="stable").tolist(), "kept_magnitude": round(kept, 4)}
        if chain_id is not None:
            layers[la.name]["chain"] = chain_id
    return new, layers


@dataclass
class _Layer:
    """One layer to regroup: surviving magnitude per kernel [O, I], its own G, and (when linked) the
    channel-class id of each input and output channel and its MACs per sample."""

    name: str
    mag: np.ndarray
    g: int
    kernel: int
    x_ids: np.ndarray | None = None
    y_ids: np.ndarray | None = None
    macs: int = 0


def channel_links(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per Conv weight: the channel class of each of its input and output channels, and its MACs per
    sample, from ltc's channel analysis of the model's ONNX export (TorchScript exporter without
    constant folding, in memory: initializers carry the parameter names). Two channels with one class must keep one order: a
    residual sum ties the Convs that write the stream to those that read it. {} when the model has
    no ``input_shape`` or does not export (its layers are then clustered alone)."""
    import contextlib
    import io
    import warnings

    import onnx

    from ltc.passes.channels import ChannelGraph
    from ltc.passes.graph import import_graph
    from ltc.passes.pipeline import normalize

    shape = getattr(model, "input_shape", None)
    if not shape:
        return {}
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(model).float().eval(), (torch.zeros(1, *shape),), buf, dynamo=False,
                              opset_version=17, do_constant_folding=False)  # parameters keep their names
        cg = ChannelGraph(import_graph(normalize(onnx.load_from_string(buf.getvalue()))))
    except Exception:  # an export or analysis failure only loses the chaining, never the ticket
        return {}
    macs = cg.macs()
    out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for node in cg.graph.nodes:
        if node.op != "Conv" or len(node.inputs) < 2 or int(node.attrs.get("group", 1)) != 1:
            continue
        x, y = node.inputs[0].name, node.outputs[0].name
        if x in cg.tensors and y in cg.tensors and cg.tensors[x].axis == 1 and cg.tensors[y].axis == 1:
            out[node.inputs[1].name] = (cg.classes_of(x), cg.classes_of(y), int(macs.get(node.name) or 0))
    return out


def chained_groups(layers: list[_Layer], groups: int = 0, group_width: int = 0,
                   align: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """Co-cluster linked layers together: name -> (out_group, in_group, G, chain index).

    1. **One G per class.** Layers claim G in order of MACs (the most first), each its own G; a layer
       whose input or output classes another layer already gave a different G takes that G if it
       fits it (divides both widths into multiples of ``align``, predicted faster than dense, or
       the user's ``groups``/``group_width`` asked for it) and else stays dense (left out of the
       result).
    2. **One label per class.** The grouped layers that share classes form a chain; every class of a
       chain gets a group label, balanced on every layer's input and output, maximizing the surviving
       magnitude kept inside the blocks over the whole chain: start from the largest layer's own
       co-clustering, extend it layer by layer (optimal balanced assignment given the labelled side),
       then sweep every tensor's classes (optimal balanced assignment given all its neighbours) while
       the kept total grows.
    A chain whose layers' channel sets overlap partly (a Concat of some of them) or repeat a class is
    clustered layer by layer instead."""
    g_of: dict[int, int] = {}
    grouped: list[_Layer] = []
    for la in sorted(layers, key=lambda la: (-la.macs, la.name)):
        ids = np.concatenate([la.x_ids, la.y_ids])
        taken = {g_of[i] for i in ids.tolist() if i in g_of}
        g = la.g
        if len(taken) > 1:
            continue
        if taken and taken != {g}:
            g = taken.pop()
            if not _fits(la, g, groups, group_width, align):
                continue
        for i in ids.tolist():
            g_of[i] = g
        la.g = g
        grouped.append(la)
    out: dict[str, tuple[np.ndarray, np.ndarray, int, int]] = {}
    for chain_id, chain in enumerate(_chains(grouped)):
        labels = _colabel(chain)
        for la in chain:
            if labels is None:
                og, ig, _ = cocluster(la.mag, la.g)
            else:
                og, ig = labels[la.y_ids], labels[la.x_ids]
            out[la.name] = (og, ig, la.g, chain_id)
    return out


def _divides_aligned(n_out: int, n_in: int, g: int, align: int = 1) -> bool:
    """``g`` groups divide both widths into groups a multiple of ``align`` wide."""
    return not (n_out % g or n_in % g or (n_out // g) % align or (n_in // g) % align)


def _fits(la: _Layer, g: int, groups: int, group_width: int, align: int) -> bool:
    """Whether ``la`` can take G=``g`` from its neighbours: it divides both widths and, unless the user
    fixed G, keeps aligned groups the cost table predicts faster than dense (as :func:`choose_groups`)."""
    n_out, n_in = la.mag.shape
    if groups or group_width:
        return _divides_aligned(n_out, n_in, g)
    from ltc.passes.cost import predicted_speedup

    return _divides_aligned(n_out, n_in, g, align) and predicted_speedup(g, min(n_out, n_in) // g, la.kernel) > 1.0


def _chains(layers: list[_Layer]) -> list[list[_Layer]]:
    """The layers grouped by shared channel classes (connected components), in input order."""
    from ltc.passes.channels import connected_components

    if not layers:
        return []
    ids = np.unique(np.concatenate([np.concatenate([la.x_ids, la.y_ids]) for la in layers]))
    pos = {int(c): i for i, c in enumerate(ids)}
    a, b = [], []
    for k, la in enumerate(layers):
        for c in np.concatenate([la.x_ids, la.y_ids]).tolist():
            a.append(len(ids) + k)
            b.append(pos[c])
    _, lab = connected_components(len(ids) + len(layers), np.array(a), np.array(b))
    chains: dict[int, list[_Layer]] = {}
    for k, la in enumerate(layers):
        chains.setdefault(int(lab[len(ids) + k]), []).append(la)
    return [sorted(c, key=lambda la: la.name) for c in chains.values()]


def _colabel(chain: list[_Layer], iters: int = 20) -> np.ndarray | None:
    """Group label per class id for one chain (see :func:`chained_groups`), or None when its layers'
    channel sets overlap partly or repeat a class."""
    g = chain[0].g
    sides: dict[tuple[int, ...], np.ndarray] = {}
    for la in chain:
        for ids in (la.x_ids, la.y_ids):
            if len(np.unique(ids)) != len(ids):
                return None
            sides[tuple(sorted(ids.tolist()))] = np.sort(ids)
    seen: set[int] = set()
    for ids in sides.values():
        if seen & set(ids.tolist()):
            return None
        seen |= set(ids.tolist())
    labels = np.full(max(seen) + 1, -1, dtype=np.int64)
    first = max(chain, key=lambda la: (float(la.mag.sum()), la.name))
    labels[first.y_ids], labels[first.x_ids], _ = cocluster(first.mag, g)
    for _ in range(len(chain)):  # extend: one labelled side gives the other
        for la in chain:
            xs, ys = labels[la.x_ids] >= 0, labels[la.y_ids] >= 0
            if xs.all() and not ys.any():
                labels[la.y_ids] = _balanced_assign(_toward(la.mag, labels[la.x_ids], g), g)
            elif ys.all() and not xs.any():
                labels[la.x_ids] = _balanced_assign(_toward(la.mag.T, labels[la.y_ids], g), g)
    if (labels[list(seen)] < 0).any():
        return None

    def kept() -> float:
        return sum(_kept(la.mag, labels[la.y_ids], labels[la.x_ids]) for la in chain)

    best, best_kept = labels.copy(), kept()
    for _ in range(iters):
        for ids in sides.values():
            at = {int(c): i for i, c in enumerate(ids)}
            score = np.zeros((len(ids), g))
            for la in chain:
                if int(la.y_ids[0]) in at:
                    np.add.at(score, [at[int(c)] for c in la.y_ids], _toward(la.mag, labels[la.x_ids], g))
                if int(la.x_ids[0]) in at:
                    np.add.at(score, [at[int(c)] for c in la.x_ids], _toward(la.mag.T, labels[la.y_ids], g))
            labels[ids] = _balanced_assign(score, g)
        now = kept()
        if now <= best_kept * (1 + 1e-12):
            break
        best, best_kept = labels.copy(), now
    return best


def _kept(mag: np.ndarray, out_group: np.ndarray, in_group: np.ndarray) -> float:
    """The magnitude ``mag`` [O, I] keeps inside the diagonal blocks of these groups."""
    return float(mag[out_group[:, None] == in_group[None, :]].sum())


def _toward(mag: np.ndarray, other: np.ndarray, g: int) -> np.ndarray:
    """[rows of ``mag``, G]: each row's magnitude toward the columns labelled with each group."""
    return np.stack([mag[:, other == k].sum(axis=1) for k in range(g)], axis=1)


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
