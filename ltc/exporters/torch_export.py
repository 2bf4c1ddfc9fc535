"""Export a torch model to ONNX with either exporter, optionally with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

from ltc.errors import LtcError

EXPORTERS = ("legacy", "dynamo")
# The opsets each exporter writes and ONNX Runtime 1.31 runs, that `ltc compress` takes (opset >= 13).
# legacy (TorchScript): torch's ceiling is 20 (above, it warns "not supported"). dynamo: it writes 18
# natively; below that its down-conversion can silently give up and stamp 18, and ONNX Runtime 1.31
# loads models up to opset 26. Verified by exporting lenet300/conv2/resnet20/vgg11 at every opset and
# running them in ONNX Runtime and through `ltc compress`.
OPSETS = {"legacy": (13, 20), "dynamo": (18, 26)}
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}


def check_opset(exporter: str, opset: int | None) -> int:
    """The opset to export with; a one-line error when ``exporter`` cannot write it."""
    if exporter not in EXPORTERS:
        raise LtcError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset is None:
        return DEFAULT_OPSET[exporter]
    lo, hi = OPSETS[exporter]
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        other = [e for e in EXPORTERS if e != exporter and isinstance(opset, int)
                 and OPSETS[e][0] <= opset <= OPSETS[e][1]]
        way = f"use --exporter {other[0]}" if other else f"choose --opset {lo}..{hi}"
        raise LtcError(f"--opset {opset!r}: the {exporter} exporter writes opsets {lo}..{hi} that ONNX Runtime runs "
                       f"and ltc compresses; {way}")
    return opset


def export_onnx(model, path: str | os.PathLike, input_shape: tuple[int, ...], *, exporter: str = "legacy",
                dynamic_batch: bool = True, opset: int | None = None, batch: int = 2,
                keep_batchnorm: bool = False, example=None) -> Path:
    """Export ``model`` (eval mode) for inputs of ``(batch, *input_shape)``; returns the path.

    ``legacy`` is TorchScript-based (``dynamo=False``); with ``keep_batchnorm`` it keeps BN nodes
    (no constant folding). ``dynamo`` is torch.export-based; it folds BN into Conv. Models whose
    weights exceed 2 GB are written with external data, ``<path>.data``, by the dynamo exporter.
    ``example`` (a tensor the model takes) is traced instead of a random float input.
    """
    import torch

    opset = check_opset(exporter, opset)
    model = model.eval()
    x = example if example is not None else torch.randn(batch, *input_shape)
    path = Path(path)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the dynamo exporter logs one warning per missing torchvision op
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(
                    model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
                    opset_version=opset, do_constant_folding=not keep_batchnorm,
                )
            else:
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                            output_names=["output"], dynamic_shapes=shapes,
                                            opset_version=opset, verbose=False)
                program.save(str(path))
    finally:
        logging.disable(previous)
    return path
