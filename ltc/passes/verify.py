"""Numerical verification: ONNX Runtime, graph optimisations off, the same inputs to both models."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx

from ltc.defaults import ATOL, RTOL
from ltc.errors import InternalError, LtcError, first_line
from ltc.fileio import load_npz
from ltc.onnx_io import TWO_GB, light_copy, model_size_bytes, save_model


@dataclass
class Verification:
    passed: bool
    rtol: float
    atol: float
    outputs: dict[str, dict] = field(default_factory=dict)  # name -> max_abs, max_rel, passed
    inputs: str = "random"
    optimizer_ok: bool | None = None  # the candidate under ORT's graph optimizations matches too
    optimized_max_abs: float | None = None

    @property
    def max_abs(self) -> float:
        return max((o["max_abs"] for o in self.outputs.values()), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o["max_rel"] for o in self.outputs.values()), default=0.0)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol, "inputs": self.inputs,
                "max_abs_error": self.max_abs, "max_rel_error": self.max_rel, "outputs": self.outputs,
                "optimizer_ok": self.optimizer_ok, "optimized_max_abs_error": self.optimized_max_abs}


MAX_RANDOM_INPUT_BYTES = 2 << 30  # per input: a batch of 2 this large is not a model's real input
InputSpec = tuple[str, list, np.dtype]  # name, dims (int, or str/None when symbolic), dtype


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """(name, dims, dtype) of every graph input that is not an initializer."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, ValueError, TypeError):
            dtype = None
        if dtype is None or dtype.kind not in "biuf":  # (strings, complex, 8-bit floats: no random values)
            raise LtcError(f"input '{vi.name}' has type {onnx.TensorProto.DataType.Name(tt.elem_type)}, which "
                           "ltc cannot generate; give real inputs with --inputs")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        specs.append((vi.name, dims, dtype))
    return specs


