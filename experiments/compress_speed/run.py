"""Does `ltc compress` give the speed of a natively narrow model, and how long does it take?

For VGG-16 (CIFAR, 32x32), ResNet-18 (224) and MobileNetV2 (224), half of every prunable width is
made dead (filters and BN scale/shift zero), the model is exported (legacy exporter, BN folded,
dynamic batch) and compressed with `ltc compress --round-to 1`. The same architecture built natively
narrow in torch is exported the same way. All three are timed interleaved on ONNX Runtime CPU.

    python experiments/compress_speed/run.py [--quick]

Writes results.json and results.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

from ltc.benchmarks.bench import BenchOptions, bench, cpu_model
from ltc.compressor.models import VGG, MobileNetV2, kill_channels, resnet18
from ltc.exporters.torch_export import export_onnx
from ltc.passes.stats import count_parameters, layer_macs

HERE = Path(__file__).parent
MODELS = {
    "vgg16-cifar": lambda w=None: VGG(w),
    "resnet18-224": lambda w=None: resnet18(w),
    "mobilenetv2-224": lambda w=None: MobileNetV2(w),
}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    rng = random.Random(seed)
    keep = {k: sorted(rng.sample(range(v), v // 2)) for k, v in model.widths.items()}
    kill_channels(model, keep)
    narrow = MODELS[name]({k: len(v) for k, v in keep.items()}).eval()
    return model, narrow


def time_load_save(path: Path, out: Path, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        onnx.save(onnx.load(str(path)), str(out))
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def time_compress(path: Path, out: Path, repeats: int, verify: bool) -> float:
    """Wall time of the library call that `ltc compress` makes (load, compress, verify, save)."""
    from ltc.api import compress_file

    samples = []
    for _ in range(repeats):
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        compress_file(path, out, round_to=1, verify=verify)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    logging.getLogger("torch").setLevel(logging.ERROR)
    rounds, iters = (2, 3) if args.quick else (5, 10)
    results = {"env": {"cpu": cpu_model(), "threads": 2, "onnxruntime": onnxruntime.__version__,
                       "torch": torch.__version__, "python": sys.version.split()[0]},
               "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            model, narrow = build(name)
            shape = model.input_shape
            dense_p, narrow_p, comp_p = tmp / f"{name}.onnx", tmp / f"{name}-narrow.onnx", tmp / f"{name}-c.onnx"
            export_onnx(model, dense_p, shape, exporter="legacy")
            export_onnx(narrow, narrow_p, shape, exporter="legacy")
            # `ltc compress` as a user runs it (a fresh process): the exactness check is in its output
            cmd = [sys.executable, "-m", "ltc.cli", "compress", str(dense_p), "-o", str(comp_p), "--round-to", "1",
                   "--json"]
            doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            entry = {
                "parameters": {"dense": count_parameters(onnx.load(dense_p)),
                               "compressed": count_parameters(onnx.load(comp_p)),
                               "narrow": count_parameters(onnx.load(narrow_p))},
                "macs": {"dense": sum(layer_macs(onnx.load(dense_p)).values()),
                         "compressed": sum(layer_macs(onnx.load(comp_p)).values()),
                         "narrow": sum(layer_macs(onnx.load(narrow_p)).values())},
                "verification_max_abs_error": doc["verification"]["max_abs_error"],
                "seconds": {
                    "load_save": time_load_save(dense_p, tmp / "resaved.onnx", 5),
                    "compress_no_verify": time_compress(dense_p, tmp / "t.onnx", 3, verify=False),
                    "compress_with_verify": time_compress(dense_p, tmp / "t.onnx", 3, verify=True),
                },
                "latency_ms": {},
            }
            roles = {"dense": dense_p, "compressed": comp_p, "narrow": narrow_p}
            for batch in (1, 32):
                opts = BenchOptions(batches=(batch,), threads=2, warmup=3, rounds=rounds,
                                    iterations=iters if batch == 1 else max(2, iters // 3))
                run = bench([str(p) for p in roles.values()], opts)["runs"][0]["models"]
                lat = {role: run[path.stem]["latency"] for role, path in roles.items()}
                med = {role: s["median_ms"] for role, s in lat.items()}
                entry["latency_ms"][f"batch{batch}"] = {
                    "median": med,
                    "p90": {role: s["p90_ms"] for role, s in lat.items()},
                    "compressed_over_narrow": med["compressed"] / med["narrow"],
                    "dense_over_compressed": med["dense"] / med["compressed"],
                    "samples": lat["dense"]["n"],
                }
            s = entry["seconds"]
            s["compress_no_verify_over_load_save"] = s["compress_no_verify"] / s["load_save"]
            s["compress_with_verify_over_load_save"] = s["compress_with_verify"] / s["load_save"]
            results["models"][name] = entry
            print(name, json.dumps(entry, indent=1), flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    (HERE / "results.md").write_text(render(results))
    print(render(results))


def render(results: dict) -> str:
    env = results["env"]
    lines = [f"CPU: {env['cpu']}, {env['threads']} threads; onnxruntime {env['onnxruntime']}, torch {env['torch']}",
             "",
             "| model | params dense / compressed / narrow | MACs dense / compressed | batch | latency ms dense / compressed / narrow (median) | compressed / narrow | dense / compressed |",
             "|---|---|---|---|---|---|---|"]
    for name, e in results["models"].items():
        p, m = e["parameters"], e["macs"]
        for b, lat in e["latency_ms"].items():
            md = lat["median"]
            lines.append(f"| {name} | {p['dense']:,} / {p['compressed']:,} / {p['narrow']:,} | "
                         f"{m['dense'] / 1e6:.0f}M / {m['compressed'] / 1e6:.0f}M | {b[5:]} | "
                         f"{md['dense']:.2f} / {md['compressed']:.2f} / {md['narrow']:.2f} | "
                         f"{lat['compressed_over_narrow']:.3f} | {lat['dense_over_compressed']:.2f}x |")
    lines += ["", "| model | onnx.load+save s | ltc compress s (no verify) | ratio | with verify s | ratio | max abs error |",
              "|---|---|---|---|---|---|---|"]
    for name, e in results["models"].items():
        s = e["seconds"]
        lines.append(f"| {name} | {s['load_save']:.3f} | {s['compress_no_verify']:.3f} | "
                     f"{s['compress_no_verify_over_load_save']:.2f}x | {s['compress_with_verify']:.3f} | "
                     f"{s['compress_with_verify_over_load_save']:.2f}x | {e['verification_max_abs_error']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
