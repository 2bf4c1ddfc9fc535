"""Hostile bench and compress reports fed to `ltc report`. Families, not single cases: names drawn from
an alphabet of matplotlib mathtext, Markdown and HTML syntax go everywhere a report shows a name (the
plots must draw them as written, the Markdown and HTML must show them as text and nothing more), and
every number of a bench report is set in turn to the values that break arithmetic (zero, minus zero,
a denormal, huge, negative, NaN, infinite): the schema refuses it with one line, or the report shows
"n/a" where a ratio is undefined; never a crash, never "nan" or "inf" in the text."""

from __future__ import annotations

import copy
import html
import json
import math
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ltc.cli import main
from tests.badinput import digest, listing
from tests.test_report import _bench, _summary

# mathtext ($ \ ^ _ { }), Markdown (# | ` * ~ [ ] ( ) ! > -), HTML (< > & ;) and line breaks
ALPHABET = "ab $$\\^_{}%&#<>|`*~[]()!-+=.;:'\"\n\r\t"
# names that each broke something once: mathtext parse errors, a heading, raw HTML, a link, a table cell
KNOWN = ["$\\sqrt{x$", "a$x^2_{3}$ \\frac $", "$", "\\", "_^", "# heading", "<script>alert(1)</script>",
         "| a | b", "`code`", "[link](x)", "![img](x.png)", "line\nbreak", "*em* _em_ ~~del~~", "&lt;&amp;",
         "> quote", "1. list", "- item", "x](y)"]


def hostile_names(seed: int, n: int) -> list[str]:
    """``n`` distinct names: the known troublemakers, then random strings over ``ALPHABET``."""
    rng = random.Random(seed)
    names = list(KNOWN)
    while len(names) < n:
        name = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 14)))
        if name.strip() and " ".join(name.split()) not in {" ".join(m.split()) for m in names}:
            names.append(name)
    rng.shuffle(names)
    return names[:n]


def _renamed(d: dict, old: str, new: str) -> dict:
    return {(new if k == old else k): v for k, v in d.items()}


def hostile_bench(tmp: Path, names: list[str]) -> tuple[Path, list[str]]:
    """The per-layer bench of test_report with a hostile name for every model, layer, op, provider,
    CPU, GPU and skip reason. Model names keep "round<N>" so the run ties them to accuracies (Pareto
    plot and table). Returns the file and the names it holds."""
    doc = json.loads(_bench(tmp, per_layer=True).read_text())
    names = iter(names)
    models = {old: f"{next(names)} round{old[5]} {next(names)}" for old in doc["models"]}
    for old, new in models.items():
        doc["models"] = _renamed(doc["models"], old, new)
        for run in doc["runs"]:
            run["models"] = _renamed(run["models"], old, new)
            pl = run["per_layer"]
            pl["models"] = _renamed(pl["models"], old, new)
            pl["baseline"] = new if pl["baseline"] == old else pl["baseline"]
            for row in pl["layers"]:
                for key in ("median_ms", "macs", "kernels", "vs_first"):
                    row[key] = _renamed(row[key], old, new)
    shown = [models["round0"], models["round2-compressed"]]
    run = doc["runs"][0]
    for row in run["per_layer"]["layers"]:
        row["layer"], row["op"] = next(names), next(names)
        shown += [row["layer"], row["op"]]
    run["provider_name"], doc["environment"]["cpu"] = next(names), next(names)
    doc["environment"]["gpu"] = {"name": next(names)}
    doc["skipped"][0]["reason"] = next(names)
    shown += [run["provider_name"], doc["environment"]["cpu"], doc["environment"]["gpu"]["name"],
              doc["skipped"][0]["reason"]]
    path = tmp / "bench.json"
    path.write_text(json.dumps(doc))
    return path, shown


