"""`ltc report`: the HTML page is self-contained and a real browser shows its plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ltc.cli import main
from ltc.reporting.report import model_kind, pareto

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


def _per_layer(times: dict[str, list[float]], macs: dict[str, list[int]]) -> dict:
    """A per-layer entry (bench schema 2) for layers conv0, conv1, ... with these times and MACs, in
    that order (``ltc bench`` writes them sorted; the report sorts them again)."""
    base, other = list(times)
    layers = []
    for i in range(len(times[base])):
        t = {n: times[n][i] for n in times}
        m = {n: macs[n][i] for n in macs}
        ts, ms = 1 - t[other] / t[base], 1 - m[other] / m[base]
        layers.append({"layer": f"conv{i}", "op": "Conv", "median_ms": t, "macs": m,
                       "kernels": {n: {f"conv{i}": "Conv"} for n in times},
                       "vs_first": {other: {"time_saved": ts, "macs_saved": ms, "time_vs_macs_saved": ts / ms if ms else None}}})
    return {"baseline": base, "layers": layers,
            "models": {n: {"profiled_runs": 10, "run_median_ms": sum(times[n]) + 0.05, "other_ms": 0.01,
                           "outside_kernels_ms": 0.04, "other_kernels": {"ReorderInput": "ReorderInput"},
                           "unmapped_layers": []} for n in times}}


def _bench(tmp: Path, per_layer: bool = False) -> Path:
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
    if per_layer:  # a version 2 file: dense and compressed compared layer by layer
        doc["schema_version"] = 2
        run = doc["runs"][0]
        run["models"] = {n: run["models"][n] for n in ("round0", "round2-compressed")}
        run["per_layer"] = _per_layer({"round0": [0.9, 0.3, 0.8], "round2-compressed": [0.2, 0.28, 0.5]},
                                      {"round0": [100, 40, 100], "round2-compressed": [25, 20, 50]})
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


def _chromium_images(tmp_path: Path, page: Path) -> list[str]:
    """The <img> tags of ``page`` as headless Chromium left them after the load handler ran (each
    marked data-loaded="1" when its PNG decoded); a screenshot of the page must show something."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom  # the page's load handler ran
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1100,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000
    return re.findall(r"<img[^>]*>", dom)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_every_plot(tmp_path):
    run, bench = _summary(tmp_path), _bench(tmp_path)
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", "--run", str(run), "--bench", str(bench), "-o", str(out)]).exit_code == 0
    imgs = _chromium_images(tmp_path, out)
    assert len(imgs) == 4
    assert all('data-loaded="1"' in i for i in imgs)  # every PNG decoded (naturalWidth > 0)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_headless_chromium_shows_the_per_layer_chart(tmp_path):
    bench = _bench(tmp_path, per_layer=True)
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", "--bench", str(bench), "-o", str(out)]).exit_code == 0
    imgs = _chromium_images(tmp_path, out)
    assert [re.search(r"alt=\"([^\"]*)\"", i).group(1) for i in imgs] == ["latency", "per_layer_0_0"]
    assert all('data-loaded="1"' in i for i in imgs)


def test_per_layer_table_and_chart_sorted_by_the_first_models_time(tmp_path):
    bench = _bench(tmp_path, per_layer=True)
    r = CliRunner().invoke(main, ["report", "--bench", str(bench), "-o", str(tmp_path / "r.html"),
                                  "--markdown", str(tmp_path / "r.md")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "r.md").read_text()
    assert "(r-per_layer_0_0.png)" in md and (tmp_path / "r-per_layer_0_0.png").stat().st_size > 1000
    table = md[md.index("| layer | op |"):].splitlines()
    assert table[0].startswith("| layer | op | ms (round0) | ms (round2-compressed) | time saved |")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:] if line.startswith("| conv")]
    assert [row[0] for row in rows] == ["conv0", "conv2", "conv1"]  # by round0's time: 0.9, 0.8, 0.3
    # conv1: 7% of the time saved for 50% of the MACs: time saved / MACs saved = 0.13
    assert rows[2][2:] == ["0.300", "0.280", "7%", "40", "20", "50%", "0.13"]
    assert "other (kernels no layer owns)" in md and "outside kernels" in md
    page = (tmp_path / "r.html").read_text()
    assert "alt='per_layer_0_0'" in page and "<td>conv1</td>" in page


def test_compress_reports_name_the_kind_of_the_models_they_wrote(tmp_path):
    from ltc.reporting.report import compress_kinds, latency_points

    bench = {"models": {"dense": {"path": str(tmp_path / "a.onnx"), "parameters": 100},
                        "small": {"path": str(tmp_path / "b.onnx"), "parameters": 50},
                        "fast": {"path": str(tmp_path / "c.onnx"), "parameters": 60}},
             "runs": [{"provider": "cpu", "batch": 1, "models": {
                 n: {"latency": {"median_ms": 1.0, "p90_ms": 1.0}} for n in ("dense", "small", "fast")}}]}
    kinds = compress_kinds([{"output": str(tmp_path / "b.onnx"), "regroup": None},
                            {"output": str(tmp_path / "c.onnx"), "regroup": {"grouped": 2, "gathers": 0, "layers": []}}])
    got = {p["model"]: p["kind"] for p in latency_points(bench, None, kinds)}
    assert got == {"dense": "dense", "small": "channel", "fast": "group"}  # (the first by its name)
