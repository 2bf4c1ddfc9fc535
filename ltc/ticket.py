"""The ticket.pt format (DESIGN.md), all of it: constants, make, save, load, validate. A ticket is a dict of
tensors and plain values, loaded with ``weights_only=True`` (a ticket from a stranger cannot run code).
Torch is imported only by the functions that make or save tickets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ltc import __version__
from ltc.errors import LtcError
from ltc.fileio import atomic_file, load_torch_data

if TYPE_CHECKING:
    import torch

TICKET_FORMAT = "ltc.ticket"
TICKET_VERSION = 1


def _dtype_kind(t: torch.Tensor) -> str:
    import torch

    if t.dtype == torch.bool:
        return "bool"
    return "float" if t.is_floating_point() else "complex" if t.is_complex() else "int"


def entry_mismatch(t: torch.Tensor, ref: torch.Tensor, accept: tuple[str, ...] | None = None) -> str | None:
    """Why ``t`` (from a file) cannot stand in for the model's ``ref``: its shape, storage (dense, on the
    CPU) or kind of dtype (``accept``: default the kind of ``ref``); None when it can."""
    import torch

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
    import torch

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
    import torch

    with atomic_file(Path(path)) as f:
        torch.save(obj, f)


def load_ticket(path: str | os.PathLike) -> dict:
    """Load and check a ticket (weights_only=True)."""
    path = Path(path)
    return validate_ticket(load_torch_data(path, "ticket"), path)


def check_ticket_version(ticket: dict, path: Path) -> None:
    version = ticket.get("version")
    if type(version) is not int or version != TICKET_VERSION:
        raise LtcError(f"{path}: ticket format version {version!r} is not supported (this ltc reads "
                       f"version {TICKET_VERSION}); re-create the ticket with this ltc")


def is_tensor(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _check_tensor_dict(d, field_name: str, path: Path, required: bool) -> None:
    if d is None and not required:
        return
    if not isinstance(d, dict):
        raise LtcError(f"{path}: ticket field '{field_name}' must be a dict of name -> tensor, found "
                       f"{type(d).__name__}; the ticket is damaged or was not written by ltc")
    for k, v in d.items():
        if not isinstance(k, str):
            raise LtcError(f"{path}: ticket field '{field_name}' has a key {k!r} that is not a string "
                           "(parameter names are strings)")
        if not is_tensor(v):
            raise LtcError(f"{path}: ticket field '{field_name}' entry '{k}' is a {type(v).__name__}, not a "
                           "tensor")


def validate_ticket(t, path: Path) -> dict:
    """Check the ticket format (DESIGN.md) field by field; a one-line error names the wrong field."""
    if not isinstance(t, dict) or t.get("format") != TICKET_FORMAT:
        raise LtcError(f"{path}: not an ltc ticket (no format: {TICKET_FORMAT!r})")
    check_ticket_version(t, path)
    for key in ("arch", "masks", "init"):
        if key not in t:
            raise LtcError(f"{path}: ticket has no '{key}'")
    arch = t["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise LtcError(f"{path}: ticket field 'arch' must be {{'name': str, 'kwargs': dict}}, found "
                       f"{type(arch).__name__}; the ticket is damaged or was not written by ltc")
    _check_tensor_dict(t["masks"], "masks", path, True)
    _check_tensor_dict(t["init"], "init", path, True)
    _check_tensor_dict(t.get("final"), "final", path, False)
    for key, typ in (("structure", dict), ("history", list), ("hparams", dict)):
        if key in t and t[key] is not None and not isinstance(t[key], typ):
            raise LtcError(f"{path}: ticket field '{key}' must be a {typ.__name__}, found {type(t[key]).__name__}")
    return t


def ticket_groups(t: dict, path: Path) -> dict[str, int]:
    """A group-wise ticket's group count per weight (``structure.layers[name].groups``); {} otherwise."""
    st = t.get("structure") or {}
    if st.get("kind") != "group":
        return {}
    layers = st.get("layers")
    if not isinstance(layers, dict):
        raise LtcError(f"{path}: a group ticket's 'structure' needs 'layers': {{weight name: {{'groups': G}}}}; "
                       "the ticket is damaged or was not written by ltc")
    out = {}
    for name, entry in layers.items():
        g = entry.get("groups") if isinstance(entry, dict) else None
        if not isinstance(name, str) or isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise LtcError(f"{path}: structure entry {name!r} has no integer 'groups' >= 1; the ticket is damaged")
        out[name] = g
    return out
