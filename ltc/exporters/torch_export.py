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


def export_onnx(model, path: str | os.PathLike, input_shape: tuple[int, ...], *, exporter: str = "legacy",
                dynamic_batch: bool = True, opset: int | None = None, batch: int = 2,
                keep_batchnorm: bool = False) -> Path:
    """Export ``model`` (eval mode) for inputs of ``(batch, *input_shape)``; returns the path.

    ``legacy`` is TorchScript-based (``dynamo=False``); with ``keep_batchnorm`` it keeps BN nodes
    (no constant folding). ``dynamo`` is torch.export-based; it folds BN into Conv.
    """
    import torch

    if exporter not in EXPORTERS:
        raise LtcError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    model = model.eval()
    x = torch.randn(batch, *input_shape)
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
                    opset_version=opset or 17, do_constant_folding=not keep_batchnorm,
                )
            else:
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                            output_names=["output"], dynamic_shapes=shapes,
                                            opset_version=opset or 18, verbose=False)
                program.save(str(path))
    finally:
        logging.disable(previous)
    return path
