"""Public model-zoo architectures through `ltc compress`: exact?, refused?, how much of what is dead goes.

Every architecture is built from torchvision or timm at random init (no pretrained weights: nothing
is downloaded), with randomised BatchNorm statistics and affine parameters, in eval mode. Half of
the output channels of every Conv and Linear but the classifier are made dead, seeded, in one of
two ways:

- ``zero``: the filters, their bias and the following BatchNorm's scale and shift are zero (the
  channel is exactly zero);
- ``shift``: the filters and the BatchNorm scale are zero, its shift is kept (the channel is a
  non-zero constant: removal must fold it into the readers' biases).

Each model is exported three ways: ``legacy`` (TorchScript exporter, constant folding),
``legacy-nofold`` (``do_constant_folding=False``, BatchNorm kept) and ``dynamo``. Then
``ltc.api.compress_file`` runs with verification on, mask from the zeros. Independently of ltc, ONNX
Runtime runs the exported and the compressed file with its optimizations on, on random inputs. A
result is exact when every output agrees to 1e-4 of that output's scale plus 1e-5.

Recorded per (model, mask, export):
- the status (ok / refused with the message);
- the worst error relative to scale;
- parameters before and after;
- dead output channels (the zeroed ones) and how many were removed;
- why the rest stayed (ltc's per-layer reasons, the top three);
- the compress time.

torchvision's PyPI wheel is a CUDA build. With the CPU torch of this project its compiled ops
(NMS, RoIAlign, which no model here uses) cannot load. The model definitions are plain Python, so
the script skips the failing op registrations while it imports torchvision and timm. Experiment
only: neither package is an ltc dependency.

    .venv/bin/pip install --no-deps torchvision==0.28.0 timm==1.0.31   # (torchvision pinned to torch 2.13)
    .venv/bin/python experiments/real_models/run.py                    # everything: long
    .venv/bin/python experiments/real_models/run.py --exporters legacy,legacy-nofold --tag legacy
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.zoo import import_zoos  # noqa: E402 - the repository root first

HERE = Path(__file__).parent

# (library, name, input side): small inputs keep a 2-core CPU run in the tens of minutes
ARCHS = [
    ("torchvision", "resnet18", 64), ("torchvision", "resnet50", 64), ("torchvision", "mobilenet_v2", 64),
    ("torchvision", "mobilenet_v3_small", 64), ("torchvision", "efficientnet_b0", 64),
    ("torchvision", "densenet121", 64), ("torchvision", "shufflenet_v2_x1_0", 64),
    ("torchvision", "squeezenet1_1", 64), ("torchvision", "regnet_x_400mf", 64),
    ("torchvision", "resnext50_32x4d", 64), ("torchvision", "mnasnet0_5", 64), ("torchvision", "vgg11_bn", 224),
    ("torchvision", "googlenet", 64), ("torchvision", "inception_v3", 96), ("torchvision", "convnext_tiny", 64),
    ("timm", "vit_tiny_patch16_224", 64), ("timm", "deit_tiny_patch16_224", 64), ("timm", "convnext_atto", 64),
    ("timm", "poolformer_s12", 64), ("timm", "efficientformer_l1", 224), ("timm", "ghostnet_100", 64),
    ("timm", "repvgg_a0", 64), ("timm", "rexnet_100", 64), ("timm", "dpn68", 64), ("timm", "dla34", 64),
    ("timm", "regnety_002", 64), ("timm", "mixer_s16_224", 64), ("timm", "hrnet_w18_small", 64),
]
EXPORTERS = ("legacy", "legacy-nofold", "dynamo")
MASKS = ("zero", "shift")
OPTIONS = {"unequal_groups": "auto", "latency": False, "round_to": 1}  # --unequal-groups, --latency, --round-to


def build(lib: str, name: str, side: int) -> nn.Module:
    torchvision, timm = import_zoos()
    if lib == "torchvision":
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
        return getattr(torchvision.models, name)(weights=None, **kwargs)
    try:
        return timm.create_model(name, pretrained=False, img_size=side)
    except TypeError:
        return timm.create_model(name, pretrained=False)


def kill_heads(model: nn.Module, seed: int) -> int:
    """``--masks heads``: half of the heads of every attention with a fused q/k/v projection (timm's
    ``Attention``: ``qkv``, ``num_heads``) dead, their q, k and v rows and biases zero; returns how many
    q/k/v rows were made dead."""
    rng = np.random.default_rng(seed)
    dead_total = 0
    with torch.no_grad():
        for m in model.modules():
            if not (hasattr(m, "qkv") and hasattr(m, "num_heads") and isinstance(m.qkv, nn.Linear)):
                continue
            width = m.qkv.out_features // 3
            d = width // m.num_heads
            for h in rng.choice(m.num_heads, m.num_heads // 2, replace=False):
                rows = np.concatenate([s * width + np.arange(h * d, (h + 1) * d) for s in range(3)])
                m.qkv.weight[rows] = 0
                if m.qkv.bias is not None:
                    m.qkv.bias[rows] = 0
                dead_total += len(rows)
    return dead_total


def kill_half(model: nn.Module, mask: str, seed: int, side: int) -> int:
    """Randomise BN, then make half of every Conv/Linear's outputs dead (not the classifier's); returns
    how many output channels were made dead. The BatchNorm that reads a conv's output directly is
    found by running the model once with hooks. ``mask`` "heads": :func:`kill_heads` instead."""
    if mask == "heads":
        return kill_heads(model, seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.normal_(0, 0.2, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5, generator=g)
                bn.bias.normal_(0, 0.2, generator=g)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    classifier = layers[-1]
    produced: dict[int, nn.Module] = {}
    follower: dict[nn.Module, nn.Module] = {}

    def after_layer(m, _inputs, output) -> None:
        produced[id(output)] = m

    def before_bn(m, inputs) -> None:  # (a pre-hook that returns a value replaces the input)
        layer = produced.get(id(inputs[0]))
        if layer is not None:
            follower.setdefault(layer, m)

    hooks = [m.register_forward_hook(after_layer) for m in layers]
    hooks += [bn.register_forward_pre_hook(before_bn) for bn in bns]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    for h in hooks:
        h.remove()
    dead_total = 0
    with torch.no_grad():
        for layer in layers:
            if layer is classifier:
                continue
            n = layer.weight.shape[0]
            dead = rng.choice(n, n // 2, replace=False)
            layer.weight[dead] = 0
            if layer.bias is not None:
                layer.bias[dead] = 0
            bn = follower.get(layer)
            if bn is not None and bn.affine and bn.num_features == n:
                bn.weight[dead] = 0
                if mask == "zero":
                    bn.bias[dead] = 0
            dead_total += len(dead)
    return dead_total


def export(model: nn.Module, path: Path, side: int, how: str) -> Path:
    from ltc.exporters.torch_export import export_onnx

    exporter = "dynamo" if how == "dynamo" else "legacy"
    return export_onnx(model, path, (3, side, side), exporter=exporter, keep_batchnorm=how == "legacy-nofold")


def independent_error(src: Path, out: Path, side: int, seed: int) -> float:
    """Worst |difference| / (1e-5 + 1e-4 * max|reference|) over the outputs, ONNX Runtime optimizations
    on; <= 1 is exact."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((2, 3, side, side)).astype(np.float32)
    outs = []
    for f in (src, out):
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x}))
    worst = 0.0
    for a, b in zip(*outs, strict=True):
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0, np.abs(a.astype(np.float64) - b))
        scale = float(np.nanmax(np.abs(a))) if a.size else 0.0
        worst = max(worst, float(np.nanmax(diff)) / (1e-5 + 1e-4 * scale) if a.size else 0.0)
    return worst


