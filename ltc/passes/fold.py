"""Fold constant subgraphs into initializers before the channel analysis.

Exporters that do not fold constants (torch's ``do_constant_folding=False``, some converters) hand
weights, Reshape targets, Slice bounds and Resize scales over as chains of Constant, Unsqueeze,
Concat, Transpose, Cast... The channel rules read initializers and Constant nodes; behind a chain
they see a computed tensor and freeze. :class:`FoldConstants` evaluates every node whose inputs are
all constant, with ONNX Runtime (the values are those the runtime computes), and replaces the chain
by initializers, so every export setting reaches the analysis alike.

Not folded: nodes whose outputs are graph outputs, ops of other domains, non-deterministic ops,
ops with subgraphs or sequence/optional values, and results larger than ``max_elements`` or than
what they read (a ConstantOfShape or an Expand that would store a big tensor in the file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ltc.passes.base import Pass, PassResult

NOT_FOLDED = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "Dropout", "If", "Loop", "Scan", "SequenceMap", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
    "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence", "Optional",
    "OptionalGetElement", "OptionalHasElement", "Constant",
})


@dataclass
class FoldInfo:
    folded_nodes: int
    new_initializers: int


def _elements(t: onnx.TensorProto) -> int:
    return math.prod(t.dims)


class FoldConstants(Pass):
    """Replace every node computed from constants only by initializers holding its outputs."""

    name = "fold-constants"

    def __init__(self, max_elements: int = 1 << 20):
        self.max_elements = max_elements

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        excluded: set[int] = set()
        for _ in range(8):  # a result too large excludes its node and the selection runs again
            fold, boundary = self._select(g, excluded)
            if not boundary:
                return PassResult(model, False, FoldInfo(0, 0))
            values = self._evaluate(model, [g.node[i] for i in fold], boundary)
            if values is None:
                return PassResult(model, False, FoldInfo(0, 0))
            sizes = {t.name: _elements(t) for t in g.initializer}
            read = sum(sizes.get(x, 0) for i in fold for x in g.node[i].input)
            limit = min(self.max_elements, max(4096, 2 * read))
            producer = {o: i for i in fold for o in g.node[i].output}
            too_big = {producer[name] for name, v in values.items() if not isinstance(v, np.ndarray) or v.size > limit}
            if not too_big:
                return PassResult(self._rewrite(model, fold, boundary, values), True, FoldInfo(len(fold), len(boundary)))
            excluded |= too_big
        return PassResult(model, False, FoldInfo(0, 0))

    @staticmethod
    def _select(g: onnx.GraphProto, excluded: set[int]) -> tuple[list[int], list[str]]:
        """Nodes computed from constants only (in graph order), and the tensors of theirs that a node
        left in the graph reads."""
        constant = {t.name for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                constant.add(n.output[0])
        graph_outputs = {o.name for o in g.output}
        fold: list[int] = []
        for i, n in enumerate(g.node):
            if (i in excluded or n.domain not in ("", "ai.onnx") or n.op_type in NOT_FOLDED or not n.input
                    or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
                    or any(o in graph_outputs for o in n.output)
                    or not all(x == "" or x in constant for x in n.input)):
                continue
            fold.append(i)
            constant.update(o for o in n.output if o)
        folded_outputs = {o for i in fold for o in g.node[i].output if o}
        fold_set = set(fold)
        boundary = sorted({x for i, n in enumerate(g.node) if i not in fold_set for x in n.input
                           if x in folded_outputs})
        return fold, boundary

    @staticmethod
    def _rewrite(model: onnx.ModelProto, fold: list[int], boundary: list[str], values: dict) -> onnx.ModelProto:
        g = model.graph
        fold_set = set(fold)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        del out.graph.node[:]
        kept = [n for i, n in enumerate(g.node) if i not in fold_set]
        still_read = {x for n in kept for x in n.input} | {o.name for o in g.output}
        # Constant nodes whose only readers were folded go with them
        out.graph.node.extend(n for n in kept if n.op_type != "Constant" or any(o in still_read for o in n.output))
        keep_inits = [t for t in out.graph.initializer if t.name in still_read]
        del out.graph.initializer[:]
        out.graph.initializer.extend(keep_inits)
        out.graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in boundary)
        stale = {o for i in fold for o in g.node[i].output}
        keep_vi = [vi for vi in out.graph.value_info if vi.name not in stale]
        del out.graph.value_info[:]
        out.graph.value_info.extend(keep_vi)
        return out

    @staticmethod
    def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str]) -> dict | None:
        """The ``outputs`` of ``nodes`` (all inputs constant), computed by ONNX Runtime; None if it
        cannot (the chain then stays as it is)."""
        import onnxruntime as ort

        g = model.graph
        needed = {x for n in nodes for x in n.input if x}
        sub = onnx.ModelProto()
        sub.ir_version = model.ir_version
        sub.opset_import.extend(model.opset_import)
        sg = sub.graph
        sg.name = "fold"
        constants = [n for n in g.node if n.op_type == "Constant" and any(o in needed for o in n.output)]
        sg.node.extend(constants)
        sg.node.extend(nodes)
        sg.initializer.extend(t for t in g.initializer if t.name in needed)
        sg.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        try:
            sess = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            return dict(zip(outputs, sess.run(outputs, {}), strict=True))
        except Exception:  # noqa: BLE001 - ORT's own types; folding is an optimisation, never required
            return None
