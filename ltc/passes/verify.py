"""Numerical verification: ONNX Runtime, graph optimisations off, the same inputs to both models."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx

from ltc.errors import LtcError
from ltc.passes.onnx_io import TWO_GB, model_size_bytes, save_model

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
}


@dataclass
class Verification:
    passed: bool
    rtol: float
    atol: float
    outputs: dict[str, dict] = field(default_factory=dict)  # name -> max_abs, max_rel, passed
    inputs: str = "random"

    @property
    def max_abs(self) -> float:
        return max((o["max_abs"] for o in self.outputs.values()), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o["max_rel"] for o in self.outputs.values()), default=0.0)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol, "inputs": self.inputs,
                "max_abs_error": self.max_abs, "max_rel_error": self.max_rel, "outputs": self.outputs}


def random_inputs(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: symbolic batch -> ``batch``; other symbolic dims refuse."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif i == 0:
                shape.append(batch)
            else:
                raise LtcError(f"input '{vi.name}' has a symbolic dimension {i} ({d.dim_param!r}); "
                               "give real inputs with --inputs inputs.npz")
        dtype = _NP_TYPES.get(tt.elem_type)
        if dtype is None:
            raise LtcError(f"input '{vi.name}' has an unsupported type; give real inputs with --inputs")
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise LtcError(f"{path}: cannot read inputs ({exc}); pass an .npz with one array per model input") from None
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise LtcError(f"{path}: no array for model input(s) {missing}; the file has {sorted(feeds)}")
    return {n: feeds[n] for n in names}


def _session(model: onnx.ModelProto, tmpdir: str, tag: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    if model_size_bytes(model) > TWO_GB:
        path = os.path.join(tmpdir, f"{tag}.onnx")
        save_model(model, path, external_data=True)
        src = path
    else:
        src = model.SerializeToString()
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0]
        raise LtcError(f"ONNX Runtime cannot load the {tag} model ({first}); --no-verify skips verification") from None


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tag: str = "model") -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(model, tmp, tag)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))


def verify(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray],
           rtol: float = 1e-4, atol: float = 1e-5, inputs: str = "random") -> Verification:
    """Run both models one after the other (one session alive at a time) and compare every output."""
    ref = run_model(reference, feeds, "reference")
    got = run_model(candidate, feeds, "compressed")
    result = Verification(True, rtol, atol, inputs=inputs)
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            result.outputs[name] = {"max_abs": float("inf"), "max_rel": float("inf"), "passed": False}
            result.passed = False
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        diff = np.abs(r64 - g64)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(r64), 1e-12)).max()) if diff.size else 0.0
        ok = bool(np.allclose(g64, r64, rtol=rtol, atol=atol))
        result.outputs[name] = {"max_abs": max_abs, "max_rel": max_rel, "passed": ok}
        result.passed &= ok
    return result
