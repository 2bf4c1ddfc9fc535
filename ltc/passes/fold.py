"""Fold constant subgraphs into initializers before the channel analysis.

Exporters that do not fold constants (torch's ``do_constant_folding=False``, some converters) hand
weights, Reshape targets, Slice bounds and Resize scales over as chains of Constant, Unsqueeze,
Concat, Transpose, Cast... The channel rules read initializers and Constant nodes; behind a chain
they see a computed tensor and freeze. :class:`FoldConstants` evaluates every node whose inputs are
all constant, with ONNX Runtime (the values are those the runtime computes), and replaces the chain
by initializers, so every export setting reaches the analysis alike.

Not folded: nodes whose outputs are graph outputs, ops of other domains, non-deterministic ops,
ops with subgraphs or sequence/optional values, and results larger than ``max_elements`` (64M values) or than
twice what they read (a ConstantOfShape or an Expand that would store a big tensor in the file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ltc.passes.base import Pass, PassResult
from ltc.passes.shapes import ShapeValues, drop_unread, inferred_dims, small_constants

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

    def __init__(self, max_elements: int = 1 << 26):
        self.max_elements = max_elements

    def call(self, model: onnx.ModelProto) -> PassResult:
        g = model.graph
        known = shape_facts(model)
        excluded: set[int] = set()
        for _ in range(8):  # a result too large excludes its node and the selection runs again
            fold, boundary = self._select(g, excluded, known)
            if not boundary:
                return PassResult(model, False, FoldInfo(0, 0))
            computed = [g.node[i] for i in fold if not all(o in known for o in g.node[i].output)]
            values = self._evaluate(model, computed, [b for b in boundary if b not in known], known)
            if values is None:
                return PassResult(model, False, FoldInfo(0, 0))
            values.update({b: known[b] for b in boundary if b in known})
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
    def _select(g: onnx.GraphProto, excluded: set[int], known: dict) -> tuple[list[int], list[str]]:
        """Nodes computed from constants only (in graph order; shape reads whose values inference
        knows count as constants), and the tensors of theirs that a node left in the graph reads."""
        constant = {t.name for t in g.initializer} | set(known)
        ints = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        integral = {t.name for t in g.initializer if t.data_type in ints}
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                constant.add(n.output[0])
                value = next((a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR), None)
                if value is None or value.data_type in ints:  # (value_int(s) attributes are integers too)
                    integral.add(n.output[0])
        graph_outputs = {o.name for o in g.output}
        fold: list[int] = []
        for i, n in enumerate(g.node):
            if n.output and all(o in known for o in n.output) and i not in excluded:
                fold.append(i)
                continue
            if n.op_type == "Identity" and n.input and n.input[0] in constant and n.input[0] not in integral:
                constant.add(n.output[0])  # the exporters' dedup of equal weights: kept (no copy), read through
                continue  # (shapes and axes do fold: shape inference does not see through Identity)
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
        out.graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in boundary)
        drop_unread(out.graph, {o for i in fold for o in g.node[i].output})
        return out

    @staticmethod
    def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str],
                  known: dict | None = None) -> dict | None:
        """The ``outputs`` of ``nodes`` (all inputs constant or ``known``), computed by ONNX Runtime;
        None if it cannot (the chain then stays as it is)."""
        import onnxruntime as ort

        if not outputs:
            return {}
        known = known or {}
        g = model.graph
        needed = {x for n in nodes for x in n.input if x}
        sub = onnx.ModelProto()
        sub.ir_version = model.ir_version
        sub.opset_import.extend(model.opset_import)
        sg = sub.graph
        sg.name = "fold"
        through = [n for n in g.node if n.op_type == "Identity" and n.output and n.output[0] in needed]
        needed |= {n.input[0] for n in through}
        constants = [n for n in g.node if n.op_type == "Constant" and any(o in needed for o in n.output)]
        sg.node.extend(constants)
        sg.node.extend(through)
        sg.node.extend(nodes)
        sg.initializer.extend(t for t in g.initializer if t.name in needed)
        sg.initializer.extend(numpy_helper.from_array(known[x], x) for x in sorted(needed) if x in known)
        sg.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        try:
            sess = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            return dict(zip(outputs, sess.run(outputs, {}), strict=True))
        except Exception:  # noqa: BLE001 - ORT's own types; folding is an optimisation, never required
            return None


def shape_facts(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of shape reads that shape inference knows: ``Shape(x)`` (with ``start``/``end``) when
    every dimension it returns is a static number, and a ``Gather`` or ``Slice`` with constant indices
    or bounds of a ``Shape(x)`` that picks only static dimensions (``x.size(1)`` in a model with a
    dynamic batch). Exact: an input of another shape is refused by the runtime. A channel count read
    this way becomes the original model's number, which is what the original computes; whatever
    ties a shape to the channels (Reshape targets, Slice bounds) is a constant the rules rewrite."""
    g = model.graph
    shapes_of = [n for n in g.node if n.op_type == "Shape" and n.domain in ("", "ai.onnx")]
    if not shapes_of or not _reads_past_the_batch(g, shapes_of):
        return {}
    values_of = ShapeValues(g, inferred_dims(model))
    shape_outputs = {n.output[0] for n in shapes_of}
    known: dict[str, np.ndarray] = {}
    for n in g.node:
        if not (n.op_type == "Shape" or (n.op_type in ("Gather", "Slice") and n.input and n.input[0] in shape_outputs)):
            continue
        values = values_of.entries(n.output[0])  # (an int per static dimension, a symbol otherwise)
        if not values or not all(isinstance(v, int) and v > 0 for v in values):
            continue
        shape = values_of.consts[n.input[1]].shape if n.op_type == "Gather" else (len(values),)
        known[n.output[0]] = np.array(values, dtype=np.int64).reshape(shape)
    return known


def _reads_past_the_batch(g: onnx.GraphProto, shapes_of: list[onnx.NodeProto]) -> bool:
    """Whether some Shape read may pick a dimension other than the first (``x.view(x.size(0), -1)``
    reads only the batch, which is symbolic: no shape inference is worth running for it)."""
    small = small_constants(g, 4)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    for n in shapes_of:
        if next((a.i for a in n.attribute if a.name == "start"), 0) != 0:
            return True
        for r in readers.get(n.output[0], []):
            if r.op_type == "Gather" and len(r.input) == 2 and r.input[1] in small:
                if np.any(np.ravel(small[r.input[1]]) != 0):
                    return True
            elif r.op_type == "Slice" and len(r.input) >= 3 and r.input[1] in small and r.input[2] in small:
                if np.ravel(small[r.input[1]]).tolist() != [0] or np.ravel(small[r.input[2]]).tolist() != [1]:
                    return True
            else:
                return True
    return False
