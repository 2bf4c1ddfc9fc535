"""File-level entry points: what the CLI calls, and what a deployment script can call instead."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from ltc.defaults import ATOL, RTOL
from ltc.errors import LtcError
from ltc.fileio import check_outputs, write_json_atomic
from ltc.hardware import default_round_to
from ltc.masks import match_masks, read_masks
from ltc.onnx_io import TWO_GB, model_size_bytes, read_model, save_model
from ltc.passes import compress
from ltc.passes.compress import inspect
from ltc.passes.verify import load_inputs


def _masks_for(model, mask: str | os.PathLike | None, strict: bool) -> tuple[dict | None, dict, dict[str, int]]:
    """Masks by initializer name, the report's mask entry, and a group ticket's G by initializer name."""
    if mask is None:
        return None, {"source": "zeros in the model's weights"}, {}
    ms = read_masks(mask)
    m = match_masks(model, ms, strict)
    groups = {m.matched[name]: g for name, g in ms.groups.items() if name in m.matched}
    info = {"source": f"{ms.source} ({mask})", "matched": len(m.matched), "unmatched": m.unmatched}
    if m.shared:
        info["shared"] = m.shared
    return m.masks, info, groups


def resolve_round_to(round_to: int | str, provider: str) -> int:
    if round_to in ("auto", None):
        return default_round_to(provider)
    try:
        value = int(round_to)
    except ValueError:
        raise LtcError(f"--round-to must be a positive integer or 'auto', got {round_to!r}") from None
    if value < 1:
        raise LtcError(f"--round-to must be >= 1, got {value}")
    return value


def compress_file(model_path: str | os.PathLike, out_path: str | os.PathLike, mask: str | os.PathLike | None = None,
                  *, allow_lossy: bool = False, round_to: int | str = "auto", provider: str = "cpu",
                  verify: bool = True, inputs: str | os.PathLike | None = None, rtol: float = RTOL,
                  atol: float = ATOL, strict_mask: bool = False, report: str | os.PathLike | None = None,
                  external_data: bool | None = None, regroup: bool | None = None,
                  unequal_groups: str = "auto") -> dict:
    """Compress ``model_path`` into ``out_path``; returns the report dict (also written to ``report``).

    ``regroup``: turn block-diagonal Convs into grouped Convs; None (default) does it when the mask is
    a group-wise ticket, with the ticket's group counts.

    Nothing is written unless every step succeeds; no output may be an input (checked after
    resolving links, external-data files included); outputs are written atomically.
    """
    start = time.perf_counter()
    model_path, out_path = Path(model_path), Path(out_path)
    check_tolerances(rtol, atol)
    rounding = resolve_round_to(round_to, provider)
    data_out = out_path.with_name(out_path.name + ".data")
    check_outputs([out_path, report], [model_path, mask, inputs])
    model, source = read_model(model_path)
    read = [*source.files, mask, inputs]
    if external_data is None and source.external:
        external_data = True
    check_outputs([out_path, report, data_out if external_data else None], read)  # again once it is decided
    masks, mask_info, groups = _masks_for(model, mask, strict_mask)
    regroup = bool(groups) if regroup is None else regroup
    feeds = load_inputs(inputs, model) if inputs else None
    result = compress(model, masks, allow_lossy=allow_lossy, round_to=rounding, check=verify, feeds=feeds,
                      rtol=rtol, atol=atol, inputs_label=str(inputs) if inputs else "random (seed 0, batch 2)",
                      model_file=None if source.external else model_path, regroup=regroup, groups=groups,
                      unequal_groups=unequal_groups)
    if external_data is None:
        external_data = model_size_bytes(result.model) > TWO_GB
    check_outputs([out_path, report, data_out if external_data else None], read)
    doc = {
        "ltc_report": "compress", "version": 1,
        "input": str(model_path), "output": str(out_path), "mask": mask_info,
        "options": {"allow_lossy": allow_lossy, "round_to": rounding, "provider": provider, "verify": verify,
                    "regroup": regroup, "unequal_groups": unequal_groups},
        **result.to_dict(),
        "file_size": {"before": source.bytes, "after": None},
    }
    save_model(result.model, out_path, external_data, serialized=result.serialized)
    doc["file_size"]["after"] = out_path.stat().st_size + (data_out.stat().st_size if external_data else 0)
    doc["seconds_total"] = time.perf_counter() - start
    if report is not None:
        write_json_atomic(report, doc, default=_json_default)
    return doc


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise LtcError(f"--{name} must be a finite number >= 0, got {value!r}")


def inspect_file(model_path: str | os.PathLike, mask: str | os.PathLike | None = None,
                 strict_mask: bool = False, allow_lossy: bool = False, unequal_groups: str = "auto") -> dict:
    model, _source = read_model(model_path)
    masks, mask_info, _ = _masks_for(model, mask, strict_mask)
    doc = inspect(model, masks, allow_lossy, unequal_groups)
    doc.update({"ltc_report": "inspect", "version": 1, "input": str(model_path), "mask": mask_info})
    return doc


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)

