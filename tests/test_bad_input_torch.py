"""Bad and hostile input to `ltc train`, `ltc ticket` and `ltc export` (issue 7): options out of range,
forged dataset files, damaged run folders, hostile tickets. Every case: exit 1 (2 for ltc's own
faults), one `error:` line naming the problem, no traceback, nothing written, inputs untouched."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ltc.compressor.data import DATASETS, load_dataset, read_idx  # noqa: E402
from ltc.compressor.hparams import (  # noqa: E402
    DATASET_NAMES,
    MODEL_NAMES,
    PruneHparams,
    TrainHparams,
    run_hash,
)
from ltc.compressor.models import REGISTRY, build_model  # noqa: E402
from ltc.compressor.search import ticket_search  # noqa: E402
from ltc.errors import LtcError  # noqa: E402
from tests.badinput import refused  # noqa: E402

TRAIN = ["--model", "lenet300", "--dataset", "synthetic", "--iterations", "2", "--eval-every", "1",
         "--batch-size", "30", "--no-progress"]
TICKET = [*TRAIN, "--rounds", "1", "--controls", "none"]
THP = TrainHparams(model="lenet300", dataset="synthetic", iterations=2, eval_every=1, batch_size=30)
PHP = PruneHparams(rounds=1, controls="none")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out of "runs" lands in tmp_path, never in the checkout


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A completed tiny ticket search (rounds 0 and 1) to copy and damage."""
    out = tmp_path_factory.mktemp("run")
    return Path(ticket_search(THP, PHP, out)["run_dir"])


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


