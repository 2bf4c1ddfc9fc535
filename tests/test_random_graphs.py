"""Random graphs: compression is exact, valid, never larger, and removes what is provably removable."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ltc.passes import compress
from ltc.passes.stats import count_parameters
from tests.random_graphs import RandomGraph


def _run(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def check_graph(seed: int) -> None:
    g = RandomGraph(seed)
    model = g.model()
    r = compress(model, g.masks or None)
    assert r.verification.passed, seed
    feeds = {"x": np.random.default_rng(seed).standard_normal((3, 4, 8, 8)).astype(np.float32)}
    for a, b in zip(_run(r.reference, feeds), _run(r.model, feeds), strict=True):  # optimisations on
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 + 1e-4 * scale, equal_nan=True, err_msg=f"seed {seed}")
    onnx.checker.check_model(r.model)
    assert count_parameters(r.model) <= count_parameters(r.reference), seed
    dims = {t.name: tuple(t.dims) for t in r.model.graph.initializer}
    for weight, live, _ in g.provable:  # (a layer nothing reads is gone altogether)
        assert dims.get(weight, (0,))[0] <= max(live, 1), f"seed {seed}: '{weight}' kept {dims[weight][0]} rows, {live} live"


@pytest.mark.parametrize("block", range(8))
def test_random_graphs(block):
    for seed in range(block * 40, block * 40 + 40):  # 320 graphs
        check_graph(seed)


@pytest.mark.slow
def test_many_random_graphs():
    for seed in range(1000, 6000):
        check_graph(seed)
