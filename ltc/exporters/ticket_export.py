"""ticket.pt -> ONNX: rebuild the model from the ticket's architecture, load its masked weights, export.

A ticket may come from a stranger, so nothing in it is trusted: the file is loaded with
``weights_only=True``, the architecture's arguments are type-checked, the memory the export would take
is estimated on the meta device before anything is allocated (refused above ``--max-memory``), and the
weights and masks must fit the architecture exactly. The ONNX file is written in a private temporary
folder beside the output and renamed into place; on any failure nothing is left behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from ltc.defaults import MAX_MEMORY_GIB
from ltc.errors import LtcError, first_line
from ltc.masks import as_bool_masks
from ltc.ticket import load_ticket

# Above this much weight the exporters switch to external data: dynamo writes one <output>.data (its
# threshold is 1.5 GiB), the legacy exporter one file per tensor, which ltc refuses to scatter.
EXTERNAL_DATA_BYTES = 1536 << 20
_GIB = 2**30


def ticket_arch(ticket: dict, path: str | os.PathLike = "ticket") -> tuple[str, tuple[int, int, int], int, float]:
    """The ticket's (model name, in_shape, classes, dropout), type- and range-checked."""
    from ltc.compressor.models import check_arch

    arch = ticket["arch"]
    kw = arch.get("kwargs") or {}
    for key in ("in_shape", "classes"):
        if key not in kw:
            raise LtcError(f"{path}: ticket architecture lacks '{key}'; it was not made by `ltc ticket`")
    try:
        return check_arch(arch["name"], kw["in_shape"], kw["classes"], kw.get("dropout", 0.0))
    except LtcError as exc:
        raise LtcError(f"{path}: ticket architecture: {exc}; the ticket is damaged or forged") from None


def _refuse_ticket_file(name: str, model_spec: str | None, path) -> None:
    """ltc imports a factory file only when the user names it, never because a ticket does."""
    from ltc.compressor import sources

    if model_spec is None and sources.kind(name) == "file":
        raise LtcError(f"{path}: the ticket's model is {name!r}, a factory file; ltc imports a file only when you "
                       f"name it: pass --model {name} (after checking that file)")


def _gib(n: int) -> str:
    return f"{n / _GIB:,.2f} GiB" if n < 1000 * _GIB else f"{n / _GIB:.3g} GiB"


def check_memory(ticket: dict, path: str | os.PathLike, max_memory_gib: float = MAX_MEMORY_GIB,
                 batch: int = 2, model_spec: str | None = None) -> dict[str, int]:
    """Estimate, before allocating anything, what building and exporting the ticket's model takes:
    its parameters three times (the model, the ONNX graph, the serialised file) and the activations of
    one forward pass. Refuse above ``max_memory_gib``."""
    from ltc.compressor.models import memory_estimate

    if isinstance(max_memory_gib, bool) or not isinstance(max_memory_gib, (int, float)) \
            or not math.isfinite(max_memory_gib) or max_memory_gib <= 0:
        raise LtcError(f"--max-memory must be a positive number of GiB, got {max_memory_gib!r}")
    name, in_shape, classes, dropout = ticket_arch(ticket, path)

    _refuse_ticket_file(name, model_spec, path)
    name = model_spec or name
    limit = int(max_memory_gib * _GIB)
    try:
        est = memory_estimate(name, in_shape, classes, dropout, batch=batch, limit=limit)
    except LtcError as exc:
        raise LtcError(f"{path}: {exc}") from None
    need = 3 * est["parameters"] + est["activations"]
    if need > limit:
        about = "at least" if est["lower_bound"] else "about"
        raise LtcError(f"{path}: exporting {name} for inputs {list(in_shape)} with {classes:,} classes needs {about} "
                       f"{_gib(need)} (parameters {_gib(est['parameters'])} x3, activations "
                       f"{_gib(est['activations'])}), over --max-memory {max_memory_gib:g} GiB; check the ticket's "
                       "architecture (in_shape, classes) or raise --max-memory")
    return {**est, "needed": need}


