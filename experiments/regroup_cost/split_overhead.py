"""What one more Conv costs when removal splits a grouped Conv (``--unequal-groups``): the per-node
overhead ``ltc.passes.cost.NODE_OVERHEAD_MACS`` and the Split/Concat around the pieces.

Three measurements on ONNX Runtime CPU (2 threads, batch 1, one session alive at a time, 7
interleaved rounds, medians):

1. **Throughput**: a dense 3x3 Conv 128 -> 128 at 28x28: MACs per microsecond.
2. **Per node**: a chain of 64 tiny 1x1 Convs (4 -> 4 channels at 4x4) against a chain of 1: the
   time per extra Conv, in microseconds and in MACs at the throughput of (1).
3. **Split**: a grouped Conv (G groups of equal width) against the same Conv split into G Convs
   between a Split and a Concat (what ``--unequal-groups always`` writes when every group keeps a
   different width), for a few layer sizes: the ratio split / grouped.

    .venv/bin/python experiments/regroup_cost/split_overhead.py    # about a minute; writes split_overhead.json
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent
RNG = np.random.default_rng(0)


def _model(nodes, inits, c_in: int) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "m", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def dense(c: int, k: int) -> bytes:
    w = RNG.standard_normal((c, c, k, k)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[k // 2] * 4)], {"w": w}, c)


def chain(n: int, c: int = 4) -> bytes:
    nodes, inits, src = [], {}, "x"
    for i in range(n):
        inits[f"w{i}"] = RNG.standard_normal((c, c, 1, 1)).astype(np.float32)
        out = "y" if i == n - 1 else f"t{i}"
        nodes.append(helper.make_node("Conv", [src, f"w{i}"], [out]))
        src = out
    return _model(nodes, inits, c)


def grouped(c: int, g: int, k: int) -> bytes:
    w = RNG.standard_normal((c, c // g, k, k)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], group=g, pads=[k // 2] * 4)], {"w": w}, c)


def split(c: int, g: int, k: int) -> bytes:
    wd = c // g
    parts = [f"p{i}" for i in range(g)]
    nodes = [helper.make_node("Split", ["x", "sizes"], parts, axis=1)]
    inits = {"sizes": np.full(g, wd, np.int64)}
    for i in range(g):
        inits[f"w{i}"] = RNG.standard_normal((wd, wd, k, k)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [parts[i], f"w{i}"], [f"o{i}"], pads=[k // 2] * 4))
    nodes.append(helper.make_node("Concat", [f"o{i}" for i in range(g)], ["y"], axis=1))
    return _model(nodes, inits, c)


def median_us(blobs: list[bytes], feeds: list[np.ndarray], reps: int = 50, rounds: int = 7) -> list[float]:
    """Per model: median over interleaved rounds of the mean time per run, microseconds."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    times: list[list[float]] = [[] for _ in blobs]
    for _ in range(rounds):
        for i, (blob, feed) in enumerate(zip(blobs, feeds, strict=True)):
            sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
            for _ in range(5):
                sess.run(None, {"x": feed})
            t = time.perf_counter()
            for _ in range(reps):
                sess.run(None, {"x": feed})
            times[i].append((time.perf_counter() - t) / reps * 1e6)
            del sess
    return [statistics.median(t) for t in times]


def main() -> None:
    out: dict = {"onnxruntime": ort.__version__}
    x = RNG.standard_normal((1, 128, 28, 28)).astype(np.float32)
    (t_dense,) = median_us([dense(128, 3)], [x])
    macs_per_us = 128 * 128 * 9 * 28 * 28 / t_dense
    out["throughput"] = {"dense_3x3_128_28x28_us": t_dense, "macs_per_us": macs_per_us}
    small = RNG.standard_normal((1, 4, 4, 4)).astype(np.float32)
    t1, t64 = median_us([chain(1), chain(64)], [small, small])
    per_node = (t64 - t1) / 63
    out["per_node"] = {"chain_1_us": t1, "chain_64_us": t64, "per_conv_us": per_node,
                       "per_conv_macs": per_node * macs_per_us}
    rows = []
    for c, g, k, hw in [(128, 32, 3, 14), (128, 8, 3, 28), (256, 16, 3, 14), (64, 4, 3, 28), (256, 64, 1, 14)]:
        feed = RNG.standard_normal((1, c, hw, hw)).astype(np.float32)
        tg, ts = median_us([grouped(c, g, k), split(c, g, k)], [feed, feed])
        dense_macs = c * c * k * k * hw * hw
        rows.append({"channels": c, "groups": g, "kernel": k, "side": hw, "grouped_us": tg, "split_us": ts,
                     "ratio": ts / tg, "extra_per_conv_of_dense": (ts - tg) / g / (dense_macs / macs_per_us)})
        print(rows[-1], flush=True)
    out["split_vs_grouped"] = rows
    (HERE / "split_overhead.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("throughput", "per_node")}, indent=1))


if __name__ == "__main__":
    main()