def hostile_compress(tmp: Path, names: list[str]) -> tuple[Path, list[str]]:
    """A compress report (as `ltc compress --report` writes it) whose paths, layers, ops, reasons and
    regrouped Convs carry hostile names."""
    names = iter(names)
    layers = [{"name": next(names), "op": next(names), "in_before": 8, "in_after": 6, "out_before": 16,
               "out_after": 12, "dead": 2, "kept_because": {next(names): 2}} for _ in range(3)]
    regroup = {"grouped": 1, "gathers": 0, "layers": [
        {"name": next(names), "weight": "w", "groups": 2, "in_channels": 8, "out_channels": 8, "macs_before": 64,
         "macs_after": 32, "predicted_speedup": 1.5, "gathers": [], "reason": ""},
        {"name": next(names), "weight": "w2", "groups": 1, "in_channels": 8, "out_channels": 8,
         "macs_before": None, "macs_after": None, "predicted_speedup": 1.0, "gathers": [], "reason": next(names)}]}
    doc = {"ltc_report": "compress", "version": 1, "input": next(names), "output": next(names),
           "mask": {"source": "zeros"}, "options": {"allow_lossy": False, "round_to": 1, "provider": "cpu",
                                                   "verify": True},
           "layers": layers, "before": {"parameters": 1000, "macs": 5000}, "after": {"parameters": 600, "macs": 3000},
           "verification": None, "lossy": False, "notes": [], "frozen": {}, "regroup": regroup}
    path = tmp / "compress.json"
    path.write_text(json.dumps(doc))
    shown = [doc["input"], doc["output"], *(la[k] for la in layers for k in ("name", "op")),
             *(r for la in layers for r in la["kept_because"]), *(g["name"] for g in regroup["layers"]),
             regroup["layers"][1]["reason"]]
    return path, shown


def _report(tmp: Path, *args) -> tuple[int, str, str, str]:
    """Run `ltc report ARGS -o r.html --markdown r.md`: exit code, output, HTML, Markdown."""
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    result = CliRunner().invoke(main, ["report", *map(str, args), "-o", str(out / "r.html"),
                                       "--markdown", str(out / "r.md")])
    read = lambda name: (out / name).read_bytes().decode() if (out / name).exists() else ""  # noqa: E731
    return result.exit_code, result.output, read("r.html"), read("r.md")


# ------------------------------------------------------------------ reading the Markdown back
PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(character, escaped) pairs of inline Markdown: a backslash before ASCII punctuation escapes it."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in PUNCT:
            out.append((text[i + 1], True))
            i += 2
        else:
            out.append((text[i], False))
            i += 1
    return out


def _literal(text: str) -> str:
    """What a Markdown renderer shows for inline text that holds no markup: escapes and entities undone."""
    shown = "".join(c for c, _ in _tokens(text))
    return shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _markup(text: str) -> list[str]:
    """Unescaped characters in inline text that a Markdown renderer would act on: code spans, emphasis,
    strikethrough, math, pipes, heading marks, raw HTML, the "](" of a link, and "_" beside anything but
    a letter or digit. Brackets alone ("[40.00, 60.00]") are text."""
    toks = _tokens(text)
    found = []
    for i, (c, escaped) in enumerate(toks):
        if escaped:
            continue
        before = toks[i - 1][0] if i else " "
        after = toks[i + 1][0] if i + 1 < len(toks) else " "
        if c in "`*~$|#<" or (c == "]" and after == "(" and not toks[i + 1][1]) or (
                c == "_" and not (before.isalnum() and after.isalnum())):
            found.append(c)
    return found


def _cells(row: str) -> list[str]:
    """A table row's cells, split on the pipes that are not escaped."""
    assert row.startswith("| ") and row.endswith(" |"), row
    cells, cell = [], []
    for c, escaped in _tokens(row[2:-2]):
        if c == "|" and not escaped:
            cells.append("".join(cell))
            cell = []
        else:
            cell.append("\\" + c if escaped else c)
    return [c.strip() for c in [*cells, "".join(cell)]]


def check_markdown(md: str) -> list[str]:
    """Every line of ``md`` is one ltc writes (a heading, a bold caption, an image, a table row, empty),
    with no markup from input in it, and every table row has its header's cells. Returns the text a
    reader sees: each cell, heading and caption with the escapes undone."""
    assert "<" not in md  # no raw HTML can start anywhere
    seen, width = [], None
    for line in md.splitlines():
        if not line or line == "# ltc report":
            width = None
            continue
        if line.startswith("|"):
            if re.fullmatch(r"\|(---\|)+", line):
                continue
            cells = _cells(line)
            width = width or len(cells)
            assert len(cells) == width, f"a name broke the table: {line!r}"
            for cell in cells:
                assert not _markup(cell), f"markup {_markup(cell)} in cell {cell!r}"
                seen.append(_literal(cell))
            continue
        width = None
        if line.startswith("![") and line.endswith(")"):
            alt, dest = re.fullmatch(r"!\[(.*)\]\(([^()\s]*)\)", line).groups()
            assert not [c for c, escaped in _tokens(alt) if c in "[]" and not escaped], line
            seen.append(_literal(alt))
            continue
        text = line[3:] if line.startswith("## ") else line[2:-2] if re.fullmatch(r"\*\*.+\*\*", line) else None
        assert text is not None, f"a line ltc does not write: {line!r}"
        assert not _markup(text), f"markup {_markup(text)} in {line!r}"
        seen.append(_literal(text))
    return seen


