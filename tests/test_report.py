"""`ltc report`: the HTML page is self-contained and a real browser shows its plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ltc.benchmarks.report import model_kind, pareto
from ltc.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _summary(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    rounds = []
    for r, (d, acc) in enumerate([(1.0, 0.95), (0.5, 0.955), (0.25, 0.94)]):
        s = lambda v: {"mean": v, "min": v - 0.01, "max": v + 0.01, "n": 2}  # noqa: E731
        variants = {"ticket": {"test_accuracy": s(acc), "early_stop_iteration": s(100 - 10 * r),
                               "final_train_accuracy": s(1.0), "final_test_accuracy": s(acc)}}
        if r:
            variants["reinit"] = {"test_accuracy": s(acc - 0.05), "early_stop_iteration": s(120),
                                  "final_train_accuracy": s(0.99), "final_test_accuracy": s(acc - 0.05)}
        rounds.append({"round": r, "density": d, "trials": 2, "variants": variants})
    (run / "summary.json").write_text(json.dumps({"run_dir": str(run), "hparams": {}, "rounds": rounds}))
    return run


def _bench(tmp: Path) -> Path:
    def model(ms):
        lat = {k: ms for k in ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")}
        return {"latency": {**lat, "n": 10, "std_ms": 0.0, "throughput_per_s": 1000 / ms},
                "round_medians_ms": [ms] * 3, "session_create_s": 0.01, "rss_increase_bytes": 0}

    doc = {"ltc_report": "bench", "schema_version": 1, "created": "now",
           "environment": {"cpu": "test cpu", "cpu_flags": [], "logical_cores": 2, "onnxruntime": "x",
                           "onnxruntime_providers": [], "gpu": None, "tensorrt": None},
           "options": {"opt_level": "all", "threads": 0, "rounds": 3, "batches": [1], "providers": ["cpu", "cuda"],
                       "warmup": 1, "iterations": 10, "fp16": False, "io_binding": False},
           "models": {n: {"path": n, "file_bytes": 1, "parameters": p, "macs_per_sample": p}
                      for n, p in (("round0", 100), ("round2", 100), ("round2-compressed", 30))},
           "runs": [{"provider": "cpu", "provider_name": "CPUExecutionProvider", "providers_used": ["CPU"],
                     "batch": 1, "io_binding": False, "copies_timed": True, "models": {
                         "round0": model(2.0), "round2": {**model(2.0), "vs_first": {"ratio": 1.0, "ci_low": 0.9,
                                                                                     "ci_high": 1.1, "speedup": 1.0,
                                                                                     "level": 0.95, "rounds": 3}},
                         "round2-compressed": {**model(0.5), "vs_first": {"ratio": 0.25, "ci_low": 0.2,
                                                                          "ci_high": 0.3, "speedup": 4.0,
                                                                          "level": 0.95, "rounds": 3}}}}],
           "skipped": [{"provider": "cuda", "batch": 1, "reason": "no GPU"}]}
    path = tmp / "bench.json"
    path.write_text(json.dumps(doc))
    return path


def test_kinds_and_pareto_front():
    assert model_kind("round0") == "dense" and model_kind("round3") == "unstructured"
    assert model_kind("round3-compressed") == "channel" and model_kind("resnet-group") == "group"
    pts = [{"model": "a", "accuracy": 0.9, "median_ms": 1.0}, {"model": "b", "accuracy": 0.95, "median_ms": 2.0},
           {"model": "c", "accuracy": 0.89, "median_ms": 1.5}]
    assert [p["model"] for p in pareto(pts)] == ["a", "b"]
    # latencies of different batch sizes are not compared with each other
    b32 = [{**p, "batch": 32, "median_ms": 10 * p["median_ms"]} for p in pts]
    b1 = [{**p, "batch": 1} for p in pts]
    assert [(p["model"], p["batch"]) for p in pareto(b1 + b32)] == [("a", 1), ("b", 1), ("a", 32), ("b", 32)]


def test_report_html_and_markdown(tmp_path):
    run, bench = _summary(tmp_path), _bench(tmp_path)
    r = CliRunner().invoke(main, ["report", "--run", str(run), "--bench", str(bench), "-o", str(tmp_path / "r.html"),
                                  "--markdown", str(tmp_path / "md" / "r.md")])
    assert r.exit_code == 1 and "does not exist" in r.output  # the markdown folder is checked first
    assert not (tmp_path / "r.html").exists()
    (tmp_path / "md").mkdir()
    r = CliRunner().invoke(main, ["report", "--run", str(run), "--bench", str(bench), "-o", str(tmp_path / "r.html"),
                                  "--markdown", str(tmp_path / "md" / "r.md")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"<img class='plot'[^>]*src='data:image/png;base64,", page)) == 4
    assert "src='http" not in page and "href=" not in page  # self-contained
    assert "Pareto front" in page and "no GPU" in page
    md = (tmp_path / "md" / "r.md").read_text()
    for name in ("accuracy", "early_stop", "latency", "pareto"):
        assert f"(r-{name}.png)" in md and (tmp_path / "md" / f"r-{name}.png").stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_every_plot(tmp_path):
    run, bench = _summary(tmp_path), _bench(tmp_path)
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", "--run", str(run), "--bench", str(bench), "-o", str(out)]).exit_code == 0
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", out.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom  # the page's load handler ran
    imgs = re.findall(r"<img[^>]*>", dom)
    assert len(imgs) == 4
    assert all('data-loaded="1"' in i for i in imgs)  # every PNG decoded (naturalWidth > 0)
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1100,1600", out.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000


def test_compress_reports_name_the_kind_of_the_models_they_wrote(tmp_path):
    from ltc.benchmarks.report import compress_kinds, latency_points

    bench = {"models": {"dense": {"path": str(tmp_path / "a.onnx"), "parameters": 100},
                        "small": {"path": str(tmp_path / "b.onnx"), "parameters": 50},
                        "fast": {"path": str(tmp_path / "c.onnx"), "parameters": 60}},
             "runs": [{"provider": "cpu", "batch": 1, "models": {
                 n: {"latency": {"median_ms": 1.0, "p90_ms": 1.0}} for n in ("dense", "small", "fast")}}]}
    kinds = compress_kinds([{"output": str(tmp_path / "b.onnx"), "regroup": None},
                            {"output": str(tmp_path / "c.onnx"), "regroup": {"grouped": 2, "gathers": 0, "layers": []}}])
    got = {p["model"]: p["kind"] for p in latency_points(bench, None, kinds)}
    assert got == {"dense": "dense", "small": "channel", "fast": "group"}  # (the first by its name)