@pytest.fixture(scope="module")
def ticket(run) -> dict:
    return torch.load(run / "trial0" / "ticket_round1.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# Options: refused while parsing (or by validate) before anything happens

OPTION_CASES = [
    (["train", "--lr", "nan"], r"--lr.*not a finite number"),
    (["train", "--lr", "0"], r"--lr.*x>0"),
    (["train", "--lr", "-1e-3"], r"--lr.*x>0"),
    (["train", "--epochs", "inf", "--iterations", "0"], r"--epochs.*not a finite number"),
    (["train", "--epochs", "1e9", "--iterations", "0"], r"--epochs.*range"),
    (["train", "--milestones", "abc"], r"--milestones.*comma-separated list of integers"),
    (["train", "--milestones", "100,-5"], r"--milestones.*negative"),
    (["train", "--batch-size", "0"], r"--batch-size.*x>=1"),
    (["train", "--eval-every", "0"], r"--eval-every.*x>=1"),
    (["train", "--iterations", "-3"], r"--iterations.*x>=0"),
    (["train", "--model", "nonet"], r"unknown model 'nonet'; choose one of lenet300"),
    (["train", "--dataset", "imagenet"], r"unknown dataset 'imagenet'; choose one of .*fashion-mnist"),
    (["train", "--optimizer", "rmsprop"], r"unknown optimizer 'rmsprop'.*sgd, adam"),
    (["train", "--schedule", "linear"], r"unknown schedule 'linear'.*cosine"),
    (["train", "--dropout", "1"], r"--dropout.*0<=x<1"),
    (["train", "--momentum", "1.5"], r"--momentum.*0<=x<1"),
    (["train", "--weight-decay", "-0.1"], r"--weight-decay.*x>=0"),
    (["train", "--gamma", "0"], r"--gamma.*x>0"),
    (["train", "--seed", "-1"], r"--seed.*0<=x<=4294967295"),
    (["train", "--val-size", "-1"], r"--val-size.*x>=0"),
    (["train", "--val-size", "5000"], r"--val-size 5000 must be between 0 and 599.*smaller --val-size"),
    (["train", "--epochs", "1"], r"exactly one of --iterations and --epochs"),
    (["train", "--iterations", "0"], r"exactly one of --iterations and --epochs"),
    (["train", "--warmup", "-1"], r"--warmup.*x>=0"),
    (["train", "--patience", "-2"], r"--patience.*x>=0"),
    (["ticket", "--rounds", "0"], r"--rounds.*x>=1"),
    (["ticket", "--trials", "0"], r"--trials.*x>=1"),
    (["ticket", "--rate-conv", "1"], r"--rate-conv.*0<=x<1"),
    (["ticket", "--rate-fc", "-0.1"], r"--rate-fc.*0<=x<1"),
    (["ticket", "--rate-output", "nan"], r"--rate-output.*not a finite number"),
    (["ticket", "--target", "1.0"], r"--target.*0<=x<1"),
    (["ticket", "--strategy", "random"], r"unknown strategy 'random'.*magnitude, global, channel"),
    (["ticket", "--reset", "always"], r"unknown reset 'always'.*init, rewind"),
    (["ticket", "--controls", "reinit,shuffle"], r"--controls.*unknown control.*shuffle.*reinit, random or none"),
    (["ticket", "--rewind-iteration", "-1"], r"--rewind-iteration.*x>=0"),
    (["ticket", "--reset", "rewind", "--rewind-iteration", "100"],
     r"--rewind-iteration 100 is past the end of training \(2 iterations\)"),
]


@pytest.mark.parametrize("args,pattern", OPTION_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_options(args, pattern, tmp_path):
    base = TRAIN if args[0] == "train" else TICKET
    refused([args[0], *base, *args[1:], "--out", tmp_path / "runs"], pattern, watch=[tmp_path])
    assert not (tmp_path / "runs").exists()


def test_help_shows_ranges_and_choices():
    from click.testing import CliRunner

    from ltc.cli import main

    text = " ".join(CliRunner().invoke(main, ["ticket", "--help"]).output.split())
    for shown in ("[lenet300|lenet5|", "--rounds INTEGER RANGE", "x>=1", "0<=x<1", "[init|rewind]", "x>0"):
        assert shown in text, shown
    text = " ".join(CliRunner().invoke(main, ["export", "--help"]).output.split())
    assert "13<=x<=26" in text and "--max-memory GIB" in text


def test_api_validate_refuses_what_the_options_refuse():
    for bad in (dict(lr=float("nan")), dict(lr=float("inf")), dict(momentum=float("nan")), dict(batch_size=0),
                dict(batch_size=2.5), dict(model="nonet"), dict(milestones="x"), dict(augment="yes"),
                dict(epochs=float("inf"), iterations=0)):
        with pytest.raises(LtcError, match="--"):
            TrainHparams(**{"iterations": 5, **bad}).validate()
    for bad in (dict(rounds=0), dict(rate_fc=float("nan")), dict(target=1.0), dict(controls="foo"), dict(trials=1.5)):
        with pytest.raises(LtcError, match="--"):
            PruneHparams(**bad).validate()


def test_static_names_match_the_registries():
    assert tuple(REGISTRY) == MODEL_NAMES
    assert tuple(DATASETS) == DATASET_NAMES


def test_run_folder_names_are_unchanged():
    """Existing run folders must still resume: the hashes of valid settings are what they were."""
    assert run_hash(TrainHparams(), PruneHparams()) == "e3b0c44298"
    assert run_hash(TrainHparams(model="lenet300", dataset="synthetic", iterations=60, eval_every=20, batch_size=30),
                    PruneHparams(rounds=2, trials=2, controls="reinit,random")) == "e8f1035d67"
    assert run_hash(TrainHparams(lr=0.1, schedule="step", milestones="1000, 2000", epochs=2.5),
                    PruneHparams(controls="none", reset="rewind", rewind_iteration=20, target=0.9)) == "dd9fa8b199"
    assert run_hash(TrainHparams(iterations=5)) == "38ef9ba195"


# ---------------------------------------------------------------------------------------------------
# Dataset files, written here byte by byte


def idx_bytes(dims, body: bytes, magic: bytes = b"\x00\x00\x08") -> bytes:
    return magic + bytes([len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + body


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    data = idx_bytes(arr.shape, arr.astype(np.uint8).tobytes())
    path.write_bytes(gzip.compress(data) if gz else data)


def mnist_folder(folder: Path, dotted: bool = False, gz: bool = False, n: int = 40, labels: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 4)):
        for kind, arr in (("images-idx3", rng.integers(0, 255, (count, 28, 28))),
                          ("labels-idx1", rng.integers(0, labels, count))):
            name = f"{prefix}-{kind}-ubyte".replace("-idx", ".idx") if dotted else f"{prefix}-{kind}-ubyte"
            write_idx(folder / (name + (".gz" if gz else "")), arr, gz)
    return folder


def test_dot_named_mnist_folder_loads(tmp_path):
    d = load_dataset("mnist", val_size=8, data_dir=mnist_folder(tmp_path / "m", dotted=True))
    assert d.train_x.shape == (32, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)
    d = load_dataset("mnist", val_size=8, data_dir=mnist_folder(tmp_path / "g", dotted=True, gz=True))
    assert d.train_y.shape == (32,)


def _lie(folder: Path) -> None:  # header says 40 images, the body holds 39
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes((40, 28, 28), bytes(39 * 784)))


def _huge(folder: Path) -> None:  # 4G x 4G x 4G: must be refused before anything is allocated
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes((2**32 - 1,) * 3, bytes(784)))


def _huge_gz(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes((2**31, 1024, 1024), bytes(10))))


