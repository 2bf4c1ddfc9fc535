"""Valid input refused, or bad input let out as a traceback, in the ticket search (issue 22 §2): user code
that fails anywhere in a search (datasets, models, factories, losses; sys.exit included), models without
values (meta device, lazy modules), diverged training (NaN weights), factory files, image folders with
non-regular entries. Every bad input: exit 1 (LtcError from ltc.search), one line naming what failed,
nothing written; every valid one runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import ltc  # noqa: E402
from ltc.errors import LtcError  # noqa: E402
from tests.badinput import IMPORT_NOTICE, refused  # noqa: E402

OPTS = {"iterations": 4, "eval_every": 2, "batch_size": 10, "rounds": 1, "controls": "none"}
GEN = torch.Generator().manual_seed(0)
X = torch.randn(40, 8, generator=GEN)
Y = (X[:, 0] > 0).long()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out of "runs" lands in tmp_path, never in the checkout


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def search_refused(model, pattern: str, tmp_path: Path, train=None, val=None, **options) -> str:
    """ltc.search raises one LtcError line matching ``pattern`` and leaves nothing under ``out``."""
    out = tmp_path / "runs"
    with pytest.raises(LtcError, match=pattern) as info:
        ltc.search(model, train if train is not None else (X, Y), val if val is not None else (X, Y), out=out,
                   **{**OPTS, **options})
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert not out.exists() or not any(out.iterdir()), f"left behind: {list(out.rglob('*'))}"
    return message


# ---------------------------------------------------------------------------------------------------
# Datasets that fail: at item 0, at a later item mid-training, in len(), in the val/test split, in
# collate_fn, by sys.exit


class Pairs(Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return X[i], Y[i]


class FailsAtFirst(Pairs):
    def __getitem__(self, i):
        raise OSError("disk gone")


class FailsLater(Pairs):
    """Fine while ltc checks it (item 0, the fingerprint, the layer probe); fails mid-training."""

    def __init__(self):
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > 60:
            raise ValueError(f"record {i} is corrupt")
        return X[i], Y[i]


class FailsInLen(Pairs):
    def __len__(self):
        raise OSError("index file missing")


class Exits(Pairs):
    def __getitem__(self, i):
        sys.exit(3)


def _collate_fails(samples):
    raise RuntimeError("collate boom")


DATA_CASES = [
    ("train", FailsAtFirst(), r"train\[0\] raised OSError: disk gone; fix the dataset"),
    ("train", FailsLater(), r"train data: reading a batch raised ValueError: record \d+ is corrupt; fix the dataset"),
    ("train", FailsInLen(), r"train data: len\(\) raised OSError: index file missing"),
    ("train", Exits(), r"train\[0\] called sys.exit\(3\)"),
    ("train", DataLoader(Pairs(), collate_fn=_collate_fails),
     r"train data: collating a batch raised RuntimeError: collate boom"),
    ("val", FailsAtFirst(), r"val data: reading an example raised OSError: disk gone"),
    ("val", FailsInLen(), r"val data: len\(\) raised OSError: index file missing"),
    ("val", Exits(), r"val data: reading an example called sys.exit\(3\)"),
    ("test", FailsAtFirst(), r"test data: reading an example raised OSError: disk gone"),
]


@pytest.mark.parametrize("split,dataset,pattern", DATA_CASES,
                         ids=[f"{c[0]}-{type(c[1]).__name__}-{i}" for i, c in enumerate(DATA_CASES)])
def test_a_dataset_that_fails_is_one_line(split, dataset, pattern, tmp_path):
    splits = {"train": Pairs(), "val": Pairs(), "test": Pairs(), split: dataset}
    out = tmp_path / "runs"
    with pytest.raises(LtcError, match=pattern) as info:
        ltc.search(mlp, splits["train"], splits["val"], splits["test"], out=out, **OPTS)
    assert "\n" not in str(info.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_dataset_that_fails_mid_training_fails_there(tmp_path):
    data = FailsLater()
    search_refused(mlp, r"train data: reading a batch", tmp_path, train=data)
    assert data.reads > 60  # it got past every check: the failure came from the training loop


# ---------------------------------------------------------------------------------------------------
# Models, factories and losses that fail, anywhere in the search


class Template(nn.Module):
    """An nn.Module whose forward (or reset) fails in one chosen place."""

    def __init__(self, fail: str = ""):
        super().__init__()
        self.fail = fail
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        if self.fail == "training" and self.training:
            raise RuntimeError("dropout mask out of range")
        if self.fail == "exit" and self.training:
            sys.exit(0)
        if self.fail == "float64" and x.dtype == torch.float64:  # only ltc's structure probe sends float64
            raise TypeError("float64 unsupported")
        return self.b(torch.relu(self.a(x)))


class BadReset(nn.Linear):
    def reset_parameters(self):
        if getattr(self, "armed", False):
            raise ValueError("reset failed")
        super().reset_parameters()


def _meta():
    with torch.device("meta"):
        return mlp()


def _lazy():
    return nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))


def _factory_raises():
    raise KeyError("width")


def _factory_exits():
    sys.exit(0)


def _not_a_module():
    return "resnet"


def _loss_raises(out, y):
    raise ValueError("shape mismatch in loss")


def _loss_exits(out, y):
    sys.exit("bye")


MODEL_CASES = [
    (_factory_raises, {}, r"the model factory: building the model raised KeyError: 'width'"),
    (_factory_exits, {}, r"the model factory: building the model called sys.exit\(0\)"),
    (_not_a_module, {}, r"returned a str, not a torch nn.Module"),
    (_meta, {}, r"the model factory's model: .*on the meta device.*to_empty"),
    (_lazy, {}, r"the model factory's model: .*uninitialised lazy.*call it once on an example input"),
    ("meta module", {}, r"the model: .*on the meta device.*materialise the model"),
    ("lazy module", {}, r"the model: .*uninitialised lazy.*materialise the model"),
    ("bad reset", {}, r"the model: copying it and re-initialising it with reset_parameters\(\) raised ValueError"),
    (lambda: Template("training"), {}, r"iteration 0: the model, the data or the loss raised RuntimeError: dropout"),
    (lambda: Template("exit"), {}, r"iteration 0: the model, the data or the loss called sys.exit\(0\)"),
    (mlp, {"loss": _loss_raises}, r"the model, the data or the loss raised ValueError: shape mismatch in loss"),
    (mlp, {"loss": _loss_exits}, r"the model, the data or the loss called sys.exit\('bye'\)"),
]


def _model(case):
    if case == "meta module":
        return _meta()
    if case == "lazy module":
        return _lazy()
    if case == "bad reset":
        m = nn.Sequential(BadReset(8, 2))
        m[0].armed = True
        return m
    return case


@pytest.mark.parametrize("case,options,pattern", MODEL_CASES,
                         ids=[c[2].split(":")[0][:40] + f"-{i}" for i, c in enumerate(MODEL_CASES)])
def test_user_code_that_fails_is_one_line(case, options, pattern, tmp_path):
    search_refused(_model(case), pattern, tmp_path, **options)


def test_a_model_that_fails_in_the_pruning_step_keeps_the_rounds_before(tmp_path):
    """refill runs the model in float64 (a structural probe) after round 0 is complete."""
    out = tmp_path / "runs"
    with pytest.raises(LtcError, match=r"round 1, pruning: the model raised TypeError: float64 unsupported"):
        ltc.search(lambda: Template("float64"), (X, Y), (X, Y), out=out, structure="refill", **OPTS)
    [trial] = out.glob("*/trial0")
    assert sorted(f.name for f in trial.iterdir()) == ["dense.pt", "round0.json", "ticket_round0.pt", "train.jsonl"]


def test_keyboard_interrupt_in_user_code_is_not_its_failure(tmp_path):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ltc.search(interrupted, (X, Y), (X, Y), out=tmp_path / "runs", **OPTS)


# ---------------------------------------------------------------------------------------------------
# Diverged training: NaN/inf weights are summarised and plotted, summary.json is written


def test_search_whose_training_diverges_finishes(tmp_path):
    summary = ltc.search(mlp, (X, Y), (X, Y), out=tmp_path / "runs", **{**OPTS, "lr": 1e30})
    run = Path(summary["run_dir"])
    written = json.loads((run / "summary.json").read_text())
    change = written["weight_change"]
    assert change["non_finite"] > 0
    assert (run / "weight_change.png").stat().st_size > 0 and (run / "summary.md").exists()


def test_cli_ticket_whose_training_diverges_finishes(tmp_path):
    from click.testing import CliRunner

    from ltc.cli import main

    r = CliRunner().invoke(main, ["ticket", "--model", "lenet300", "--dataset", "synthetic", "--iterations", "2",
                                  "--eval-every", "1", "--batch-size", "30", "--rounds", "1", "--controls", "none",
                                  "--lr", "1e30", "--no-progress", "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    [run] = (tmp_path / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["weight_change"]["non_finite"] > 0


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("inside,outside,means", [
    ([NAN, INF], [-INF, NAN], (None, None)),       # nothing finite: no histogram, no means
    ([1.0, NAN, 3.0], [INF], (2.0, None)),         # one side only
    ([1e29, 1e29], [NAN], (1e29, None)),           # huge and equal: a range 80 bins can still split
    ([3e38] * 1000, [-3e38] * 1000, (3e38, -3e38)),  # the mean of float32 extremes does not overflow
    ([0.0] * 5, [0.0], (0.0, 0.0)),                # all equal
    ([1.0, 2.0], [3.0, INF], (1.5, 3.0)),          # a side wholly outside the plotted range
])
def test_weight_change_plot_takes_non_finite_changes(inside, outside, means, tmp_path):
    import warnings

    from ltc.compressor.analysis import _weight_change_plot

    change = {"inside": torch.tensor(inside), "outside": torch.tensor(outside), "ticket": "ticket_round1.pt"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero, no empty legend
        doc = _weight_change_plot(change, tmp_path / "w.png")
    for got, want in zip((doc["inside_mean"], doc["outside_mean"]), means, strict=True):
        assert got == pytest.approx(want, rel=1e-6) if want is not None else got is None
    n_bad = sum(not torch.isfinite(torch.tensor(v)) for v in inside + outside)
    assert doc.get("non_finite", 0) == n_bad
    json.dumps(doc, allow_nan=False)  # strict JSON
    assert (tmp_path / "w.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------
# Factory files (--model file.py:function)

TRAIN = ["--dataset", "synthetic", "--iterations", "2", "--eval-every", "1", "--batch-size", "30", "--no-progress"]

FACTORIES = '''
import sys
import torch
from torch import nn

SCALE = torch.full((1,), 0.5)       # a module-level tensor: real, not meta
WIDTH = int(torch.tensor(16))       # a value read off a tensor when the file is imported


class Scaled(nn.Module):
    def __init__(self, in_channels, classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, classes)
        self.register_buffer("scale", SCALE.clone())

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x * self.scale)).flatten(1))


def good(in_channels, classes):
    assert not SCALE.is_meta, "imported under the meta device"
    return Scaled(in_channels, classes)


def reads_a_value(in_channels, classes):
    width = int(torch.ones(1).sum().item())  # fails on the meta device: only the estimate is skipped
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64 * width, classes))


def meta(in_channels, classes):
    with torch.device("meta"):
        return Scaled(in_channels, classes)


def lazy(classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(classes))


def leaves(classes):
    sys.exit(0)


def leaves_quietly(classes):
    raise SystemExit


def interrupted(classes):
    raise KeyboardInterrupt
'''


@pytest.fixture
def factories(tmp_path) -> Path:
    path = tmp_path / "nets" / "factories.py"
    path.parent.mkdir()
    path.write_text(FACTORIES)
    return path


@pytest.mark.parametrize("command", ["train", "ticket"])
@pytest.mark.parametrize("function,pattern", [
    ("meta", r"factories.py:meta: 'conv.weight', 'conv.bias', 'fc.weight'... are on the meta device.*to_empty"),
    ("lazy", r"factories.py:lazy: '1.weight', '1.bias' are uninitialised lazy.*call it once on an example input"),
    ("leaves", r"factories.py:leaves: building the model called sys.exit\(0\)"),
    ("leaves_quietly", r"factories.py:leaves_quietly: building the model called sys.exit\(\)"),
])
def test_bad_factory_models_are_refused(command, function, pattern, factories, tmp_path):
    extra = ["--rounds", "1", "--controls", "none"] if command == "ticket" else []
    refused([command, "--model", f"{factories}:{function}", *TRAIN, *extra, "--out", tmp_path / "runs"], pattern,
            watch=[tmp_path])


@pytest.mark.parametrize("source,pattern", [
    ("import sys\nsys.exit(0)\n", r"importing .*exits.py called sys.exit\(0\); fix the file"),
    ("raise SystemExit('not today')\n", r"importing .*exits.py called sys.exit\('not today'\)"),
    ("import torch\nBAD = torch.zeros(2) @ torch.zeros(3)\n", r"importing .*exits.py raised RuntimeError"),
])
def test_factory_file_that_exits_or_fails_at_import_is_refused(source, pattern, tmp_path):
    (tmp_path / "exits.py").write_text(source)
    refused(["train", "--model", f"{tmp_path / 'exits.py'}:build", *TRAIN, "--out", tmp_path / "runs"], pattern,
            watch=[tmp_path])


def test_interrupt_in_a_factory_is_an_interrupt(factories, tmp_path):
    refused(["train", "--model", f"{factories}:interrupted", *TRAIN, "--out", tmp_path / "runs"], r"interrupted",
            watch=[tmp_path], code=130)


@pytest.mark.parametrize("function", ["good", "reads_a_value"])
def test_factory_file_is_imported_for_real_and_says_so(function, factories, tmp_path):
    from click.testing import CliRunner

    from ltc.cli import main

    r = CliRunner().invoke(main, ["train", "--model", f"{factories}:{function}", *TRAIN, "--channels", "3",
                                  "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    notices = [line for line in r.stderr.splitlines() if line.startswith(IMPORT_NOTICE)]
    assert notices == [f"{IMPORT_NOTICE}{factories} (a factory file runs with your permissions)"]
    assert (next((tmp_path / "runs").iterdir()) / "ticket.pt").exists()


# ---------------------------------------------------------------------------------------------------
# Image folders: entries named like images that are not regular files


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _png(root / name / f"{i}.png", 10 * c + i)
    return root


@pytest.fixture
def alarm():
    """Fail instead of hanging when a read blocks (a FIFO opened for reading waits for a writer)."""
    def timeout(signum, frame):
        raise TimeoutError("blocked reading the image folder")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _socket(p: Path) -> None:
    here = Path.cwd()
    os.chdir(p.parent)  # a socket's path is limited to ~100 bytes: bind a relative one
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(p.name)
        s.close()
    finally:
        os.chdir(here)


def _loop(p: Path) -> None:
    p.symlink_to(p.name)


def _mutual_loop(p: Path) -> None:
    p.symlink_to("y.png")
    (p.parent / "y.png").symlink_to(p.name)


def _dangling(p: Path) -> None:
    p.symlink_to("missing.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")
@pytest.mark.parametrize("make,pattern", [
    (_fifo, r"x.png: is a FIFO \(named pipe\), not a regular image file; remove it from the image folder"),
    (_socket, r"x.png: is a socket, not a regular image file"),
    (_loop, r"x.png: is a link that cannot be resolved .*symlink loop"),
    (_mutual_loop, r"(x|y).png: is a link that cannot be resolved .*symlink loop"),
    (_dangling, r"x.png: is a dangling symbolic link; remove it from the image folder"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_image_folder_entries_that_are_not_images_are_refused(make, pattern, images, tmp_path, alarm):
    make(images / "cat" / "x.png")
    refused(["train", "--model", "lenet300", "--dataset", f"imagefolder:{images}", *TRAIN[2:],
             "--out", tmp_path / "runs"], pattern, watch=[tmp_path])


def test_image_folder_with_a_folder_named_like_an_image_is_read(images, tmp_path):
    from ltc.compressor.userdata import load_imagefolder

    (images / "cat" / "x.png").mkdir()  # a folder: walked into, not decoded
    _png(images / "cat" / "x.png" / "inside.png", 99)
    data = load_imagefolder(str(images))
    assert data.n_train() + len(data.val_x) + len(data.test_x) == 9