def random_feeds(specs: list[InputSpec], batch: int = 2, seed: int = 0,
                 way_out: str = "give real inputs with --inputs inputs.npz") -> dict[str, np.ndarray]:
    """Seeded inputs: a symbolic first dimension becomes ``batch``, other symbolic dims refuse.
    Floats are standard normal; integers and booleans are 0 or 1 (valid ids, indices and flags)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dims, dtype in specs:
        shape = []
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch)
            else:
                raise LtcError(f"input '{name}' has a symbolic dimension {i} ({d!r}); {way_out}")
        size = math.prod(shape) * dtype.itemsize
        if size > MAX_RANDOM_INPUT_BYTES:
            raise LtcError(f"input '{name}' of shape {shape} would take {size / 2**30:.1f} GiB; "
                           f"ltc makes random inputs of at most {MAX_RANDOM_INPUT_BYTES / 2**30:.0f} GiB ({way_out})")
        if dtype in (np.float32, np.float64):
            feeds[name] = rng.standard_normal(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, size=shape, dtype=np.int8).astype(dtype)
    return feeds


def random_inputs(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return random_feeds(input_specs(model), batch, seed)


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Real inputs from an .npz, checked against the model: names, dtypes, ranks, static dimensions,
    at least one example, finite values."""
    feeds = load_npz(path, "inputs file")
    specs = input_specs(model)
    names = [s[0] for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise LtcError(f"{path}: no array for model input(s) {missing}; the file has {sorted(feeds)} (one array "
                       "per model input, named as the input)")
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise LtcError(f"{path}: array(s) {extra} match no model input (the model takes {names}); rename or drop them")
    for name, dims, dtype in specs:
        a = feeds[name]
        if a.dtype != dtype and a.dtype.newbyteorder("=") == dtype:  # the same type in the other byte order
            a = feeds[name] = a.astype(dtype)
        if a.dtype != dtype:
            raise LtcError(f"{path}: '{name}' is {a.dtype} but the model takes {dtype}; save it as {dtype}")
        if a.ndim != len(dims):
            raise LtcError(f"{path}: '{name}' has rank {a.ndim} (shape {list(a.shape)}) but the model takes rank "
                           f"{len(dims)} ({dims})")
        if a.size == 0:
            raise LtcError(f"{path}: '{name}' has shape {list(a.shape)}, no values to verify with; give at least "
                           "one example")
        for i, (got, want) in enumerate(zip(a.shape, dims, strict=True)):
            if isinstance(want, int) and want > 0 and got != want:
                raise LtcError(f"{path}: '{name}' has shape {list(a.shape)} but the model fixes dimension {i} to "
                               f"{want} ({dims})")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise LtcError(f"{path}: '{name}' contains NaN or infinite values; verification needs finite inputs")
    return {n: feeds[n] for n in names}


Runnable = onnx.ModelProto | bytes | str  # a model, its serialized bytes, or the path of its file


def _session(model: Runnable, tmpdir: str, tag: str, optimize: bool = False, prepack: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 4  # errors become exceptions, reported in one line; ORT's own logs stay quiet
    if not prepack:  # kernels re-layout constant weights at load; a load check needs no runnable kernels
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(model, bytes | str):
        src = model
    elif model_size_bytes(model) > TWO_GB:
        path = os.path.join(tmpdir, f"{tag}.onnx")
        save_model(model, path, external_data=True)
        src = path
    else:
        src = model.SerializeToString()
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        if tag == "reference":  # the input model (masks applied): the input is what ORT refuses
            raise LtcError(f"ONNX Runtime cannot load the input model ({first_line(exc)}); check that it runs "
                           "in ONNX Runtime (ltc verifies with it)") from None
        raise InternalError(f"ONNX Runtime cannot load the {tag} model ltc produced ({first_line(exc)})") from None


def run_model(model: Runnable, feeds: dict[str, np.ndarray], tag: str = "model",
              optimize: bool = False) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(model, tmp, tag, optimize)
        names = [o.name for o in sess.get_outputs()]
        try:
            return dict(zip(names, sess.run(names, feeds), strict=True))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            if tag == "reference":
                raise LtcError(f"ONNX Runtime cannot run the input model on these inputs ({first_line(exc)}); "
                               "check the --inputs shapes, or give --inputs if random ones do not fit") from None
            raise InternalError(f"ONNX Runtime cannot run the {tag} model ltc produced ({first_line(exc)})") from None


def run_check(candidate: Runnable, reference: Runnable, feeds: dict[str, np.ndarray]) -> None:
    """ltc's output runs on ``feeds`` (what remains of verification when it is off): if it does not
    while the reference does, :class:`InternalError`; if the reference does not run either, the inputs
    say nothing about ltc's output, and nothing is raised."""
    try:
        run_model(candidate, feeds, "compressed")
    except InternalError:
        try:
            run_model(reference, feeds, "reference")
        except LtcError:
            return
        raise


def load_check(model: Runnable, reference: Runnable | None = None) -> None:
    """ONNX Runtime can load ``model`` (the check that runs even when verification is off).

    Without ``reference``, ``model`` is the user's (failure: :class:`LtcError`). With it, ``model`` is
    ltc's output: if it fails to load while ``reference`` loads, that is :class:`InternalError`; if
    the reference fails too, the input is what is wrong.

    A ModelProto is first loaded as its structure (:func:`light_copy`: weights of more than a few
    values become typed graph inputs, so ONNX Runtime resolves the graph, its types and shapes and
    creates every kernel without copying or re-laying out the weights): a few milliseconds instead of
    the cost of a full session. Only if that fails is the full model loaded, so the check never
    refuses a model that ONNX Runtime loads. (Weight data sizes are checked when a model is read, and
    the tensors ltc writes are made from arrays of their own shape.)"""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, onnx.ModelProto):
            try:
                _session(light_copy(model).SerializeToString(), tmp, "reference" if reference is None else "compressed",
                         prepack=False)
                return
            except (LtcError, InternalError):
                pass  # the full load below decides, and says why
        if reference is None:
            _session(model, tmp, "reference")
            return
        try:
            _session(model, tmp, "compressed")
        except InternalError:
            _session(reference, tmp, "reference")
            raise


def verify(reference: Runnable, candidate: Runnable, feeds: dict[str, np.ndarray],
           rtol: float = RTOL, atol: float = ATOL, inputs: str = "random", optimized: bool = True) -> Verification:
    """Run both models one after the other (one session alive at a time) and compare every output.

    An output passes when its largest difference is at most ``atol + rtol * max|reference|``: float32
    rounding grows with the magnitude of the terms summed, not with each element, so an element-wise
    test refuses exact compressions of wide layers (an output near zero next to values of 1e3 carries
    the rounding of the 1e3 terms). NaN and infinities must match position by position.

    The reference runs with ONNX Runtime's graph optimizations off (the input as written). With
    ``optimized`` the candidate runs the way users run it, optimizations on; if that matches, the
    model is verified with one session each. If not, the candidate runs with optimizations off too:
    a mismatch there is a wrong model (``passed`` False); a match means the rewrite exposed an
    optimizer bug (ORT fuses a zero Pad into a MaxPool, whose padding is -inf, once the Pad has no
    other reader): ``optimizer_ok`` is False unless ORT optimizes the input into the same results.
    """
    ref = run_model(reference, feeds, "reference")
    result = Verification(True, rtol, atol, inputs=inputs)
    opt = None
    opt, opt_worst = None, float("inf")  # the optimized candidate's outputs and largest difference
    if optimized:  # the common case needs one run of the candidate: optimized, matching the reference
        with contextlib.suppress(InternalError):  # cannot load or run optimized: opt stays None
            opt = run_model(candidate, feeds, "compressed", optimize=True)
        if opt is not None:
            ok, outputs = _compare(ref, opt, rtol, atol)
            if ok:
                result.outputs = outputs
                result.optimizer_ok, result.optimized_max_abs = True, result.max_abs
                return result
            opt_worst = max((o["max_abs"] for o in outputs.values()), default=0.0)
    got = run_model(candidate, feeds, "compressed")
    result.passed, result.outputs = _compare(ref, got, rtol, atol)
    if optimized and result.passed:  # exact, but not as ORT optimizes it: is that ORT on the input too?
        result.optimizer_ok = _optimizer_verdict(reference, feeds, opt, rtol, atol)
        result.optimized_max_abs = opt_worst
    return result


def _optimizer_verdict(reference: Runnable, feeds: dict[str, np.ndarray], opt: dict[str, np.ndarray] | None,
                       rtol: float, atol: float) -> bool | None:
    """The optimized candidate failed (``opt`` None: it did not load or run) or differed from the
    exact reference: True if ORT optimizes the input into the same results, None when the optimizer
    fails on the input too (no finding about ltc's output), else False."""
    try:
        ref_opt = run_model(reference, feeds, "reference", optimize=True)
    except LtcError:
        return None
    return opt is not None and _compare(ref_opt, opt, rtol, atol)[0]


def rtol_needed(max_abs: float, scale: float, atol: float) -> float:
    """The smallest rtol with which ``max_abs <= atol + rtol * scale`` holds (inf if none does)."""
    if max_abs <= atol:
        return 0.0
    if scale <= 0 or not math.isfinite(max_abs):
        return math.inf
    return (max_abs - atol) / scale


def _compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol: float,
             atol: float) -> tuple[bool, dict[str, dict]]:
    passed, outputs = True, {}
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            outputs[name] = {"max_abs": float("inf"), "max_rel": float("inf"), "passed": False,
                             "expected_shape": list(r.shape), "shape": None if g is None else list(g.shape)}
            passed = False
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        same_nonfinite = ~np.isfinite(r64) & ((r64 == g64) | (np.isnan(r64) & np.isnan(g64)))
        r64, g64 = np.where(same_nonfinite, 0.0, r64), np.where(same_nonfinite, 0.0, g64)
        diff = np.abs(r64 - g64)
        diff = np.where(np.isnan(diff), np.inf, diff)
        max_abs = float(diff.max()) if diff.size else 0.0
        with np.errstate(invalid="ignore"):  # (inf / inf where an infinity differs: counted as inf)
            rel = np.nan_to_num(diff / np.maximum(np.abs(r64), 1e-12), nan=np.inf)
        max_rel = float(rel.max()) if diff.size else 0.0
        finite = np.abs(r64[np.isfinite(r64)])  # (an infinity left in the reference is no scale: it
        scale = float(finite.max()) if finite.size else 0.0  # would make every difference pass)
        tolerance = atol + rtol * scale
        ok = max_abs <= tolerance
        ulp = float(np.spacing(np.asarray(scale, dtype=r.dtype))) if r.dtype.kind == "f" else 0.0
        outputs[name] = {"max_abs": max_abs, "max_rel": max_rel, "scale": scale, "tolerance": tolerance,
                         "rtol_needed": rtol_needed(max_abs, scale, atol), "passed": ok, "ulp": ulp}
        passed &= ok
    return passed, outputs
