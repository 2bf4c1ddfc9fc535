"""`ltc compress` must not import torch unless it reads a .pt file (torch alone takes ~1.5 s)."""

from __future__ import annotations

import subprocess
import sys


def test_compress_path_does_not_import_torch():
    code = ("import sys; import ltc.cli, ltc.api, ltc.passes, ltc.exporters.masks, ltc.render; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


HEAVY = ("onnx", "torch", "numpy", "onnxruntime", "matplotlib", "onnx_graphsurgeon", "rich")


def test_help_imports_no_heavy_module():
    """`ltc --help` and every command's --help start without onnx, numpy, torch, onnxruntime,
    matplotlib or graphsurgeon (they are imported where a command uses them)."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ltc.cli import main\n"
            "for args in [['--help']] + [[c, '--help'] for c in main.commands]:\n"
            "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ""


def test_moved_modules_keep_their_old_paths():
    from ltc import hardware, onnx_io
    from ltc.passes import hardware as old_hardware
    from ltc.passes import onnx_io as old_onnx_io

    assert old_hardware.default_round_to is hardware.default_round_to
    assert old_onnx_io.read_model is onnx_io.read_model and old_onnx_io.TWO_GB == onnx_io.TWO_GB


def test_report_from_bench_json_imports_no_torch(tmp_path):
    """`ltc report --bench b.json` (JSON -> HTML with plots, the per-layer table and chart too) needs
    neither torch nor onnx."""
    from tests.test_report import _bench

    bench = _bench(tmp_path, per_layer=True)
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ltc.cli import main\n"
            f"r = CliRunner().invoke(main, ['report', '--bench', {str(bench)!r}, '-o', {str(tmp_path / 'r.html')!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "" and (tmp_path / "r.html").stat().st_size > 1000


def test_presentation_moved_into_reporting_keeps_its_old_paths():
    """Tables, Markdown and HTML live in ltc.reporting; the old module paths are the same module objects."""
    import ltc.benchmarks.report
    import ltc.render
    from ltc.benchmarks.bench import markdown
    from ltc.benchmarks.per_layer import per_layer_rows
    from ltc.reporting import report, tables

    assert ltc.render is tables and ltc.benchmarks.report is report
    assert markdown is report.bench_markdown and per_layer_rows is tables.per_layer_rows
    assert ltc.benchmarks.report.write_report is report.write_report
