"""Copy a finished run's summary and plots into results/<name>/ and print the comparison table.

    python experiments/lth_lenet/collect.py RUN_DIR NAME
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(run_dir: str, name: str) -> None:
    run = Path(run_dir)
    dest = HERE / "results" / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ["summary.json", "summary.md", "hparams.json", *[p.name for p in run.glob("*.png")]]:
        shutil.copy(run / f, dest / f)
    summary = json.loads((run / "summary.json").read_text())
    rows = summary["rounds"]
    dense = rows[0]["variants"]["ticket"]
    print("| round | P_m | ticket: test acc mean [min, max] | ticket: early stop | reinit: test acc | reinit: early stop |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        t = row["variants"]["ticket"]
        r = row["variants"].get("reinit")

        def acc(s):
            a = s["test_accuracy"]
            return f"{100 * a['mean']:.2f}% [{100 * a['min']:.2f}, {100 * a['max']:.2f}]"

        def es(s):
            e = s["early_stop_iteration"]
            return f"{e['mean']:.0f} [{e['min']:.0f}, {e['max']:.0f}]"

        print(f"| {row['round']} | {100 * row['density']:.1f}% | {acc(t)} | {es(t)} | "
              f"{acc(r) if r else '-'} | {es(r) if r else '-'} |")
    base_acc, base_es = dense["test_accuracy"]["mean"], dense["early_stop_iteration"]["mean"]
    print(f"\ndense: {100 * base_acc:.2f}% at iteration {base_es:.0f}")
    for target in (0.21, 0.07):
        row = min(rows, key=lambda r: abs(r["density"] - target))
        t = row["variants"]["ticket"]
        r = row["variants"].get("reinit", {})
        print(f"P_m {100 * row['density']:.1f}% (nearest {100 * target:.0f}%): ticket {100 * t['test_accuracy']['mean']:.2f}% "
              f"(dense {'reached' if t['test_accuracy']['mean'] >= base_acc else 'NOT reached'}), early stop "
              f"{t['early_stop_iteration']['mean']:.0f} ({'earlier' if t['early_stop_iteration']['mean'] < base_es else 'not earlier'}"
              f" than dense); reinit {100 * r['test_accuracy']['mean']:.2f}% at {r['early_stop_iteration']['mean']:.0f}"
              if r else "")
    if "weight_change" in summary:
        w = summary["weight_change"]
        print(f"weight change |final|-|init|: inside the ticket {w['inside_mean']:+.4f}, outside {w['outside_mean']:+.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