def _flat(name: str) -> str:
    return " ".join(name.split())


# ---------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("seed", range(3))
def test_hostile_names_are_drawn_and_written_literally(tmp_path, seed):
    """Names with mathtext ("$\\sqrt{x$" crashed matplotlib), Markdown and HTML in every place a report
    shows a name: the plots draw, the HTML escapes them, the Markdown shows them as text."""
    names = hostile_names(seed, 40)
    bench, shown = hostile_bench(tmp_path, names[:20])
    compress, shown_c = hostile_compress(tmp_path, names[20:])
    run = _summary(tmp_path)
    code, output, page, md = _report(tmp_path, "--run", run, "--bench", bench, "--compress", compress)
    assert code == 0, output
    assert len(re.findall(r"<img class='plot'", page)) == 5  # accuracy, early stop, latency, Pareto, per layer
    seen = check_markdown(md)
    for name in shown + shown_c:
        assert html.escape(name) in page, name
        assert any(_flat(name) in text for text in seen), f"{name!r} not shown in the Markdown"
    for cell_name in shown[:2] + shown_c[2:8]:  # models, layers and ops: a cell of their own
        assert _flat(cell_name) in seen


def test_known_names_render_as_themselves_in_a_markdown_cell():
    from ltc.reporting.tables import markdown_table

    md = markdown_table(["name"], [[n] for n in KNOWN])
    assert check_markdown(md) == ["name", *map(_flat, KNOWN)]
    assert "| 50.00% [40.00, 60.00] | 3 -> 2 | p_layer1_0_conv1_weight |" in markdown_table(
        ["a", "b", "c"], [["50.00% [40.00, 60.00]", "3 -> 2", "p_layer1_0_conv1_weight"]])  # ltc's own text


@pytest.mark.parametrize("seed", range(2))
def test_bench_markdown_of_hostile_names(tmp_path, seed):
    """`ltc bench --markdown` writes the same escaped text (its tables are the one table writer's)."""
    from ltc.reporting.report import bench_markdown
    from ltc.reports import BenchReport

    bench, shown = hostile_bench(tmp_path, hostile_names(seed, 20))
    md = bench_markdown(BenchReport.load(bench))
    assert "<" not in md
    for line in md.splitlines():
        assert not line.startswith(("#", "<", ">")) or re.match(r"#{1,3} \S", line), line
        if line.startswith("|") and not line.startswith("|---"):
            assert not [m for c in _cells(line) for m in _markup(c)], line
    for name in shown:
        assert _flat(name) in _literal(md), name


def test_the_markdown_image_links_survive_an_odd_file_name(tmp_path):
    """The PNGs are named after the Markdown file: a space or parenthesis in it must not break the link."""
    bench = _bench(tmp_path)
    out = tmp_path / "my report (1).md"
    result = CliRunner().invoke(main, ["report", "--bench", str(bench), "-o", str(tmp_path / "r.html"),
                                       "--markdown", str(out)])
    assert result.exit_code == 0, result.output
    assert "](my%20report%20%281%29-latency.png)" in out.read_text()
    assert (tmp_path / "my report (1)-latency.png").exists()


# -------------------------------------------------------------------------------------- numbers
EDGES = {"zero": 0, "minus-zero": -0.0, "denormal": 5e-324, "tiny": 1e-310, "1e12": 1e12, "1e300": 1e300,
         "negative": -1.0, "int-1e400": 10 ** 400, "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
UNDEFINED = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)


