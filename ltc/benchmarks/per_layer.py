"""Per-layer latency: ONNX Runtime's profile mapped back to the weight layers of the first (dense) model.

A *layer* is a node whose rule is a weight layer (Conv, ConvTranspose, Gemm, MatMul and registered
layers: the nodes ltc counts MACs for), named by its ONNX node name. Every profiled kernel is charged
to one layer in three steps:

1. ONNX Runtime node -> node of the model it was given. ORT keeps the names of nodes it does not
   touch; a fused node keeps the name of its first node (Conv+Relu -> FusedConv named after the Conv);
   the NCHWc transformer names its node ``<output tensor>_nchwc`` (``_token_N`` when taken), the
   output of the fused model node; nodes ORT makes itself (ReorderInput/ReorderOutput, Memcpy) are
   found in the optimised graph ORT writes and take the node they read from.
2. Model node -> layer of that model: a layer is its own; a node that ltc's compress made for a layer
   (``<layer>__split``, ``__concat``, ``__gather_in``) belongs to that layer; any other node (Relu,
   Add, pooling, Reshape ...) belongs to the *nearest preceding layer*: the owner of the input that
   the latest node before it produced. Fused or not, a Conv's activation and residual Add are charged
   to the same layer, so a dense and a compressed model compare row by row even when ORT fuses them
   differently. A node with no layer before it (the input's layout reorder) is charged to "other".
3. Layer of a later model -> layer of the first: same name; else the name with ltc's ``__part<k>``
   (split Convs) and similar suffixes removed; else the weight initializer's name (same, or with
   ltc's suffixes removed). A layer that maps to none is charged to "other" and listed.

Per profiled run, the time outside any kernel (run time minus the kernels' sum: ORT's scheduling and
the profiler itself) is reported beside "other" as "outside kernels", so the rows add up to the run.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ltc.errors import LtcError

_ORT_TOKEN = re.compile(r"(_token_\d+)+$")  # onnxruntime's Graph::GenerateNodeName suffix
_FRESH = re.compile(r"_\d+$")  # ltc's fresh_name collision suffix


@dataclass
class ModelLayers:
    """What per-layer attribution needs of one model: names only, no weights."""

    layers: dict[str, dict]  # layer -> {"op", "weights": [initializer names], "macs": int | None}
    owner: dict[str, str | None]  # node name -> the layer it is charged to (None: "other")
    producer: dict[str, str]  # tensor -> node name

    def weight_owner(self) -> dict[str, str]:
        return {w: name for name, layer in self.layers.items() for w in layer["weights"]}


def name_nodes(model) -> bool:
    """Give every unnamed top-level node a unique name (its first output's, when free), in place: ORT
    profiles unnamed nodes as ``<op>_<index>``, which nothing maps back. Returns whether any changed."""
    names = {n.name for n in model.graph.node if n.name}
    changed = False
    for n in model.graph.node:
        if n.name:
            continue
        base = n.output[0] if n.output and n.output[0] else n.op_type
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        n.name = name
        names.add(name)
        changed = True
    return changed


def _ltc_stem(name: str, known) -> str | None:
    """``name`` with ltc's ``__<suffix>`` segments removed from the right until it is in ``known``."""
    parts = name.split("__")
    for i in range(len(parts) - 1, 0, -1):
        stem = "__".join(parts[:i])
        if stem in known:
            return stem
    return None


def model_layers(model, macs: dict[str, int] | None = None) -> ModelLayers:
    """Layers, MACs (ltc's per-layer count; ``macs`` when the caller has it) and the owner of every
    node of a model whose nodes are named (see :func:`name_nodes`)."""
    from ltc.passes.channels import ChannelGraph
    from ltc.passes.rules import op_key
    from ltc.passes.stats import layer_macs

    rules = ChannelGraph.default_rules()
    macs = layer_macs(model) if macs is None else macs
    inits = {t.name for t in model.graph.initializer}
    layers = {}
    for n in model.graph.node:
        rule = rules.get(op_key(n.op_type, n.domain))
        if rule is not None and rule.layer and n.output:
            layers[n.name] = {"op": n.op_type, "weights": [i for i in n.input[1:] if i in inits],
                              "macs": macs.get(n.name)}
    owner: dict[str, str | None] = {}
    producer: dict[str, str] = {}
    position: dict[str, int] = {}
    for i, n in enumerate(model.graph.node):
        if n.name in layers:
            owner[n.name] = n.name
        elif (stem := _ltc_stem(n.name, layers)) is not None:
            owner[n.name] = stem
        else:
            before = [producer[t] for t in n.input if t in producer]
            owner[n.name] = owner[max(before, key=position.__getitem__)] if before else None
        position[n.name] = i
        for t in n.output:
            if t:
                producer[t] = n.name
    return ModelLayers(layers, owner, producer)


def match_layers(first: ModelLayers, other: ModelLayers) -> dict[str, str | None]:
    """Each layer of ``other`` -> the layer of ``first`` it was made from (None: none found)."""
    by_weight = first.weight_owner()
    out: dict[str, str | None] = {}
    for name, layer in other.layers.items():
        found = name if name in first.layers else _ltc_stem(name, first.layers)
        for w in layer["weights"] if found is None else ():
            for cand in (w, _ltc_stem(w, by_weight), _FRESH.sub("", w.split("__")[0])):
                if cand in by_weight:
                    found = by_weight[cand]
                    break
            if found is not None:
                break
        out[name] = found
    return out


@dataclass
class OptimizedGraph:
    """The graph ORT ran (``optimized_model_filepath``): node inputs, outputs and order."""

    inputs: dict[str, list[str]] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> OptimizedGraph:
        import onnx

        g = cls()
        for i, n in enumerate(onnx.load(str(path), load_external_data=False).graph.node):
            g.inputs[n.name], g.outputs[n.name], g.order[n.name] = list(n.input), list(n.output), i
            g.producer.update({t: n.name for t in n.output if t})
        return g


def ort_origin(name: str, ml: ModelLayers, opt: OptimizedGraph | None) -> str | None:
    """The node of the model that ORT's node ``name`` computes (see the module docstring), or None."""
    seen: set[str] = set()
    while name not in seen:
        seen.add(name)
        if name in ml.owner:
            return name
        stem = _ORT_TOKEN.sub("", name)
        if stem.endswith("_nchwc") and stem[:-6] in ml.producer:
            return ml.producer[stem[:-6]]
        if opt is None or name not in opt.inputs:
            return None
        made = [ml.producer[t] for t in opt.outputs[name] if t in ml.producer]
        if made:
            return made[0]
        before = [opt.producer[t] for t in opt.inputs[name] if t in opt.producer]
        if not before:
            return None
        name = max(before, key=opt.order.__getitem__)
    return None


@dataclass
class Profile:
    """The kernels of the timed runs of one profiled session."""

    runs: list[tuple[float, float]]  # (start, duration) in microseconds, one per timed run
    kernels: list[list[tuple[str, str, float]]]  # per run: (ORT node name, op, microseconds)
    optimized: OptimizedGraph | None


def read_profile(trace_file: str | Path, timed_runs: int, optimized: OptimizedGraph | None) -> Profile:
    """ORT's trace: the last ``timed_runs`` ``model_run`` events (the earlier ones are warm-up) and the
    ``<node>_kernel_time`` events inside each."""
    trace = json.loads(Path(trace_file).read_text())
    runs = sorted((float(e["ts"]), float(e["dur"])) for e in trace
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[-timed_runs:]
    starts = [s for s, _ in runs]
    kernels: list[list[tuple[str, str, float]]] = [[] for _ in runs]
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, float(e["ts"])) - 1
        if i >= 0 and float(e["ts"]) <= runs[i][0] + runs[i][1]:
            kernels[i].append((e["name"][:-len("_kernel_time")], e.get("args", {}).get("op_name", "?"), float(e["dur"])))
    return Profile(runs, kernels, optimized)


def op_totals(runs: list[list[tuple[str, str, float]]], top: int = 10) -> list[dict]:
    """The top operators by kernel time over profiled runs (:attr:`Profile.kernels`), with their share."""
    totals: dict[str, dict] = {}
    for run in runs:
        for _, op, us in run:
            t = totals.setdefault(op, {"op": op, "total_us": 0.0, "calls": 0})
            t["total_us"] += us
            t["calls"] += 1
    all_us = sum(t["total_us"] for t in totals.values()) or 1.0
    rows = sorted(totals.values(), key=lambda t: -t["total_us"])[:top]
    for r in rows:
        r["share"] = r["total_us"] / all_us
    return rows


@dataclass
class Attribution:
    """One model's profiled runs charged to the first model's layers (milliseconds per run)."""

    layer_ms: dict[str, list[float]] = field(default_factory=dict)
    other_ms: list[float] = field(default_factory=list)
    outside_ms: list[float] = field(default_factory=list)
    run_ms: list[float] = field(default_factory=list)
    kernels: dict[str, dict[str, str]] = field(default_factory=dict)  # layer -> {ORT node: op}
    other_kernels: dict[str, str] = field(default_factory=dict)

    def add(self, profile: Profile, ml: ModelLayers, to_first: dict[str, str | None] | None,
            optimized: OptimizedGraph | None) -> None:
        """Charge every timed run of ``profile`` (a session of the model ``ml`` describes; ``optimized``:
        the graph ORT ran it as)."""
        rows: dict[str, str | None] = {}
        for (_, dur), run in zip(profile.runs, profile.kernels, strict=True):
            per_layer: dict[str, float] = {}
            other = total = 0.0
            for name, op, us in run:
                if name not in rows:
                    origin = ort_origin(name, ml, optimized)
                    layer = ml.owner.get(origin) if origin is not None else None
                    rows[name] = layer if to_first is None or layer is None else to_first.get(layer)
                layer = rows[name]
                total += us
                if layer is None:
                    other += us
                    self.other_kernels[name] = op
                else:
                    per_layer[layer] = per_layer.get(layer, 0.0) + us
                    self.kernels.setdefault(layer, {})[name] = op
            for layer, us in per_layer.items():
                self.layer_ms.setdefault(layer, []).append(us / 1e3)
            self.other_ms.append(other / 1e3)
            self.outside_ms.append(max(dur - total, 0.0) / 1e3)
            self.run_ms.append(dur / 1e3)

    def median(self, layer: str) -> float:
        """Median over runs; a run in which no kernel of ``layer`` ran counts as 0."""
        got = self.layer_ms.get(layer, [])
        return statistics.median(got + [0.0] * (len(self.run_ms) - len(got))) if self.run_ms else 0.0


def _saved(first: float | int | None, other: float | int | None) -> float | None:
    return 1 - other / first if first and other is not None else None


def per_layer_report(names: list[str], structures: dict[str, ModelLayers], maps: dict[str, dict[str, str | None]],
                     attributions: dict[str, Attribution]) -> dict:
    """The ``per_layer`` entry of a bench run: rows by the first model's layers, sorted by its time."""
    base = names[0]
    first = structures[base]
    rows = []
    for layer, info in first.layers.items():
        macs: dict[str, int | None] = {base: info["macs"]}
        for name in names[1:]:
            mine = [structures[name].layers[k]["macs"] for k, v in maps[name].items() if v == layer]
            macs[name] = None if any(m is None for m in mine) else sum(mine)
        ms = {name: attributions[name].median(layer) for name in names}
        row = {"layer": layer, "op": info["op"], "median_ms": ms, "macs": macs,
               "kernels": {name: attributions[name].kernels.get(layer, {}) for name in names}, "vs_first": {}}
        for name in names[1:]:
            t, m = _saved(ms[base], ms[name]), _saved(macs[base], macs[name])
            row["vs_first"][name] = {"time_saved": t, "macs_saved": m,
                                     "time_vs_macs_saved": t / m if t is not None and m else None}
        rows.append(row)
    rows.sort(key=lambda r: -r["median_ms"][base])
    models = {}
    for name in names:
        a = attributions[name]
        models[name] = {"profiled_runs": len(a.run_ms), "run_median_ms": statistics.median(a.run_ms),
                        "other_ms": statistics.median(a.other_ms), "outside_kernels_ms": statistics.median(a.outside_ms),
                        "other_kernels": a.other_kernels,
                        "unmapped_layers": sorted(k for k, v in maps.get(name, {}).items() if v is None)}
    return {"baseline": base, "models": models, "layers": rows}


def check_mapped(paths: dict[str, str], first: str, maps: dict[str, dict[str, str | None]]) -> None:
    """A later model none of whose layers maps to the first is not a compressed copy of it."""
    for name, mapping in maps.items():
        if mapping and all(v is None for v in mapping.values()):
            raise LtcError(f"{paths[name]}: none of its {len(mapping)} layers maps to a layer of {paths[first]} "
                           "(by node or weight name); --per-layer compares models with the first, the model they "
                           "were compressed from: pass the dense model first, or bench them without --per-layer")
