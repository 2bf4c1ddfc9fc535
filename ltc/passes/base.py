"""The pass contract: ``call(model) -> PassResult``, invariants checked before and after, composable.

After onnx-ir's pass infrastructure: a pass is functional (it never modifies its input model: checked
on every call), ``requires`` refuses inputs the pass cannot take (:class:`LtcError`, the input's
fault), ``ensures`` checks the pass's own postconditions (:class:`InternalError`, ltc's fault), and
each pass reports a typed result (``PassResult.info``); ``details`` is its plain-dict view.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass

import onnx

from ltc.errors import InternalError, LtcError, first_line


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    info: object = None  # the pass's typed result: a dataclass, or an object with ``to_dict()``

    @property
    def details(self) -> dict:
        info = self.info
        if info is None:
            return {}
        if hasattr(info, "to_dict"):
            return info.to_dict()
        if is_dataclass(info):
            return asdict(info)
        return dict(info)


VALUES_CHECKED = 16 << 20  # bytes of initializers up to which the purity check reads their values too


def fingerprint(model: onnx.ModelProto) -> tuple:
    """A cheap summary of a model's structure and tensor headers (names, shapes, types), and of the
    weights' values while they hold at most :data:`VALUES_CHECKED` bytes, to catch a pass that edits
    its input in place without hashing gigabytes of weights (above that, headers only)."""
    g = model.graph
    parts = [n.SerializeToString() for n in g.node]
    parts += [x.SerializeToString() for x in (*g.input, *g.output, *model.opset_import)]
    if sum(t.ByteSize() for t in g.initializer) <= VALUES_CHECKED:  # (ByteSize copies nothing)
        parts += [t.SerializeToString() for t in g.initializer]
    return (hash(b"\0".join(parts)), [(t.name, tuple(t.dims), t.data_type) for t in g.initializer])


_CALLS = threading.local()  # how deep the passes running in this thread are nested


class Pass:
    """A model-to-model transformation. Subclasses implement :meth:`call`.

    Calling the pass object runs ``requires``, ``call`` and ``ensures``, and checks that the input
    model was not modified (the outermost pass of a nest checks: its input is the caller's model).
    """

    name = "pass"

    def requires(self, model: onnx.ModelProto) -> None:
        if not model.graph.node:
            raise LtcError(f"{self.name}: the model has no nodes")

    def ensures(self, result: PassResult) -> None:
        names = {i.name for i in result.model.graph.initializer}
        produced = {o for n in result.model.graph.node for o in n.output}
        produced |= {i.name for i in result.model.graph.input} | names
        for o in result.model.graph.output:
            if o.name not in produced:
                raise InternalError(f"{self.name}: graph output '{o.name}' is no longer produced")

    def call(self, model: onnx.ModelProto) -> PassResult:
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        self.requires(model)
        outermost = not getattr(_CALLS, "depth", 0)  # (a pass inside another: the outer one checks its input)
        before = fingerprint(model) if outermost else None
        _CALLS.depth = getattr(_CALLS, "depth", 0) + 1
        try:
            result = self.call(model)
        finally:
            _CALLS.depth -= 1
        if outermost and fingerprint(model) != before:
            raise InternalError(f"{self.name}: the pass modified its input model")
        self.ensures(result)
        return result


@dataclass
class SequenceInfo:
    steps: list[tuple[str, PassResult]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {name: r.details for name, r in self.steps}


class Sequential(Pass):
    """Run passes in order; the result is modified if any pass modified it. Any error names the pass:
    input errors stay :class:`LtcError`, anything else becomes :class:`InternalError`."""

    name = "sequential"

    def __init__(self, *passes: Pass):
        self.passes = passes

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        info = SequenceInfo()
        for p in self.passes:
            try:
                r = p(model)
            except (LtcError, InternalError) as exc:
                raise type(exc)(f"{p.name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a pass's bug: name it, keep the cause
                raise InternalError(f"{p.name}: {type(exc).__name__}: {first_line(exc)}") from exc
            model, modified = r.model, modified or r.modified
            info.steps.append((p.name, r))
        return PassResult(model, modified, info)


@dataclass
class RepeatInfo:
    steps: list[PassResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"steps": [r.details for r in self.steps]}


class PassManager(Pass):
    """Run ``passes`` (one pass, or several in order: a :class:`Sequential`) at most ``steps`` times;
    with ``early_stop``, stop after the first round that modifies nothing (a fixed point). As onnx-ir's
    ``PassManager(passes, steps, early_stop)``; ``max_steps`` is the old name of ``steps``."""

    name = "pass-manager"

    def __init__(self, passes: Pass | Sequence[Pass], steps: int = 4, early_stop: bool = True,
                 max_steps: int | None = None):
        if max_steps is not None:
            warnings.warn("PassManager(max_steps=...) is now steps=...", DeprecationWarning, stacklevel=2)
            steps = max_steps
        self.inner = passes if isinstance(passes, Pass) else Sequential(*passes)
        self.steps = steps
        self.early_stop = early_stop

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        info = RepeatInfo()
        for _ in range(self.steps):
            r = self.inner(model)
            info.steps.append(r)
            model, modified = r.model, modified or r.modified
            if self.early_stop and not r.modified:
                break
        return PassResult(model, modified, info)