def one(lib: str, name: str, side: int, mask: str, how: str, tmp: Path, seed: int = 0) -> dict:
    from ltc.api import compress_file
    from ltc.errors import InternalError, LtcError

    row: dict = {"model": f"{lib}:{name}", "side": side, "mask": mask, "export": how}
    torch.manual_seed(seed)
    try:
        model = build(lib, name, side).eval()
        row["dead"] = kill_half(model, mask, seed, side)
        src = export(model, tmp / "in.onnx", side, how)
    except Exception as exc:  # noqa: BLE001 - a model or exporter failure is a row, not the end
        row["status"] = f"build/export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return row
    out = tmp / "out.onnx"
    t0 = time.perf_counter()
    try:
        doc = compress_file(src, out, round_to=OPTIONS["round_to"], unequal_groups=OPTIONS["unequal_groups"])
    except (LtcError, InternalError) as exc:
        row["status"] = f"refused ({type(exc).__name__}): {str(exc)[:300]}"
        row["seconds"] = time.perf_counter() - t0
        return row
    except Exception as exc:  # noqa: BLE001 - a crash is what this experiment looks for
        row["status"] = f"crash: {type(exc).__name__}: {exc}"
        row["trace"] = traceback.format_exc()[-2000:]
        return row
    row["seconds"] = time.perf_counter() - t0
    row["status"] = "ok"
    row["params"] = [doc["before"]["parameters"], doc["after"]["parameters"]]
    layers = doc["layers"]
    row["layers"] = len(layers)
    row.update(accounting(src))
    why: Counter = Counter()
    for entry in layers:
        for reason, count in entry["kept_because"].items():
            why[_short(reason)] += count
    row["kept_because"] = dict(why.most_common(3))
    # removable: what an exact tool can take; a constant through zero padding is (as a map), so it counts
    row["removable"] = row["removed"] + row["blocked"] + row["unfoldable"]
    row["removed_share"] = row["removed"] / row["removable"] if row["removable"] else 1.0
    row["verified"] = doc["verification"]["passed"] if doc["verification"] else None
    row["error_vs_tolerance"] = independent_error(src, out, side, seed)
    row["exact"] = row["error_vs_tolerance"] <= 1.0
    row["unequal_groups"], row["round_to"] = OPTIONS["unequal_groups"], OPTIONS["round_to"]
    if OPTIONS["latency"]:
        row.update(latency(src, out))
    return row


