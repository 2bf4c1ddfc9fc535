"""The ticket.pt format (DESIGN.md): a dict of tensors and plain values, loadable with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ltc import __version__
from ltc.exporters.masks import TICKET_FORMAT, TICKET_VERSION
from ltc.fileio import atomic_file


def _dtype_kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    return "float" if t.is_floating_point() else "complex" if t.is_complex() else "int"


def entry_mismatch(t: torch.Tensor, ref: torch.Tensor, accept: tuple[str, ...] | None = None) -> str | None:
    """Why ``t`` (from a file) cannot stand in for the model's ``ref``: its shape, storage (dense, on the
    CPU) or kind of dtype (``accept``: default the kind of ``ref``); None when it can."""
    if tuple(t.shape) != tuple(ref.shape):
        return f"is {list(t.shape)}, the model's is {list(ref.shape)}"
    if t.layout != torch.strided or t.device.type != "cpu":
        return f"is a {t.layout} tensor on {t.device}, not a dense tensor with data"
    accept = accept or (_dtype_kind(ref),)
    if _dtype_kind(t) not in accept:
        return f"has dtype {t.dtype}; the model needs {accept[0]} values there"
    return None


def make_ticket(arch: str, arch_kwargs: dict, masks: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
                final: dict[str, torch.Tensor] | None = None, structure: dict | None = None,
                history: list | None = None, hparams: dict | None = None, seed: int = 0) -> dict:
    return {
        "format": TICKET_FORMAT,
        "version": TICKET_VERSION,
        "arch": {"name": arch, "kwargs": dict(arch_kwargs)},
        "masks": {k: v.detach().to(torch.bool).cpu() for k, v in masks.items()},
        "init": {k: v.detach().cpu() for k, v in init.items()},
        "final": {k: v.detach().cpu() for k, v in (final or {}).items()},
        "structure": structure or {"kind": "unstructured"},
        "history": history or [],
        "hparams": hparams or {},
        "seed": seed,
        "ltc_version": __version__,
    }


def save_ticket(ticket: dict, path: str | os.PathLike) -> None:
    """Write atomically: an exclusive temp file in the same folder, then a rename (never half a file,
    never through a link at ``path``)."""
    save_torch(ticket, path)


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`ltc.fileio.atomic_file`."""
    with atomic_file(Path(path)) as f:
        torch.save(obj, f)


def channel_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Masks that keep exactly the non-zero entries of every weight and BN parameter of ``model``."""
    return {name: p.detach() != 0 for name, p in model.named_parameters()}
