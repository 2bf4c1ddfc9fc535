"""The ticket format moved to :mod:`ltc.ticket` (kept so older imports keep working), and
:func:`channel_masks`."""

from __future__ import annotations

import torch

from ltc.ticket import entry_mismatch, make_ticket, save_ticket, save_torch

__all__ = ["channel_masks", "entry_mismatch", "make_ticket", "save_ticket", "save_torch"]


def channel_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Masks that keep exactly the non-zero entries of every weight and BN parameter of ``model``."""
    return {name: p.detach() != 0 for name, p in model.named_parameters()}