def latency(src: Path, out: Path) -> dict:
    """Dense vs compressed at batch 1: ONNX Runtime CPU, 2 threads, 7 interleaved rounds of 20 runs,
    medians (nothing else may run meanwhile)."""
    from ltc.benchmarks.bench import BenchOptions, bench

    rep = bench([str(src), str(out)], BenchOptions(batches=(1,), threads=2, warmup=3, iterations=20, rounds=7))
    dense, comp = list(rep["runs"][0]["models"].values())
    return {"median_ms_b1": [dense["latency"]["median_ms"], comp["latency"]["median_ms"]],
            "speedup_b1": comp["vs_first"]["speedup"]}


def accounting(src: Path) -> dict:
    """What became of each dead filter, by ltc's plan after normalisation: removed, coupled to a live
    channel, pinned by a whole-channel op, constant not foldable, or blocked by ltc
    (``ltc.passes.remove.dead_filters``, what ``ltc inspect`` prints)."""
    from ltc.onnx_io import read_model
    from ltc.passes import RemoveDeadChannels
    from ltc.passes.pipeline import normalize
    from ltc.passes.remove import dead_filters

    model, _ = read_model(src)
    a = RemoveDeadChannels(unequal_groups=OPTIONS["unequal_groups"]).analyze(normalize(model))
    d = dead_filters(a.cg, a.plan)
    return {"own_dead": d.dead, "removed": d.removed, "coupled": d.coupled, "pinned": d.pinned,
            "unfoldable": d.unfoldable, "blocked": d.blocked}


