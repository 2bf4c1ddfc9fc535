"""Masks and pruning strategies: layer-wise and global magnitude, whole-channel (L1), random controls.

A mask is ``{parameter name: bool tensor}`` over the prunable parameters: Conv and Linear weights;
channel pruning also masks the layer's bias and its BatchNorm scale and shift, so a pruned channel is
exactly dead (its filter, bias and BN all zero) and `ltc compress` can remove it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Mask(dict):
    """``{parameter name: bool tensor}``, validated: every name is a string, every value a tensor (or
    array) of 0/1 or booleans, stored as a bool tensor. A value that is anything else (2, 0.5, NaN, a
    string) is refused with :class:`~ltc.errors.LtcError` naming the entry. :meth:`check` also matches
    the names and shapes against a model's parameters. A plain dict of masks is accepted wherever a
    Mask is (``Mask(d)`` validates it)."""

    def __init__(self, entries=(), /):
        super().__init__()
        self.update(entries)

    def __setitem__(self, name, value) -> None:
        super().__setitem__(*_mask_entry(name, value))

    def update(self, entries=(), /, **more) -> None:  # dict.update would bypass __setitem__
        for name, value in (dict(entries) | more).items():
            self[name] = value

    def setdefault(self, name, value=None):
        if name not in self:
            self[name] = value
        return self[name]

    def copy(self) -> Mask:
        return Mask({k: v.clone() for k, v in self.items()})

    def check(self, model: nn.Module) -> Mask:
        """Every entry names a parameter of ``model`` and has its shape; returns self."""
        from ltc.errors import LtcError

        params = dict(model.named_parameters())
        for name, m in self.items():
            if name not in params:
                known = list(params)
                raise LtcError(f"mask entry {name!r} names no parameter of the model (its parameters: "
                               f"{', '.join(known[:6])}{'...' if len(known) > 6 else ''}); mask by parameter name")
            if tuple(m.shape) != tuple(params[name].shape):
                raise LtcError(f"mask entry {name!r} has shape {list(m.shape)}, the parameter "
                               f"{list(params[name].shape)}; the mask is for another model")
        return self

    def density(self, names: list[str] | None = None) -> float:
        """Fraction kept over ``names`` (default: the weights, ``*.weight``)."""
        return density(self, names)


def _mask_entry(name, value) -> tuple[str, torch.Tensor]:
    from ltc.errors import LtcError

    if not isinstance(name, str):
        raise LtcError(f"mask entry {name!r}: names must be parameter names (strings)")
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise LtcError(f"mask entry {name!r} is a {type(value).__name__}, not a tensor of 0/1") from None
    if value.dtype == torch.bool:
        return name, value
    if value.is_complex() or not (value.is_floating_point() or value.dtype in (
            torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise LtcError(f"mask entry {name!r} has dtype {value.dtype}, not bool or 0/1 numbers")
    bad = (value != 0) & (value != 1)
    if bool(bad.any()):
        raise LtcError(f"mask entry {name!r} holds {value[bad].flatten()[0].item()!r}; a mask is 0/1 (or bool)")
    return name, value != 0


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Conv/Linear modules by name with their kind: conv, fc, or output. The selection that
    :func:`select_layers` stored on the model, else every Conv1d/2d/3d and Linear with the last Linear
    (in module order) as the output layer."""
    chosen = getattr(model, "_ltc_layers", None)
    if chosen is not None:
        modules = dict(model.named_modules())
        return {n: (modules[n], kind) for n, kind in chosen.items()}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (*CONVS, nn.Linear))}
    last_fc = [n for n, m in layers.items() if isinstance(m, nn.Linear)][-1:]
    return {n: (m, "output" if n in last_fc else ("conv" if isinstance(m, CONVS) else "fc"))
            for n, m in layers.items()}


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def select_layers(model: nn.Module, include: str = "", exclude: str = "", example: torch.Tensor | None = None
                  ) -> dict[str, str]:
    """Which Conv/Linear layers to prune, by module name (``include``/``exclude``: comma-separated fnmatch
    patterns), and their kinds. The output layer is the one whose output is the model's output on
    ``example`` (found by forward hooks), else the last Linear to run, else the last in module order; it
    is pruned at its own rate. Returns ``{module name: kind}``; :func:`prunable_layers` reads it once it
    is stored as ``model._ltc_layers``."""
    import fnmatch

    from ltc.errors import LtcError

    candidates = {n: m for n, m in model.named_modules() if isinstance(m, (*CONVS, nn.Linear))}
    inc, exc = _patterns(include), _patterns(exclude)
    for pats, flag in ((inc, "include"), (exc, "exclude")):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in candidates):
                raise LtcError(f"--{flag} {pat!r} matches no Conv/Linear layer; the layers are "
                               f"{', '.join(list(candidates)[:8])}{'...' if len(candidates) > 8 else ''}")
    chosen = [n for n in candidates if (not inc or any(fnmatch.fnmatchcase(n, p) for p in inc))
              and not any(fnmatch.fnmatchcase(n, p) for p in exc)]
    if not chosen:
        raise LtcError("no Conv/Linear layer is left to prune; loosen --include/--exclude")
    output = None
    order: list[str] = []
    if example is not None:
        produced: list[tuple[str, object]] = []  # the outputs themselves: ids of freed tensors are reused

        def seen(name: str):
            def hook(_m, _i, out) -> None:  # returns None: a value would replace the module's output
                order.append(name)
                produced.append((name, out))
            return hook

        hooks = [m.register_forward_hook(seen(n)) for n, m in candidates.items()]
        was = model.training
        try:
            with torch.no_grad():
                out = model.eval()(example)
        except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
            from ltc.errors import first_line

            raise LtcError(f"the model cannot take an input of shape {list(example.shape)}: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        output = next((n for n, o in produced if o is out), None)
    if output is None:  # the last Linear to run, else the last layer to run (a conv classifier), else defined
        ran = [n for n in order if isinstance(candidates[n], nn.Linear)] or order or \
            [n for n in candidates if isinstance(candidates[n], nn.Linear)]
        output = ran[-1] if ran else None
    return {n: "output" if n == output else ("conv" if isinstance(candidates[n], CONVS) else "fc") for n in chosen}


def _following_bn(model: nn.Module) -> dict[str, str]:
    """Conv name -> the BatchNorm that directly follows it in module order (same channel count)."""
    names = list(dict(model.named_modules()).items())
    out = {}
    for (n, m), (n2, m2) in zip(names, names[1:], strict=False):
        if isinstance(m, CONVS) and isinstance(m2, nn.modules.batchnorm._BatchNorm) \
                and m2.num_features == m.out_channels:
            out[n] = n2
    return out


def full_mask(model: nn.Module, structure: str = "unstructured") -> Mask:
    mask = {f"{n}.weight": torch.ones_like(m.weight, dtype=torch.bool) for n, (m, _) in prunable_layers(model).items()}
    if structure == "channel":
        params = dict(model.named_parameters())
        bns = _following_bn(model)
        for n, (m, kind) in prunable_layers(model).items():
            if kind == "output":
                continue
            for extra in ([f"{n}.bias"] if m.bias is not None else []) + (
                    [f"{bns[n]}.weight", f"{bns[n]}.bias"] if n in bns else []):
                mask[extra] = torch.ones_like(params[extra], dtype=torch.bool)
    return Mask(mask)


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(params[name].dtype))


