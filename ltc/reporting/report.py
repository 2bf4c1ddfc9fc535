"""`ltc report`: one self-contained HTML page (plots embedded) and Markdown from a ticket-search run
folder, bench results and compress reports.

Models in a bench report are tied to ticket rounds by name: a model whose file name contains
``round<N>`` gets the accuracy of round N of the run, so the report can draw latency against remaining
weights and the Pareto front of accuracy against latency.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import warnings
from pathlib import Path
from urllib.parse import quote

from ltc.errors import LtcError
from ltc.reporting.runs import run_rows
from ltc.reporting.tables import (
    GROUP_HEADERS,
    group_rows,
    group_title,
    kept_reasons,
    markdown_table,
    md_text,
    number,
    quotient,
    span,
)
from ltc.reports import BenchReport, CompressReport, load_report_json

KIND_COLORS = {"dense": "black", "unstructured": "tab:gray", "channel": "tab:blue", "group": "tab:purple",
               "model": "tab:orange"}


def _finished(fig, ax, xlabel: str, ylabel: str, legend_size: int) -> bytes:
    """Labels, grid and legend, then the figure as PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def model_kind(name: str) -> str:
    low = name.lower()
    for kind in ("group", "channel", "unstructured", "dense"):
        if kind in low:
            return kind
    if "compressed" in low:
        return "channel"
    if re.search(r"round0(?!\d)", low):
        return "dense"
    return "unstructured" if re.search(r"round\d+", low) else "model"


def compress_kinds(compresses: list[dict]) -> dict[str, str]:
    """Output file -> kind, from compress reports: group when Regroup grouped a Conv, else channel."""
    kinds = {}
    for c in compresses:
        regroup = c.get("regroup") or {}
        kinds[_resolved(c.get("output"))] = "group" if regroup.get("grouped") else "channel"
    return kinds


def _resolved(path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, TypeError, ValueError):
        return str(path)


def latency_points(bench: dict, run: dict | None, kinds: dict[str, str] | None = None) -> list[dict]:
    """One point per (model, provider, batch): remaining parameters vs the first model, latency, accuracy.
    A model that a compress report wrote takes its kind from it (``kinds``), else from its name."""
    points = []
    names = list(bench["models"])
    base_params = bench["models"][names[0]]["parameters"] if names else None
    for run_ in bench["runs"]:
        for name, e in run_["models"].items():
            m = bench["models"][name]
            acc = _round_accuracy(name, run)
            kind = (kinds or {}).get(_resolved(m.get("path", ""))) or model_kind(name)
            points.append({"model": name, "kind": kind, "provider": run_["provider"],
                           "batch": run_["batch"], "median_ms": e["latency"]["median_ms"],
                           "p90_ms": e["latency"]["p90_ms"], "params_remaining": quotient(m["parameters"], base_params),
                           "accuracy": acc})
    return points


def _round_accuracy(name: str, run: dict | None) -> float | None:
    if run is None:
        return None
    match = re.search(r"round(\d+)", name)
    if not match:
        return None
    for row in run["rounds"]:
        if row["round"] == int(match.group(1)) and "ticket" in row["variants"]:
            return row["variants"]["ticket"]["test_accuracy"]["mean"]
    return None