def _check_state(state: dict, model, arch_name: str, field: str, path) -> None:
    """``state`` holds exactly the model's tensors: names, shapes, dense CPU tensors of a fitting dtype."""
    from ltc.ticket import entry_mismatch

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}"] if unexpected else [])
        raise LtcError(f"{path}: ticket weights do not fit architecture {arch_name!r} ({'; '.join(parts)}); is the "
                       "ticket for another model?")
    for name, ref in expected.items():
        # an integer buffer (BN's num_batches_tracked) may come as bool; weights must be floats
        problem = entry_mismatch(state[name], ref, None if ref.is_floating_point() else ("int", "bool"))
        if problem:
            raise LtcError(f"{path}: ticket weights do not fit architecture {arch_name!r}: '{field}' entry '{name}' "
                           f"{problem}")


def _check_masks(masks: dict, model, arch_name: str, path) -> dict:
    """The ticket's masks as bool tensors: each names a parameter of the model, has its shape, and holds
    bool or 0/1 values (checked by the mask readers' :func:`as_bool_masks`)."""
    import torch

    params = dict(model.named_parameters())
    bad = [n for n, m in masks.items() if n not in params or tuple(params[n].shape) != tuple(m.shape)]
    if bad:
        raise LtcError(f"{path}: ticket masks do not fit architecture {arch_name!r}: {', '.join(bad[:5])}")
    if not masks:
        return {}
    return {n: torch.from_numpy(a) for n, a in as_bool_masks(masks, Path(path)).items()}