def _lie_gz(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes((40, 28, 28), bytes(40 * 784 - 1))))


def _trailing(folder: Path) -> None:
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes((10,), bytes(11)))


def _count(folder: Path) -> None:
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(39))


def _label_range(folder: Path) -> None:
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(10, 12))


def _images_2d(folder: Path) -> None:
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((40, 784)))


def _labels_2d(folder: Path) -> None:
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros((40, 1)))


def _corrupt_gz(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").unlink()
    data = gzip.compress(idx_bytes((40, 28, 28), bytes(40 * 784)))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(data[:20] + b"\xff" * 40 + data[60:])


def _not_idx(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").write_text("<html>404 not found</html>")


def _float_idx(folder: Path) -> None:  # type byte 0x0D: floats, not unsigned bytes
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes((40, 28, 28), bytes(40 * 784 * 4), b"\x00\x00\x0d"))


def _zero_dim(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes((0, 28, 28), b""))


def _dir(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "train-images-idx3-ubyte").mkdir()


def _fifo(folder: Path) -> None:
    (folder / "train-labels-idx1-ubyte").unlink()
    os.mkfifo(folder / "train-labels-idx1-ubyte")


def _missing(folder: Path) -> None:
    (folder / "t10k-images-idx3-ubyte").unlink()


def _test_size(folder: Path) -> None:
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32)))


def _dangling(folder: Path) -> None:
    (folder / "train-images-idx3-ubyte").unlink()
    (folder / "train-images-idx3-ubyte").symlink_to(folder / "nowhere")


IDX_CASES = [
    (_lie, r"train-images-idx3-ubyte: IDX header declares \[40, 28, 28\] = 31,360 values but the file holds 30,576"),
    (_huge, r"train-images-idx3-ubyte: IDX header declares .*more than the 2,147,483,648 ltc reads"),
    (_huge_gz, r"train-images-idx3-ubyte.gz: IDX header declares .*more than"),
    (_lie_gz, r"train-images-idx3-ubyte.gz: truncated IDX file \(31,359 of 31,360 values\)"),
    (_trailing, r"t10k-labels-idx1-ubyte: IDX header declares \[10\] = 10 values but the file holds 11"),
    (_count, r"train-labels-idx1-ubyte: 39 labels for the 40 images of .*train-images-idx3-ubyte"),
    (_label_range, r"t10k-labels-idx1-ubyte: label 12 is out of range for 10 classes"),
    (_images_2d, r"train-images-idx3-ubyte: IDX file has 2 dimension\(s\), expected 3"),
    (_labels_2d, r"train-labels-idx1-ubyte: IDX file has 2 dimension\(s\), expected 1"),
    (_corrupt_gz, r"train-images-idx3-ubyte.gz: cannot read"),
    (_not_idx, r"train-images-idx3-ubyte: not an IDX file of unsigned bytes"),
    (_float_idx, r"train-images-idx3-ubyte: not an IDX file of unsigned bytes"),
    (_zero_dim, r"train-images-idx3-ubyte: IDX file declares an empty dimension"),
    (_dir, r"train-images-idx3-ubyte: is a directory, not a regular dataset file"),
    (_fifo, r"train-labels-idx1-ubyte: is a FIFO"),
    (_missing, r"t10k-images-idx3-ubyte\(.gz\) not found \(nor t10k-images.idx3-ubyte\(.gz\)\)"),
    (_test_size, r"t10k-images-idx3-ubyte: test images are 32x32 but the training images .* are 28x28"),
    (_dangling, r"train-images-idx3-ubyte: no such file.*dataset file"),
]


