"""The plots the LTH paper shows, from a ticket-search run folder (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import torch

from ltc.controls import VARIANTS
from ltc.errors import LtcError
from ltc.fileio import atomic_path, load_torch_data
from ltc.reporting.plots import VARIANT_PLOTS, percent_axis, series, variant_figure
from ltc.ticket import validate_ticket


def _save(fig, path: Path) -> None:
    """Write a PNG atomically (an exclusive temp file, then a rename: never through a link at ``path``)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def _train_vs_test(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in VARIANTS.values():
        for key, marker in (("final_train_accuracy", "s"), ("final_test_accuracy", "o")):
            xs, mean, _, _ = series(summary, variant.name, key)
            if xs:
                ax.plot(xs, [100 * m for m in mean], marker, linestyle=variant.linestyle, color=variant.color,
                        label=f"{variant.label} {'train' if 'train' in key else 'test'}")
    percent_axis(ax)
    ax.set_ylabel("accuracy at the end of training (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def weight_change(run_dir: Path) -> dict | None:
    """|final| - |init| of the dense training, for weights inside vs outside the last round's ticket."""
    trial = run_dir / "trial0"
    dense = trial / "dense.pt"
    tickets = sorted((p for p in trial.glob("ticket_round*.pt") if p.stem.rsplit("round", 1)[1].isdigit()),
                     key=lambda p: int(p.stem.rsplit("round", 1)[1]))
    if not dense.exists() or len(tickets) < 2:
        return None
    d = load_torch_data(dense, "dense-training file")
    masks = validate_ticket(load_torch_data(tickets[-1], "ticket"), tickets[-1])["masks"]
    if not isinstance(d, dict) or not isinstance(d.get("init"), dict) or not isinstance(d.get("final"), dict):
        raise LtcError(f"{dense}: expected a dict with 'init' and 'final' weights; the run folder is damaged: delete "
                       "the trial's rounds to recompute")
    inside, outside = [], []
    for name, m in masks.items():
        if not name.endswith(".weight") or name not in d["init"]:
            continue
        a, b = d["init"][name], d["final"].get(name)
        if not all(isinstance(t, torch.Tensor) and t.shape == m.shape for t in (a, b)) or m.dtype != torch.bool:
            raise LtcError(f"{dense}: '{name}' does not match the mask of {tickets[-1]}; the run folder is damaged: "
                           "delete the trial's rounds to recompute")
        delta = b.float().abs() - a.float().abs()
        inside.append(delta[m].flatten())
        outside.append(delta[~m].flatten())
    if not inside:
        return None
    return {"inside": torch.cat(inside), "outside": torch.cat(outside), "ticket": tickets[-1].name}


def _weight_change_plot(change: dict, path: Path) -> dict:
    """The histogram of the finite changes (a diverged training, e.g. a huge --lr, leaves NaN or inf
    weights: they are counted, not plotted); the means are over the finite changes, None when none is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = {key: change[key][torch.isfinite(change[key])] for key in ("inside", "outside")}
    doc = {f"{key}_mean": float(v.double().mean()) if len(v) else None for key, v in finite.items()}
    doc["ticket"] = change["ticket"]
    non_finite = sum(len(change[key]) - len(finite[key]) for key in finite)
    if non_finite:
        doc["non_finite"] = non_finite
    fig, ax = plt.subplots(figsize=(6, 4))
    values = torch.cat(list(finite.values())).sort().values  # quantile() caps at 16M values
    lo = float(values[int(0.005 * (len(values) - 1))]) if len(values) else 0.0
    hi = float(values[int(0.995 * (len(values) - 1))]) if len(values) else 0.0
    pad = max(1e-6, 1e-6 * max(abs(lo), abs(hi)))  # 80 bins of a range even a huge value can tell apart
    if not hi - lo >= pad:
        lo, hi = lo - pad, hi + pad
    for key, color in (("inside", "tab:blue"), ("outside", "tab:gray")):
        mean, v = doc[f"{key}_mean"], finite[key]
        if not ((v >= lo) & (v <= hi)).any():  # none (finite) in the range: density would be 0/0
            continue
        ax.hist(v.double().numpy(), bins=80, range=(lo, hi), density=True, alpha=0.55, color=color,
                label=f"{key} the ticket (n={len(v)}, mean {mean:+.4f})")
    ax.set_xlabel("|final weight| - |initial weight| (dense training)"
                  + (f"; {non_finite} NaN/inf changes left out" if non_finite else ""))
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return doc


def write_plots(run_dir: Path, summary: dict) -> dict[str, str]:
    plots = {}
    files = {"accuracy": "accuracy_vs_remaining.png", "early_stop": "early_stop_vs_remaining.png"}
    for key, ylabel, scale, name in VARIANT_PLOTS:
        p = run_dir / files[name]
        _save(variant_figure(summary, key, ylabel, scale), p)
        plots[name] = str(p)
    p = run_dir / "train_vs_test.png"
    _train_vs_test(summary, p)
    plots["generalization"] = str(p)
    change = weight_change(run_dir)
    if change is not None:
        p = run_dir / "weight_change.png"
        summary["weight_change"] = _weight_change_plot(change, p)
        plots["weight_change"] = str(p)
    return plots
