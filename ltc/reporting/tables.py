"""Human-readable tables for compress and inspect reports (rich), the one Markdown table writer and the
escaping and number formatting that every Markdown report goes through."""

from __future__ import annotations

import math
import re

from rich.console import Console
from rich.table import Table


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def quotient(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None where that is undefined: a zero, non-finite or missing
    denominator, or a result too large for a float (reports read numbers from files)."""
    try:
        q = numerator / denominator
    except (ZeroDivisionError, OverflowError, TypeError):
        return None
    return q if math.isfinite(q) else None


def number(x: float | int | None, spec: str, unit: str = "") -> str:
    """``x`` formatted with ``spec`` and ``unit``, or "n/a" where it is undefined (None, NaN, infinite)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    try:
        return format(x, spec) + unit
    except OverflowError:  # an integer beyond a float, formatted as one
        return "n/a"


def _ratio(before: float, after: float) -> str:
    return number(quotient(before, after), ".2f", "x")


def span(before: int, after: int) -> str:
    """A channel count before -> after, or one number when it did not change."""
    return str(before) if before == after else f"{before} -> {after}"


def kept_reasons(kept_because: dict[str, int]) -> str:
    return "; ".join(f"{n}: {reason}" for reason, n in sorted(kept_because.items(), key=lambda kv: -kv[1]))


def layer_table(layers: list[dict], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col, justify in (("layer", "left"), ("op", "left"), ("in", "right"), ("out", "right"),
                         ("dead out", "right"), ("why dead channels stayed", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for row in layers:
        table.add_row(row["name"], row["op"], span(row["in_before"], row["in_after"]),
                      span(row["out_before"], row["out_after"]), str(row["dead"]), kept_reasons(row["kept_because"]))
    return table


GROUP_HEADERS = ["layer", "in", "out", "groups", "widths in/out", "MACs", "speed-up (table)", "Gathers / why dense"]


def group_rows(regroup: dict) -> list[list[str]]:
    """One row per Conv the Regroup pass looked at (the console table and the HTML/Markdown report)."""
    rows = []
    for row in regroup["layers"]:
        g = row["groups"]
        macs = "-" if row["macs_before"] is None else span(row["macs_before"], row["macs_after"])
        rows.append([row["name"], str(row["in_channels"]), str(row["out_channels"]), str(g),
                     _widths(row) if g > 1 else "-", macs,
                     number(row["predicted_speedup"], ".2f", "x") if g > 1 else "-",
                     ", ".join(row["gathers"]) if g > 1 else row["reason"]])
    return rows


def _widths(row: dict) -> str:
    ins, outs = row.get("in_widths") or [], row.get("out_widths") or []
    if len(set(ins)) <= 1 and len(set(outs)) <= 1:
        return f"{row['in_channels'] // row['groups']}/{row['out_channels'] // row['groups']}"
    return "split " + ", ".join(f"{i}/{o}" for i, o in zip(ins, outs, strict=True))


def group_title(regroup: dict) -> str:
    return f"regroup: {regroup['grouped']} grouped Conv(s), {regroup['gathers']} Gather(s) inserted"


def group_table(regroup: dict) -> Table:
    table = Table(title=group_title(regroup))
    for col in GROUP_HEADERS:
        table.add_column(col, justify="left" if col in ("layer", "Gathers / why dense") else "right",
                         overflow="fold")
    for row in group_rows(regroup):
        table.add_row(*row)
    return table


def print_compress(doc: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(layer_table(doc["layers"], f"ltc compress: {doc['input']} -> {doc['output']}"))
    if doc.get("regroup"):
        console.print(group_table(doc["regroup"]))
    b, a = doc["before"], doc["after"]
    summary = Table(show_header=True)
    for col in ("", "before", "after", "ratio"):
        summary.add_column(col, justify="right")
    summary.add_row("parameters", _fmt_int(b["parameters"]), _fmt_int(a["parameters"]), _ratio(b["parameters"], a["parameters"]))
    summary.add_row("MACs / sample", _fmt_int(b["macs"]), _fmt_int(a["macs"]), _ratio(b["macs"], a["macs"]))
    fs = doc["file_size"]
    summary.add_row("file bytes", _fmt_int(fs["before"]), _fmt_int(fs["after"]), _ratio(fs["before"], fs["after"]))
    console.print(summary)
    v = doc["verification"]
    if v is None:
        console.print("verification: skipped (--no-verify)")
    else:
        state = "passed" if v["passed"] else ("LOSSY (allowed)" if doc["lossy"] else "FAILED")
        console.print(f"verification: {state}; max abs error {v['max_abs_error']:.3g}, max rel error "
                      f"{v['max_rel_error']:.3g} (rtol {v['rtol']}, atol {v['atol']}, inputs: {v['inputs']})")
    for note in doc["notes"]:
        console.print(f"note: {note}")
    if doc["mask"].get("unmatched"):
        console.print(f"note: {len(doc['mask']['unmatched'])} mask(s) matched nothing in the graph "
                      f"(e.g. BN folded by the exporter): {', '.join(doc['mask']['unmatched'][:6])}")
    if doc["mask"].get("shared"):
        pairs = [f"{a} -> {b}" for a, b in list(doc["mask"]["shared"].items())[:4]]
        console.print(f"note: {len(doc['mask']['shared'])} mask(s) share an initializer that the exporter stored once "
                      f"for equal weights (both masks apply): {', '.join(pairs)}")
    console.print(f"round-to {doc['options']['round_to']} ({doc['options']['provider']}); "
                  f"time {doc['seconds_total']:.2f} s")


def print_inspect(doc: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(layer_table(doc["layers"], f"ltc inspect: {doc['input']} (after -> = removable now)"))
    console.print(f"channel classes: {doc['classes']}; frozen {doc['frozen_classes']}; removable now "
                  f"{doc['removable_classes']}")
    for reason, n in sorted(doc["frozen_by"].items(), key=lambda kv: -kv[1]):
        console.print(f"  frozen ({n} classes): {reason}")
    d = doc.get("dead_filters")
    if d and d["dead"]:
        console.print(f"dead filters: {d['dead']}; removable now {d['removed']}; coupled to a live channel "
                      f"{d['coupled']}; pinned by a whole-channel op {d['pinned']}; constant not foldable "
                      f"{d['unfoldable']}; blocked by ltc {d['blocked']} "
                      f"({100 * d['removable_share']:.0f}% of what an exact tool could remove is removed)")
        for reason, n in list(d["blockers"].items())[:5]:
            console.print(f"  blocked ({n} filters): {reason}")
    if doc["ops_not_in_rule_table"]:
        console.print(f"ops not in the rule table: {', '.join(doc['ops_not_in_rule_table'])}")
    s = doc["stats"]
    console.print(f"parameters {_fmt_int(s['parameters'])}; MACs/sample {_fmt_int(s['macs'])}")


# What makes text in a Markdown line more than text: backslash escapes, code spans, emphasis and
# strikethrough, math ($, GitHub), table pipes, heading marks, the "](" that closes a link's text, and
# an underscore unless letters or digits stand on both sides (intraword "_" never emphasises).
_MD_INLINE = re.compile(r"[\\`*~$|#]|\](?=\()|(?<![^\W_])_|_(?![^\W_])")
_MD_LINK_TEXT = re.compile(r"[\[\]]|" + _MD_INLINE.pattern)  # inside [...]: every bracket too


def md_text(value, link_text: bool = False) -> str:
    """``value`` as literal inline Markdown, whatever a model, layer or provider is named. Whitespace
    (newlines too) collapses to single spaces, so the text never starts a line, where "#", ">", "-" or
    "1." would act; "&" and "<" become HTML entities (no raw HTML, no autolink; a lone ">" is then
    plain text); Markdown's own marks are backslash-escaped, brackets too in ``link_text`` (inside
    ``![...]``). What ltc writes itself ("3 -> 2", "50.00% [40.00, 60.00]") comes out unchanged."""
    text = " ".join(str(value).split()).replace("&", "&amp;").replace("<", "&lt;")
    return (_MD_LINK_TEXT if link_text else _MD_INLINE).sub(lambda m: "\\" + m.group(), text)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """The Markdown table of every ltc report: each cell through :func:`md_text`."""
    md = "| " + " | ".join(md_text(c) for c in headers) + " |\n|" + "---|" * len(headers) + "\n"
    return md + "".join("| " + " | ".join(md_text(c) for c in r) + " |\n" for r in rows)


# ---------------------------------------------------------------------------------- per-layer tables
PER_LAYER_HEADERS = ["layer", "op", "ms (first)", "ms", "time saved", "MACs (first)", "MACs", "MACs saved",
                     "time saved / MACs saved"]


def _pct(x: float | None) -> str:
    return "-" if x is None else number(100 * x, ".0f", "%")


def _int(x: int | None) -> str:
    return "?" if x is None else f"{x:,}"


def per_layer_rows(per_layer: dict, name: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one comparison (the first model against ``name``; only the first model
    when None), sorted by the first model's time, then the "other" and "outside kernels" rows."""
    base = per_layer["baseline"]
    headers = PER_LAYER_HEADERS if name else PER_LAYER_HEADERS[:3] + PER_LAYER_HEADERS[5:6]
    headers = [h.replace("(first)", f"({base})") if "first" in h else (f"{h} ({name})" if h in ("ms", "MACs") else h)
               for h in headers]
    rows = []
    for r in sorted(per_layer["layers"], key=lambda r: -r["median_ms"][base]):
        row = [r["layer"], r["op"], number(r["median_ms"][base], ".3f")]
        if name:
            vs = r["vs_first"][name]
            ratio = vs["time_vs_macs_saved"]
            row += [number(r["median_ms"][name], ".3f"), _pct(vs["time_saved"]), _int(r["macs"][base]),
                    _int(r["macs"][name]), _pct(vs["macs_saved"]), "-" if ratio is None else number(ratio, ".2f")]
        else:
            row.append(_int(r["macs"][base]))
        rows.append(row)
    models = per_layer["models"]
    for label, key in (("other (kernels no layer owns)", "other_ms"), ("outside kernels (ORT, profiler)",
                                                                         "outside_kernels_ms")):
        row = [label, "", number(models[base][key], ".3f")]
        row += [number(models[name][key], ".3f"), "", "", "", "", ""] if name else [""]
        rows.append(row)
    return headers, rows