@pytest.mark.parametrize("damage,pattern", IDX_CASES, ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_bad_idx_files(damage, pattern, tmp_path):
    data = mnist_folder(tmp_path / "mnist")
    damage(data)
    refused(["train", *TRAIN, "--dataset", "mnist", "--val-size", "8", "--data-dir", data, "--out", tmp_path / "runs"],
            pattern, watch=[tmp_path])
    assert not (tmp_path / "runs").exists()


def test_read_idx_checks_before_allocating(tmp_path):
    (tmp_path / "big").write_bytes(idx_bytes((2**32 - 1,) * 4, b""))
    with pytest.raises(LtcError, match="more than"):
        read_idx(tmp_path / "big")


def cifar_folder(folder: Path, batch: dict | None = None, which: str = "data_batch_2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch if (batch is not None and name == which) else good))
    return folder


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class _HugeArray:  # numpy's own pickles pass an empty shape to _reconstruct; this one asks for 1 TB
    def __reduce__(self):
        return (np.zeros(1).__reduce__()[0], (np.ndarray, (10**12,), b"b"))


CIFAR_CASES = [
    ({b"data": _HugeArray(), b"labels": [0]}, r"data_batch_2: not a CIFAR-10 python batch .*refused an array of shape"),
    ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, r"data_batch_2: CIFAR-10 data must be \[N, 3072\]"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}, r"data_batch_2: 2 labels .* for 4 images"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"data_batch_2: label 10 is out of range"),
    ({b"data": np.full((4, 3072), 300), b"labels": [0, 1, 2, 3]}, r"data_batch_2: CIFAR-10 pixel values must be 0..255"),
    ({b"data": _Evil(), b"labels": [0]}, r"data_batch_2: not a CIFAR-10 python batch .*refused to load posix.system"),
    ([1, 2, 3], r"data_batch_2: not a CIFAR-10 python batch \(expected a dict"),
]


@pytest.mark.parametrize("batch,pattern", CIFAR_CASES)
def test_bad_cifar_batches(batch, pattern, tmp_path):
    data = cifar_folder(tmp_path / "cifar", batch)
    refused(["train", *TRAIN, "--dataset", "cifar10", "--val-size", "4", "--data-dir", data, "--out", tmp_path / "runs"],
            pattern, watch=[tmp_path])
    assert not (tmp_path / "pwned").exists()


def test_cifar_garbage_and_missing_batch(tmp_path):
    data = cifar_folder(tmp_path / "cifar")
    (data / "test_batch").write_bytes(b"\x80\x04garbage")
    refused(["train", *TRAIN, "--dataset", "cifar10", "--data-dir", data, "--out", tmp_path / "runs"],
            r"test_batch: not a CIFAR-10 python batch", watch=[tmp_path])
    (data / "data_batch_3").unlink()
    refused(["train", *TRAIN, "--dataset", "cifar10", "--data-dir", data, "--out", tmp_path / "runs"],
            r"data_batch_3 not found; pass --data-dir", watch=[tmp_path])


def test_out_inside_the_dataset_folder_is_refused(tmp_path):
    data = mnist_folder(tmp_path / "mnist")
    refused(["train", *TRAIN, "--dataset", "mnist", "--data-dir", data, "--out", data / "runs"],
            r"is inside the dataset folder .*never writes into its inputs", watch=[tmp_path])


# ---------------------------------------------------------------------------------------------------
# Output folders


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    refused(["train", *TRAIN, "--out", tmp_path / "f"], r"--out.*is a file", watch=[tmp_path])
    refused(["ticket", *TICKET, "--run-dir", tmp_path / "f"], r"--run-dir.*is a file", watch=[tmp_path])
    refused(["ticket", *TICKET, "--out", tmp_path / "f" / "sub"], r"--out .*f is a file, not a folder",
            watch=[tmp_path])


def _module(name: str):
    """The module the CLI will import (sys.modules), not a package attribute that another test's
    sys.modules juggling may have left pointing at a stale copy."""
    import importlib

    return importlib.import_module(name)


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc,code,pattern", [(LtcError("training diverged"), 1, "training diverged"),
                                              (RuntimeError("boom"), 2, r"internal error \(RuntimeError: boom\)")])
