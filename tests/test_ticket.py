"""Training with masks, pruning strategies, ticket search (controls, trials, resume, rewind), export."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ltc.api import compress_file  # noqa: E402
from ltc.compressor.data import _SafeUnpickler, load_dataset, read_idx  # noqa: E402
from ltc.compressor.hparams import PruneHparams, TrainHparams, run_hash  # noqa: E402
from ltc.compressor.models import build_model  # noqa: E402
from ltc.compressor.pruning import (  # noqa: E402
    full_mask,
    prune_channels,
    prune_magnitude,
    random_like,
)
from ltc.compressor.search import ticket_search  # noqa: E402
from ltc.compressor.training import train  # noqa: E402
from ltc.errors import LtcError  # noqa: E402
from ltc.exporters.ticket_export import export_ticket, load_ticket  # noqa: E402

TINY = TrainHparams(model="lenet300", dataset="synthetic", iterations=60, eval_every=20, batch_size=30)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


@pytest.mark.parametrize("optimizer,wd", [("sgd", 5e-4), ("adam", 1e-3)])
def test_masked_weights_stay_exactly_zero(synthetic, optimizer, wd):
    torch.manual_seed(0)
    model = build_model("lenet300", synthetic.in_shape, synthetic.classes)
    mask = prune_magnitude(model, full_mask(model), {"conv": 0.5, "fc": 0.5, "output": 0.5})
    hp = dataclasses.replace(TINY, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, weight_decay=wd)
    train(model, synthetic, hp, mask)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.count_nonzero(params[name][~m]) == 0
        assert torch.count_nonzero(params[name][m]) > 0.9 * int(m.sum())  # the rest did train


def test_training_is_reproducible_and_early_stop_is_min_val_loss(synthetic):
    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("lenet300", synthetic.in_shape, synthetic.classes)
        res = train(model, synthetic, TINY)
        finals.append(res.final_state)
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k])
    best = min(res.history, key=lambda r: r["val_loss"])
    assert res.early_stop_iteration == best["iteration"]
    assert res.test_accuracy == best["test_acc"]
    assert res.test_accuracy > 0.5  # synthetic blobs are learnable


def test_patience_stops_early(synthetic):
    torch.manual_seed(0)
    model = build_model("lenet300", synthetic.in_shape, synthetic.classes)
    hp = dataclasses.replace(TINY, iterations=5000, eval_every=10, patience=2, lr=0.05)
    res = train(model, synthetic, hp)
    assert res.iterations < 5000
    assert res.iterations - res.early_stop_iteration == 20


def test_magnitude_rates_per_layer_kind():
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10)
    mask = prune_magnitude(model, full_mask(model), {"conv": 0.1, "fc": 0.2, "output": 0.1})
    assert float(mask["fc1.weight"].float().mean()) == pytest.approx(0.8, abs=1e-4)
    assert float(mask["out.weight"].float().mean()) == pytest.approx(0.9, abs=1e-3)
    params = dict(model.named_parameters())
    kept = params["fc1.weight"].abs()[mask["fc1.weight"]].min()
    dropped = params["fc1.weight"].abs()[~mask["fc1.weight"]].max()
    assert kept >= dropped  # the smallest magnitudes went


def test_channel_pruning_kills_filters_with_bn_and_random_control_matches_counts():
    torch.manual_seed(0)
    model = build_model("vgg11", (1, 8, 8), 10)
    mask = prune_channels(model, full_mask(model, "channel"), {"conv": 0.25, "fc": 0.2, "output": 0.1})
    w = mask["features.0.0.weight"]
    dead = ~w.flatten(1).any(1)
    assert int(dead.sum()) == 16  # 25% of 64 filters
    assert torch.equal(~mask["features.0.1.weight"], dead) and torch.equal(~mask["features.0.1.bias"], dead)
    rnd = random_like(model, mask, "channel", torch.Generator().manual_seed(1))
    for name in mask:
        if name.endswith(".weight") and mask[name].dim() > 1:
            assert int((~rnd[name].flatten(1).any(1)).sum()) == int((~mask[name].flatten(1).any(1)).sum())


def test_search_with_controls_and_trials(tmp_path):
    php = PruneHparams(rounds=2, trials=2, controls="reinit,random")
    summary = ticket_search(TINY, php, tmp_path)
    run = Path(summary["run_dir"])
    assert run.name == f"lenet300-synthetic-{run_hash(TINY, php)}"
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert set(summary["rounds"][2]["variants"]) == {"ticket", "reinit", "random"}
    assert summary["rounds"][2]["variants"]["ticket"]["test_accuracy"]["n"] == 2
    assert summary["rounds"][2]["density"] == pytest.approx(0.8**2, abs=0.01)
    ticket = load_ticket(run / "trial1" / "ticket_round2.pt")
    assert ticket["structure"]["round"] == 2 and ticket["seed"] == 1
    assert [h["round"] for h in ticket["history"]] == [0, 1, 2]
    assert ticket["history"][2]["density"] == pytest.approx(0.8**2, abs=0.01)
    for name, m in ticket["masks"].items():  # the reset weights carry the mask
        assert torch.count_nonzero(ticket["init"][name][~m]) == 0
    for png in ("accuracy_vs_remaining.png", "early_stop_vs_remaining.png", "train_vs_test.png", "weight_change.png"):
        assert (run / png).stat().st_size > 1000
    assert "weight_change" in json.loads((run / "summary.json").read_text())


def test_rerun_resumes_after_the_last_completed_round(tmp_path):
    php = PruneHparams(rounds=2, controls="none")
    summary = ticket_search(TINY, php, tmp_path)
    run = Path(summary["run_dir"]) / "trial0"
    before = (run / "round1.json").stat().st_mtime_ns
    (run / "round2.json").unlink()  # as if interrupted during round 2
    lines = len((run / "train.jsonl").read_text().splitlines())
    ticket_search(TINY, php, tmp_path)
    assert (run / "round1.json").stat().st_mtime_ns == before
    assert (run / "round2.json").exists()
    assert len((run / "train.jsonl").read_text().splitlines()) - lines == 4  # one training: 4 evaluations


def test_resume_against_other_hyperparameters_is_refused(tmp_path):
    summary = ticket_search(TINY, PruneHparams(rounds=1, controls="none"), tmp_path)
    with pytest.raises(LtcError, match="other hyperparameters"):
        ticket_search(dataclasses.replace(TINY, lr=0.5), PruneHparams(rounds=1, controls="none"), tmp_path,
                      run_dir=Path(summary["run_dir"]))


def test_rewind_resets_to_iteration_k(tmp_path):
    php = PruneHparams(rounds=1, controls="none", reset="rewind", rewind_iteration=20)
    summary = ticket_search(TINY, php, tmp_path)
    run = Path(summary["run_dir"]) / "trial0"
    t1 = load_ticket(run / "ticket_round1.pt")
    dense = torch.load(run / "dense.pt", weights_only=True)
    name = "fc1.weight"
    m = t1["masks"][name]
    assert not torch.equal(t1["init"][name][m], dense["init"][name][m])  # not theta0
    assert not torch.equal(t1["init"][name][m], dense["final"][name][m])  # not the end either


def test_channel_ticket_exports_and_compresses_by_name(tmp_path):
    thp = TrainHparams(model="resnet20", dataset="synthetic", iterations=20, eval_every=10, batch_size=30, lr=1e-3)
    php = PruneHparams(strategy="channel", rounds=1, rate_conv=0.5, rate_fc=0.5, controls="none")
    run = Path(ticket_search(thp, php, tmp_path)["run_dir"]) / "trial0"
    onnx_path = export_ticket(run / "ticket_round1.pt", tmp_path / "m.onnx")
    names = {t.name for t in onnx.load(onnx_path).graph.initializer}
    ticket = load_ticket(run / "ticket_round1.pt")
    assert set(ticket["masks"]) <= names  # BN kept, parameter names kept: every mask matches by name
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(onnx_path).graph.node)
    doc = compress_file(onnx_path, tmp_path / "c.onnx", run / "ticket_round1.pt", round_to=1)
    assert doc["mask"]["unmatched"] == [] and doc["verification"]["passed"]
    # the first conv of each block goes to half; the second is tied to the residual and stays
    assert doc["after"]["parameters"] < 0.8 * doc["before"]["parameters"]
    halved = [la for la in doc["layers"] if la["out_after"] == la["out_before"] // 2]
    assert len(halved) >= 9


def test_export_bad_tickets(tmp_path):
    torch.save({"format": "ltc.ticket", "version": 1, "arch": {"name": "nonet", "kwargs": {"in_shape": [1, 8, 8],
               "classes": 10}}, "masks": {}, "init": {}, "final": {"w": torch.zeros(1)}}, tmp_path / "t.pt")
    with pytest.raises(LtcError, match="unknown model 'nonet'.*lenet300"):
        export_ticket(tmp_path / "t.pt", tmp_path / "o.onnx")
    torch.save({"format": "ltc.ticket", "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(LtcError, match="version 2"):
        export_ticket(tmp_path / "v2.pt", tmp_path / "o.onnx")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LtcError, match="damaged zip"):
        export_ticket(tmp_path / "corrupt.pt", tmp_path / "o.onnx")
    model = build_model("lenet300", (1, 8, 8), 10)
    torch.save({"format": "ltc.ticket", "version": 1, "arch": {"name": "conv2", "kwargs": {"in_shape": [1, 8, 8],
               "classes": 10}}, "masks": {}, "init": model.state_dict(), "final": model.state_dict()},
               tmp_path / "arch.pt")
    with pytest.raises(LtcError, match="do not fit architecture 'conv2'"):
        export_ticket(tmp_path / "arch.pt", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_bad_hyperparameters():
    with pytest.raises(LtcError, match="unknown dataset 'imagenet'.*digits"):
        load_dataset("imagenet")
    with pytest.raises(LtcError, match="rate-fc"):
        PruneHparams(rate_fc=1.5).validate()
    with pytest.raises(LtcError, match="exactly one of --iterations and --epochs"):
        TrainHparams().validate()


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)  # (an unclosed GzipFile loses its tail on Python 3.12)


def test_idx_reader_and_missing_folder(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (7, 28, 28))
    _idx(tmp_path / "a.gz", imgs, True)
    _idx(tmp_path / "b", imgs, False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), imgs) and np.array_equal(read_idx(tmp_path / "b"), imgs)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:100])
    with pytest.raises(LtcError, match="truncated"):
        read_idx(tmp_path / "c")
    with pytest.raises(LtcError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_layout_loads_from_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 30)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), True)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), False)
    d = load_dataset("mnist", val_size=20, data_dir=tmp_path)
    assert d.train_x.shape == (100, 1, 28, 28) and d.val_x.shape == (20, 1, 28, 28) and d.test_x.shape[0] == 30
    assert abs(float(d.train_x.mean())) < 1e-4  # normalised by train statistics


def test_cifar_batches_load_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    payload = pickle.dumps({b"data": Evil(), b"labels": [1]})
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        _SafeUnpickler(__import__("io").BytesIO(payload)).load()
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    d = load_dataset("cifar10", val_size=4, data_dir=tmp_path)
    assert d.train_x.shape == (16, 3, 32, 32) and d.augment


@pytest.mark.parametrize("args,words", [
    (["ticket", "--model", "nonet", "--iterations", "5"], ["unknown model 'nonet'", "lenet300"]),
    (["ticket", "--dataset", "imagenet", "--iterations", "5"], ["unknown dataset", "fashion-mnist"]),
    (["ticket", "--iterations", "5", "--rate-fc", "1.2"], ["--rate-fc"]),
    (["train", "--iterations", "5", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"],
     ["/nonexistent", "dataset-fashion-mnist"]),
    (["export", "/nonexistent.pt", "-o", "x.onnx"], ["no such file", "ticket"]),
])
def test_cli_bad_input_is_one_line(args, words, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ltc.cli import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path)] if args[0] != "export" else args,
                           catch_exceptions=False)
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:")
    for w in words:
        assert w in r.output
    assert not any(tmp_path.iterdir())  # nothing written