def _numbers(doc, path=()) -> list[tuple]:
    """The path of every number in a JSON document (not booleans)."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _numbers(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _numbers(v, (*path, i))]
    return [path] if isinstance(doc, int | float) and not isinstance(doc, bool) else []


def _set(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _bench_doc(tmp: Path) -> dict:
    return json.loads(_bench(tmp, per_layer=True).read_text())


def _accepted(doc) -> bool:
    """The schema takes ``doc``; or it refuses it with one line naming the field."""
    from ltc.errors import LtcError
    from ltc.reports import BenchReport

    try:
        BenchReport.from_dict(doc)
    except LtcError as exc:
        assert "\n" not in str(exc) and "not a valid bench JSON" in str(exc)
        return False
    return True


def _text_ok(*texts: str) -> None:
    for text in texts:
        assert not UNDEFINED.search(text), UNDEFINED.search(text).group()


def _edged(doc: dict, value):
    """(where, doc with the number at ``where`` set to ``value``) for each number the schema lets take it."""
    for where in _numbers(doc):
        edged = _set(doc, where, value)
        if _accepted(edged):
            yield where, edged


@pytest.mark.parametrize("value", EDGES.values(), ids=EDGES)
def test_every_bench_number_at_an_edge_is_refused_or_shown(tmp_path, monkeypatch, value):
    """Each number of a bench report set alone to ``value``: the tables and text of the report (the
    plots are drawn in the next test) come out with "n/a" for what is undefined, or the schema refuses
    the file. A zero confidence bound used to divide by zero."""
    import ltc.reporting.report as report

    monkeypatch.setattr(report, "_plots", lambda *a: {})
    path = tmp_path / "edge.json"
    for _where, edged in _edged(_bench_doc(tmp_path), value):
        path.write_text(json.dumps(edged))
        rep = report.build_report(None, [str(path)], [])
        md, page = report.render_markdown(rep)[0], report.render_html(rep)
        check_markdown(md)
        _text_ok(md, page, report.bench_markdown(rep["benches"][0]))


@pytest.mark.parametrize("value", EDGES.values(), ids=EDGES)
def test_bench_numbers_at_an_edge_all_at_once_through_ltc_report(tmp_path, value):
    """Every number the schema lets take ``value`` takes it at once, plots included: exit 0 and no
    "nan"/"inf" in the text, or exit 1 with one line and nothing written."""
    doc = _bench_doc(tmp_path)
    for where in _numbers(doc):
        edged = _set(doc, where, value)
        if _accepted(edged):
            doc = edged
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(doc))
    before = digest([tmp_path])
    code, output, page, md = _report(tmp_path, "--run", _summary(tmp_path), "--bench", path)
    assert code in (0, 1) and "Traceback" not in output, output
    if code == 1:
        assert output.count("\n") == 1 and output.startswith("error: "), output
        assert digest([tmp_path]) == before and listing(tmp_path / "out") == set()
    else:
        _text_ok(page, md)
        check_markdown(md)


@pytest.mark.slow
@pytest.mark.parametrize("value", EDGES.values(), ids=EDGES)
def test_every_bench_number_at_an_edge_through_ltc_report(tmp_path, value):
    """The first test's matrix end to end, plots drawn: every number alone at ``value``."""
    path = tmp_path / "edge.json"
    for where, edged in _edged(_bench_doc(tmp_path), value):
        path.write_text(json.dumps(edged))
        code, output, page, md = _report(tmp_path, "--bench", path)
        assert code == 0, (where, output)
        _text_ok(page, md)


def test_a_zero_confidence_bound_shows_an_undefined_speed_up(tmp_path):
    doc = _bench_doc(tmp_path)
    path = tmp_path / "zero.json"
    path.write_text(json.dumps(_set(doc, ("runs", 0, "models", "round2-compressed", "vs_first", "ci_low"), 0)))
    code, output, _page, md = _report(tmp_path, "--bench", path)
    assert code == 0, output
    assert "| 4.00x [3.33, n/a] |" in md


def test_plots_draw_with_undefined_points(tmp_path):
    """A model with no parameters as the first one (every share undefined) and NaN latencies: the
    latency plot has nothing to place and is left out; the report is still written."""
    doc = _bench_doc(tmp_path)
    doc["models"]["round0"]["parameters"] = 0
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    code, output, page, _md = _report(tmp_path, "--bench", path)
    assert code == 0, output
    assert "alt='latency'" not in page and "alt='per_layer_0_0'" in page
