"""Loading, shape inference and atomic saving of ONNX models (external data and >2 GB included)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import numpy_helper

from ltc.errors import LtcError, first_line
from ltc.fileio import atomic_file, check_input_file, write_bytes_atomic

TWO_GB = 2**31 - 1
# Initializers at most this many elements keep their values during shape inference, so that
# Reshape targets and other shape constants propagate; larger ones are passed as typed inputs only.
_SMALL_INITIALIZER = 64


@dataclass
class ModelSource:
    """Where a model came from: its file and the external-data files it reads."""

    path: Path
    data_files: list[Path] = field(default_factory=list)

    @property
    def external(self) -> bool:
        return bool(self.data_files)

    @property
    def files(self) -> list[Path]:
        return [self.path, *self.data_files]

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def read_model(path: str | os.PathLike, keep_initializer_inputs: bool = False) -> tuple[onnx.ModelProto, ModelSource]:
    """Load and validate an ONNX model and its external data; a one-line :class:`LtcError` if it is
    not a model ltc can work on (see :func:`check_model_structure`)."""
    path = check_input_file(path, "model file", "pass the path of an .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, TypeError) as exc:
        raise LtcError(
            f"{path}: not a readable ONNX model ({first_line(exc)}); check that the file is complete and is "
            "an ONNX protobuf (re-export it if it was truncated)"
        ) from None
    if not model.graph.node:
        raise LtcError(f"{path}: the model has no nodes (or is not an ONNX model): nothing to work on; pass an "
                       "exported .onnx file")
    data_files = load_external_data(model, path)
    check_model_structure(model, str(path), keep_initializer_inputs)
    return model, ModelSource(path, data_files)


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model file and the external-data files it names (for output-collision checks); nothing is
    validated or loaded here."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by read_model
        return [path]
    locations = {e.value for t in _all_tensors(model.graph) for e in t.external_data if e.key == "location"}
    return [path, *(path.parent / loc for loc in sorted(locations) if "\0" not in loc)]  # NUL: read_model refuses


def load_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Read every external tensor of ``model`` into memory; returns the files read.

    Refused: a location that is absolute, leaves the model's folder, is a symlink or not a regular
    file, and offsets/lengths outside the file or disagreeing with the tensor's shape (checked
    before anything is allocated)."""
    folder = path.resolve().parent
    files: dict[Path, int] = {}
    for t in _all_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        where = f"{path}: tensor '{t.name}' stores its data in {location!r}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise LtcError(f"{where}, which is not a file inside the model's folder; ltc reads external data "
                           "only from beside the model (re-save it with relative locations)")
        if "\0" in location:
            raise LtcError(f"{path}: tensor '{t.name}' names its data file with a NUL byte; the model is corrupt")
        data = folder / location
        if data.is_symlink():
            raise LtcError(f"{where}, which is a symlink; ltc does not follow links out of the model's folder "
                           "(copy the data file there)")
        if folder not in data.resolve().parents:
            raise LtcError(f"{where}, which is outside the model's folder; move the data file beside the model")
        check_input_file(data, "external data file", "it must sit beside the model, as saved")
        size = files.setdefault(data, data.stat().st_size)
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise LtcError(f"{where} with a non-integer offset or length; the model is corrupt") from None
        expected = _expected_bytes(t)
        if offset < 0 or length < 0:
            raise LtcError(f"{where} with a negative offset or length ({offset}, {length}); the model is corrupt")
        if offset + length > size:
            raise LtcError(f"{where} at bytes {offset}..{offset + length}, past the end of that file ({size} "
                           "bytes); the data file is truncated or belongs to another model")
        if expected is not None and length != expected:
            raise LtcError(f"{where}: {length} bytes for shape {list(t.dims)}, which needs {expected}; the "
                           "model is corrupt")
        with open(data, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return list(files)


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and Constant-node tensors of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
             onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
             onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
             onnx.TensorProto.BOOL: 1}
