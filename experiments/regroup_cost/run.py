"""What a grouped convolution costs on ONNX Runtime CPU, per MAC, against the dense convolution.

For each (channels C, kernel k, spatial size) a dense Conv(C -> C) and Conv(C -> C, group=G) for every
G dividing C with group width C/G >= 4 are timed at batch 1 and batch 32 (2 threads, one session
alive at a time, interleaved rounds, medians). The result is the cost per MAC relative to the dense
conv of the same shape: 1.0 means a G-group conv runs G times faster than dense; 2.0 means only G/2
times. ``ltc.passes.regroup.COST_PER_MAC`` is this table's summary by group width.

    .venv/bin/python experiments/regroup_cost/run.py      # about 3 minutes; writes results.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent


def conv_model(c: int, k: int, groups: int) -> bytes:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c, c // groups, k, k)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[k // 2] * 4)
    g = helper.make_graph([node], "conv", [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def time_model(blob: bytes, feed: np.ndarray, reps: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        s.run(None, {"x": feed})
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, {"x": feed})
        ts.append(time.perf_counter() - t)
    del s
    return statistics.median(ts)


def main() -> None:
    rows = []
    cases = [(64, 3, 56), (128, 3, 28), (256, 3, 14), (128, 1, 28), (256, 1, 14), (512, 1, 7)]
    for c, k, hw in cases:
        for batch in (1, 32):
            feed = np.random.default_rng(1).standard_normal((batch, c, hw, hw)).astype(np.float32)
            gs = [g for g in (1, 2, 4, 8, 16, 32) if c % g == 0 and c // g >= 4]
            blobs = {g: conv_model(c, k, g) for g in gs}
            reps = 30 if batch == 1 else 8
            times: dict[int, list[float]] = {g: [] for g in gs}
            for _ in range(3):  # interleaved rounds
                for g in gs:
                    times[g].append(time_model(blobs[g], feed, reps))
            dense = statistics.median(times[1])
            for g in gs:
                t = statistics.median(times[g])
                rows.append({"channels": c, "kernel": k, "hw": hw, "batch": batch, "groups": g, "width": c // g,
                             "seconds": t, "speedup": dense / t, "cost_per_mac": t * g / dense})
                print(f"C={c} k={k} hw={hw} b={batch} G={g:2d} width={c // g:3d} "
                      f"{t * 1e3:8.3f} ms  speedup {dense / t:5.2f}x  cost/MAC {t * g / dense:5.2f}", flush=True)
    env = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0]}
    (HERE / "results.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
