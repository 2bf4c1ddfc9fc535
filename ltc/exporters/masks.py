"""Mask files -> ``{initializer name: bool array}`` for an ONNX model.

Sources: an ltc ticket.pt, a torch.nn.utils.prune state dict (``*.weight_mask``), a plain
``{name: mask}`` dict in .pt or .npz. Names are matched to initializers by name (both exporters'
conventions), then by shape and values (the legacy exporter renames BN-folded weights
``onnx::Conv_123``). Torch is imported only to read .pt files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ltc.errors import LtcError

TICKET_FORMAT = "ltc.ticket"
TICKET_VERSION = 1


@dataclass
class MaskSet:
    """Masks by their own names, and (if the file had them) the weights they belong to."""

    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "masks"


@dataclass
class MaskMatch:
    masks: dict[str, np.ndarray]  # initializer name -> bool mask
    matched: dict[str, str]  # mask name -> initializer name
    unmatched: list[str]  # mask names that match nothing in this model


def read_masks(path: str | os.PathLike) -> MaskSet:
    path = Path(path)
    if not path.is_file():
        raise LtcError(f"{path}: no such mask file; pass a ticket.pt, a prune state dict (.pt) or an .npz")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise LtcError(f"{path}: not a readable .npz mask file ({exc})") from None
        return MaskSet(_as_masks(raw, path), source="npz")
    return _read_torch(path)


def load_torch_data(path: Path, what: str = "torch file"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, a one-line error otherwise."""
    try:
        import torch
    except ImportError:
        raise LtcError(f"{path}: reading a .pt {what} needs torch (pip install torch); masks can also be "
                       "given as .npz") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise LtcError(f"{path}: refused: the file contains pickled Python objects, not only tensors "
                           "(loaded with weights_only=True); save plain tensors and dicts") from None
        raise LtcError(f"{path}: not a readable {what} ({msg}); is the file complete?") from None


def check_ticket_version(ticket: dict, path: Path) -> None:
    version = ticket.get("version")
    if version != TICKET_VERSION:
        raise LtcError(f"{path}: ticket format version {version} is not supported (this ltc reads "
                       f"version {TICKET_VERSION}); re-create the ticket with this ltc")


def _read_torch(path: Path) -> MaskSet:
    obj = load_torch_data(path)
    if not isinstance(obj, dict):
        raise LtcError(f"{path}: expected a dict of masks, found {type(obj).__name__}")
    if obj.get("format") == TICKET_FORMAT:
        check_ticket_version(obj, path)
        if not isinstance(obj.get("masks"), dict):
            raise LtcError(f"{path}: ticket has no 'masks' dict")
        weights = obj.get("final") or obj.get("init") or {}
        return MaskSet(_as_masks(obj["masks"], path), _as_arrays(weights), source="ticket")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if any(k.endswith("_mask") for k in obj):
        masks = {k[: -len("_mask")]: v for k, v in obj.items() if k.endswith("_mask")}
        weights = {}
        for name, m in masks.items():
            orig = obj.get(name + "_orig")
            if orig is not None:
                weights[name] = (orig * m).detach().cpu().numpy()
        return MaskSet(_as_masks(masks, path), weights, source="torch.nn.utils.prune")
    return MaskSet(_as_masks(obj, path), source="pt")


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _as_arrays(d: dict) -> dict[str, np.ndarray]:
    return {k: _to_numpy(v) for k, v in d.items() if hasattr(v, "shape")}


def _as_masks(d: dict, path: Path) -> dict[str, np.ndarray]:
    out = {}
    for name, v in d.items():
        if not hasattr(v, "shape"):
            continue
        a = _to_numpy(v)
        if a.dtype != np.bool_:
            if not np.all((a == 0) | (a == 1)):
                raise LtcError(f"{path}: mask '{name}' has values other than 0 and 1; is this a weight "
                               "file rather than a mask file?")
            a = a != 0
        out[name] = a
    if not out:
        raise LtcError(f"{path}: no mask tensors found")
    return out


def _normalize(name: str) -> str:
    """``layer1.0.conv1.weight``, ``p_layer1_0_conv1_weight`` and ``/layer1/0/conv1`` all -> one key."""
    name = re.sub(r"^(p_|model\.|module\.)", "", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _proportional_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` equals ``b`` up to one scale per output row (how BN folding changes a conv weight)."""
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.einsum("ij,ij->i", b2, b2)
    scale = np.divide(np.einsum("ij,ij->i", a2, b2), denom, out=np.zeros(len(a2)), where=denom > 0)
    tol = 1e-5 * max(float(np.abs(a2).max(initial=0)), 1e-12)
    return bool(np.allclose(a2, scale[:, None] * b2, rtol=1e-4, atol=tol))


def match_masks(model: onnx.ModelProto, masks: MaskSet, strict: bool = False) -> MaskMatch:
    """Map mask names to initializer names (see module docstring); errors name what went wrong."""
    inits = {t.name: t for t in model.graph.initializer}
    by_norm: dict[str, list[str]] = {}
    for n in inits:
        by_norm.setdefault(_normalize(n), []).append(n)
    matched: dict[str, str] = {}
    taken: set[str] = set()
    pending = []
    for name, m in masks.masks.items():
        target = name if name in inits else None
        if target is None:
            cands = by_norm.get(_normalize(name), [])
            target = cands[0] if len(cands) == 1 else None
        if target is None:
            pending.append(name)
            continue
        shape = tuple(inits[target].dims)
        if shape != m.shape:
            raise LtcError(f"mask '{name}' has shape {m.shape} but initializer '{target}' is {shape}; "
                           "is the mask for another model?")
        matched[name] = target
        taken.add(target)
    arrays: dict[str, np.ndarray] = {}
    unmatched = []
    for name in pending:
        m = masks.masks[name]
        cands = [n for n, t in inits.items() if n not in taken and tuple(t.dims) == m.shape and m.ndim > 1]
        if len(cands) > 1:
            cands = _disambiguate(name, m, cands, inits, masks, arrays)
        if len(cands) == 1:
            matched[name] = cands[0]
            taken.add(cands[0])
        elif len(cands) > 1:
            raise LtcError(f"mask '{name}' {m.shape} matches several initializers ({', '.join(cands[:6])}); "
                           "rename the masks to the model's initializer names")
        else:
            unmatched.append(name)
    if not matched:
        raise LtcError(f"no mask matches this model (mask names like {list(masks.masks)[:3]}, shapes "
                       "differ from every weight); is the mask for another model?")
    if unmatched and strict:
        raise LtcError(f"{len(unmatched)} mask(s) match nothing in the model: {', '.join(unmatched[:8])} "
                       "(drop --strict-mask to ignore them)")
    return MaskMatch({t: masks.masks[n] for n, t in matched.items()}, matched, unmatched)


def _disambiguate(name: str, m: np.ndarray, cands: list[str], inits: dict, masks: MaskSet,
                  arrays: dict[str, np.ndarray]) -> list[str]:
    """Narrow same-shape candidates by values: the ticket's weights (up to BN folding) or zeros."""

    def value(n: str) -> np.ndarray:
        if n not in arrays:
            arrays[n] = numpy_helper.to_array(inits[n])
        return arrays[n]

    w = masks.weights.get(name)
    if w is not None and w.shape == m.shape:
        hits = [n for n in cands if _proportional_rows(value(n), w)]
        if hits:
            return hits
    return [n for n in cands if not np.any(value(n)[~m])] or cands
