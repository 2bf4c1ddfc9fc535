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
from ltc.fileio import check_input_file, load_npz, load_torch_data, not_torch, sniff
from ltc.ticket import TICKET_FORMAT, is_tensor, ticket_groups, validate_ticket


@dataclass
class MaskSet:
    """Masks by their own names, and (if the file had them) the weights they belong to."""

    masks: dict[str, np.ndarray]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "masks"
    groups: dict[str, int] = field(default_factory=dict)  # a regroup ticket's G per weight (mask name)
    originals: dict[str, np.ndarray] = field(default_factory=dict)  # unmasked weights (prune's ``*_orig``)


@dataclass
class MaskMatch:
    masks: dict[str, np.ndarray]  # initializer name -> bool mask
    matched: dict[str, str]  # mask name -> initializer name
    unmatched: list[str]  # mask names that match nothing in this model
    shared: dict[str, str] = field(default_factory=dict)  # mask name -> initializer stored once for several
    transposed: list[str] = field(default_factory=list)  # mask names applied transposed ([out, in] -> [in, out])


def read_masks(path: str | os.PathLike) -> MaskSet:
    path = check_input_file(path, "mask file", "pass a ticket.pt, a prune state dict (.pt) or an .npz")
    kind = sniff(path)
    if kind == "npz":
        return MaskSet(as_bool_masks(load_npz(path, "mask file"), path), source="npz")
    if kind != "torch":
        raise LtcError(f"{path}: {not_torch(kind)}; pass a ticket.pt, a prune state dict (.pt) or an .npz")
    return _read_torch(path)


def _read_torch(path: Path) -> MaskSet:
    obj = load_torch_data(path, "mask file")
    if not isinstance(obj, dict):
        raise LtcError(f"{path}: expected a dict of masks, found {type(obj).__name__}")
    if obj.get("format") == TICKET_FORMAT:
        validate_ticket(obj, path)
        weights = obj.get("final") or obj.get("init") or {}
        return MaskSet(as_bool_masks(obj["masks"], path), _as_arrays(weights, path), source="ticket",
                       groups=ticket_groups(obj, path))
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise LtcError(f"{path}: mask names must be strings, found the key {bad[0]!r}; save {{name: mask}}")
    if any(k.endswith("_mask") for k in obj):
        masks = {k[: -len("_mask")]: v for k, v in obj.items() if k.endswith("_mask")}
        bools = as_bool_masks(masks, path)
        weights, originals = {}, {}
        for name, m in bools.items():
            if name + "_orig" not in obj:
                continue
            orig = obj[name + "_orig"]
            if not is_tensor(orig) or tuple(orig.shape) != m.shape:
                found = f"shape {tuple(orig.shape)}" if is_tensor(orig) else f"a {type(orig).__name__}"
                raise LtcError(f"{path}: '{name}_orig' is {found}, not a tensor of its mask's shape {m.shape}; "
                               "save the prune state dict as torch.nn.utils.prune wrote it")
            originals[name] = _to_numpy(orig, name + "_orig", path)
            if originals[name].dtype.kind != "f":
                raise LtcError(f"{path}: '{name}_orig' has dtype {originals[name].dtype}, not a float weight; "
                               "save the prune state dict as torch.nn.utils.prune wrote it")
            weights[name] = np.where(m, originals[name], 0).astype(originals[name].dtype)
        return MaskSet(bools, weights, source="torch.nn.utils.prune", originals=originals)
    return MaskSet(as_bool_masks(obj, path), source="pt")


def _to_numpy(v, name: str = "", path: Path | None = None) -> np.ndarray:
    """A tensor as a numpy array; sparse, quantized and numpy-less dtypes (float8...) are refused."""
    if hasattr(v, "detach"):
        where = f"{path}: tensor '{name}'" if path else f"tensor '{name}'"
        if getattr(v, "is_sparse", False) or str(getattr(v, "layout", "torch.strided")) != "torch.strided":
            raise LtcError(f"{where} is stored sparse ({v.layout}); save it dense (tensor.to_dense())")
        if getattr(v, "is_quantized", False):
            raise LtcError(f"{where} is quantized ({v.dtype}); save it dequantized (tensor.dequantize())")
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        try:
            return v.numpy()
        except (TypeError, RuntimeError):
            raise LtcError(f"{where} has dtype {v.dtype}, which numpy cannot hold; save it as float32 or "
                           "bool") from None
    return np.asarray(v)


def _as_arrays(d: dict, path: Path | None = None) -> dict[str, np.ndarray]:
    return {k: _to_numpy(v, k, path) for k, v in d.items() if hasattr(v, "shape")}