def _finite(x) -> bool:
    """A number that a plot can place and a comparison can rank (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)


def pareto(points: list[dict]) -> list[dict]:
    """Per provider and batch (latencies are only comparable there): the points no other point beats on
    both accuracy (higher) and latency (lower); a point without a finite accuracy and latency is in no
    front."""
    front = []
    points = [p for p in points if _finite(p["accuracy"]) and _finite(p["median_ms"])]
    for key in sorted({(p.get("provider"), p.get("batch")) for p in points}, key=str):
        pts = [p for p in points if (p.get("provider"), p.get("batch")) == key]
        front += sorted((p for p in pts if not any(
            q["accuracy"] >= p["accuracy"] and q["median_ms"] <= p["median_ms"] and
            (q["accuracy"] > p["accuracy"] or q["median_ms"] < p["median_ms"]) for q in pts)),
            key=lambda p: p["median_ms"])
    return front


def _plots(run: dict | None, benches: list[dict], points: list[dict]) -> dict[str, bytes]:
    """The report's PNGs. A point whose latency or parameter share is undefined (zero, NaN, infinite:
    the tables show "n/a") has no place on an axis and is left out; a plot with no point is not drawn."""
    import matplotlib.pyplot as plt

    from ltc.reporting.plots import VARIANT_PLOTS, per_layer_figure, percent_axis, variant_figure

    plots: dict[str, bytes] = {}
    if run is not None:
        for key, ylabel, scale, name in VARIANT_PLOTS:
            plots[name] = _png(variant_figure(run, key, ylabel, scale))
    placed = [p for p in points if _finite(p["median_ms"]) and _finite(p["params_remaining"])
              and p["params_remaining"] > 0]  # a log axis
    if placed:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (provider, batch) in sorted({(p["provider"], p["batch"]) for p in placed}):
            sel = [p for p in placed if p["provider"] == provider and p["batch"] == batch]
            for p in sel:
                ax.scatter(100 * p["params_remaining"], p["median_ms"], color=KIND_COLORS[p["kind"]], s=40)
                ax.annotate(p["model"], (100 * p["params_remaining"], p["median_ms"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            ax.plot([100 * p["params_remaining"] for p in sel], [p["median_ms"] for p in sel], ":", alpha=0.4,
                    label=f"{provider} batch {batch}")
        for kind, color in KIND_COLORS.items():
            if any(p["kind"] == kind for p in placed):
                label = {"unstructured": "unstructured / zeros only", "channel": "channel (compressed)",
                         "group": "group (compressed)"}.get(kind, kind)
                ax.scatter([], [], color=color, label=label)
        percent_axis(ax)
        plots["latency"] = _finished(fig, ax, "parameters remaining (% of the first model)", "median latency (ms)", 7)
    acc_points = [p for p in points if _finite(p["accuracy"]) and _finite(p["median_ms"])]
    if acc_points:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for p in acc_points:
            ax.scatter(p["median_ms"], 100 * p["accuracy"], color=KIND_COLORS[p["kind"]], s=40)
            ax.annotate(f"{p['model']} ({p['provider']} b{p['batch']})", (p["median_ms"], 100 * p["accuracy"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto(acc_points)
        for provider, batch in sorted({(p["provider"], p["batch"]) for p in front}):
            sel = [p for p in front if (p["provider"], p["batch"]) == (provider, batch)]
            ax.plot([p["median_ms"] for p in sel], [100 * p["accuracy"] for p in sel], "-",
                    label=f"Pareto front, {provider} batch {batch}")
        plots["pareto"] = _finished(fig, ax, "median latency (ms)", "test accuracy (%)", 8)
    for key, (_bench, run_) in per_layer_runs(benches).items():
        plots[key] = _png(per_layer_figure(run_["per_layer"]))
    return plots


def per_layer_runs(benches: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Plot key -> (bench, run) of every run that has per-layer data."""
    return {f"per_layer_{i}_{j}": (b, r) for i, b in enumerate(benches) for j, r in enumerate(b["runs"])
            if r.get("per_layer")}


CAPTIONS = {"accuracy": "Test accuracy at early stop vs weights remaining (winning ticket and controls)",
            "early_stop": "Early-stop iteration vs weights remaining",
            "latency": "Latency vs parameters remaining (dense, unstructured, channel, group tickets)",
            "pareto": "Accuracy vs latency, with the Pareto front"}


def _captions(benches: list[dict]) -> dict[str, str]:
    captions = dict(CAPTIONS)
    for key, (_b, r) in per_layer_runs(benches).items():
        captions[key] = (f"Per-layer median time, {r['provider_name']} batch {r['batch']}: every model side by side, "
                         f"sorted by {r['per_layer']['baseline']}'s time")
    return captions