# Typed repeated fields that hold one entry per element for these types (ONNX's TensorProto rules).
_TYPED_FIELD = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
                onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
                onnx.TensorProto.INT32: "int32_data", onnx.TensorProto.INT16: "int32_data",
                onnx.TensorProto.INT8: "int32_data", onnx.TensorProto.UINT16: "int32_data",
                onnx.TensorProto.UINT8: "int32_data", onnx.TensorProto.BOOL: "int32_data",
                onnx.TensorProto.FLOAT16: "int32_data", onnx.TensorProto.BFLOAT16: "int32_data",
                onnx.TensorProto.UINT32: "uint64_data", onnx.TensorProto.STRING: "string_data"}


def _expected_bytes(t: onnx.TensorProto) -> int | None:
    size = _ITEMSIZE.get(t.data_type)
    return None if size is None else math.prod(t.dims) * size


def _check_tensor(t: onnx.TensorProto, label: str, where: str) -> None:
    if any(d < 0 for d in t.dims):
        raise LtcError(f"{label}: {where} '{t.name}' has a negative dimension {list(t.dims)}; the model is corrupt")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return
    n = math.prod(t.dims)
    if t.HasField("raw_data"):
        expected = _expected_bytes(t)
        if expected is not None and len(t.raw_data) != expected:
            raise LtcError(f"{label}: {where} '{t.name}' has shape {list(t.dims)} ({expected} bytes) but "
                           f"holds {len(t.raw_data)} bytes of data; the model is corrupt (re-export it)")
        return
    typed = _TYPED_FIELD.get(t.data_type)
    if typed is not None:
        held = len(getattr(t, typed))
        if held != n and not (held == 0 and n == 0):
            raise LtcError(f"{label}: {where} '{t.name}' has shape {list(t.dims)} ({n} values) but holds "
                           f"{held}; the model is corrupt (re-export it)")
    elif n and not any(f.name.endswith("_data") for f, _value in t.ListFields()):
        raise LtcError(f"{label}: {where} '{t.name}' declares shape {list(t.dims)} ({n:,} values) but holds no "
                       "data; the model is corrupt (re-export it)")


MIN_OPSET = 13


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Initializers that are also graph inputs (IR < 4 style; older converters write them): weights a
    caller may replace at run time."""
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name in inits]


def without_initializer_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with its initializers dropped from the graph inputs (treated as the constants they
    hold, as onnxruntime's ``remove_initializer_from_input`` tool does), and their names; ``model``
    itself when there are none. The input is never changed."""
    names = initializer_inputs(model)
    if not names:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [vi for vi in out.graph.input if vi.name not in set(names)]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    return out, names