def peer_onnxsim(lib: str, name: str, side: int, mask: str, how: str, tmp: Path, seed: int = 0) -> dict:
    """onnxsim 0.8.1's structured pruning on the same file, at the dead fraction (0.5): it ranks
    filters by L2 norm (the dead ones are 0) and cuts producer/consumer chains it recognises, with no
    mask and no check. Exactness is measured the same way as ltc's."""
    from onnxsim.pruning import apply_structured_pruning

    from ltc.passes.stats import count_parameters

    row: dict = {"model": f"{lib}:{name}", "side": side, "mask": mask, "export": how, "peer": "onnxsim 0.8.1"}
    torch.manual_seed(seed)
    try:
        model = build(lib, name, side).eval()
        kill_half(model, mask, seed, side)
        src = export(model, tmp / "in.onnx", side, how)
    except Exception as exc:  # noqa: BLE001
        row["status"] = f"build/export failed: {type(exc).__name__}"
        return row
    import onnx

    original = onnx.load(str(src))
    t0 = time.perf_counter()
    try:
        pruned = apply_structured_pruning(original, sparsity=0.5)
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a row
        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return row
    row["seconds"] = time.perf_counter() - t0
    out = tmp / "peer.onnx"
    onnx.save(pruned, str(out))
    row["params"] = [count_parameters(original), count_parameters(pruned)]
    try:
        row["error_vs_tolerance"] = independent_error(src, out, side, seed)
        row["exact"] = row["error_vs_tolerance"] <= 1.0
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refused the peer's output
        row["status"] = f"output does not run: {str(exc).splitlines()[0][:160]}"
    return row


def peer_torch_pruning(lib: str, name: str, side: int, mask: str, how: str, tmp: Path, seed: int = 0) -> dict:
    """Torch-Pruning 1.6's magnitude pruner on the torch model (before export): L2 importance, half
    of every prunable group's channels (the dead fraction; dead filters rank lowest), classifier
    ignored. Its output is compared with the unpruned model's in torch, the same tolerance. ``how``
    is ignored (Torch-Pruning works before export)."""
    import torch_pruning as tp

    row: dict = {"model": f"{lib}:{name}", "side": side, "mask": mask, "export": how, "peer": "torch-pruning 1.6"}
    torch.manual_seed(seed)
    try:
        model = build(lib, name, side).eval()
        kill_half(model, mask, seed, side)
    except Exception as exc:  # noqa: BLE001
        row["status"] = f"build failed: {type(exc).__name__}"
        return row
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        before = model(x)
    params = sum(p.numel() for p in model.parameters())
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    import signal

    def give_up(*_):
        raise TimeoutError("more than 120 s")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(120)  # (Torch-Pruning's dependency graph takes many minutes on some models)
    t0 = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, side, side), importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=0.5, ignored_layers=[classifier])
        pruner.step()
        with torch.no_grad():
            after = model(x)
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a row
        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return row
    finally:
        signal.alarm(0)
    row["seconds"] = time.perf_counter() - t0
    row["params"] = [params, sum(p.numel() for p in model.parameters())]
    scale = float(before.abs().max())
    row["error_vs_tolerance"] = float((after - before).abs().max()) / (1e-5 + 1e-4 * scale)
    row["exact"] = row["error_vs_tolerance"] <= 1.0
    row["status"] = "ok"
    return row


