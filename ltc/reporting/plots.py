"""Plots of a ticket-search run that both the run folder (``ltc ticket``) and ``ltc report`` draw:
matplotlib only (Agg), no torch."""

from __future__ import annotations

from ltc.controls import VARIANTS


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


def literal_text():
    """A context (matplotlib on Agg) in which every string is drawn as written: names of models, layers
    and providers come from files, and "$", "\\", "^" or "_" in them would otherwise be parsed as
    mathtext, a parse error for "$\\sqrt{x$". Tick labels are made when a figure is drawn, so drawing
    (savefig) belongs inside it too."""
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


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
    for variant in VARIANTS.values():
        xs, mean, lo, hi = series(summary, variant.name, key)
        if not xs:
            continue
        ax.plot(xs, [scale * m for m in mean], "o", linestyle=variant.linestyle, color=variant.color,
                label=variant.label)
        ax.fill_between(xs, [scale * v for v in lo], [scale * v for v in hi], color=variant.color, alpha=0.2)
    percent_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# (summary key, y label, scale, plot name) of the two per-round plots the run folder and the report show
VARIANT_PLOTS = (("test_accuracy", "test accuracy at early stop (%)", 100, "accuracy"),
                 ("early_stop_iteration", "early-stop iteration", 1, "early_stop"))


def per_layer_figure(per_layer: dict, top: int = 30):
    """Horizontal bars of each layer's median time, every model side by side, the first model's
    slowest layer at the top; then the "other" and "outside kernels" rows. ``top`` layers at most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = per_layer["baseline"]
    names = [base] + [n for n in per_layer["models"] if n != base]
    rows = sorted(per_layer["layers"], key=lambda r: -r["median_ms"][base])[:top]
    labels = [r["layer"] for r in rows] + ["other", "outside kernels"]
    times = {n: [r["median_ms"][n] for r in rows] + [per_layer["models"][n]["other_ms"],
                                                      per_layer["models"][n]["outside_kernels_ms"]] for n in names}
    height = 0.8 / len(names)
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(labels) * max(1.0, len(names) / 2)))
    colors = ["black", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
    for k, n in enumerate(names):
        ax.barh(y + (k - (len(names) - 1) / 2) * height, times[n], height, color=colors[k % len(colors)],
                alpha=0.55 if k == 0 else 0.9, label=n)
    ax.set_yticks(y, [s if len(s) <= 48 else "..." + s[-45:] for s in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median time per run (ms)")
    more = len(per_layer["layers"]) - len(rows)
    ax.set_title(f"per layer, sorted by {base}'s time" + (f" (top {top}; {more} more in the table)" if more > 0 else ""),
                 fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
