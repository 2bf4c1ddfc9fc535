"""ticket.pt -> ONNX: rebuild the model from the ticket's architecture, load its masked weights, export."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ltc.errors import LtcError
from ltc.exporters.masks import load_torch_data, validate_ticket


def load_ticket(path: str | os.PathLike) -> dict:
    """Load and check a ticket (weights_only=True: a ticket from a stranger cannot run code)."""
    path = Path(path)
    return validate_ticket(load_torch_data(path, "ticket"), path)


def model_from_ticket(ticket: dict, weights: str = "final"):
    """The registered model with the ticket's ``final`` (or ``init``) weights, masks applied."""
    import torch

    from ltc.compressor.models import build_model
    from ltc.compressor.pruning import apply_mask

    arch = ticket["arch"]
    kw = arch.get("kwargs", {})
    try:
        model = build_model(arch["name"], tuple(kw["in_shape"]), int(kw["classes"]), float(kw.get("dropout", 0.0)))
    except KeyError as exc:
        raise LtcError(f"ticket architecture lacks {exc}; it was not made by `ltc ticket`") from None
    state = ticket.get(weights) or {}
    if not state:
        raise LtcError(f"ticket has no '{weights}' weights; use --weights init" if weights == "final"
                       else "ticket has no 'init' weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise LtcError(f"ticket weights do not fit architecture {arch['name']!r} ({first})") from None
    params = dict(model.named_parameters())
    bad = [n for n, m in ticket["masks"].items() if n not in params or params[n].shape != m.shape]
    if bad:
        raise LtcError(f"ticket masks do not fit architecture {arch['name']!r}: {', '.join(bad[:5])}")
    apply_mask(model, {n: m.to(torch.bool) for n, m in ticket["masks"].items()})
    return model.eval()


def export_ticket(ticket_path: str | os.PathLike, out: str | os.PathLike, *, weights: str = "final",
                  exporter: str = "legacy", opset: int | None = None, dynamic_batch: bool = True,
                  fold_batchnorm: bool = False) -> Path:
    """Export atomically. BatchNorm stays a node unless ``fold_batchnorm`` (so BN masks survive), and
    initializers keep the parameter names, so `ltc compress --mask ticket.pt` matches them by name."""
    from ltc.exporters.torch_export import export_onnx
    from ltc.passes.onnx_io import check_output_path

    out = check_output_path(out, [ticket_path])
    ticket = load_ticket(ticket_path)
    model = model_from_ticket(ticket, weights)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        export_onnx(model, tmp, tuple(ticket["arch"]["kwargs"]["in_shape"]), exporter=exporter,
                    dynamic_batch=dynamic_batch, opset=opset, keep_batchnorm=not fold_batchnorm)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
