"""What constant chains cost and buy at run time: dense against compressed with and without them.

For the CNNs whose `shift` variant (conv filters and BN scale zero, BN shift kept: what
`torch.nn.utils.prune` leaves) has constant chains, at input side 224, legacy export: the dense
export, `ltc compress` as shipped, and the same with `--no-chains` (the control: those channels
stay, as before chains existed). Latency:
ONNX Runtime CPU, 2 threads, batch 1 and 8, 7 interleaved rounds of 20 runs, medians; nothing else
may run meanwhile. Parameters and MACs are ltc's report.

    .venv/bin/python experiments/real_models/chains_latency.py                  # results-chains-latency.json, ~6 min
    .venv/bin/python experiments/real_models/chains_latency.py --round-to auto  # ...-round-to-auto.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as real  # noqa: E402 - this folder's experiment: models, masks, exports

HERE = Path(__file__).parent
MODELS = [("torchvision", "mobilenet_v2"), ("torchvision", "mobilenet_v3_small"), ("torchvision", "efficientnet_b0"),
          ("torchvision", "mnasnet0_5"), ("torchvision", "shufflenet_v2_x1_0"), ("timm", "ghostnet_100"),
          ("timm", "rexnet_100")]


def compressed(src: Path, out: Path, chains: bool, round_to: int | str) -> dict:
    from ltc.api import compress_file

    doc = compress_file(src, out, round_to=round_to, chains=chains)
    return {"params": doc["after"]["parameters"], "macs": doc["after"]["macs"],
            "nodes": len(__import__("onnx").load(str(out), load_external_data=False).graph.node)}


def main() -> None:
    from ltc.benchmarks.bench import BenchOptions, bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--round-to", default="1", help="ltc compress --round-to (1: every dead channel; auto: the CLI's default)")
    args = ap.parse_args()
    round_to = args.round_to if args.round_to == "auto" else int(args.round_to)
    wanted = [m for m in MODELS if not args.models or m[1] in args.models.split(",")]
    rows = []
    for lib, name in wanted:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            model = real.build(lib, name, args.side).eval()
            real.kill_half(model, "shift", 0, args.side)
            src = real.export(model, t / "dense.onnx", args.side, "legacy")
            row = {"model": f"{lib}:{name}", "side": args.side,
                   "round_to": round_to, "with_chains": compressed(src, t / "chains.onnx", True, round_to),
                   "without_chains": compressed(src, t / "plain.onnx", False, round_to)}
            import onnx

            dense = onnx.load(str(src), load_external_data=False)
            row["dense"] = {"nodes": len(dense.graph.node)}
            rep = bench([str(src), str(t / "plain.onnx"), str(t / "chains.onnx")],
                        BenchOptions(batches=(1, 8), threads=2, warmup=3, iterations=20, rounds=7))
            for run in rep["runs"]:
                dense_ms, plain_ms, chains_ms = (m["latency"]["median_ms"] for m in run["models"].values())
                row[f"b{run['batch']}_ms"] = {"dense": dense_ms, "without_chains": plain_ms, "with_chains": chains_ms}
            rows.append(row)
            print(json.dumps(row), flush=True)
    suffix = "" if round_to == 1 else f"-round-to-{round_to}"
    (HERE / f"results-chains-latency{suffix}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
