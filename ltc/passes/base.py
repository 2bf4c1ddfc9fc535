"""The pass contract: ``call(model) -> PassResult``, invariants checked before and after, composable."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ltc.errors import InternalError, LtcError


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    details: dict = field(default_factory=dict)


class Pass:
    """A model-to-model transformation. Subclasses implement :meth:`call`.

    ``requires`` and ``ensures`` check invariants before and after; calling the pass object runs all
    three. Passes never modify their input model: they return a new one.
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
        result = self.call(model)
        self.ensures(result)
        return result


class Sequential(Pass):
    """Run passes in order; the result is modified if any pass modified it. Errors name the pass."""

    name = "sequential"

    def __init__(self, *passes: Pass):
        self.passes = passes

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        details: dict = {}
        for p in self.passes:
            try:
                r = p(model)
            except (LtcError, InternalError) as exc:
                raise type(exc)(f"{p.name}: {exc}") from None
            model, modified = r.model, modified or r.modified
            details[p.name] = r.details
        return PassResult(model, modified, details)


class PassManager(Pass):
    """Repeat a pass (or sequence) until it stops modifying the model, at most ``max_steps`` times."""

    name = "pass-manager"

    def __init__(self, inner: Pass, max_steps: int = 4):
        self.inner = inner
        self.max_steps = max_steps

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        steps = []
        for _ in range(self.max_steps):
            r = self.inner(model)
            steps.append(r.details)
            if not r.modified:
                break
            model, modified = r.model, True
        return PassResult(model, modified, {"steps": steps})
