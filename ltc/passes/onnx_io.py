"""Loading, shape inference and atomic saving of ONNX models (external data and >2 GB included)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ltc.errors import LtcError

TWO_GB = 2**31 - 1
# Initializers at most this many elements keep their values during shape inference, so that
# Reshape targets and other shape constants propagate; larger ones are passed as typed inputs only.
_SMALL_INITIALIZER = 64


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) or raise a one-line :class:`LtcError`.

    ``model.ltc_external_data`` is not settable on a protobuf, so whether the file stored its weights
    externally is kept in the module-level ``EXTERNAL`` set, keyed by the model's id.
    """
    path = Path(path)
    if not path.exists():
        raise LtcError(f"{path}: no such file; pass the path of an .onnx model")
    if path.is_dir():
        raise LtcError(f"{path}: is a directory; pass the path of an .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        if external:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LtcError(
            f"{path}: not a readable ONNX model ({first}); check that the file is complete and is "
            "an ONNX protobuf (re-export it if it was truncated)"
        ) from None
    if not model.graph.node:
        raise LtcError(f"{path}: not an ONNX model (no graph nodes found); pass an exported .onnx file")
    if external:
        EXTERNAL.add(id(model))
    return model


EXTERNAL: set[int] = set()


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model`` was loaded by :func:`load_model` from a file with external data."""
    return id(model) in EXTERNAL


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size, counting initializer data whether stored inline or externally."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    del rest.graph.initializer[:]
    return total + rest.ByteSize()


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model: the .onnx file plus ``<name>.data`` if it stores its weights there."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model``'s graph structure with inferred value_info.

    Large initializers are replaced by typed graph inputs so inference never copies weights: it
    costs the same for a 10 MB and a 10 GB model.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    input_names = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n <= _SMALL_INITIALIZER and init.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in input_names:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; inference is best-effort
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LtcError(f"shape inference failed ({first}); is the model valid? try onnx.checker") from None


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike]) -> Path:
    """Refuse to write over an input or into a directory that cannot be written."""
    out = Path(out)
    for src in inputs:
        if src is not None and out.resolve() == Path(src).resolve():
            raise LtcError(f"{out}: output path equals an input; choose another -o path (ltc never overwrites its input)")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise LtcError(f"{out}: directory {parent} does not exist; create it or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise LtcError(f"{out}: directory {parent} is not writable; choose another -o path")
    return out


def save_model(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool | None = None) -> None:
    """Write ``model`` to ``out`` atomically (temp file, then rename).

    ``external_data=None`` chooses: external data (``<out>.data``) when the model is over 2 GB.
    """
    out = Path(out)
    if external_data is None:
        external_data = model_size_bytes(model) > TWO_GB
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    data_name = out.name + ".data"
    tmp_data = out.parent / f".{data_name}.tmp"
    try:
        if external_data:
            # onnx writes the data file relative to the model file's folder under `location`.
            onnx.save_model(
                model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                location=tmp_data.name, size_threshold=1024,
            )
            _relocate_external(tmp, tmp_data.name, data_name)
            os.replace(tmp_data, out.parent / data_name)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        for p in (tmp, tmp_data):
            if os.path.exists(p):
                os.unlink(p)
        raise


def _relocate_external(model_path: str, old: str, new: str) -> None:
    """Point external-data references at the final data file name (before the rename)."""
    m = onnx.load(model_path, load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as f:
        f.write(m.SerializeToString())