def build_report(run_dir: str | Path | None = None, bench_paths: list[str] | None = None,
                 compress_paths: list[str] | None = None) -> dict:
    """Collect everything the report shows; raises a one-line error on unreadable inputs."""
    run = None
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise LtcError(f"{run_dir}: not a folder; pass the run folder made by `ltc ticket`")
        summary = Path(run_dir) / "summary.json"
        if not summary.exists():
            raise LtcError(f"{run_dir}: no summary.json; pass a run folder made by `ltc ticket`")
        run = load_report_json(summary, "ticket-search summary")
    benches = [BenchReport.load(p) for p in bench_paths or []]
    compresses = [CompressReport.load(p) for p in compress_paths or []]
    if run is None and not benches and not compresses:
        raise LtcError("nothing to report: pass --run, --bench or --compress")
    kinds = compress_kinds(compresses)
    points = [p for b in benches for p in latency_points(b, run, kinds)]
    from ltc.reporting.plots import literal_text

    with warnings.catch_warnings(), literal_text():  # warnings about odd data would break the one-line output
        warnings.simplefilter("ignore")
        plots = _plots(run, benches, points)
    return {"run": run, "benches": benches, "compresses": compresses, "points": points,
            "pareto": pareto(points), "plots": plots, "captions": _captions(benches)}


def _table(headers: list[str], rows: list[list]) -> tuple[str, str]:
    h = "<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in headers) + "</tr></thead><tbody>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    h += "</tbody></table>"
    return h, markdown_table(headers, rows)


def _sections(rep: dict) -> list[tuple[str, list[tuple[str, list[str], list[list]]], list[str]]]:
    """(title, tables [(caption, headers, rows)], plot keys) per section."""
    out = []
    run = rep["run"]
    if run is not None:
        rows = run_rows(run)
        out.append((f"Ticket search ({run['run_dir']})",
                    [("Per round: mean [min, max] over trials", ["round", "P_m", "variant", "test acc", "early stop",
                                                                 "train acc"], rows)], ["accuracy", "early_stop"]))
    for b in rep["benches"]:
        env = b["environment"]
        tables = []
        for r in b["runs"]:
            rows = []
            for name, e in r["models"].items():
                s, vs = e["latency"], e.get("vs_first")
                rows.append([name, number(s["median_ms"], ".3f"), number(s["p90_ms"], ".3f"),
                             number(s["p99_ms"], ".3f"), number(s["throughput_per_s"], ".1f"),
                             _speedup_ci(vs) if vs else "baseline"])
            tables.append((f"{r['provider_name']}, batch {r['batch']}" + ("" if r["provider"] == "cpu" else
                           "; host-device copies " + ("timed" if r["copies_timed"] else "not timed")),
                           ["model", "median ms", "p90 ms", "p99 ms", "throughput/s", "speed-up vs first (95% CI)"], rows))
        for s in b["skipped"]:
            tables.append((f"skipped: {s['provider']} batch {s['batch']}", ["reason"], [[s["reason"]]]))
        out.append((f"Latency ({env['cpu']}; onnxruntime {env['onnxruntime']}; GPU "
                    f"{(env.get('gpu') or {}).get('name', 'none')})", tables, ["latency", "pareto"]))
    for key, (b, r) in per_layer_runs(rep["benches"]).items():
        out.append(per_layer_section(b, r, key))
    if rep["pareto"]:
        out.append(("Pareto front: accuracy vs latency", [("Models no other model beats on both",
                    ["model", "kind", "provider", "batch", "median ms", "accuracy"],
                    [[p["model"], p["kind"], p["provider"], p["batch"], number(p["median_ms"], ".3f"),
                      number(100 * p["accuracy"], ".2f", "%")] for p in rep["pareto"]])], []))
    for c in rep["compresses"]:
        rows = [[la["name"], la["op"], span(la["in_before"], la["in_after"]), span(la["out_before"], la["out_after"]),
                 la["dead"], kept_reasons(la["kept_because"])] for la in c["layers"]]
        v = c.get("verification") or {}
        out.append((f"Channels per layer: {c['input']} -> {c['output']} (parameters {c['before']['parameters']:,} -> "
                    f"{c['after']['parameters']:,}; MACs {c['before']['macs']:,} -> {c['after']['macs']:,}; max abs "
                    f"error {number(v.get('max_abs_error'), '.2g')})",
                    [("", ["layer", "op", "in", "out", "dead out", "why dead channels stayed"], rows)], []))
        if c.get("regroup"):
            out.append((group_title(c["regroup"]), [("", GROUP_HEADERS, group_rows(c["regroup"]))], []))
    return out


