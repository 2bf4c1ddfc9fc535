"""The passes that turn a masked model into a physically smaller one, and ``compress()``."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ltc.defaults import ATOL, RTOL
from ltc.errors import InternalError, LtcError
from ltc.masks import bool_mask
from ltc.onnx_io import TWO_GB, checker_problem, model_size_bytes, without_initializer_inputs
from ltc.passes.base import Pass, PassManager, PassResult
from ltc.passes.chains import chain_units, find_chains, removed_units, replicate_chains
from ltc.passes.channels import ChannelGraph
from ltc.passes.fold import FoldConstants
from ltc.passes.graph import export_graph, import_graph
from ltc.passes.regroup import Regroup, RegroupInfo
from ltc.passes.remove import (
    READ_LIVE,
    LayerChannels,
    RemovalPlan,
    apply_removal,
    check_unequal_groups,
    dead_filters,
    layer_channels,
    plan_removal,
)
from ltc.passes.rules import RuleTable, op_of
from ltc.passes.shuffle import ShuffleToGather
from ltc.passes.stats import count_parameters, model_stats, stored_parameters
from ltc.passes.verify import Verification, load_check, random_inputs, run_check, verify


class ApplyMasks(Pass):
    """Zero every initializer entry whose mask is False: the masked dense model."""

    name = "apply-masks"

    def __init__(self, masks: dict[str, np.ndarray]):
        self.masks = {name: bool_mask(np.asarray(m), f"mask for '{name}'", "pass a bool or 0/1 mask")
                      for name, m in masks.items()}

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        zeroed = 0
        for i, t in enumerate(out.graph.initializer):
            mask = self.masks.get(t.name)
            if mask is None:
                continue
            w = numpy_helper.to_array(t)
            if not np.issubdtype(w.dtype, np.floating):
                raise LtcError(f"mask for '{t.name}' targets a {w.dtype} tensor (shapes, indices), not a weight; "
                               "drop that entry from the mask")
            if mask.shape != w.shape:
                raise LtcError(f"mask for '{t.name}' has shape {tuple(mask.shape)} but the weight is "
                               f"{tuple(w.shape)}; is the mask for another model?")
            newly = int(np.count_nonzero(w[~mask]))
            if newly:
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.where(mask, w, 0).astype(w.dtype), t.name))
                zeroed += newly
        return PassResult(out, zeroed > 0, MaskInfo(zeroed, len(self.masks)))


class RemoveDeadChannels(Pass):
    """Physically remove every channel class that no output depends on, exactly (see DESIGN.md)."""

    name = "remove-dead-channels"

    def __init__(self, allow_lossy: bool = False, round_to: int = 1, unequal_groups: str = "auto",
                 chains: bool = True, rules: RuleTable | None = None):
        if round_to < 1:
            raise LtcError(f"round_to must be >= 1, got {round_to}")
        check_unequal_groups(unequal_groups)
        self.allow_lossy = allow_lossy
        self.round_to = round_to
        self.unequal_groups = unequal_groups
        self.chains = chains  # write constant chains again (ltc.passes.chains) so that their channels go
        self.rules = rules  # the rule table (None: the default one)

    def analyze(self, model: onnx.ModelProto, maps: bool = True, chains: bool = True) -> RemovalAnalysis:
        """The analysis and plan, without rewriting: what :func:`inspect` reports and :meth:`call` applies.
        ``chains``: constants that zero padding turns into images are written again for the removed
        channels only (:mod:`ltc.passes.chains`), so the layers that read them lose those channels."""
        cg = ChannelGraph(import_graph(model), self.rules)
        plan = plan_removal(cg, self.allow_lossy, self.round_to, self.unequal_groups, maps)
        macs = cg.macs()
        found = find_chains(cg) if maps and chains and self.chains and not self.allow_lossy else []
        stuck = [ch for ch in found if ch.failed]
        found = [ch for ch in found if not ch.failed]
        replicated = 0
        while found:  # (at most a few rounds: a chain whose channels stay anyway is not written)
            rewritten, written = replicate_chains(model, found)
            cg2 = ChannelGraph(import_graph(rewritten), self.rules)
            cg2.replicas = written
            plan2 = plan_removal(cg2, self.allow_lossy, self.round_to, self.unequal_groups, maps)
            gone = removed_units(cg2, found, plan2.removed)
            if all(g.all() for g in gone):
                cg, plan, replicated = cg2, plan2, len(found)
                readers = sum(len(ch.readers) for ch in found)
                gates = sum(1 for ch in found if ch.gated)
                plan.notes.append(f"{sum(int(ch.units.sum()) for ch in found)} dead channels whose constant zero padding "
                                  f"or a live gate made input-dependent were removed exactly: {len(found)} runs of "
                                  f"channel-wise ops written again for them ({gates} with a live gate's rows), added "
                                  f"to {readers} Conv outputs")
                break
            for ch, g in zip(found, gone, strict=True):
                ch.units[ch.index[~g]] = False
            found = [ch for ch in found if ch.units.any()]
        for ch, (_, classes) in zip(stuck, chain_units(cg, stuck), strict=True):  # input-independent, yet kept:
            for c in classes[~plan.removed[classes]]:                          # not coupled but blocked
                if plan.reasons.get(int(c), "").startswith(READ_LIVE):
                    plan.reasons[int(c)] = f"a constant that zero padding made an image {ch.failed}"
        return RemovalAnalysis(cg, plan, layer_channels(cg, plan), frozen_reasons(cg), macs, replicated)

    def call(self, model: onnx.ModelProto) -> PassResult:
        result = self._remove(model, maps=True)
        if result.info.chains and _grew(model, result.model):  # (a chain's copy stored more than it saved)
            result = self._remove(model, maps=True, chains=False)
        if result.info.maps and _grew(model, result.model):  # (maps added more than the removal saved:
            result = self._remove(model, maps=False)          # a weight shared by padded readers, one
        return result                                         # channel of a grouped Conv)

    def _remove(self, model: onnx.ModelProto, maps: bool, chains: bool = True) -> PassResult:
        a = self.analyze(model, maps, chains)
        modified = apply_removal(a.cg, a.plan)
        macs_after = a.cg.macs(a.plan.index(a.cg)) if modified else a.macs_before
        info = RemovalInfo(a.layers, int(a.cg.n_classes), int(a.plan.removed.sum()), a.frozen, a.plan.notes,
                           a.plan.lossy, a.macs_before, macs_after, len(a.plan.maps), a.chains)
        return PassResult(export_graph(a.cg.graph, model) if modified else model, modified, info)


def _grew(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """``after`` holds more parameters than ``before``, per use or as stored."""
    return count_parameters(after) > count_parameters(before) or stored_parameters(after) > stored_parameters(before)


@dataclass
class MaskInfo:
    weights_zeroed: int
    masked_tensors: int


@dataclass
class RemovalAnalysis:
    cg: ChannelGraph
    plan: RemovalPlan
    layers: list[LayerChannels]
    frozen: dict[str, int]  # reason -> classes that cannot go for it (frozen or pinned)
    macs_before: dict[str, int] = field(default_factory=dict)  # of the model as given
    chains: int = 0  # constant chains written again for their removed channels


@dataclass
class RemovalInfo:
    layers: list[LayerChannels]
    classes: int
    removed_classes: int
    frozen: dict[str, int]
    notes: list[str]
    lossy: bool
    macs_before: dict[str, int] = field(default_factory=dict)  # per weight layer, per sample
    macs_after: dict[str, int] = field(default_factory=dict)
    maps: int = 0  # padded Convs given a constant map
    chains: int = 0  # constant chains written again for their removed channels


@dataclass
class CompressResult:
    model: onnx.ModelProto
    reference: onnx.ModelProto  # the masked dense model the result must match
    layers: list[dict]
    before: dict
    after: dict
    verification: Verification | None
    seconds: float
    lossy: bool
    notes: list[str] = field(default_factory=list)
    frozen: dict[str, int] = field(default_factory=dict)
    serialized: bytes | None = field(default=None, repr=False)  # ``model``'s bytes when it was serialized
    regroup: RegroupInfo | None = None  # None: the Regroup pass did not run

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "regroup": None if self.regroup is None else {
                "layers": [asdict(la) for la in self.regroup.layers],
                "grouped": len(self.regroup.grouped), "gathers": self.regroup.gathers},
            "before": {k: v for k, v in self.before.items() if k != "layer_macs"},
            "after": {k: v for k, v in self.after.items() if k != "layer_macs"},
            "verification": self.verification.to_dict() if self.verification else None,
            "seconds": self.seconds,
            "lossy": self.lossy,
            "notes": self.notes,
            "frozen": self.frozen,
        }


def compress(model: onnx.ModelProto, masks: dict[str, np.ndarray] | None = None, *,
             allow_lossy: bool = False, round_to: int = 1, check: bool = True,
             feeds: dict[str, np.ndarray] | None = None, rtol: float = RTOL, atol: float = ATOL,
             inputs_label: str = "random", model_file: str | os.PathLike | None = None,
             regroup: bool = False, groups: dict[str, int] | None = None,
             unequal_groups: str = "auto", chains: bool = True, rules: RuleTable | None = None) -> CompressResult:
    """Apply ``masks`` (initializer name -> bool array), regroup block-diagonal Convs into grouped
    Convs (``regroup``; ``groups``: weight name -> G, e.g. from a ticket), remove dead channels, verify.
    ``unequal_groups``: a grouped Conv may lose different numbers of channels per group, and is then
    split into Convs: "always", "never" (extra dead channels stay), "auto" (where predicted faster).
    ``chains``: dead channels whose constant zero padding or a live gate made input-dependent go, their
    run of channel-wise ops written again for them (:mod:`ltc.passes.chains`); False keeps them.
    ``rules``: the rule table the analysis uses (default: :data:`ltc.passes.rules.RULES`; see
    :meth:`~ltc.passes.rules.RuleTable.with_rule`).

    Raises :class:`InternalError` if verification fails (unless the user allowed lossy folding, in
    which case the measured error is reported). ``model_file``, the file ``model`` was read from
    unchanged, lets ONNX Runtime load the reference from disk instead of a re-serialized copy.
    """
    start = time.perf_counter()
    model, overridable = without_initializer_inputs(model)
    if overridable:
        model_file = None  # (the file still lists them as inputs)
    with input_blamed(model):
        masked = ApplyMasks(masks)(model) if masks else None
        reference = masked.model if masked is not None and masked.modified else model
        folded = normalize(reference)
        grouped = Regroup(groups, round_to, rules=rules)(folded) if regroup else None
        result = RemoveDeadChannels(allow_lossy, round_to, unequal_groups, chains, rules)(grouped.model if grouped else folded)
    info: RemovalInfo = result.info
    macs_before = info.macs_before
    if grouped is not None and grouped.modified:  # removal saw the grouped model: count from the dense one
        result.modified = True
        macs_before = grouped.info.macs_before
    if not result.modified:  # folding alone is no reason to rewrite the user's model
        result.model = reference
    serialized = None  # the output's bytes, made once: for ONNX Runtime and for the file
    if result.modified and model_size_bytes(result.model) <= TWO_GB:
        serialized = result.model.SerializeToString()
    candidate = serialized if serialized is not None else result.model
    reference_run = str(model_file) if model_file is not None and reference is model else reference
    verification = None
    if check:
        feeds = feeds if feeds is not None else random_inputs(reference)
        verification = verify(reference_run, candidate, feeds, rtol, atol, inputs_label)
        if not verification.passed and not info.lossy:
            raise InternalError(verification_failure(verification, rtol, atol))
        if verification.optimizer_ok is False:
            raise InternalError(
                "the compressed model is exact, but ONNX Runtime's graph optimizer "
                + ("cannot load it" if verification.optimized_max_abs == float("inf") else
                   f"computes it differently (by {verification.optimized_max_abs:.3g})")
                + " while it runs the input as is: an optimizer fusion the rewrite exposed (ORT fuses a zero Pad "
                "into MaxPool once the Pad has no other reader); --no-verify writes it anyway, to be run with "
                "graph optimizations off")
    elif result.modified:  # never write a model that does not load and run, verified or not
        load_check(result.model, reference_run)
        try:
            feeds = feeds if feeds is not None else random_inputs(reference)
        except LtcError:  # (inputs ltc cannot make: symbolic dims it cannot choose, strings)
            feeds = None
        if feeds is not None:
            run_check(candidate, reference_run, feeds)
    else:  # an unchanged copy of an input that ONNX Runtime cannot load is not written either
        load_check(reference)
    if result.modified:
        check_output(reference, result.model)
    seconds = time.perf_counter() - start
    before = model_stats(reference, macs_before)
    after = model_stats(result.model, info.macs_after) if result.modified else before
    notes = [*_initializer_input_note(overridable), *info.notes]
    return CompressResult(result.model, reference, [asdict(la) for la in info.layers], before, after,
                          verification, seconds, info.lossy, notes, info.frozen, serialized,
                          grouped.info if grouped is not None else None)


ROUNDING_MISS = 8.0  # a miss within this many times the tolerance, or this many units in the last place
# of the output's float type at its scale (float16 models), may be rounding; beyond, a wrong model


def verification_failure(v: Verification, rtol: float, atol: float) -> str:
    """The one line for a failed verification: the worst output, by how much, and the way out. Only a
    miss within :data:`ROUNDING_MISS` times the tolerance (or units in the last place) may be rounding, and only then is raising
    --rtol suggested; a larger miss, or an output of another shape, is a wrong model: ltc's bug."""
    failed = {name: o for name, o in v.outputs.items() if not o["passed"]}
    for name, o in failed.items():
        if "expected_shape" in o:
            got = "is missing" if o.get("shape") is None else f"has shape {tuple(o['shape'])}"
            return (f"verification failed: the compressed model's output '{name}' {got}, the masked model's has "
                    f"shape {tuple(o['expected_shape'])}; this is a bug in ltc, nothing was written")
    name, worst = max(failed.items(), key=lambda kv: _times_tolerance(kv[1]))
    times = _times_tolerance(worst)
    line = (f"verification failed: output '{name}' differs by {worst['max_abs']:.3g}, {times:.3g}x the tolerance "
            f"{worst['tolerance']:.3g} (atol {atol} + rtol {rtol} x max|output| {worst['scale']:.3g})")
    if times <= ROUNDING_MISS or worst["max_abs"] <= ROUNDING_MISS * worst.get("ulp", 0.0):
        return (f"{line}; it would pass with --rtol {worst['rtol_needed']:.3g}; if that is float rounding, raise "
                "--rtol; --no-verify writes it anyway, at your own risk")
    return f"{line}: far beyond rounding, a wrong result; this is a bug in ltc, nothing was written"