def test_failed_run_leaves_no_folder(exc, code, pattern, tmp_path, monkeypatch):
    monkeypatch.setattr(_module("ltc.compressor.search"), "train", _raise(exc))
    monkeypatch.setattr(_module("ltc.compressor.workflows"), "train", _raise(exc))
    refused(["ticket", *TICKET, "--out", tmp_path / "a" / "runs"], pattern, watch=[tmp_path], code=code)
    refused(["train", *TRAIN, "--out", tmp_path / "b"], pattern, watch=[tmp_path], code=code)
    assert not any(tmp_path.iterdir())


def test_interrupted_run_keeps_completed_rounds(tmp_path, monkeypatch):
    search = _module("ltc.compressor.search")
    calls = []
    real = search.train

    def train_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "train", train_then_interrupt)
    refused(["ticket", *TICKET, "--out", tmp_path], r"interrupted", code=130)
    trial = search.run_folder(tmp_path, THP, PHP) / "trial0"
    assert (trial / "round0.json").exists() and not (trial / "round1.json").exists()
    monkeypatch.setattr(search, "train", real)
    search.ticket_search(THP, PHP, tmp_path)  # resumes after round 0
    assert (trial / "round1.json").exists()


def test_log_symlink_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "rd" / "trial0").mkdir(parents=True)
    (tmp_path / "rd" / "trial0" / "train.jsonl").symlink_to(victim)
    # a folder with files but no hparams.json is not a run folder: refused before any write
    refused(["ticket", *TICKET, "--run-dir", tmp_path / "rd"], r"no hparams.json is not an ltc run folder",
            watch=[tmp_path])
    # a real run folder whose log was replaced by a link: the log is not written through
    from click.testing import CliRunner

    from ltc.cli import main

    shutil.rmtree(tmp_path / "rd")
    r = CliRunner().invoke(main, [str(a) for a in ["ticket", *TICKET, "--run-dir", tmp_path / "rd"]])
    assert r.exit_code == 0, r.output
    for f in (tmp_path / "rd" / "trial0").iterdir():
        f.unlink()
    (tmp_path / "rd" / "trial0" / "train.jsonl").symlink_to(victim)
    refused(["ticket", *TICKET, "--run-dir", tmp_path / "rd"], r"train.jsonl: cannot write the training log.*link",
            watch=[tmp_path])


# ---------------------------------------------------------------------------------------------------
# Resuming a damaged run folder: refused before anything is trained or written


def _garbage(run: Path) -> None:
    (run / "trial0" / "ticket_round1.pt").write_bytes(b"PK\x03\x04 truncated download")


def _pickled(run: Path) -> None:
    torch.save({"format": "ltc.ticket", "version": 1, "payload": _Evil()}, run / "trial0" / "ticket_round1.pt")


def _other_model(run: Path) -> None:
    t = torch.load(run / "trial0" / "ticket_round1.pt", weights_only=True)
    t["final"] = build_model("conv2", (1, 8, 8), 4).state_dict()
    torch.save(t, run / "trial0" / "ticket_round1.pt")


def _not_a_ticket(run: Path) -> None:
    torch.save([torch.zeros(1)], run / "trial0" / "ticket_round1.pt")


def _ticket_dir(run: Path) -> None:
    (run / "trial0" / "ticket_round1.pt").unlink()
    (run / "trial0" / "ticket_round1.pt").mkdir()


def _hparams_corrupt(run: Path) -> None:
    (run / "hparams.json").write_text('{"canonical": ')


def _hparams_list(run: Path) -> None:
    (run / "hparams.json").write_text("[1, 2]")


def _round_corrupt(run: Path) -> None:
    (run / "trial0" / "round0.json").write_bytes(b"\xff\xfe not json")


def _round_list(run: Path) -> None:
    (run / "trial0" / "round1.json").write_text("[]")


def _round_number(run: Path) -> None:
    rec = json.loads((run / "trial0" / "round1.json").read_text())
    rec["round"] = 7
    (run / "trial0" / "round1.json").write_text(json.dumps(rec))


