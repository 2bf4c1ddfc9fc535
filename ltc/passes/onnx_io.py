"""Moved to :mod:`ltc.onnx_io` (kept so pipelines importing the old path keep working)."""

from ltc.onnx_io import (  # noqa: F401
    MIN_OPSET,
    TWO_GB,
    ModelSource,
    check_model_structure,
    checker_problem,
    infer_shapes,
    light_copy,
    load_external_data,
    model_files,
    model_size_bytes,
    outer_reads,
    read_model,
    save_model,
)
