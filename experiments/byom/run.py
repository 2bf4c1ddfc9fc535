"""The README's worked example: a torchvision ResNet-18 (random init, no download) pruned on Fashion-MNIST
with ltc.search, exported with ltc.export, compressed and benched with the CLI (per layer).

Fashion-MNIST (Debian's dataset-fashion-mnist) is read by ltc, converted to 3 channels (28x28: ResNet-18's
stem and pooling bring it to 1x1), and a subset is used so that it runs in minutes on 2 cores: 12,000
training, 2,000 validation and 2,000 test images. Two rounds of refill (channel-wise tickets) at 50% of
the surviving conv weights per round, then the round-2 ticket goes to ONNX, `ltc compress` and
`ltc bench --per-layer`.

    .venv/bin/pip install --no-deps torchvision==0.28.0   # (here: the PyPI build, imported as tests/zoo.py does)
    .venv/bin/python experiments/byom/run.py               # about 10 minutes here; writes results.json, out/
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
import ltc  # noqa: E402
from ltc.compressor.data import load_dataset  # noqa: E402
from tests.zoo import import_zoos  # noqa: E402


def main() -> None:
    torchvision, _ = import_zoos()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    data = load_dataset("fashion-mnist", val_size=2000, channels=3)
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(data.train_x), generator=g)[:12000]
    te = torch.randperm(len(data.test_x), generator=g)[:2000]
    train = (data.train_x[tr], data.train_y[tr])
    val = (data.val_x, data.val_y)
    test = (data.test_x[te], data.test_y[te])
    t0 = time.perf_counter()
    summary = ltc.search(torchvision.models.resnet18(num_classes=10), train, val, test, out=out / "runs",
                         rounds=2, structure="refill", rate_conv=0.5, rate_fc=0.2, controls="none",
                         iterations=300, eval_every=100, batch_size=64, lr=1e-3, progress=False)
    search_s = time.perf_counter() - t0
    ticket = Path(summary["run_dir"]) / "trial0" / "ticket_round2.pt"
    ltc.export(torchvision.models.resnet18(num_classes=10), ticket, torch.randn(1, 3, 28, 28), out / "r18.onnx")
    ltc_cli = str(Path(sys.executable).with_name("ltc"))
    compress = subprocess.run([ltc_cli, "compress", str(out / "r18.onnx"), "--mask", str(ticket), "-o",
                               str(out / "r18-c.onnx"), "--json"], capture_output=True, text=True, check=True)
    report = json.loads(compress.stdout)
    bench = subprocess.run([ltc_cli, "bench", str(out / "r18.onnx"), str(out / "r18-c.onnx"), "--threads", "2",
                            "--batch", "1", "--batch", "32", "--rounds", "5", "--per-layer", "--json",
                            str(out / "bench.json"), "--markdown", str(out / "bench.md")],
                           capture_output=True, text=True, check=True)
    rows = [{"round": r["round"], "density": r["density"],
             "test_accuracy": r["variants"]["ticket"]["test_accuracy"]["mean"]} for r in summary["rounds"]]
    results = {"search_seconds": search_s, "rounds": rows, "run_dir": str(Path(summary["run_dir"]).relative_to(HERE)),
               "compress": {k: report[k] for k in ("before", "after", "verification")},
               "bench_stdout": bench.stdout[-4000:]}
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(rows, indent=1))
    print(compress.stdout[:0], {k: report[k]["parameters"] for k in ("before", "after")},
          report["verification"].get("passed"))
    print(bench.stdout[-3000:])


if __name__ == "__main__":
    main()