def _round_results(run: Path) -> None:
    rec = json.loads((run / "trial0" / "round1.json").read_text())
    rec["results"]["ticket"]["test_accuracy"] = "high"
    (run / "trial0" / "round1.json").write_text(json.dumps(rec))


def _trial_file(run: Path) -> None:
    shutil.rmtree(run / "trial0")
    (run / "trial0").write_text("not a folder")


def _dense(run: Path) -> None:
    (run / "trial0" / "dense.pt").write_bytes(b"PK\x03\x04 truncated")


def _round0_truncated(run: Path) -> None:  # an earlier round than the one resumed from: read all the same
    path = run / "trial0" / "ticket_round0.pt"
    path.write_bytes(path.read_bytes()[:1000])


def _round0_pickled(run: Path) -> None:
    torch.save({"format": "ltc.ticket", "version": 1, "payload": _Evil()}, run / "trial0" / "ticket_round0.pt")


def _round0_keyless(run: Path, key: str) -> None:
    t = torch.load(run / "trial0" / "ticket_round0.pt", weights_only=True)
    del t[key]
    torch.save(t, run / "trial0" / "ticket_round0.pt")


def _round0_no_masks(run: Path) -> None:
    _round0_keyless(run, "masks")


def _round0_no_final(run: Path) -> None:
    _round0_keyless(run, "final")


def _round0_no_history(run: Path) -> None:
    _round0_keyless(run, "history")


def _round0_empty(run: Path) -> None:
    (run / "trial0" / "ticket_round0.pt").write_bytes(b"")


RUN_CASES = [
    (_round0_truncated, r"ticket_round0.pt: .*(damaged|not a readable).*delete the file .*or delete the run folder"),
    (_round0_pickled, r"ticket_round0.pt: refused: the file contains pickled Python objects.*delete the file"),
    (_round0_no_masks, r"ticket_round0.pt: ticket has no 'masks'.*delete the file .*or delete the run folder"),
    (_round0_no_final, r"ticket_round0.pt: 'final' is missing.*delete the file .*or delete the run folder"),
    (_round0_no_history, r"ticket_round0.pt: 'history' must be a list.*delete the file .*or delete the run folder"),
    (_round0_empty, r"ticket_round0.pt: .*delete the file .*or delete the run folder"),
    (_garbage, r"ticket_round1.pt: is a damaged zip archive"),
    (_pickled, r"ticket_round1.pt: refused: the file contains pickled Python objects"),
    (_other_model, r"ticket_round1.pt: 'final' does not hold this model's tensors.*delete the file"),
    (_not_a_ticket, r"ticket_round1.pt: not an ltc ticket"),
    (_ticket_dir, r"ticket_round1.pt: is a directory"),
    (_hparams_corrupt, r"hparams.json: not a valid hparams.json"),
    (_hparams_list, r"hparams.json: not an ltc hparams.json"),
    (_round_corrupt, r"round0.json: not a valid round record"),
    (_round_list, r"round1.json: a round record must be a JSON object, found list"),
    (_round_number, r"round1.json: 'round' is 7, expected 1"),
    (_round_results, r"round1.json: results of 'ticket' lack numbers"),
    (_trial_file, r"trial0: is not a folder"),
    (_dense, r"dense.pt: is a damaged zip archive"),
]