def load_into(model, ticket: dict, weights: str, path, arch_name: str):
    """``model`` with the ticket's ``weights`` (final or init) loaded and its masks applied, in eval mode;
    every tensor must fit (names, shapes, kinds of dtype) or a one-line error says which does not."""
    from ltc.compressor.pruning import apply_mask

    if weights not in ("final", "init"):
        raise LtcError(f"--weights must be final or init, got {weights!r}")
    state = ticket.get(weights) or {}
    if not state:
        raise LtcError(f"{path}: ticket has no '{weights}' weights; use --weights init" if weights == "final"
                       else f"{path}: ticket has no 'init' weights")
    _check_state(state, model, arch_name, weights, path)
    masks = _check_masks(ticket["masks"], model, arch_name, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise LtcError(f"{path}: ticket weights do not fit architecture {arch_name!r} ({first_line(exc)})") from None
    apply_mask(model, masks)
    return model.eval()


def model_from_ticket(ticket: dict, weights: str = "final", path: str | os.PathLike = "ticket",
                      model_spec: str | None = None):
    """The ticket's model (rebuilt from its architecture name, or from ``model_spec`` when the user names
    one) with the ticket's ``final`` (or ``init``) weights, masks applied. A ticket whose model is a
    user's factory file is rebuilt only from a ``model_spec`` the user gives: ltc never imports a file
    named inside a ticket."""
    from ltc.compressor.models import build_model

    name, in_shape, classes, dropout = ticket_arch(ticket, path)
    _refuse_ticket_file(name, model_spec, path)
    model = build_model(model_spec or name, in_shape, classes, dropout)
    return load_into(model, ticket, weights, path, model_spec or name)


def write_export(model, out: Path, in_shape: tuple[int, ...], inputs: list[Path], *, exporter: str = "legacy",
                 opset: int | None = None, dynamic_batch: bool = True, keep_batchnorm: bool = True,
                 users_model: bool = False, example=None) -> Path:
    """Export ``model`` to ``out`` through a private temporary folder beside it, then rename (with the
    external data file the dynamo exporter may write); on any failure nothing is left behind. ``out``
    and the files beside it may not be any of ``inputs``. When torch cannot export a ``users_model``
    (not one of ltc's registry) that is a bad input (exit 1); for ltc's own models it is ltc's fault."""
    from ltc.exporters.torch_export import check_opset, export_onnx
    from ltc.fileio import check_outputs

    opset = check_opset(exporter, opset)
    [out] = check_outputs([Path(out)], inputs)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise LtcError(f"{out}: cannot write ({exc.strerror or exc}); choose another output path") from None
    moved: list[Path] = []
    try:
        tmp = tmpdir / out.name  # the exporter names external data after this: <output>.data
        try:
            export_onnx(model, tmp, in_shape, exporter=exporter, dynamic_batch=dynamic_batch, opset=opset,
                        keep_batchnorm=keep_batchnorm, example=example)
        except Exception as exc:
            if not users_model:
                raise
            raise LtcError(f"{out}: torch could not export the model ({type(exc).__name__}: {first_line(exc)}); "
                           "try --exporter dynamo, or check that the model takes inputs of shape "
                           f"{['batch', *in_shape]}") from None
        extras = sorted(p for p in tmpdir.iterdir() if p != tmp)
        check_outputs([out, *(out.parent / p.name for p in extras)], inputs)
        for p in extras:
            os.replace(p, out.parent / p.name)
            moved.append(out.parent / p.name)
        os.replace(tmp, out)
        moved.clear()
    except OSError as exc:
        raise LtcError(f"{out}: cannot write ({exc.strerror or exc}); choose another output path") from None
    finally:
        for p in moved:
            p.unlink(missing_ok=True)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def export_ticket(ticket_path: str | os.PathLike, out: str | os.PathLike, *, weights: str = "final",
                  exporter: str = "legacy", opset: int | None = None, dynamic_batch: bool = True,
                  fold_batchnorm: bool = False, max_memory: float = MAX_MEMORY_GIB,
                  model_spec: str | None = None) -> Path:
    """Export atomically. BatchNorm stays a node unless ``fold_batchnorm`` (so BN masks survive), and
    initializers keep the parameter names, so `ltc compress --mask ticket.pt` matches them by name.
    ``model_spec`` rebuilds the model from a model name the user gives (needed for factory files)."""
    from ltc.exporters.torch_export import check_opset
    from ltc.fileio import check_outputs

    opset = check_opset(exporter, opset)
    ticket_path = Path(ticket_path)
    [out] = check_outputs([Path(out)], [ticket_path])
    ticket = load_ticket(ticket_path)
    estimate = check_memory(ticket, ticket_path, max_memory, model_spec=model_spec)
    if exporter == "legacy" and estimate["parameters"] > EXTERNAL_DATA_BYTES:
        raise LtcError(f"{ticket_path}: the model's weights ({_gib(estimate['parameters'])}) need external data, which "
                       "the legacy exporter scatters over one file per tensor; use --exporter dynamo (it writes them "
                       "to <output>.data)")
    model = model_from_ticket(ticket, weights, ticket_path, model_spec)
    _, in_shape, _, _ = ticket_arch(ticket, ticket_path)
    from ltc.compressor import sources

    return write_export(model, out, in_shape, [ticket_path], exporter=exporter, opset=opset,
                        dynamic_batch=dynamic_batch, keep_batchnorm=not fold_batchnorm,
                        users_model=sources.kind(model_spec or ticket["arch"]["name"]) != "registry")


def export(model, ticket: str | os.PathLike | dict, example_input,
           path: str | os.PathLike, *, weights: str = "final", exporter: str = "legacy", opset: int | None = None,
           dynamic_batch: bool = True) -> Path:
    """Load the ticket's ``weights`` (final or init) and masks into ``model`` (rebuilt from the user's
    code: it must have the ticket's parameter names and shapes) and export it to ONNX at ``path``,
    atomically. BatchNorm stays a node and initializers keep the parameter names, so
    ``ltc compress path --mask ticket`` matches every mask by name."""
    import copy

    import torch
    from torch import nn

    from ltc.ticket import validate_ticket

    if not isinstance(model, nn.Module):
        raise LtcError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise LtcError("example_input must be a tensor [batch, ...] the model takes")
    source = Path(ticket) if not isinstance(ticket, dict) else None
    t = load_ticket(source) if source else validate_ticket(ticket, Path("ticket"))
    model = load_into(copy.deepcopy(model).cpu(), t, weights, source or "ticket", type(model).__name__)
    inputs = [source] if source else []
    return write_export(model, Path(path), tuple(example_input.shape[1:]), inputs, exporter=exporter, opset=opset,
                        dynamic_batch=dynamic_batch, keep_batchnorm=True, users_model=True,
                        example=example_input.detach().cpu())
