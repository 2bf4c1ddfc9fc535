"""Per-layer latency of ResNet-18 (224x224) with half of every prunable width dead, dense vs compressed.

The model is built as in experiments/compress_speed (half the channels of every prunable width made
dead: filters and BN scale/shift zero), exported with the legacy exporter (BN folded), compressed
with `ltc compress --round-to 1`, and the two are timed with `ltc bench --per-layer` (ONNX Runtime CPU,
2 threads, batch 1).

    python experiments/per_layer/run.py [--out DIR] [--rounds N] [--iterations N]

Writes DIR/resnet18.onnx, DIR/resnet18-compressed.onnx, DIR/compress.json, DIR/bench.json and
DIR/report.html (DIR: a temporary folder unless given), and results.json / results.md (the bench
JSON and Markdown) next to this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("torch").setLevel(logging.ERROR)
    from ltc.exporters.torch_export import export_onnx

    # experiments/compress_speed/run.py builds the model: ResNet-18 with half of every prunable width dead
    spec = importlib.util.spec_from_file_location("compress_speed", HERE.parent / "compress_speed" / "run.py")
    compress_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compress_speed)

    args.out = args.out or Path(tempfile.mkdtemp(prefix="ltc-per-layer-"))
    args.out.mkdir(parents=True, exist_ok=True)
    dense, comp = args.out / "resnet18.onnx", args.out / "resnet18-compressed.onnx"
    model, _narrow = compress_speed.build("resnet18-224")
    export_onnx(model, dense, model.input_shape, exporter="legacy")
    ltc = [sys.executable, "-m", "ltc.cli"]
    subprocess.run([*ltc, "compress", str(dense), "-o", str(comp), "--round-to", "1", "--report",
                    str(args.out / "compress.json")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*ltc, "bench", str(dense), str(comp), "--threads", "2", "--rounds", str(args.rounds),
                    "--iterations", str(args.iterations), "--per-layer", "--json", str(args.out / "bench.json"),
                    "--markdown", str(args.out / "bench.md")], check=True)
    subprocess.run([*ltc, "report", "--bench", str(args.out / "bench.json"), "-o", str(args.out / "report.html")],
                   check=True)
    shutil.copyfile(args.out / "bench.json", HERE / "results.json")
    shutil.copyfile(args.out / "bench.md", HERE / "results.md")
    print(f"models, bench.json and report.html in {args.out}")


if __name__ == "__main__":
    main()