@pytest.mark.parametrize("damage,pattern", RUN_CASES, ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_damaged_run_folder(damage, pattern, run_copy, tmp_path):
    damage(run_copy)
    refused(["ticket", *TICKET, "--run-dir", run_copy], pattern, watch=[tmp_path])
    assert not (tmp_path / "pwned").exists()


def test_run_folder_of_other_hyperparameters(run_copy, tmp_path):
    refused(["ticket", *TICKET, "--lr", "0.5", "--run-dir", run_copy], r"holds a run with other hyperparameters",
            watch=[tmp_path])


# ---------------------------------------------------------------------------------------------------
# `ltc export`: hostile tickets, opsets, outputs


def _forge(ticket: dict, path: Path, **changes) -> Path:
    t = {**ticket, "arch": {"name": ticket["arch"]["name"], "kwargs": dict(ticket["arch"]["kwargs"])}}
    for key, value in changes.items():
        if key.startswith("kw_"):
            t["arch"]["kwargs"][key[3:]] = value
        elif key == "drop_kw":
            del t["arch"]["kwargs"][value]
        else:
            t[key] = value
    torch.save(t, path)
    return path


def _with(d: dict, name: str, value) -> dict:
    return {**d, name: value}


EXPORT_CASES = [
    (dict(kw_classes=10**9), r"needs at least [\d.,]+ GiB .*over --max-memory 4 GiB; check the ticket's architecture"),
    (dict(kw_in_shape=[3, 100000, 100000]), r"needs at least .* GiB .*raise --max-memory"),
    (dict(kw_in_shape=[1, -8, 8]), r"in_shape must be positive, got \[1, -8, 8\]"),
    (dict(kw_in_shape=[0, 8, 8]), r"in_shape must be positive"),
    (dict(kw_in_shape=[1, 8.5, 8]), r"in_shape must be 3 integers"),
    (dict(kw_in_shape=[8, 8]), r"in_shape must be 3 integers"),
    (dict(kw_in_shape="1,8,8"), r"in_shape must be 3 integers .*got '1,8,8'"),
    (dict(kw_classes="4"), r"classes must be a positive integer, got '4'"),
    (dict(kw_classes=True), r"classes must be a positive integer, got True"),
    (dict(kw_classes=0), r"classes must be a positive integer"),
    (dict(kw_dropout=2.0), r"dropout must be a number in \[0, 1\)"),
    (dict(drop_kw="classes"), r"ticket architecture lacks 'classes'"),
    (dict(arch={"name": 42, "kwargs": {}}), r"not written by ltc|unknown model"),
    (dict(arch={"name": "conv2", "kwargs": {"in_shape": [1, 1, 1], "classes": 4}}),
     r"model 'conv2' cannot take inputs of shape \(1, 1, 1\)"),
    (dict(final=[1, 2]), r"ticket field 'final' must be a dict"),
    (dict(init=3), r"ticket field 'init' must be a dict"),
    (dict(final={"fc1.weight": "zeros"}), r"'final' entry 'fc1.weight' is a str, not a tensor"),
    (dict(final={}), r"ticket has no 'final' weights; use --weights init"),
]


@pytest.mark.parametrize("changes,pattern", EXPORT_CASES, ids=lambda v: str(list(v.items())[0])[:40]
                         if isinstance(v, dict) else None)
def test_export_hostile_tickets(changes, pattern, ticket, tmp_path):
    path = _forge(ticket, tmp_path / "t.pt", **changes)
    refused(["export", path, "-o", tmp_path / "m.onnx"], pattern, watch=[tmp_path])


def test_export_weights_and_masks_that_do_not_fit(ticket, tmp_path):
    final, masks = ticket["final"], ticket["masks"]
    cases = [
        (dict(final=build_model("conv2", (1, 8, 8), 4).state_dict()),
         r"ticket weights do not fit architecture 'lenet300' \(missing fc2.bias.*another model"),
        (dict(final=_with(final, "fc1.weight", torch.zeros(3, 3))),
         r"'final' entry 'fc1.weight' is \[3, 3\], the model's is \[300, 64\]"),
        (dict(final=_with(final, "fc1.weight", torch.zeros(300, 64, dtype=torch.complex64))),
         r"'final' entry 'fc1.weight' has dtype torch.complex64"),
        (dict(final=_with(final, "fc1.weight", torch.zeros(300, 64, dtype=torch.int32))),
         r"'final' entry 'fc1.weight' has dtype torch.int32; the model needs float"),
        (dict(masks=_with(masks, "fc1.weight", torch.ones(2, 2, dtype=torch.bool))),
         r"ticket masks do not fit architecture 'lenet300': fc1.weight"),
        (dict(masks=_with(masks, "fc9.weight", torch.ones(2, 2, dtype=torch.bool))), r"masks do not fit.*fc9.weight"),
        (dict(masks=_with(masks, "fc1.weight", torch.full((300, 64), 0.5))),
         r"mask 'fc1.weight' has values other than 0 and 1"),
        (dict(masks=_with(masks, "fc1.weight", torch.ones(300, 64, dtype=torch.complex64))),
         r"mask 'fc1.weight' has dtype torch.complex64"),
    ]
    for changes, pattern in cases:
        path = _forge(ticket, tmp_path / "t.pt", **changes)
        refused(["export", path, "-o", tmp_path / "m.onnx"], pattern, watch=[tmp_path])


@pytest.mark.parametrize("args,pattern", [
    (["--opset", "12"], r"--opset.*12 is not in the range 13<=x<=26"),
    (["--opset", "27"], r"--opset.*27 is not in the range 13<=x<=26"),
    (["--opset", "21"], r"--opset 21: the legacy exporter writes opsets 13..20 .*use --exporter dynamo"),
    (["--exporter", "dynamo", "--opset", "17"], r"--opset 17: the dynamo exporter writes opsets 18..26 .*use --exporter legacy"),
    (["--max-memory", "0"], r"--max-memory.*x>0"),
    (["--max-memory", "nan"], r"--max-memory.*not a finite number"),
    (["--max-memory", "0.0001"], r"needs about .* over --max-memory 0.0001 GiB"),
    (["--weights", "best"], r"--weights.*'best' is not one of"),
    (["--exporter", "onnxscript"], r"--exporter.*'onnxscript' is not one of"),
])
def test_export_options(args, pattern, run, tmp_path):
    refused(["export", run / "trial0" / "ticket_round1.pt", "-o", tmp_path / "m.onnx", *args], pattern,
            watch=[tmp_path, run])


def test_export_inputs_and_outputs(run, tmp_path):
    src = tmp_path / "t.pt"
    shutil.copy(run / "trial0" / "ticket_round1.pt", src)
    refused(["export", src, "-o", src], r"would overwrite the input", watch=[tmp_path])
    refused(["export", src, "-o", tmp_path / "no" / "m.onnx"], r"directory .*no does not exist", watch=[tmp_path])
    refused(["export", src, "-o", tmp_path], r"is a directory", watch=[tmp_path])
    os.mkfifo(tmp_path / "fifo.pt")
    refused(["export", tmp_path / "fifo.pt", "-o", tmp_path / "m.onnx"], r"fifo.pt: is a FIFO", watch=[tmp_path])
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    refused(["export", tmp_path / "model.onnx", "-o", tmp_path / "m.onnx"], r"is an ONNX model, not a mask or ticket",
            watch=[tmp_path])
    refused(["export", tmp_path / "absent.pt", "-o", tmp_path / "m.onnx"], r"absent.pt: no such file.*ticket",
            watch=[tmp_path])


def test_export_failure_leaves_nothing(run, tmp_path, monkeypatch):
    def broken_export(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        Path(str(path) + ".data").write_bytes(b"half the weights")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(_module("ltc.exporters.torch_export"), "export_onnx", broken_export)
    (tmp_path / "out").mkdir()
    refused(["export", run / "trial0" / "ticket_round1.pt", "-o", tmp_path / "out" / "m.onnx"],
            r"internal error \(RuntimeError: exporter crashed\)", watch=[tmp_path, run], code=2)
    assert not any((tmp_path / "out").iterdir())


def test_export_moves_external_data_beside_the_output(run, tmp_path, monkeypatch):
    def export_with_data(model, path, *args, **kwargs):
        Path(path).write_bytes(b"model")
        Path(str(path) + ".data").write_bytes(b"weights")
        return Path(path)

    monkeypatch.setattr(_module("ltc.exporters.torch_export"), "export_onnx", export_with_data)
    (tmp_path / "out").mkdir()
    from click.testing import CliRunner

    from ltc.cli import main

    r = CliRunner().invoke(main, ["export", str(run / "trial0" / "ticket_round1.pt"), "-o", str(tmp_path / "out" / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "out" / "m.onnx.data").read_bytes() == b"weights"


@pytest.mark.parametrize("exporter,opset", [("legacy", 13), ("legacy", 20), ("dynamo", 26)])
def test_export_opset_range_ends_run_in_onnx_runtime(exporter, opset, run, tmp_path):
    """The ends of the accepted ranges export, stamp that opset, and load in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from ltc.exporters.ticket_export import export_ticket

    out = export_ticket(run / "trial0" / "ticket_round1.pt", tmp_path / "m.onnx", exporter=exporter, opset=opset)
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] == [opset]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
