"""Interleaved latency measurement on ONNX Runtime CPU.

Benchmark hygiene (DESIGN.md): one session alive at a time (idle sessions' spinning threads slow the
others), warm-up before timing, several rounds with the models interleaved (A B C A B C ...), and
medians. Compare models by the ratio of their medians measured in the same run.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import numpy as np


def _session(path: str | os.PathLike, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if not isinstance(d, int) or d <= 0 else d for d in i.shape]
        if i.shape and isinstance(i.shape[0], int) and i.shape[0] != batch:
            raise ValueError(f"{i.name} has a static batch of {i.shape[0]}, asked for {batch}")
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def interleaved_latency(models: dict[str, str | os.PathLike], batch: int, *, threads: int = 2, rounds: int = 5,
                        warmup: int = 3, iters: int = 10) -> dict[str, list[float]]:
    """Seconds per run for each model: ``rounds`` x ``iters`` samples, models interleaved per round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            sess = _session(path, threads)
            feeds = _feeds(sess, batch)
            for _ in range(warmup):
                sess.run(None, feeds)
            for _ in range(iters):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times[name].append(time.perf_counter() - t0)
            del sess
            gc.collect()
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)