def density(mask: Mask, names: list[str] | None = None) -> float:
    names = names or [n for n in mask if n.endswith(".weight")]
    total = sum(mask[n].numel() for n in names)
    return sum(int(mask[n].sum()) for n in names) / total


def layer_densities(mask: Mask) -> dict[str, float]:
    return {n: float(m.float().mean()) for n, m in mask.items()}


def _weight_names(model: nn.Module) -> dict[str, tuple[str, str]]:
    """weight parameter name -> (layer name, kind)."""
    return {f"{n}.weight": (n, kind) for n, (_, kind) in prunable_layers(model).items()}


@torch.no_grad()
def prune_magnitude(model: nn.Module, mask: Mask, rates: dict[str, float]) -> Mask:
    """Per layer, prune ``rates[kind]`` of the surviving weights with the smallest magnitude."""
    params = dict(model.named_parameters())
    new = {k: v.clone() for k, v in mask.items()}
    for name, (_, kind) in _weight_names(model).items():
        alive = mask[name]
        n_prune = int(round(rates[kind] * int(alive.sum())))
        if n_prune == 0:
            continue
        scores = params[name].abs().masked_fill(~alive, float("inf")).flatten()
        idx = torch.topk(scores, n_prune, largest=False).indices
        new[name].view(-1)[idx] = False
    return new


