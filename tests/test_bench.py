"""`ltc bench`: statistics, interleaving, schema, provider fallback, skips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ltc.benchmarks import bench as B
from ltc.cli import main
from ltc.reporting.report import bench_markdown
from tests.helpers import conv_weight, make_model, node, vec

SCHEMA = json.loads((Path(B.__file__).parent / "bench-schema.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    paths = []
    for width in (16, 8):
        m = make_model([node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4), node("Relu", ["y"], ["r"]),
                        node("GlobalAveragePool", ["r"], ["g"]), node("Flatten", ["g"], ["out"])],
                       {"x": ["N", 3, 16, 16]}, ["out"], {"w": conv_weight(width, 3), "b": vec(width)})
        p = d / f"w{width}.onnx"
        p.write_bytes(m.SerializeToString())
        paths.append(str(p))
    return paths


def test_statistics_on_known_inputs():
    s = B.latency_stats([i / 1000 for i in range(1, 101)], batch=4)  # 1..100 ms
    assert s["n"] == 100 and s["min_ms"] == pytest.approx(1) and s["max_ms"] == pytest.approx(100)
    assert s["median_ms"] == pytest.approx(50.5) and s["mean_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1) and s["p99_ms"] == pytest.approx(99.01)
    assert s["throughput_per_s"] == pytest.approx(4 / 0.0505)


def test_ratio_ci_brackets_the_ratio():
    r = B.ratio_ci([2.0] * 5, [1.0] * 5)
    assert r["ratio"] == 0.5 and r["ci_low"] == r["ci_high"] == 0.5
    noisy = B.ratio_ci([1.0, 1.1, 0.9, 1.0, 1.05], [0.5, 0.6, 0.45, 0.5, 0.52])
    assert noisy["ci_low"] <= noisy["ratio"] <= noisy["ci_high"] and noisy["ci_high"] < 1


def test_ratio_ci_covers_the_true_ratio_about_as_often_as_its_level():
    """Rounds drawn around a known ratio (log-normal noise, median exactly 0.7): the 95% interval holds
    0.7 in most of 300 draws of 15 rounds, and is not the point itself."""
    import numpy as np

    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for i in range(300):
        base = rng.uniform(1.0, 2.0, 15)
        other = base * 0.7 * np.exp(rng.normal(0, 0.1, 15))
        r = B.ratio_ci(list(base), list(other), seed=i, samples=500)
        hits += r["ci_low"] <= 0.7 <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert 0.85 <= hits / 300 <= 0.995 and min(widths) > 0


def test_models_run_interleaved_one_session_at_a_time(models, monkeypatch):
    events = []
    real = B._runner

    class Spy:
        def __init__(self, path, provider, batch, opts):
            assert not any(e[0] == "open" for e in events[-1:]), "a session was still open"
            events.append(("open", Path(path).stem))
            self.inner = real(path, provider, batch, opts)
            self.session_seconds, self.providers = self.inner.session_seconds, self.inner.providers

        def run(self):
            self.inner.run()

        def close(self):
            events.append(("close", None))
            self.inner.close()

    monkeypatch.setattr(B, "_runner", Spy)
    B.bench(models, B.BenchOptions(rounds=3, iterations=2, warmup=1))
    opened = [name for kind, name in events if kind == "open"]
    assert opened == ["w16", "w8"] * 3
    assert [k for k, _ in events] == ["open", "close"] * 6


def test_report_matches_the_schema_and_compares_to_the_first(models):
    jsonschema = pytest.importorskip("jsonschema")
    report = B.bench(models, B.BenchOptions(batches=(1, 4), rounds=3, iterations=5, warmup=1, profile=True))
    jsonschema.validate(report, SCHEMA)
    run = report["runs"][0]
    assert set(run["models"]) == {"w16", "w8"} and "vs_first" in run["models"]["w8"]
    assert "vs_first" not in run["models"]["w16"]
    assert {"Conv", "FusedConv"} & {row["op"] for row in run["profile"]["w16"]}  # (which op is slowest is timing)
    assert report["models"]["w8"]["macs_per_sample"] * 2 == report["models"]["w16"]["macs_per_sample"]
    assert "## CPUExecutionProvider, batch 4" in bench_markdown(report)


def test_gpu_request_that_falls_back_to_cpu_is_reported_not_timed(models, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    report = B.bench(models[:1], B.BenchOptions(providers=("cuda",), rounds=2, iterations=2, warmup=1))
    assert report["runs"] == []
    assert "got CPUExecutionProvider" in report["skipped"][0]["reason"]


def test_unavailable_providers_are_skipped_with_the_reason(models):
    report = B.bench(models[:1], B.BenchOptions(providers=("cpu", "tensorrt", "trt"), rounds=2, iterations=2,
                                                 warmup=1))
    assert [r["provider"] for r in report["runs"]] == ["cpu"]
    reasons = {s["provider"]: s["reason"] for s in report["skipped"]}
    assert "TensorrtExecutionProvider is not available" in reasons["tensorrt"]
    assert "tensorrt" in reasons["trt"].lower() or "cuda" in reasons["trt"].lower()


def test_native_tensorrt_engine_runs(models, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT's wheels come from NVIDIA's index, unreachable here")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    report = B.bench(models, B.BenchOptions(providers=("trt",), rounds=2, iterations=5,
                                            engine_cache=str(tmp_path / "cache")))
    assert report["runs"][0]["models"]["w16"]["latency"]["median_ms"] > 0
    assert list((tmp_path / "cache").glob("*.engine"))


def test_cli_bench_writes_json_and_markdown(models, tmp_path):
    r = CliRunner().invoke(main, ["bench", *models, "--rounds", "2", "--iterations", "3", "--warmup", "1",
                                  "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["schema_version"] == B.SCHEMA_VERSION and (tmp_path / "b.md").read_text().startswith("# ltc bench")
    bad = CliRunner().invoke(main, ["bench", str(tmp_path / "missing.onnx")])
    assert bad.exit_code == 1 and bad.output.startswith("error:") and len(bad.output.strip().splitlines()) == 1
    assert np.isfinite(doc["runs"][0]["models"]["w8"]["vs_first"]["ratio"])
