"""The rule registry: one :class:`Rule` per op type says how the op ties channel axes, what a
re-index must rewrite in it, and (for weight layers) its MACs.

A rule reads the node through a :class:`~ltc.passes.channels.NodeView` and records ties, records,
constants and evidence there. It checks first and refuses by raising :class:`Refuse` with a reason;
nothing it recorded is kept then, and every channel tensor the node touches is frozen with that
reason. A channel tensor the node reads that the rule neither tied, contracted, pinned nor declared
read is frozen too: an unrecognised reader never lets a channel go.

Rules live in a :class:`RuleTable`. ``compress``, ``inspect`` and the passes take one (``rules=``);
without it they use the default table, :data:`RULES`. A pipeline adds its own ops to a table of its
own with :meth:`RuleTable.with_rule` (custom ops, or a stricter rule for a built-in one), or to the
default table for the whole process with :func:`register_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from ltc.passes.channels import NodeView

NAN = float("nan")
ShapeOf = Callable[[gs.Tensor], "list | None"]


class Refuse(Exception):  # noqa: N818 - a rule's verdict, not an error
    """Raised by a rule to freeze every channel tensor of the node, with the reason."""


class Rule:
    """How one op (or family) touches channels. Subclasses implement :meth:`analyze`: read the node
    through the view (``v.x(i)``, ``v.need_x()``, ``v.value(i)``, ``v.shape(t)``), check, raise
    :class:`Refuse` if the op cannot be followed, then record (``v.new``, ``v.tie``, ``v.take``,
    ``v.record``, ``v.set_const``, ``v.pin``); see :class:`~ltc.passes.channels.NodeView`.

    A weight layer (a Conv, a Gemm: it owns filters, is reported per layer and counted in MACs)
    sets ``layer = True`` and, in :meth:`analyze`, also calls ``v.produce(y, zero)`` (its output and
    its all-zero filters), ``v.contract(...)`` (the input channels it sums over, with their weights)
    and, if that input is not input 0, ``v.layer_input(ct, size)``; it implements :meth:`macs`."""

    ops: tuple[str, ...] = ()
    layer: bool = False  # a weight layer: reported per layer, counted in MACs

    def analyze(self, v: NodeView) -> None:
        raise NotImplementedError

    def macs(self, node: gs.Node, shape: ShapeOf) -> int | None:
        """Multiply-accumulates per sample, for weight layers; None if the shapes are not known."""
        return None


ONNX_DOMAINS = ("", "ai.onnx")


def op_key(op_type: str, domain: str | None = "") -> str:
    """The rule table's key of an op: its type in the ONNX domain, ``domain::type`` in any other. A
    ``com.microsoft.nchwc::Conv`` is not a Conv (its tensors use a blocked channel layout), nor is a
    ``com.example::Relu`` a Relu: an op of another domain blocks unless a rule is registered for it."""
    return op_type if not domain or domain in ONNX_DOMAINS else f"{domain}::{op_type}"


def op_of(node: gs.Node) -> str:
    """``node``'s rule-table key (see :func:`op_key`): compare this, never ``node.op``, with an op type."""
    return op_key(node.op, getattr(node, "domain", None))


class RuleTable(dict):
    """Rules keyed by op: :func:`op_key` (``type`` in the ONNX domain, ``domain::type`` in another),
    so an op of another domain never gets a standard rule unless one is added for that domain."""

    def with_rule(self, op_type: str | Sequence[str], rule: Rule, domain: str = "") -> RuleTable:
        """A new table: this one with ``rule`` for ``op_type`` (one or several) of ``domain`` (default:
        the ONNX domain; ``"com.example::Op"`` names a domain too), replacing any rule it had there."""
        table = RuleTable(self)
        table.add(op_type, rule, domain)
        return table

    def add(self, op_type: str | Sequence[str], rule: Rule, domain: str = "") -> None:
        """:meth:`with_rule`, in place."""
        if not isinstance(rule, Rule):
            raise TypeError(f"rule must be an ltc.passes.rules.Rule, got {type(rule).__name__}")
        for op in [op_type] if isinstance(op_type, str) else op_type:
            dom, _, name = op.rpartition("::")
            self[op_key(name, dom or domain)] = rule

    def rule_for(self, node: gs.Node) -> Rule | None:
        """The rule of ``node``'s op, None if the table has none (the op then blocks)."""
        return self.get(op_of(node))


