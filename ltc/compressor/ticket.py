"""The ticket.pt format (DESIGN.md): a dict of tensors and plain values, loadable with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ltc import __version__
from ltc.exporters.masks import TICKET_FORMAT, TICKET_VERSION
from ltc.fileio import atomic_file


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
