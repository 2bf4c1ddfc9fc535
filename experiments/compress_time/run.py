"""How long `ltc compress` takes, as a ratio of onnx.load + onnx.save of the same file, and next to onnxslim.

ResNet-18 and MobileNetV2 (224x224, ltc's registry) and a ResNet-50 (torchvision's bottleneck layout,
written here: torchvision is not installed) at random init, half of every prunable width dead
(filters zero, BN scale and shift zero), exported with the legacy exporter (BN folded, dynamic batch).
Mask from zeros. Timed in one process, interleaved per repeat (load+save, compress without
verification, compress with verification, the order rotating each repeat), files in /dev/shm
(RAM) unless `--disk`; medians. Then the `ltc compress` CLI and the `onnxslim` CLI
on the ResNet-50 file, as subprocesses, interleaved; medians.

    .venv/bin/pip install onnxslim   # the reference peer (not an ltc dependency)
    .venv/bin/python experiments/compress_time/run.py
    .venv/bin/python experiments/compress_time/run.py --stages mobilenetv2-224   # stage profile
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from ltc.api import compress_file
from ltc.compressor.models import MobileNetV2, kill_channels, resnet18
from ltc.exporters.torch_export import export_onnx

HERE = Path(__file__).parent


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.down(x))


class ResNet50(nn.Module):
    input_shape = (3, 224, 224)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for n, mid, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
            for i in range(n):
                blocks.append(Bottleneck(cin, mid, mid * 4, stride if i == 0 else 1))
                cin = mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))

    def kill_half(self, seed: int) -> None:
        rng = random.Random(seed)
        with torch.no_grad():
            for b in self.blocks:
                for conv, bn in ((b.conv1, b.bn1), (b.conv2, b.bn2)):
                    dead = rng.sample(range(conv.out_channels), conv.out_channels // 2)
                    conv.weight[dead] = 0
                    bn.weight[dead] = 0
                    bn.bias[dead] = 0


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "resnet50-224":
        model = ResNet50().eval()
        model.kill_half(seed)
        return model
    model = {"resnet18-224": resnet18, "mobilenetv2-224": MobileNetV2}[name]().eval()
    rng = random.Random(seed)
    kill_channels(model, {k: sorted(rng.sample(range(v), v // 2)) for k, v in model.widths.items()})
    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


STAGES = [("ltc.api", "read_model"), ("ltc.passes.pipeline", "normalize"), ("ltc.passes.pipeline", "import_graph"),
          ("ltc.passes.pipeline", "ChannelGraph"), ("ltc.passes.pipeline", "plan_removal"),
          ("ltc.passes.pipeline", "apply_removal"), ("ltc.passes.pipeline", "export_graph"),
          ("ltc.passes.pipeline", "load_check"), ("ltc.passes.pipeline", "verify"),
          ("ltc.passes.pipeline", "check_output"), ("ltc.api", "save_model")]


def stage_profile(name: str, repeats: int = 15) -> None:
    """`--stages NAME`: each stage of one compress without verification, wrapped with a timer; medians."""
    import importlib

    times: dict[str, list[float]] = {}

    def timer(module, fn_name):
        fn = getattr(module, fn_name)

        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times.setdefault(fn_name, []).append(time.perf_counter() - t0)
        setattr(module, fn_name, wrapped)

    for module, fn_name in STAGES:
        timer(importlib.import_module(module), fn_name)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        model = build(name)
        src = export_onnx(model, Path(tmp) / f"{name}.onnx", model.input_shape)
        out = Path(tmp) / "out.onnx"
        for _ in range(3):
            compress_file(src, out, round_to=1, verify=False)
        times.clear()
        total = [timed(lambda: compress_file(src, out, round_to=1, verify=False)) for _ in range(repeats)]
        base = [timed(lambda: onnx.save(onnx.load(str(src)), str(out))) for _ in range(repeats)]
    for key, samples in times.items():
        print(f"{key:16s} {statistics.median(samples) * 1e3:6.2f} ms")
    print(f"total {statistics.median(total) * 1e3:.1f} ms, load+save {statistics.median(base) * 1e3:.1f} ms")


def main() -> None:
    if "--stages" in sys.argv:
        stage_profile(sys.argv[sys.argv.index("--stages") + 1])
        return
    repeats = 7
    results: dict = {"env": {"python": sys.version.split()[0], "onnx": onnx.__version__, "torch": torch.__version__}}
    ram = "/dev/shm" if Path("/dev/shm").is_dir() and "--disk" not in sys.argv else None
    results["env"]["files"] = ram or "disk"  # RAM-backed files take disk write-back noise out of the baseline
    with tempfile.TemporaryDirectory(dir=ram) as tmp:
        tmp = Path(tmp)
        for name in ("resnet18-224", "resnet50-224", "mobilenetv2-224"):
            model = build(name)
            src = export_onnx(model, tmp / f"{name}.onnx", model.input_shape)
            out = tmp / "out.onnx"
            runs: dict[str, list[float]] = {"load_save": [], "compress": [], "compress_verify": []}
            compress_file(src, out, round_to=1)  # warm-up: imports, ORT initialisation
            jobs = {"load_save": lambda s=src, o=out: onnx.save(onnx.load(str(s)), str(o)),
                    "compress": lambda s=src, o=out: compress_file(s, o, round_to=1, verify=False),
                    "compress_verify": lambda s=src, o=out: compress_file(s, o, round_to=1)}
            order = list(jobs)
            for i in range(repeats):  # the order rotates: none always follows the previous one's writes
                for key in order[i % 3:] + order[:i % 3]:
                    runs[key].append(timed(jobs[key]))
                    out.unlink()
            med = {k: statistics.median(v) for k, v in runs.items()}
            report = compress_file(src, out, round_to=1)
            results[name] = {"median_s": med, "samples_s": runs,
                             "ratio_no_verify": med["compress"] / med["load_save"],
                             "ratio_verify": med["compress_verify"] / med["load_save"],
                             "params": [report["before"]["parameters"], report["after"]["parameters"]]}
            print(name, {k: round(v, 3) for k, v in med.items()},
                  f"ratios {results[name]['ratio_no_verify']:.2f}x / {results[name]['ratio_verify']:.2f}x", flush=True)
            if name == "resnet50-224":
                shutil.copy(src, tmp / "r50.onnx")
        results["cli_resnet50"] = cli_race(tmp / "r50.onnx", tmp, repeats=5)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def cli_race(src: Path, tmp: Path, repeats: int) -> dict:
    ltc = [str(Path(sys.executable).with_name("ltc")), "compress", str(src), "-o", str(tmp / "ltc.onnx")]
    slim = [str(Path(sys.executable).with_name("onnxslim")), str(src), str(tmp / "slim.onnx")]
    runs: dict[str, list[float]] = {"ltc": [], "onnxslim": []}
    for _ in range(repeats):
        for key, cmd in (("ltc", ltc), ("onnxslim", slim)):
            for f in tmp.glob(f"{key if key == 'ltc' else 'slim'}.onnx*"):
                f.unlink()
            runs[key].append(timed(lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    sizes = {"input": src.stat().st_size, "ltc": (tmp / "ltc.onnx").stat().st_size,
             "onnxslim": (tmp / "slim.onnx").stat().st_size}
    print("CLI on resnet50:", {k: round(v, 2) for k, v in med.items()}, sizes, flush=True)
    return {"median_s": med, "samples_s": runs, "bytes": sizes}


if __name__ == "__main__":
    main()