RULES = RuleTable()  # the default table: ltc's built-in rules, and what register_rule adds


def default_rules() -> RuleTable:
    """The default table (:data:`RULES`)."""
    return RULES


def rule_for(rules: dict[str, Rule], node: gs.Node) -> Rule | None:
    return rules.get(op_of(node))


def register_rule(op_type: str | Sequence[str], rule: Rule, domain: str = "") -> None:
    """Add ``rule`` for ``op_type`` of ``domain`` to the default table, for every later analysis in
    this process (see :meth:`RuleTable.with_rule` for a table of one pipeline's own). Replaces a
    built-in rule of that op type."""
    RULES.add(op_type, rule, domain)


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator for built-in rules: registers one instance under each of ``cls.ops``."""
    register_rule(cls.ops, cls())
    return cls


# --------------------------------------------------------------------------- helpers rules share
def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """Value of a constant input: an initializer, a Constant node's output, or Identity of either."""
    if t is None:
        return None
    if isinstance(t, gs.Constant):
        return constant_array(t)
    if len(t.inputs) == 1 and op_of(t.inputs[0]) == "Identity" and t.inputs[0].inputs:  # legacy exporter dedup
        return const_value(t.inputs[0].inputs[0])
    if len(t.inputs) == 1 and op_of(t.inputs[0]) == "Constant":
        v = t.inputs[0].attrs.get("value")
        if isinstance(v, gs.Constant):
            return np.asarray(v.values)
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in t.inputs[0].attrs:
                return np.asarray(t.inputs[0].attrs[key], dtype=dtype)
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in t.inputs[0].attrs:
                return np.asarray(list(t.inputs[0].attrs[key]), dtype=dtype)
    return None


def constant_array(c: gs.Constant) -> np.ndarray:
    """The constant's values without making graphsurgeon materialise them (export then reuses the
    untouched proto as it is)."""
    from onnx import TensorProto, numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    lazy = getattr(c, "_values", None)
    if isinstance(lazy, LazyValues) and isinstance(lazy.tensor, TensorProto):  # (hasattr would copy the bytes)
        cached = c.__dict__.get("_ltc_array")  # rules and the rewrite read a weight several times
        if cached is None or cached[0] is not lazy:
            cached = (lazy, numpy_helper.to_array(lazy.tensor))
            cached[1].flags.writeable = False
            c.__dict__["_ltc_array"] = cached
        return cached[1]
    return np.asarray(c.values)


def is_empty(t: gs.Tensor | None) -> bool:
    return t is None or (isinstance(t, gs.Variable) and t.name == "")


def no_padding(node: gs.Node) -> bool:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad == "VALID":
        return True
    if auto_pad not in ("NOTSET", ""):
        return False
    return not any(node.attrs.get("pads", []))


def attr_str(node: gs.Node, name: str, default: str) -> str:
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def static(dims: Sequence | None) -> int | None:
    """Product of ``dims`` if all are known integers."""
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return math.prod(dims)


def per_unit(values: np.ndarray, units: int, stride: int) -> np.ndarray:
    """Per-unit value of a per-entry vector: the value if all of a unit's entries agree, else NaN."""
    v = values.astype(np.float64).reshape(units, stride)
    same = np.all(v == v[:, :1], axis=1)
    return np.where(same, v[:, 0], NAN)


def zero_rows(w: np.ndarray, axis: int, units: int) -> np.ndarray:
    """Per unit: every weight along ``axis`` belonging to the unit is exactly zero."""
    moved = np.moveaxis(w, axis, 0).reshape(units, -1)
    return ~np.any(moved != 0, axis=1)
