"""Start-up time of the CLI: `ltc --help` against `python -c pass`, 15 interleaved runs each, medians.

    .venv/bin/python experiments/startup/run.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {"python -c pass": [sys.executable, "-c", "pass"], "ltc --help": [str(BIN / "ltc"), "--help"]}


def main(runs: int = 15) -> None:
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(runs):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"{name}: median {1000 * statistics.median(t):.0f} ms (min {1000 * min(t):.0f}, max {1000 * max(t):.0f})")


if __name__ == "__main__":
    main()