def check_model_structure(model: onnx.ModelProto, label: str = "model", keep_initializer_inputs: bool = False) -> None:
    """What ltc needs of a model before it analyses it; each failure is a one-line :class:`LtcError`.

    Checked: the ONNX opset (13 or newer: ltc's rules follow opset-13 semantics) and IR version (4 or
    newer), unique tensor names (single assignment), no cycles and no undefined inputs, initializer
    data that fills its shape, and graph inputs without zero-sized dimensions.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise LtcError(f"{label}: the model imports no default ONNX opset; re-export it with opset >= {MIN_OPSET}")
    if opset < MIN_OPSET or model.ir_version < 4:
        raise LtcError(f"{label}: opset {opset} / IR version {model.ir_version} is older than ltc supports "
                       f"(opset >= {MIN_OPSET}, IR >= 4); convert it first with "
                       f"onnx.version_converter.convert_version(model, {MIN_OPSET}) or re-export it")
    g = model.graph
    if len(g.sparse_initializer):
        raise LtcError(f"{label}: the model stores {len(g.sparse_initializer)} weight(s) as sparse initializers "
                       f"('{g.sparse_initializer[0].values.name}'), which ltc does not read; store them dense "
                       "(onnx.numpy_helper.to_array of the dense tensor) and re-save")
    overridable = initializer_inputs(model)
    if overridable and keep_initializer_inputs:
        raise LtcError(f"{label}: initializer(s) {overridable[:4]} are also graph inputs, and you asked to keep "
                       "them overridable (weights a caller may replace at run time), which ltc cannot shrink; "
                       "drop --keep-initializer-inputs to treat them as constants")
    initializers = {id(t) for t in g.initializer}
    for t in _all_tensors(g):
        _check_tensor(t, label, "initializer" if id(t) in initializers else "constant")
    for vi in g.input:
        dims = vi.type.tensor_type.shape.dim
        if any(d.HasField("dim_value") and d.dim_value <= 0 for d in dims):
            raise LtcError(f"{label}: graph input '{vi.name}' has a zero-sized dimension "
                           f"{[d.dim_value if d.HasField('dim_value') else d.dim_param for d in dims]}; "
                           "give it a real shape (or a symbolic batch) and re-export")
    _check_dataflow(g, label, set())


def _check_dataflow(g: onnx.GraphProto, label: str, outer: set[str]) -> None:
    """Single assignment, every input defined, no cycles; subgraphs may read the outer scope."""
    defined: dict[str, str] = {}

    def define(name: str, what: str) -> None:
        if not name:
            return
        if name in defined:
            raise LtcError(f"{label}: tensor name '{name}' is defined twice ({defined[name]} and {what}); an ONNX "
                           "graph assigns each name once (the model is malformed)")
        defined[name] = what

    init_names = {t.name for t in g.initializer}
    for t in g.initializer:
        define(t.name, "an initializer")
    for t in g.sparse_initializer:
        define(t.values.name, "a sparse initializer")
    for vi in g.input:
        if vi.name not in init_names:
            define(vi.name, "a graph input")
    for i, node in enumerate(g.node):
        for o in node.output:
            define(o, f"output of node {node.name or i} ({node.op_type})")
    available = set(init_names) | {t.values.name for t in g.sparse_initializer} | {vi.name for vi in g.input}
    scope = outer | set(defined)
    pending = list(range(len(g.node)))
    # Kahn's algorithm over the nodes (ONNX wants them sorted; gs re-sorts, so order is not required).
    waiting: dict[str, list[int]] = {}
    missing = [0] * len(g.node)
    ready = []
    for i in pending:
        node = g.node[i]
        needs = {x for x in _node_reads(node) if x and x not in available and x not in outer}
        for x in needs:
            if x not in scope:
                raise LtcError(f"{label}: node {node.name or i} ({node.op_type}) reads '{x}', which no node, "
                               "input or initializer defines; the model is malformed")
            waiting.setdefault(x, []).append(i)
        missing[i] = len(needs)
        if not needs:
            ready.append(i)
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for o in g.node[i].output:
            for j in waiting.pop(o, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if done < len(g.node):
        stuck = next(g.node[i] for i in pending if missing[i] > 0)
        raise LtcError(f"{label}: the graph has a cycle (node {stuck.name or stuck.op_type} depends on its own "
                       "output); the model is malformed")
    for out in g.output:
        if out.name not in scope:
            raise LtcError(f"{label}: graph output '{out.name}' is produced by no node, input or initializer; the "
                           "model is malformed")
    for node in g.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                _check_dataflow(sub, label, scope)


def _node_reads(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads: its inputs and what its subgraphs read from the enclosing scope."""
    reads = set(node.input)
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            reads |= outer_reads(sub)
    return reads