@torch.no_grad()
def prune_global(model: nn.Module, mask: Mask, rates: dict[str, float]) -> Mask:
    """One magnitude threshold over all conv and fc weights (rate of the conv/fc kinds, by count)."""
    params = dict(model.named_parameters())
    names = list(_weight_names(model))
    alive_total = sum(int(mask[n].sum()) for n in names)
    n_prune = int(round(max(rates["conv"], rates["fc"]) * alive_total))
    scores = torch.cat([params[n].abs().masked_fill(~mask[n], float("inf")).flatten() for n in names])
    new = {k: v.clone() for k, v in mask.items()}
    if n_prune:
        threshold = torch.kthvalue(scores, n_prune).values
        for n in names:
            new[n] &= params[n].abs() > threshold
    return new


@torch.no_grad()
def prune_channels(model: nn.Module, mask: Mask, rates: dict[str, float]) -> Mask:
    """Per layer (not the output layer), prune ``rates[kind]`` of the surviving filters/neurons by L1 norm;
    their bias and BN scale/shift masks go too."""
    params = dict(model.named_parameters())
    bns = _following_bn(model)
    new = {k: v.clone() for k, v in mask.items()}
    for name, (layer, kind) in _weight_names(model).items():
        if kind == "output":
            continue
        w = params[name] * mask[name]
        alive = mask[name].flatten(1).any(dim=1)
        n_prune = int(round(rates[kind] * int(alive.sum())))
        if n_prune == 0 or n_prune >= int(alive.sum()):
            continue
        scores = w.abs().flatten(1).sum(1).masked_fill(~alive, float("inf"))
        dead = torch.topk(scores, n_prune, largest=False).indices
        _kill(new, layer, bns, dead)
    return new


def _kill(mask: Mask, layer: str, bns: dict[str, str], channels: torch.Tensor) -> None:
    mask[f"{layer}.weight"][channels] = False
    for extra in (f"{layer}.bias", f"{bns.get(layer)}.weight", f"{bns.get(layer)}.bias"):
        if extra in mask:
            mask[extra][channels] = False


def random_like(model: nn.Module, mask: Mask, structure: str, generator: torch.Generator) -> Mask:
    """The random-pruning control: the same number of surviving weights (or channels) per layer."""
    new = {k: torch.ones_like(v) for k, v in mask.items()}
    bns = _following_bn(model)
    for name, (layer, _kind) in _weight_names(model).items():
        m = mask[name]
        if structure == "channel":
            alive = m.flatten(1).any(dim=1)
            perm = torch.randperm(len(alive), generator=generator)
            dead = perm[: int((~alive).sum())]
            _kill(new, layer, bns, dead)
        else:
            keep = int(m.sum())
            perm = torch.randperm(m.numel(), generator=generator)
            flat = torch.zeros(m.numel(), dtype=torch.bool)
            flat[perm[:keep]] = True
            new[name] = flat.view_as(m)
    return new


STRATEGIES: dict[str, Callable[[nn.Module, Mask, dict[str, float]], Mask]] = {
    "magnitude": prune_magnitude,
    "global": prune_global,
    "channel": prune_channels,
}