def _short(reason: str) -> str:
    """A reason without the node names: 'read by Add 'x'' -> 'read by Add'."""
    words = []
    for w in reason.split():
        if w.startswith("'"):
            break
        words.append(w)
    return " ".join(words) or reason


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="", help="comma-separated names (default: all)")
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--masks", default=",".join(MASKS), help="zero, shift, heads (whole attention heads dead)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--peers", choices=["onnxsim", "torch-pruning"], default=None,
                    help="run a peer instead of ltc: onnxsim 0.8.1's structured pruning or Torch-Pruning 1.6")
    ap.add_argument("--unequal-groups", choices=["auto", "always", "never"], default="auto",
                    help="ltc compress --unequal-groups (grouped Convs losing channels unevenly)")
    ap.add_argument("--latency", action="store_true", help="also time dense vs compressed at batch 1 (idle machine)")
    ap.add_argument("--round-to", default="1", help="ltc compress --round-to (default 1: count every dead channel)")
    args = ap.parse_args()
    OPTIONS.update(unequal_groups=args.unequal_groups, latency=args.latency,
                   round_to=args.round_to if args.round_to == "auto" else int(args.round_to))
    wanted = {m for m in args.models.split(",") if m}
    archs = [a for a in ARCHS if not wanted or a[1] in wanted]
    rows = []
    results_path = HERE / f"results{'-' + args.tag if args.tag else ''}.json"
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for lib, name, side in archs:
            for how in args.exporters.split(","):
                for mask in args.masks.split(","):
                    run_one = {"onnxsim": peer_onnxsim, "torch-pruning": peer_torch_pruning, None: one}[args.peers]
                    row = run_one(lib, name, side, mask, how, Path(tmp))
                    rows.append(row)
                    share = f"{row['removed']}/{row['dead']}" if "removed" in row else str(row.get("params", ""))
                    print(f"[{time.time() - start:6.0f}s] {name:24s} {how:14s} {mask:5s} {row['status'][:90]} "
                          f"{share} exact={row.get('exact')}", flush=True)
                    results_path.write_text(json.dumps({"env": env(), "rows": rows}, indent=1) + "\n")


def env() -> dict:
    import onnx
    import onnxruntime

    torchvision, timm = import_zoos()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}




def table(path: Path) -> str:
    """Markdown: one row per model, one column per (export, mask): removed / removable (share), a mark
    when not exact or refused."""
    rows = json.loads(path.read_text())["rows"]
    cols = sorted({(r["export"], r["mask"]) for r in rows}, key=lambda c: (EXPORTERS.index(c[0]), (*MASKS, "heads").index(c[1])))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["export"], r["mask"]): r for r in rows}
    lines = ["| model | " + " | ".join(f"{e} {m}" for e, m in cols) + " |", "|---|" + "---|" * len(cols)]
    for model in models:
        cells = []
        for e, m in cols:
            r = cell.get((model, e, m))
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"].split(":")[0])
            else:
                mark = "" if r["exact"] else " **NOT EXACT**"
                unseen = f", {r['dead'] - r['own_dead']} unseen" if r["dead"] > r["own_dead"] else ""
                pinned = f", {r['pinned']} pinned" if r.get("pinned") else ""
                cells.append(f"{100 * r['removed_share']:.0f}% ({r['removed']}/{r['removable']}, "
                             f"{r['coupled']} coupled{pinned}{unseen}){mark}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_table(ltc_path: Path, peer_path: Path) -> str:
    """Markdown: per model and mask (one export), parameters after and exactness, ltc vs the peer."""
    ltc_rows = {(r["model"], r["export"], r["mask"]): r for r in json.loads(ltc_path.read_text())["rows"]}
    peer_rows = json.loads(peer_path.read_text())["rows"]
    peer = peer_rows[0]["peer"] if peer_rows else "peer"
    lines = [f"| model | export | mask | params before | ltc after | ltc exact | {peer} after | {peer} exact |",
             "|---|---|---|---|---|---|---|---|"]
    for p in peer_rows:
        r = ltc_rows.get((p["model"], p["export"], p["mask"]))
        if r is None or r.get("status") != "ok":
            continue
        before = r["params"][0]
        if p["status"] == "ok":
            got = (f"{p['params'][1]:,}", "yes" if p["exact"] else f"**no** ({p['error_vs_tolerance']:.3g}× tol)")
        else:
            got = ("–", p["status"][:60])
        lines.append(f"| {p['model']} | {p['export']} | {p['mask']} | {before:,} | {r['params'][1]:,} | "
                     f"{'yes' if r['exact'] else '**no**'} | {got[0]} | {got[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(Path(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--peer-table":
        print(peer_table(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        main()
