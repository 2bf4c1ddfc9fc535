"""Typed reports (ltc.reports): the dataclasses agree with their JSON Schemas, what the commands return
validates and survives a write and a read unchanged, and a document the schema refuses is refused."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import ltc
from ltc.api import bench_files, compress_file, inspect_file
from ltc.errors import LtcError
from ltc.reports import REPORTS, BenchReport, CompressReport, InspectReport, Report, schema, to_json
from tests.random_graphs import RandomGraph


@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_fields_are_the_schema_properties_and_required_ones_have_no_default(kind):
    cls, s = REPORTS[kind], schema(kind)
    assert set(cls.keys_()) | {"ltc_report"} == set(s["properties"])
    no_default = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")
                  and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert no_default <= set(s["required"]) and s["properties"]["ltc_report"] == {"const": kind}
    assert cls.VERSION_KEY in s["required"]


def _plain(doc) -> dict:
    return json.loads(json.dumps(doc, default=to_json))


def test_compress_and_inspect_reports_of_random_graphs_round_trip(tmp_path):
    """On random graphs: compress_file and inspect_file return typed reports; each validates, reads like
    its document (mapping and attributes), and loads back from its file equal, typed."""
    for seed in range(12):
        onnx.save(RandomGraph(seed).model(), tmp_path / "m.onnx")
        c = compress_file(tmp_path / "m.onnx", tmp_path / "c.onnx", round_to=1, report=tmp_path / "c.json")
        i = inspect_file(tmp_path / "m.onnx")
        assert isinstance(c, CompressReport) and isinstance(i, InspectReport)
        for rep in (c, i):
            rep.validate()
            doc = _plain(rep)
            assert doc == _plain(rep.to_dict()) and list(doc)[:2] == ["ltc_report", "version"]
            assert {k: rep[k] for k in rep} == rep.to_dict() and len(rep) == len(doc)
            assert type(rep).from_dict(doc).to_dict() == doc
        assert c.before is c["before"] and c.verified is c["verification"]["passed"] is True
        assert c.file_size["after"] == (tmp_path / "c.onnx").stat().st_size
        loaded = CompressReport.load(tmp_path / "c.json")
        assert isinstance(loaded, CompressReport) and loaded.to_dict() == _plain(c)
        assert loaded == _plain(c)  # a report compares like its document


def test_absent_optional_keys_stay_absent_and_unknown_keys_are_kept(tmp_path):
    onnx.save(RandomGraph(3).model(), tmp_path / "m.onnx")
    doc = _plain(compress_file(tmp_path / "m.onnx", tmp_path / "c.onnx", round_to=1))
    del doc["seconds_total"], doc["file_size"]
    doc["written_by"] = "a newer ltc"
    rep = CompressReport.from_dict(doc)
    assert rep.to_dict() == doc and "seconds_total" not in rep and rep.seconds_total is None
    assert rep["written_by"] == "a newer ltc"
    with pytest.raises(KeyError):
        rep["file_size"]


def _mutations(doc: dict, rng: np.random.Generator, n: int):
    """Copies of ``doc`` with one required top-level field removed or of a wrong type."""
    required = [k for k in doc if k != "ltc_report"]
    for _ in range(n):
        bad = json.loads(json.dumps(doc))
        key = required[int(rng.integers(len(required)))]
        how = int(rng.integers(3))
        if how == 0:
            del bad[key]
        elif isinstance(doc[key], str):
            bad[key] = 7 if how == 1 else ["not", "this"]
        else:
            bad[key] = ["not", "this"] if how == 1 and not isinstance(doc[key], list) else "wrong"
        yield key, bad


@pytest.mark.parametrize("kind", ["compress", "inspect"])
def test_documents_the_schema_refuses_are_refused_naming_the_field(tmp_path, kind):
    onnx.save(RandomGraph(5).model(), tmp_path / "m.onnx")
    rep = (compress_file(tmp_path / "m.onnx", tmp_path / "c.onnx", round_to=1) if kind == "compress"
           else inspect_file(tmp_path / "m.onnx"))
    doc = _plain(rep)
    s = schema(kind)
    refused = 0
    for key, bad in _mutations(doc, np.random.default_rng(0), 40):
        if key not in s["required"] and key not in bad:
            continue  # an optional key may be absent
        if s["properties"][key].get("type") in (["object", "null"], ["null", "object"]) and bad.get(key) is None:
            continue
        with pytest.raises(LtcError, match=f"not a valid {kind} JSON"):
            REPORTS[kind].from_dict(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(LtcError, match=str(path.name)):
            REPORTS[kind].load(path)
        refused += 1
    assert refused >= 20
    other = "inspect" if kind == "compress" else "compress"
    with pytest.raises(LtcError, match=f"not a valid {other} JSON"):
        REPORTS[other].from_dict(doc)


def test_bench_files_returns_the_report_it_writes(tmp_path):
    from tests.helpers import conv_weight, make_model, node, vec

    paths = []
    for width in (8, 4):
        m = make_model([node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4), node("Relu", ["y"], ["out"])],
                       {"x": ["N", 3, 8, 8]}, ["out"], {"w": conv_weight(width, 3), "b": vec(width)})
        paths.append(tmp_path / f"w{width}.onnx")
        paths[-1].write_bytes(m.SerializeToString())
    rep = bench_files(paths, rounds=2, iterations=3, warmup=1, json_out=tmp_path / "b.json")
    assert isinstance(rep, BenchReport) and rep.schema_version == 2 and list(rep.models) == ["w8", "w4"]
    rep.validate()
    assert BenchReport.load(tmp_path / "b.json").to_dict() == _plain(rep)
    assert rep.runs[0]["models"]["w4"]["vs_first"]["rounds"] == 2


def test_a_report_ltc_builds_wrong_is_its_own_fault(tmp_path):
    from ltc.errors import InternalError

    onnx.save(RandomGraph(1).model(), tmp_path / "m.onnx")
    rep = inspect_file(tmp_path / "m.onnx")
    rep.validate()
    rep.classes = -1
    with pytest.raises(InternalError, match="classes"):
        rep.validate()


# Library calls that do a command's work: the CLI and the demo reach them only through ltc.api.
WORKERS = {"ltc.passes", "ltc.benchmarks.bench.bench", "ltc.benchmarks.bench.bench_files",
           "ltc.reporting.report.write_report", "ltc.compressor.search.ticket_search",
           "ltc.compressor.workflows.train_dense", "ltc.exporters.ticket_export.export_ticket",
           "ltc.onnx_io", "ltc.masks", "ltc.fileio"}


@pytest.mark.parametrize("module", ["cli.py", "demo.py"])
def test_cli_and_demo_only_parse_and_call_the_api(module):
    tree = ast.parse((Path(ltc.__file__).parent / module).read_text())
    used = {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names}
    assert {"ltc.api.compress_file", "ltc.api.bench_files", "ltc.api.report_files"} & used
    assert not {u for u in used if any(u == w or u.startswith(w + ".") for w in WORKERS)}


def test_every_report_class_is_a_report():
    assert all(issubclass(c, Report) for c in REPORTS.values()) and set(REPORTS) == {"compress", "inspect", "bench"}