def _times_tolerance(o: dict) -> float:
    return o["max_abs"] / max(o["tolerance"], 1e-300)


def normalize(model: onnx.ModelProto, rounds: int = 64) -> onnx.ModelProto:
    """What the analysis reads: constant chains and static shape reads folded into initializers, and
    channel shuffles as one Gather, repeated while either finds more (a shuffle's output gets a
    static shape once the shuffle before it is a Gather), at most ``rounds`` times. Initializers that
    are also graph inputs are taken as the constants they hold (dropped from the inputs)."""
    model, _ = without_initializer_inputs(model)
    return PassManager([FoldConstants(), ShuffleToGather()], steps=rounds, early_stop=True)(model).model


@contextlib.contextmanager
def input_blamed(model: onnx.ModelProto) -> Iterator[None]:
    """An unexpected exception on a model that fails ``onnx.checker`` is the input's fault (exit 1,
    with the checker's finding); on a valid model it stays ltc's (exit 2)."""
    try:
        yield
    except LtcError:
        raise
    except Exception as exc:  # (an InternalError that a pass's crash became: its cause decides)
        cause = exc.__cause__ if isinstance(exc, InternalError) else exc
        problem = None if cause is None or isinstance(cause, LtcError | InternalError) else checker_problem(model)
        if problem:
            raise LtcError(f"the model is not valid ONNX ({problem}); fix or re-export it") from None
        raise