def bool_mask(a: np.ndarray, what: str, hint: str, dtype_label: object = None) -> np.ndarray:
    """A mask as bool: bool, or numbers that are all 0 or 1 (torch prune masks are float). ``what``
    names it in errors, ``hint`` is the way out for values other than 0 and 1."""
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "biuf":
        raise LtcError(f"{what} has dtype {dtype_label or a.dtype}; masks are bool or 0/1 numbers")
    if not np.all((a == 0) | (a == 1)):
        raise LtcError(f"{what} has values other than 0 and 1; {hint}")
    return a != 0


def as_bool_masks(d: dict, path: Path) -> dict[str, np.ndarray]:
    """``{name: bool array}`` from tensors or arrays of bool or 0/1 numbers; anything else is refused."""
    out = {}
    for name, v in d.items():
        if not isinstance(name, str):
            raise LtcError(f"{path}: mask names must be strings, found the key {name!r}")
        if not is_tensor(v):
            continue
        a = _to_numpy(v, name, path)
        out[name] = bool_mask(a, f"{path}: mask '{name}'", "is this a weight file rather than a mask file?",
                              getattr(v, "dtype", a.dtype))
    if not out:
        raise LtcError(f"{path}: no mask tensors found")
    return out


def _normalize(name: str) -> str:
    """``layer1.0.conv1.weight``, ``p_layer1_0_conv1_weight`` and ``/layer1/0/conv1`` all -> one key."""
    name = re.sub(r"^(p_|model\.|module\.)", "", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _proportional_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` equals ``b`` up to one scale per output row (how BN folding changes a conv weight), with
    some row scaled by more than 0: an all-zero ``a`` is no evidence."""
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.einsum("ij,ij->i", b2, b2)
    scale = np.divide(np.einsum("ij,ij->i", a2, b2), denom, out=np.zeros(len(a2)), where=denom > 0)
    tol = 1e-5 * max(float(np.abs(a2).max(initial=0)), 1e-12)
    return bool(np.any(scale != 0) and np.allclose(a2, scale[:, None] * b2, rtol=1e-4, atol=tol))


@dataclass(frozen=True)
class _Candidate:
    init: str
    transposed: bool  # the initializer holds the mask's weight transposed (exporters store Linear as [in, out])

    def label(self, inits: dict) -> str:
        return f"'{self.init}' {tuple(inits[self.init].dims)}" + (" transposed" if self.transposed else "")


def match_masks(model: onnx.ModelProto, masks: MaskSet, strict: bool = False) -> MaskMatch:
    """Map mask names to initializer names (see module docstring); errors name what went wrong.

    A mask whose name matches no initializer is matched by shape (or, for a 2-D mask, the transposed
    shape: both torch exporters store a Linear weight as [in, out] under a new name) only where values
    confirm it: the weights the file carries (a ticket's, or a prune state dict's ``*_orig``, up to BN
    folding) equal the initializer's, or else the initializer is zero wherever the mask is. A shape
    alone never decides, not even when one initializer has it."""
    inits = {t.name: t for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    by_norm: dict[str, list[str]] = {}
    for n in inits:
        by_norm.setdefault(_normalize(n), []).append(n)
    matched: dict[str, str] = {}
    flipped: set[str] = set()
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
            flip = _Candidate(target, True)
            if not (m.ndim == 2 and shape == m.shape[::-1]
                    and (m.all() or _confirmed(name, [flip], inits, masks, arrays))):
                raise LtcError(f"mask '{name}' has shape {m.shape} but initializer '{target}' is {shape}; "
                               "is the mask for another model?")
            flipped.add(name)
        matched[name] = target
        taken.add(target)
    unmatched = []
    cands: dict[str, list[_Candidate]] = {}
    by_shape: dict[str, list[_Candidate]] = {}
    for name in pending:  # candidates by shape, confirmed by values; assigned below in any order
        m = masks.masks[name]
        shaped = [_Candidate(n, False) for n, t in inits.items()
                  if n not in taken and tuple(t.dims) == m.shape and m.ndim > 1]  # (1-D: by name or values only)
        if m.ndim == 2:
            shaped += [_Candidate(n, True) for n, t in inits.items() if n not in taken and tuple(t.dims) == m.shape[::-1]]
        by_shape[name] = shaped
        cands[name] = _confirmed(name, shaped, inits, masks, arrays)
    progress = True
    while progress:  # a mask with one candidate left takes it; that may leave another with one
        progress = False
        for name in list(cands):
            left = [c for c in cands[name] if c.init not in taken]
            if left and len({c.init for c in left}) == 1:
                matched[name] = left[0].init
                taken.add(left[0].init)
                if left[0].transposed:
                    flipped.add(name)
                del cands[name]
                progress = True
    shared: dict[str, str] = {}
    for name in [n for n, found in cands.items() if not found]:
        target = _deduplicated(name, masks, {n: inits[n] for n in taken}, arrays)
        if target is not None:  # the exporter stored this weight once, under the name another mask matched
            del cands[name]
            shared[name] = target
    for name, found in cands.items():
        m = masks.masks[name]
        left = [c for c in found if c.init not in taken]
        if len(left) > 1:
            raise LtcError(f"mask '{name}' {m.shape} fits several initializers by shape and values "
                           f"({', '.join(c.label(inits) for c in left[:6])}); rename the masks to the model's "
                           "initializer names")
        if found:
            others = [k for k, v in matched.items() if v in {c.init for c in found}]
            raise LtcError(f"mask '{name}' matches '{found[0].init}', which mask '{others[0]}' matched too; "
                           "rename the masks to the model's initializer names")
        shaped = [c for c in by_shape[name] if c.init not in taken]  # (all taken by confirmed masks: a
        if shaped and not m.all():  # layer the export does not hold, e.g. an auxiliary head: unmatched)
            what = "equals the weights the mask file carries or " if _reference_weights(name, masks) else ""
            raise LtcError(
                f"mask '{name}' {m.shape} names no initializer of this model, and no weight of its shape "
                f"({', '.join(c.label(inits) for c in shaped[:6])}) {what}is zero wherever the mask is: "
                "ltc does not guess by shape; name the masks by the model's initializer names, or export the "
                "model with the masks applied")
        unmatched.append(name)  # (an all-True mask removes nothing wherever it would go)
    if not matched:
        raise LtcError(f"no mask matches this model (mask names like {list(masks.masks)[:3]}, shapes "
                       "differ from every weight); is the mask for another model?")
    if unmatched and strict:
        raise LtcError(f"{len(unmatched)} mask(s) match nothing in the model: {', '.join(unmatched[:8])} "
                       "(drop --strict-mask to ignore them)")
    combined = {t: masks.masks[n].T if n in flipped else masks.masks[n] for n, t in matched.items()}
    for name, t in shared.items():  # one tensor for both: a weight is dead where either mask says so
        combined[t] = combined[t] & masks.masks[name]
    return MaskMatch(combined, matched, unmatched, shared, sorted(flipped))


def _reference_weights(name: str, masks: MaskSet) -> list[np.ndarray]:
    """The weights the mask file carries for ``name``: masked (a ticket's, or ``*_orig`` x mask) and
    unmasked (``*_orig``: the model may have been exported before the masks were applied)."""
    m = masks.masks[name]
    return [w for w in (masks.weights.get(name), masks.originals.get(name)) if w is not None and w.shape == m.shape]


def _confirmed(name: str, cands: list[_Candidate], inits: dict, masks: MaskSet,
               arrays: dict[str, np.ndarray]) -> list[_Candidate]:
    """The candidates whose values say they are mask ``name``'s weight: equal to the weights the mask
    file carries (up to one scale per row: BN folding), or else zero wherever the mask is."""
    m = masks.masks[name]

    def value(c: _Candidate) -> np.ndarray:
        a = _array(c.init, inits, arrays)
        return a.T if c.transposed else a

    # a weight holding none of the mask's live entries (an all-zero layer) is no evidence of anything
    cands = [c for c in cands if np.issubdtype(value(c).dtype, np.floating) and np.any(value(c)[m])]
    refs = _reference_weights(name, masks)
    by_values = [c for c in cands if any(_proportional_rows(value(c), w) for w in refs)]
    if by_values:
        return by_values
    if m.all():
        return []  # no zeros to check against
    return [c for c in cands if not np.any(value(c)[~m])]


def _deduplicated(name: str, masks: MaskSet, inits: dict, arrays: dict[str, np.ndarray]) -> str | None:
    """The one initializer of ``inits`` (those other masks matched) holding exactly the ticket's masked
    weight ``name``, which has no initializer of its own: the legacy exporter stores parameters with
    equal values once (two BN shifts fed by one gradient start and stay equal). None when there is no
    such single initializer."""
    w, m = masks.weights.get(name), masks.masks[name]
    if w is None or w.shape != m.shape:
        return None
    want = np.where(m, w, 0)
    hits = [n for n, t in inits.items() if tuple(t.dims) == m.shape
            and _array(n, inits, arrays).dtype == want.dtype and np.array_equal(_array(n, inits, arrays), want)]
    return hits[0] if len(hits) == 1 else None


def _array(name: str, inits: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Initializer ``name`` as an array, converted once per match (``arrays`` is the cache)."""
    if name not in arrays:
        arrays[name] = numpy_helper.to_array(inits[name])
    return arrays[name]