def _speedup_ci(vs: dict) -> str:
    """The speed-up over the first model with its 95% interval: the time ratio's bounds inverted; a bound
    that is not a positive finite ratio gives "n/a"."""
    low, high = (quotient(1, vs[k]) if vs[k] > 0 else None for k in ("ci_high", "ci_low"))
    return f"{number(vs['speedup'], '.2f', 'x')} [{number(low, '.2f')}, {number(high, '.2f')}]"


def per_layer_section(bench: dict, run: dict, plot_key: str) -> tuple[str, list, list[str]]:
    """A run's per-layer tables: the first model against each other model (or alone)."""
    from ltc.reporting.tables import per_layer_rows

    pl = run["per_layer"]
    others = [n for n in pl["models"] if n != pl["baseline"]] or [None]
    tables = []
    for name in others:
        headers, rows = per_layer_rows(pl, name)
        tables.append((f"{pl['baseline']} vs {name}" if name else pl["baseline"], headers, rows))
    return (f"Per-layer latency: {run['provider_name']}, batch {run['batch']} (opt level "
            f"{bench['options']['opt_level']}; medians over {pl['models'][pl['baseline']]['profiled_runs']} profiled "
            "runs; a layer's row holds the nodes fused with it or following it)", tables, [plot_key])


def render_html(rep: dict) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ltc report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
             "th{background:#f3f3f3}td:first-child{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
             "figcaption{font-size:13px;color:#555}</style></head><body><h1>ltc report</h1>"]
    shown = set()
    for title, tables, plot_keys in _sections(rep):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for key in plot_keys:
            if key in rep["plots"] and key not in shown:
                shown.add(key)
                data = base64.b64encode(rep["plots"][key]).decode()
                parts.append(f"<figure><img class='plot' alt='{key}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(rep['captions'][key])}</figcaption></figure>")
        for caption, headers, rows in tables:
            if caption:
                parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(_table(headers, rows)[0])
    # marks every plot that decoded, so a headless browser can check that the page shows its images
    parts.append("<script>window.addEventListener('load',()=>{for(const i of document.images)"
                 "{i.dataset.loaded=i.naturalWidth>0?'1':'0'}document.body.dataset.ready='1'})</script>")
    parts.append("</body></html>")
    return "".join(parts)


