"""`ltc ticket` under torchrun with 2 gloo processes finds the ticket one process finds.

Every rank draws the same seeded global batch and trains on its half; DDP averages the two halves'
gradients, which is the global batch's mean gradient. Only the order of floating-point sums differs
(all-reduce vs one matmul), so weights agree to ~1e-6, not bit for bit; the masks, which depend on
weight ranks, come out identical. LeNet-300-100 has no BatchNorm, whose per-rank batch statistics
would make the two runs genuinely different.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ARGS = ["ticket", "--model", "lenet300", "--dataset", "synthetic", "--iterations", "40", "--eval-every", "20",
        "--batch-size", "30", "--rounds", "1", "--controls", "none", "--no-progress"]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def test_two_gloo_ranks_match_one_process(tmp_path):
    _run([sys.executable, "-m", "ltc.cli", *ARGS, "--run-dir", str(tmp_path / "single")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ltc.cli",
          *ARGS, "--run-dir", str(tmp_path / "ddp")], tmp_path)
    for r in (0, 1):
        a = torch.load(tmp_path / "single" / "trial0" / f"ticket_round{r}.pt", weights_only=True)
        b = torch.load(tmp_path / "ddp" / "trial0" / f"ticket_round{r}.pt", weights_only=True)
        for name in a["masks"]:
            assert torch.equal(a["masks"][name], b["masks"][name]), name
        for name in a["final"]:
            torch.testing.assert_close(a["final"][name], b["final"][name], rtol=1e-3, atol=1e-4)
    assert not list((tmp_path / "ddp" / "trial0").glob("*.tmp"))  # only rank 0 wrote
