"""`ltc compress` must not import torch unless it reads a .pt file (torch alone takes ~1.5 s)."""

from __future__ import annotations

import subprocess
import sys


def test_compress_path_does_not_import_torch():
    code = ("import sys; import ltc.cli, ltc.api, ltc.passes, ltc.exporters.masks, ltc.render; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
