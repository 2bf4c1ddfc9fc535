"""What do issue 7's input checks cost? `ltc compress` time before and after, on ResNet-18 and ResNet-50.

Two long-lived worker processes, one per code version (this checkout, and REV checked out as a git
worktree), each import ltc once and time ``ltc.api.compress_file`` in-process; the runs alternate
A B, B A, ... so that machine noise and order effects hit both alike. Models: ResNet-18 and ResNet-50 (224x224, ImageNet
shapes, random init), half of every prunable width dead, legacy exporter with BN folded, dynamic batch.

    python experiments/hardening_overhead/run.py [--old c3218e3] [--repeats 7]

Writes results.json and results.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ltc.api import compress_file
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    compress_file(job["model"], job["out"], round_to=1, verify=job["verify"])
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
"""


def resnet50(widths=None):
    """torchvision's ResNet-50 layout (bottlenecks 3-4-6-3), written here to need no torchvision."""
    import torch
    from torch import nn

    from ltc.compressor.models import conv_bn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, cout, 1, act=None))
            self.shortcut = nn.Sequential() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=None)

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
            for s, (n, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
                for b in range(n):
                    layers.append(Bottleneck(cin, mid, 4 * mid, 2 if b == 0 and s > 0 else 1))
                    cin = 4 * mid
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return ResNet50()


def half_dead(model, seed: int = 0):
    """Kill half of the filters of every conv that feeds a BN inside a bottleneck's or block's body."""
    import random

    import torch

    rng = random.Random(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for name, m in model.named_modules():
            inner = ("body.0" in name or "body.1" in name) if "body" in name else name.endswith("conv1")
            if isinstance(m, torch.nn.Sequential) and inner and isinstance(m[0], torch.nn.Conv2d):
                dead = rng.sample(range(m[0].out_channels), m[0].out_channels // 2)
                m[0].weight[dead] = 0
                m[1].weight[dead] = 0
                m[1].bias[dead] = 0
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", default="c3218e3", help="the code version to compare with")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from ltc.compressor.models import resnet18
    from ltc.exporters.torch_export import export_onnx

    old = Path(tempfile.gettempdir()) / f"ltc-{args.old}"
    if not old.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old], check=True,
                       capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="ltc-overhead-"))
    models = {"resnet18-224": half_dead(resnet18()), "resnet50-224": half_dead(resnet50())}
    for name, model in models.items():
        export_onnx(model, tmp / f"{name}.onnx", (3, 224, 224), exporter="legacy")
    workers = {label: subprocess.Popen([sys.executable, "-c", WORKER, str(root)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
               for label, root in (("before", old), ("after", ROOT))}
    results = {}
    for name in models:
        for verify in (True, False):
            times = {label: [] for label in workers}
            for r in range(args.repeats + 1):  # the first round warms caches and is dropped
                order = list(workers.items()) if r % 2 else list(workers.items())[::-1]  # A B, B A, ...
                for label, w in order:
                    w.stdin.write(json.dumps({"model": str(tmp / f"{name}.onnx"), "verify": verify,
                                              "out": str(tmp / f"{name}-{label}.onnx")}) + "\n")
                    w.stdin.flush()
                    seconds = json.loads(w.stdout.readline())["seconds"]
                    if r:
                        times[label].append(seconds)
            before, after = statistics.median(times["before"]), statistics.median(times["after"])
            ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
            key = f"{name} {'verify' if verify else 'no-verify'}"
            results[key] = {"before_s": before, "after_s": after, "ratio_of_medians": after / before,
                            "median_paired_ratio": statistics.median(ratios), "repeats": args.repeats}
            print(f"{key}: before {before:.3f} s, after {after:.3f} s, after/before {after / before:.3f} "
                  f"(median paired {statistics.median(ratios):.3f})", flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    (HERE / "results.json").write_text(json.dumps({"old": args.old, "results": results}, indent=2) + "\n")
    lines = [f"# compress time before ({args.old}) and after the input checks", "",
             "| model, mode | before (median s) | after (median s) | after / before | median of paired ratios |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['before_s']:.3f} | {v['after_s']:.3f} | {v['ratio_of_medians']:.3f} | "
              f"{v['median_paired_ratio']:.3f} |" for k, v in results.items()]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
