"""`ltc compress` must not import torch unless it reads a .pt file (torch alone takes ~1.5 s)."""

from __future__ import annotations

import subprocess
import sys


def test_compress_path_does_not_import_torch():
    code = ("import sys; import ltc.cli, ltc.api, ltc.passes, ltc.masks, ltc.reporting.tables; "
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
