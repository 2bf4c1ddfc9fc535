"""Tables of a ticket-search run (``summary.json``): the rows ``ltc ticket`` prints and writes as
``summary.md``, and that ``ltc report`` shows. No torch."""

from __future__ import annotations

from pathlib import Path

from ltc.controls import VARIANTS
from ltc.reporting.tables import markdown_table, md_text, number

RUN_HEADERS = ["round", "P_m (remaining)", "variant", "test acc at early stop (mean [min, max])",
               "early-stop iteration (mean [min, max])", "train acc (final)"]


def _variant_order(name: str) -> tuple[int, str]:
    names = list(VARIANTS)
    return (names.index(name) if name in VARIANTS else len(names), name)


def run_rows(summary: dict) -> list[list[str]]:
    """One row per round and variant (the ticket first, then the controls in registry order)."""
    rows = []
    for row in summary["rounds"]:
        for variant in sorted(row["variants"], key=_variant_order):
            s = row["variants"][variant]
            a, it, tr = s["test_accuracy"], s["early_stop_iteration"], s["final_train_accuracy"]
            rows.append([str(row["round"]), number(100 * row["density"], ".1f", "%"), variant,
                         f"{number(100 * a['mean'], '.2f', '%')} [{number(100 * a['min'], '.2f')}, "
                         f"{number(100 * a['max'], '.2f')}]",
                         f"{number(it['mean'], '.0f')} [{number(it['min'], '.0f')}, {number(it['max'], '.0f')}]",
                         number(100 * tr["mean"], ".2f", "%")])
    return rows


def summary_markdown(summary: dict) -> str:
    """The run as Markdown: the per-round table, then the run's plots."""
    lines = [f"# Ticket search: {md_text(summary['run_dir'])}", "", markdown_table(RUN_HEADERS, run_rows(summary)).rstrip("\n")]
    for name, path in summary.get("plots", {}).items():
        lines += ["", f"![{name}]({Path(path).name})"]
    return "\n".join(lines) + "\n"