def render_markdown(rep: dict, image_prefix: str = "") -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the PNG files it links to (``{image_prefix}{plot}.png`` beside it). Titles,
    captions and cells hold names from the input files: all go through :func:`md_text`, so they show as
    written and none can add HTML, a heading or a link."""
    lines = ["# ltc report", ""]
    images: dict[str, bytes] = {}
    for title, tables, plot_keys in _sections(rep):
        lines += [f"## {md_text(title)}", ""]
        for key in plot_keys:
            name = f"{image_prefix}{key}.png"
            if key in rep["plots"] and name not in images:
                images[name] = rep["plots"][key]
                lines += [f"![{md_text(rep['captions'][key], link_text=True)}]({quote(name)})", ""]
        for caption, headers, rows in tables:
            if caption:
                lines += [f"**{md_text(caption)}**", ""]
            lines += [_table(headers, rows)[1]]
    return "\n".join(lines), images


def write_report(run_dir: str | Path | None, bench_paths: list[str], compress_paths: list[str],
                 output: str | Path, markdown: str | Path | None = None) -> list[Path]:
    """Build the report and write the HTML (and Markdown with its PNGs, named after it); every output
    is checked against every input before anything is written. Returns the files written."""
    from ltc.fileio import check_outputs, write_all_atomic

    inputs = [run_dir, *bench_paths, *compress_paths]
    check_outputs([output, markdown], inputs)
    rep = build_report(run_dir, bench_paths, compress_paths)
    files: dict[Path, bytes] = {Path(output): render_html(rep).encode()}
    if markdown is not None:
        md = Path(markdown)
        text, images = render_markdown(rep, f"{md.stem}-")
        files[md] = text.encode()
        files.update({md.with_name(name): data for name, data in images.items()})
    check_outputs(list(files), inputs)
    write_all_atomic(files)
    return list(files)


def bench_markdown(report: dict) -> str:
    """An ``ltc bench`` report as Markdown: the environment, one table per provider and batch, top
    operators, the per-layer comparison, what was skipped. Every line of text goes through
    :func:`md_text` and every table through :func:`markdown_table`: model files may be named anything."""
    env = report["environment"]
    gpu = env.get("gpu") or {}
    lines = [f"# ltc bench ({md_text(report['created'])})", "",
             md_text(f"CPU: {env['cpu']} ({env['logical_cores']} logical cores; {', '.join(env['cpu_flags'])}); "
                     f"GPU: {gpu.get('name', 'none')}{' driver ' + gpu['driver'] if gpu.get('driver') else ''}"
                     f"{' CUDA ' + gpu['cuda'] if gpu.get('cuda') else ''}; onnxruntime {env['onnxruntime']}; "
                     f"TensorRT {env['tensorrt'] or 'not installed'}"), "",
             markdown_table(["model", "parameters", "MACs/sample", "file bytes"],
                            [[name, f"{m['parameters']:,}", f"{m['macs_per_sample']:,}", f"{m['file_bytes']:,}"]
                             for name, m in report["models"].items()]).rstrip("\n")]
    o = report["options"]
    for run in report["runs"]:
        copies = "CPU" if run["provider"] == "cpu" else "host-device copies timed" if run["copies_timed"] \
            else "no copies timed"
        rows = []
        for name, e in run["models"].items():
            s = e["latency"]
            vs = e.get("vs_first")
            cmp = (f"{number(vs['speedup'], '.2f', 'x')} faster (time ratio {number(vs['ratio'], '.3f')} "
                   f"[{number(vs['ci_low'], '.3f')}, {number(vs['ci_high'], '.3f')}])" if vs else "baseline")
            rows.append([name, *(number(s[k], ".3f") for k in ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms")),
                         number(s["throughput_per_s"], ".1f"), number(e["session_create_s"], ".3f"), cmp])
        lines += ["", "## " + md_text(f"{run['provider_name']}, batch {run['batch']} (opt level {o['opt_level']}, "
                                      f"threads {o['threads'] or 'default'}, {o['rounds']} rounds interleaved; "
                                      f"{copies})"), "",
                  markdown_table(["model", "median ms", "p90", "p99", "min", "mean", "throughput/s", "session s",
                                  "vs first (95% CI)"], rows).rstrip("\n")]
        for name, ops in run.get("profile", {}).items():
            lines += ["", md_text(f"Top operators, {name}: " + ", ".join(
                f"{op['op']} {number(100 * op['share'], '.0f', '%')}" for op in ops[:6]))]
        if run.get("per_layer"):
            title, tables, _ = per_layer_section(report, run, "")
            lines += ["", f"### {md_text(title)}"]
            for caption, headers, rows in tables:
                lines += ["", f"**{md_text(caption)}**", "", markdown_table(headers, rows).rstrip("\n")]
    for s in report["skipped"]:
        lines += ["", md_text(f"skipped {s['provider']} batch {s['batch']}: {s['reason']}")]
    return "\n".join(lines) + "\n"
