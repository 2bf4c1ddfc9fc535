"""`ltc compress` / `ltc inspect` end to end: mask sources, reports, and every bad input."""

from __future__ import annotations

import json
import logging
import pickle
import random

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from ltc.cli import main  # noqa: E402
from ltc.compressor.models import VGG, kill_channels  # noqa: E402
from ltc.exporters.torch_export import export_onnx  # noqa: E402
from ltc.passes.stats import count_parameters  # noqa: E402
from ltc.ticket import make_ticket, save_ticket  # noqa: E402
from tests.helpers import assert_equivalent  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)
SHAPE = (3, 16, 16)


def channel_masks(model) -> dict:
    """Masks that keep exactly the non-zero entries of every weight and BN parameter of ``model``."""
    return {name: p.detach() != 0 for name, p in model.named_parameters()}


def _vgg(seed: int = 0) -> VGG:
    torch.manual_seed(seed)
    return VGG(cfg=[8, 8, "M", 16, "M", 16], image=16).eval()


def _dead_vgg(seed: int = 0) -> VGG:
    model = _vgg(seed)
    rng = random.Random(seed)
    kill_channels(model, {k: sorted(rng.sample(range(v), v // 2)) for k, v in model.widths.items()})
    return model


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dense_and_ticket(tmp_path_factory):
    """A dense model exported as is, and a ticket (masks + weights) of its channel-pruned version."""
    d = tmp_path_factory.mktemp("vgg")
    dense = _vgg(1)
    pruned = _vgg(1)
    rng = random.Random(1)
    kill_channels(pruned, {k: sorted(rng.sample(range(v), v // 2)) for k, v in pruned.widths.items()})
    export_onnx(dense, d / "dense.onnx", SHAPE, exporter="dynamo")
    export_onnx(pruned, d / "pruned.onnx", SHAPE, exporter="dynamo")
    ticket = make_ticket("vgg", {}, channel_masks(pruned), dense.state_dict(), pruned.state_dict(),
                         structure={"kind": "channel"})
    save_ticket(ticket, d / "ticket.pt")
    return d


def test_compress_with_ticket_matches_zero_inference(dense_and_ticket, tmp_path):
    d = dense_and_ticket
    r1 = invoke("compress", d / "dense.onnx", "--mask", d / "ticket.pt", "-o", tmp_path / "a.onnx",
                "--round-to", "1", "--report", tmp_path / "a.json")
    assert r1.exit_code == 0, r1.output
    r2 = invoke("compress", d / "pruned.onnx", "-o", tmp_path / "b.onnx", "--round-to", "1")
    assert r2.exit_code == 0, r2.output
    a, b = onnx.load(tmp_path / "a.onnx"), onnx.load(tmp_path / "b.onnx")
    assert count_parameters(a) == count_parameters(b) < count_parameters(onnx.load(d / "dense.onnx"))
    assert_equivalent(a, b, {"input": (None, *SHAPE)})
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["verification"]["passed"] and report["mask"]["matched"] > 0
    assert report["after"]["macs"] < report["before"]["macs"]
    assert {"name", "in_before", "out_after", "kept_because"} <= set(report["layers"][0])


def test_legacy_exporter_names_are_matched_by_values(tmp_path):
    """The legacy exporter folds BN and renames conv weights onnx::Conv_N: match by values."""
    pruned = _dead_vgg(3)
    export_onnx(pruned, tmp_path / "m.onnx", SHAPE, exporter="legacy")
    names = [t.name for t in onnx.load(tmp_path / "m.onnx").graph.initializer]
    assert any(n.startswith("onnx::Conv") for n in names)
    ticket = make_ticket("vgg", {}, channel_masks(pruned), pruned.state_dict(), pruned.state_dict())
    save_ticket(ticket, tmp_path / "t.pt")
    r = invoke("compress", tmp_path / "m.onnx", "--mask", tmp_path / "t.pt", "-o", tmp_path / "o.onnx",
               "--round-to", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    # 4 conv weights through BN folding (by values) + the classifier's weight and bias (by name);
    # the BN masks match nothing: their zeros are already folded into the conv weights
    assert doc["mask"]["matched"] == 6
    assert all(".1." in name for name in doc["mask"]["unmatched"])
    assert doc["after"]["parameters"] < doc["before"]["parameters"]


def test_prune_state_dict_mask(tmp_path):
    from torch.nn.utils import prune

    model = _vgg(4)
    export_onnx(model, tmp_path / "m.onnx", SHAPE, exporter="dynamo")
    conv = model.layers_of["conv1"][0]
    prune.ln_structured(conv, "weight", amount=0.5, n=1, dim=0)  # whole filters
    torch.save(model.state_dict(), tmp_path / "pruned_sd.pt")
    r = invoke("compress", tmp_path / "m.onnx", "--mask", tmp_path / "pruned_sd.pt", "-o",
               tmp_path / "o.onnx", "--round-to", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    conv1 = [layer for layer in doc["layers"] if layer["out_before"] == 8][1]
    assert conv1["out_after"] == 4


def test_npz_mask_and_unmatched_entries(dense_and_ticket, tmp_path):
    d = dense_and_ticket
    w = [t for t in onnx.load(d / "dense.onnx").graph.initializer if len(t.dims) == 4][0]
    mask = np.ones(tuple(w.dims), bool)
    mask[[0, 2, 3]] = False
    np.savez(tmp_path / "m.npz", **{w.name: mask, "bn.weight": np.ones(8, bool)})
    r = invoke("compress", d / "dense.onnx", "--mask", tmp_path / "m.npz", "-o", tmp_path / "o.onnx",
               "--round-to", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["mask"]["unmatched"] == ["bn.weight"]
    assert doc["layers"][0]["out_after"] == 5
    strict = invoke("compress", d / "dense.onnx", "--mask", tmp_path / "m.npz", "-o", tmp_path / "s.onnx",
                    "--strict-mask")
    assert strict.exit_code == 1 and "bn.weight" in strict.output
    assert not (tmp_path / "s.onnx").exists()


def test_inspect_lists_classes_and_blockers(dense_and_ticket):
    r = invoke("inspect", dense_and_ticket / "pruned.onnx", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["classes"] > 0 and doc["removable_classes"] > 0
    assert any("graph output" in reason for reason in doc["frozen_by"])
    assert doc["stats"]["macs"] > 0
    table = invoke("inspect", dense_and_ticket / "pruned.onnx")
    assert "channel classes" in table.output


def test_mask_removing_every_channel_keeps_one_and_says_which(dense_and_ticket, tmp_path):
    d = dense_and_ticket
    w = [t for t in onnx.load(d / "dense.onnx").graph.initializer if len(t.dims) == 4][0]
    np.savez(tmp_path / "all.npz", **{w.name: np.zeros(tuple(w.dims), bool)})
    r = invoke("compress", d / "dense.onnx", "--mask", tmp_path / "all.npz", "-o", tmp_path / "o.onnx",
               "--round-to", "1")
    assert r.exit_code == 0, r.output
    assert "every channel was removable; kept channel 0" in r.output.replace("\n", " ")


def test_external_data_model_round_trips(dense_and_ticket, tmp_path):
    m = onnx.load(dense_and_ticket / "pruned.onnx")
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    r = invoke("compress", tmp_path / "ext.onnx", "-o", tmp_path / "out.onnx", "--round-to", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.onnx.data").exists()
    out = onnx.load(tmp_path / "out.onnx")
    m = onnx.load(dense_and_ticket / "pruned.onnx")  # save_model above turned m's tensors external
    assert count_parameters(out) < count_parameters(m)
    assert_equivalent(m, out, {"input": (None, *SHAPE)})


# ------------------------------------------------------------------ bad input: one line, exit 1, nothing written
def _fails(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for w in words:
        assert w in result.output


def test_corrupt_and_non_onnx_files(dense_and_ticket, tmp_path):
    data = (dense_and_ticket / "dense.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    for f in ("trunc.onnx", "text.onnx"):
        _fails(invoke("compress", tmp_path / f, "-o", tmp_path / "o.onnx"), "not", "ONNX")
        assert not (tmp_path / "o.onnx").exists()
    _fails(invoke("compress", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx"), "no such file")


def test_mask_for_another_model(dense_and_ticket, tmp_path):
    np.savez(tmp_path / "other.npz", **{"features.0.0.weight": np.ones((64, 3, 3, 3), bool)})
    _fails(invoke("compress", dense_and_ticket / "dense.onnx", "--mask", tmp_path / "other.npz", "-o",
                  tmp_path / "o.onnx"), "shape", "another model")
    np.savez(tmp_path / "none.npz", **{"zzz": np.ones((7, 7, 7), bool)})
    _fails(invoke("compress", dense_and_ticket / "dense.onnx", "--mask", tmp_path / "none.npz", "-o",
                  tmp_path / "o.onnx"), "no mask matches")
    assert not (tmp_path / "o.onnx").exists()


def test_ambiguous_mask_names_candidates(tmp_path):
    torch.manual_seed(0)
    model = VGG(cfg=[8, 16, 16, 16], image=8)  # two (16, 16, 3, 3) weights, no zeros to tell them apart
    export_onnx(model, tmp_path / "m.onnx", (3, 8, 8), exporter="legacy")
    mask = np.ones((16, 16, 3, 3), bool)
    mask[0] = False
    np.savez(tmp_path / "amb.npz", **{"mystery": mask})
    m = onnx.load(tmp_path / "m.onnx")
    same = [t.name for t in m.graph.initializer if tuple(t.dims) == (16, 16, 3, 3)]
    assert len(same) == 2
    r = invoke("compress", tmp_path / "m.onnx", "--mask", tmp_path / "amb.npz", "-o", tmp_path / "o.onnx")
    _fails(r, "does not guess", same[0], same[1])  # neither holds the mask's zeros: a shape is no evidence
    for t in m.graph.initializer:  # both hold them: the values cannot tell them apart either
        if t.name in same:
            w = onnx.numpy_helper.to_array(t).copy()
            w[0] = 0
            t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    onnx.save(m, tmp_path / "m0.onnx")
    r = invoke("compress", tmp_path / "m0.onnx", "--mask", tmp_path / "amb.npz", "-o", tmp_path / "o.onnx")
    _fails(r, "several initializers", same[0], same[1])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_ticket_with_pickled_objects_is_refused(dense_and_ticket, tmp_path):
    torch.save({"format": "ltc.ticket", "version": 1, "masks": {}, "payload": _Evil()}, tmp_path / "evil.pt",
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    r = invoke("compress", dense_and_ticket / "dense.onnx", "--mask", tmp_path / "evil.pt", "-o", tmp_path / "o.onnx")
    _fails(r, "refused", "weights_only")
    assert "pwned" not in r.output


def test_ticket_of_another_format_version(dense_and_ticket, tmp_path):
    torch.save({"format": "ltc.ticket", "version": 99, "masks": {}}, tmp_path / "v99.pt")
    _fails(invoke("compress", dense_and_ticket / "dense.onnx", "--mask", tmp_path / "v99.pt", "-o",
                  tmp_path / "o.onnx"), "version 99")


def test_output_equal_to_input_and_unwritable_output(dense_and_ticket, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes((dense_and_ticket / "pruned.onnx").read_bytes())
    before = src.read_bytes()
    _fails(invoke("compress", src, "-o", src), "overwrite the input")
    assert src.read_bytes() == before
    _fails(invoke("compress", src, "-o", tmp_path / "nodir" / "o.onnx"), "does not exist")
    _fails(invoke("compress", src, "-o", "/proc/ltc-out.onnx"), "cannot write")


def test_verification_failure_writes_nothing(dense_and_ticket, tmp_path, monkeypatch):
    import importlib

    c = importlib.import_module("ltc.passes.pipeline")

    real = c.RemoveDeadChannels.call

    def broken(self, model):  # a compression bug: one weight scaled after the rewrite
        result = real(self, model)
        t = next(t for t in result.model.graph.initializer if len(t.dims) == 4)
        w = onnx.numpy_helper.to_array(t) * 2
        t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
        return result

    monkeypatch.setattr(c.RemoveDeadChannels, "call", broken)
    r = invoke("compress", dense_and_ticket / "pruned.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json",
               "--round-to", "1")
    assert r.exit_code == 2, r.output  # a verification failure on valid input is ltc's fault
    assert len(r.output.strip().splitlines()) == 1
    assert "verification failed" in r.output and "nothing was written" in r.output
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "r.json").exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_round_to(dense_and_ticket, tmp_path):
    _fails(invoke("compress", dense_and_ticket / "pruned.onnx", "-o", tmp_path / "o.onnx", "--round-to", "zero"),
           "--round-to")


def test_real_inputs_for_verification(dense_and_ticket, tmp_path):
    np.savez(tmp_path / "in.npz", input=np.random.default_rng(0).standard_normal((5, *SHAPE)).astype(np.float32))
    r = invoke("compress", dense_and_ticket / "pruned.onnx", "-o", tmp_path / "o.onnx", "--inputs",
               tmp_path / "in.npz", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["verification"]["inputs"].endswith("in.npz")
    np.savez(tmp_path / "wrong.npz", other=np.zeros(3, np.float32))
    _fails(invoke("compress", dense_and_ticket / "pruned.onnx", "-o", tmp_path / "p.onnx", "--inputs",
                  tmp_path / "wrong.npz"), "input")


def test_internal_errors_are_one_line_with_a_way_to_the_traceback(dense_and_ticket, tmp_path, monkeypatch):
    import importlib

    c = importlib.import_module("ltc.passes.pipeline")

    def boom(self, model):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(c.RemoveDeadChannels, "call", boom)
    r = CliRunner().invoke(main, ["compress", str(dense_and_ticket / "pruned.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: internal error (RuntimeError: simulated bug); nothing was written. Please report it; "
        "LTC_DEBUG=1 shows the traceback"]
    assert not (tmp_path / "o.onnx").exists()