def _initializer_input_note(names: list[str]) -> list[str]:
    if not names:
        return []
    listed = ", ".join(f"'{n}'" for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return [f"{len(names)} initializer(s) were also graph inputs ({listed}): treated as the constants they hold and "
            "dropped from the output's inputs"]


def frozen_reasons(cg: ChannelGraph) -> dict[str, int]:
    """Classes that cannot go, counted by the first reason recorded for each (frozen or pinned)."""
    return dict(Counter(cg.kept_reasons().values()))


def check_output(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    """The output passes ``onnx.checker`` whenever the input does (raises :class:`InternalError`)."""
    problem = checker_problem(candidate)
    if problem and checker_problem(reference) is None:
        raise InternalError(f"the compressed model fails onnx.checker ({problem})")


def inspect(model: onnx.ModelProto, masks: dict[str, np.ndarray] | None = None,
            allow_lossy: bool = False, unequal_groups: str = "auto", chains: bool = True,
            rules: RuleTable | None = None) -> dict:
    """What ``compress`` would do, without doing it: classes, dead and removable channels, blockers.
    The model must load in ONNX Runtime (:class:`LtcError` otherwise), as ``compress`` needs."""
    model, overridable = without_initializer_inputs(model)
    load_check(model)
    with input_blamed(model):
        reference = ApplyMasks(masks)(model).model if masks else model
        a = RemoveDeadChannels(allow_lossy, 1, unequal_groups, chains, rules).analyze(normalize(reference))
    cg = a.cg
    dead = dead_filters(cg, a.plan)
    return {
        "layers": [asdict(layer) for layer in a.layers],
        "classes": int(cg.n_classes),
        "frozen_classes": int((cg.frozen | cg.pinned).sum()),
        "removable_classes": int(a.plan.removed.sum()),
        "frozen_by": a.frozen,
        "dead_filters": {**asdict(dead), "removable_share": dead.removable_share},
        "ops_not_in_rule_table": sorted({op_of(n) for n in cg.graph.nodes if op_of(n) not in cg.rules and op_of(n) != "Constant"}),
        "stats": {k: v for k, v in model_stats(reference, a.cg.macs()).items() if k != "layer_macs"},
        "notes": [*_initializer_input_note(overridable), *a.plan.notes],
    }