def outer_reads(g: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself: reads from the enclosing scope."""
    local = {t.name for t in g.initializer} | {vi.name for vi in g.input}
    local |= {o for n in g.node for o in n.output}
    reads: set[str] = set()
    for n in g.node:
        reads |= _node_reads(n)
    return {r for r in reads if r and r not in local}


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the initializers and nodes (all but a few bytes of framing), external data
    counted by its length. Per-tensor sizes: ``ModelProto.ByteSize()`` is 10x slower on big models,
    and a tensor's ``ByteSize()`` encodes it: raw data of a fixed-size type counts as its shape's bytes
    (what :func:`check_model_structure` checks it holds) plus a bound on the header."""
    total = sum(n.ByteSize() for n in model.graph.node)
    for t in model.graph.initializer:
        raw = _expected_bytes(t) if t.HasField("raw_data") else None
        if raw is None:
            total += t.ByteSize()
        else:
            total += raw + len(t.name) + 11 * len(t.dims) + len(t.doc_string) + 32
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += next((int(e.value) for e in t.external_data if e.key == "length"), 0)
    return total


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``'s graph structure with large initializers replaced by typed graph inputs: shape
    inference and the checker then cost the same for a 10 MB and a 10 GB model."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    input_names = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if math.prod(init.dims) <= _SMALL_INITIALIZER and init.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(init)
        elif init.name not in input_names:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return light


# ops whose output 0 has input 0's shape and type, by the ONNX spec
SAME_SHAPE = frozenset({
    "GroupNormalization", "LayerNormalization", "InstanceNormalization", "BatchNormalization", "LpNormalization",
    "Softmax", "LogSoftmax", "Hardmax", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu",
    "Selu", "Celu", "Gelu", "HardSwish", "Mish", "Softplus", "Softsign", "ThresholdedRelu", "Clip", "Abs", "Neg",
    "Exp", "Log", "Sqrt", "Erf", "Sign", "Ceil", "Floor", "Reciprocal", "Identity", "Dropout",
})


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model``'s graph structure with inferred value_info (see :func:`light_copy`).

    ONNX's inference gives up on some nodes (GroupNormalization-21's function body, for one), and
    then on everything downstream. Where such a node keeps its input's shape by the spec
    (:data:`SAME_SHAPE`), it is read as an Identity (in a copy) and inference runs again: a chain of
    such nodes (a UNet's GroupNorms) resolves in one more round."""
    light = light_copy(model)
    del light.graph.value_info[:]
    swapped: set[int] = set()
    for _ in range(8):
        inferred = _infer(light)
        g = inferred.graph
        typed = {vi.name for vi in [*g.input, *g.value_info, *g.output] if vi.type.tensor_type.HasField("shape")}
        typed |= {t.name for t in g.initializer}
        swap = [i for i, n in enumerate(light.graph.node)
                if i not in swapped and n.domain in ("", "ai.onnx") and n.op_type in SAME_SHAPE and n.input
                and n.output and n.output[0] and n.output[0] not in typed and not any(n.output[1:])]
        if not swap:
            return inferred
        for i in swap:
            n = light.graph.node[i]
            n.CopyFrom(onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
        swapped.update(swap)
    return inferred


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; inference is best-effort
        raise LtcError(f"shape inference failed ({first_line(exc)}); is the model valid? try onnx.checker") from None


def checker_problem(model: onnx.ModelProto) -> str | None:
    """What ``onnx.checker`` finds wrong with ``model`` (weights aside), or None."""
    try:
        onnx.checker.check_model(light_copy(model))
    except Exception as exc:  # noqa: BLE001 - ValidationError and friends
        return first_line(exc)
    return None


def save_model(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool | None = None,
               serialized: bytes | None = None) -> None:
    """Write ``model`` to ``out`` atomically (exclusive temp files, then renames; see ltc.fileio).

    ``external_data=None`` chooses: external data (``<out>.data``) when the model is over 2 GB. Both
    files are written in full before either is renamed; the data file is renamed before the model
    that points at it.
    ``serialized``: ``model.SerializeToString()`` if the caller already has it.
    """
    out = Path(out)
    if external_data is None:
        external_data = model_size_bytes(model) > TWO_GB
    if not external_data:
        try:
            data = serialized if serialized is not None else model.SerializeToString()
        except (ValueError, EncodeError):
            raise LtcError(f"{out}: the model is over 2 GB; write it with --external-data") from None
        write_bytes_atomic(out, data)
        return
    data_name = out.name + ".data"
    with atomic_file(out) as model_file, atomic_file(out.with_name(data_name)) as data_file:
        restore = _externalize(model, data_file, data_name)
        try:
            model_file.write(model.SerializeToString())
        finally:
            restore()
        # both temporaries are complete here; the data file is renamed first, then the model


def _externalize(model: onnx.ModelProto, f, location: str, threshold: int = 1024):
    """Move initializer data of ``threshold`` bytes or more into ``f``; returns the undo function."""
    undo = []
    offset = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        in_raw = t.HasField("raw_data")
        raw = t.raw_data if in_raw else numpy_helper.to_array(t).tobytes()
        if len(raw) < threshold:
            continue
        original = None
        if not in_raw:  # typed fields: keep the whole tensor to restore it
            original = onnx.TensorProto()
            original.CopyFrom(t)
        pad = (-offset) % 64
        f.write(b"\0" * pad)
        offset += pad
        f.write(raw)
        undo.append((t, raw, original))
        t.ClearField("raw_data")
        for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(name)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        offset += len(raw)

    def restore() -> None:
        for t, raw, original in undo:
            if original is not None:
                t.CopyFrom(original)
            else:
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = raw

    return restore
