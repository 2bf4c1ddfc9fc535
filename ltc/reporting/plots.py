"""Plots of a ticket-search run that both the run folder (``ltc ticket``) and ``ltc report`` draw:
matplotlib only (Agg), no torch."""

from __future__ import annotations

COLORS = {"ticket": "tab:blue", "reinit": "tab:orange", "random": "tab:green"}


def series(summary: dict, variant: str, key: str):
    xs, mean, lo, hi = [], [], [], []
    for row in summary["rounds"]:
        s = row["variants"].get(variant)
        if s is None:
            continue
        xs.append(100 * row["density"])
        mean.append(s[key]["mean"])
        lo.append(s[key]["min"])
        hi.append(s[key]["max"])
    return xs, mean, lo, hi


def percent_axis(ax) -> None:
    """Log-scaled remaining-weights axis, decreasing to the right, plain percentages."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.xaxis.set_major_locator(FixedLocator([100, 50, 30, 20, 10, 5, 3, 2, 1, 0.5, 0.3, 0.2, 0.1]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("P_m: weights remaining (%)")


def variant_figure(summary: dict, key: str, ylabel: str, scale: float = 1.0):
    """``key`` (mean, min-max band) vs remaining weights for the ticket and each control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in ("ticket", "reinit", "random"):
        xs, mean, lo, hi = series(summary, variant, key)
        if not xs:
            continue
        label = {"ticket": "winning ticket", "reinit": "random reinit", "random": "random pruning"}[variant]
        ax.plot(xs, [scale * m for m in mean], "o-", color=COLORS[variant], label=label)
        ax.fill_between(xs, [scale * v for v in lo], [scale * v for v in hi], color=COLORS[variant], alpha=0.2)
    percent_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# (summary key, y label, scale, plot name) of the two per-round plots the run folder and the report show
VARIANT_PLOTS = (("test_accuracy", "test accuracy at early stop (%)", 100, "accuracy"),
                 ("early_stop_iteration", "early-stop iteration", 1, "early_stop"))
