"""Bring your own model: ltc.search on any nn.Module and data, ltc.export, --model torchvision:/timm:/
file.py:function, --dataset imagefolder:PATH, layer selection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

import ltc  # noqa: E402
from ltc.api import compress_file  # noqa: E402
from ltc.cli import main  # noqa: E402
from ltc.compressor.data import load_dataset  # noqa: E402
from ltc.compressor.pruning import full_mask, select_layers  # noqa: E402
from ltc.compressor.userdata import DatasetSplits  # noqa: E402
from ltc.errors import LtcError  # noqa: E402
from ltc.ticket import load_ticket  # noqa: E402
from tests.badinput import IMPORT_NOTICE  # noqa: E402
from tests.zoo import import_zoos  # noqa: E402

TORCHVISION, TIMM = import_zoos()


class Block(nn.Module):
    """A residual block whose hidden width is free (removable) and whose output is tied to its input."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(c, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden)
        self.conv_b, self.bn_b = nn.Conv2d(hidden, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))))


class Net(nn.Module):
    def __init__(self, classes: int = 4, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = Block(16, 32)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def blobs(n: int, seed: int, shape=(1, 8, 8), classes: int = 4):
    g = torch.Generator().manual_seed(42)
    centers = torch.randn(classes, *shape, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + 0.8 * torch.randn(n, *shape, generator=g), y


def datasets():
    (x, y), (vx, vy), (tx, ty) = blobs(240, 1), blobs(60, 2), blobs(60, 3)
    return (torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(vx, vy),
            torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tx, ty), batch_size=16))


FAST = {"iterations": 30, "eval_every": 10, "batch_size": 24, "lr": 3e-3}


def masked_reference(model: nn.Module, ticket: dict) -> nn.Module:
    """The ticket's masked model in torch, built here independently of ltc's export."""
    model.load_state_dict(ticket["final"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ticket["masks"]:
                p.mul_(ticket["masks"][name].to(p.dtype))
    return model.eval()


def compressed_matches_masked(model: nn.Module, ticket_path: Path, tmp_path: Path, shape) -> dict:
    import onnxruntime as ort

    onnx_path = ltc.export(model, ticket_path, torch.randn(2, *shape), tmp_path / "m.onnx")
    doc = compress_file(onnx_path, tmp_path / "c.onnx", ticket_path, round_to=1)
    assert doc["mask"]["unmatched"] == [] and doc["verification"]["passed"]
    ref = masked_reference(model, load_ticket(ticket_path))
    x = torch.randn(5, *shape)
    with torch.no_grad():
        want = ref(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return doc


@pytest.mark.parametrize("structure", ["unstructured", "refill", "regroup"])
def test_search_on_a_custom_module_exports_and_compresses_to_the_masked_model(structure, tmp_path):
    train, val, test = datasets()
    opts = {"rounds": 2, "structure": structure, "controls": "reinit" if structure == "refill" else "none"}
    if structure == "regroup":
        opts |= {"groups": 4, "group_align": 1, "rate_conv": 0.5}
    summary = ltc.search(Net(), train, val, test, out=tmp_path / "runs", progress=False, **FAST, **opts)
    run = Path(summary["run_dir"])
    assert run.parent == tmp_path / "runs" and run.name.startswith("custom-Net_")
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][2]["density"] < summary["rounds"][1]["density"] < 1
    assert all(0 <= r["variants"]["ticket"]["test_accuracy"]["mean"] <= 1 for r in summary["rounds"])
    ticket_path = run / "trial0" / "ticket_round2.pt"
    ticket = load_ticket(ticket_path)
    assert ticket["arch"]["name"].startswith("custom:Net@")
    assert set(ticket["masks"]) >= {"stem.0.weight", "block.conv_a.weight", "block.conv_b.weight", "head.weight"}
    doc = compressed_matches_masked(Net(), ticket_path, tmp_path, (1, 8, 8))
    if structure == "refill":  # the block's hidden width loses whole channels: the file really shrinks
        hidden = ticket["masks"]["block.conv_a.weight"].flatten(1).any(1)
        assert not hidden.all()
        assert doc["after"]["parameters"] < doc["before"]["parameters"]
    if structure == "regroup":
        assert ticket["structure"]["kind"] == "group"


def test_search_takes_arrays_and_a_factory_and_resumes(tmp_path):
    (x, y), (vx, vy) = blobs(200, 1), blobs(50, 2)
    calls = []

    def factory():
        calls.append(1)
        return Net()

    kw = {"out": tmp_path, "rounds": 2, "controls": "none", **FAST}
    first = ltc.search(factory, (x.numpy(), y.numpy()), (vx, vy), **kw)
    trial = Path(first["run_dir"]) / "trial0"
    assert not (trial.parent / "trial1").exists()
    t2 = load_ticket(trial / "ticket_round2.pt")
    (trial / "round2.json").unlink()  # as if killed during round 2
    lines = len((trial / "train.jsonl").read_text().splitlines())
    again = ltc.search(factory, (x.numpy(), y.numpy()), (vx, vy), **kw)
    assert again["run_dir"] == first["run_dir"]  # same model, data and options: same folder
    assert len((trial / "train.jsonl").read_text().splitlines()) - lines == 4  # one training (round 2) redone
    resumed = load_ticket(trial / "ticket_round2.pt")
    for name in t2["masks"]:  # deterministic: the resumed round equals the uninterrupted one
        assert torch.equal(t2["masks"][name], resumed["masks"][name])
    other = ltc.search(factory, (x.numpy()[:150], y.numpy()[:150]), (vx, vy), **kw)
    assert other["run_dir"] != first["run_dir"]  # other data: another folder


def test_template_module_is_reinitialised_per_seed_and_left_untouched(tmp_path):
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, val, _ = datasets()
    summary = ltc.search(net, train, val, out=tmp_path, rounds=1, trials=2, controls="none", **FAST)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    run = Path(summary["run_dir"])
    a = torch.load(run / "trial0" / "dense.pt", weights_only=True)["init"]
    b = torch.load(run / "trial1" / "dense.pt", weights_only=True)["init"]
    assert not torch.equal(a["stem.0.weight"], b["stem.0.weight"])  # trials start from other inits
    fresh = Net()
    torch.manual_seed(0)  # seed 0, then reset_parameters() in module order: trial 0's theta0
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert torch.equal(a["stem.0.weight"], fresh.stem[0].weight)


def test_bad_search_arguments_are_one_line_errors(tmp_path):
    train, val, _ = datasets()
    with pytest.raises(LtcError, match="unknown option.*bogus"):
        ltc.search(Net(), train, val, out=tmp_path, bogus=1)
    with pytest.raises(LtcError, match="val is required"):
        ltc.search(Net(), train, None, out=tmp_path, **FAST)
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(train)

    with pytest.raises(LtcError, match="map-style"):
        ltc.search(Net(), Stream(), val, out=tmp_path, **FAST)
    with pytest.raises(LtcError, match=r"\(input, label\) pairs"):
        ltc.search(Net(), [{"x": torch.zeros(1, 8, 8)}], val, out=tmp_path, **FAST)
    with pytest.raises(LtcError, match="cannot take an input"):
        ltc.search(nn.Linear(3, 2), train, val, out=tmp_path, **FAST)
    with pytest.raises(LtcError, match="--include 'nothing.*' matches no"):
        ltc.search(Net(), train, val, out=tmp_path, include="nothing.*", **FAST)
    with pytest.raises(LtcError, match="nn.Module"):
        ltc.search(42, train, val, out=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was written


# ---------------------------------------------------------------------------------------------------
# Layer selection: include/exclude patterns; the output layer is the one that produces the output


class AuxFirst(nn.Module):
    """The output Linear is defined before an auxiliary Linear (module order would pick the wrong one)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3)
        self.classifier = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 4)

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        return self.classifier(torch.relu(self.aux(h)))


@pytest.mark.parametrize("seed", range(6))
def test_output_layer_is_the_one_producing_the_output(seed):
    """Random stacks of Linear layers in a random module order: the output is the last one to run."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    order = rng.permutation(n)

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            for i in order:  # registered in a shuffled order
                self.add_module(f"l{i}", nn.Linear(5, 5))

        def forward(self, x):
            for i in range(n):  # run in index order
                x = getattr(self, f"l{i}")(x)
            return x

    kinds = select_layers(Stack(), example=torch.randn(2, 5))
    assert kinds == {f"l{i}": ("output" if i == n - 1 else "fc") for i in order}
    assert select_layers(AuxFirst(), example=torch.randn(2, 1, 6, 6)) == \
        {"body": "conv", "classifier": "output", "aux": "fc"}


def test_include_exclude_select_the_masked_layers():
    net = Net()
    kinds = select_layers(net, include="block.*,head", exclude="block.conv_b", example=torch.randn(2, 1, 8, 8))
    assert kinds == {"block.conv_a": "conv", "head": "output"}
    net._ltc_layers = kinds
    assert set(full_mask(net)) == {"block.conv_a.weight", "head.weight"}
    assert set(full_mask(net, "channel")) == {"block.conv_a.weight", "block.bn_a.weight", "block.bn_a.bias",
                                              "head.weight"}
    with pytest.raises(LtcError, match="no Conv/Linear layer is left"):
        select_layers(net, exclude="*")


def test_dataset_batches_are_seeded_epochs_sliced_per_rank():
    x, y = torch.arange(50.0).reshape(50, 1), torch.arange(50)
    data = DatasetSplits("t", torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y))
    draw = data.train_batches(torch.Generator().manual_seed(3), 10)
    epoch = torch.cat([next(draw)[1] for _ in range(5)])
    assert sorted(epoch.tolist()) == list(range(50))  # an epoch visits every example once
    again = data.train_batches(torch.Generator().manual_seed(3), 10)
    assert torch.equal(torch.cat([next(again)[1] for _ in range(5)]), epoch)
    halves = [data.train_batches(torch.Generator().manual_seed(3), 10, rank, 2) for rank in (0, 1)]
    first = [next(h)[1] for h in halves]
    assert sorted(torch.cat(first).tolist()) == sorted(epoch[:10].tolist())  # two ranks split one global batch
    assert [len(b) for b, _ in data.eval_batches("val", batch=16)] == [16, 16, 16, 2]
    assert sum(len(b) for b, _ in data.eval_batches("train", batch=16, limit=20)) == 20


# ---------------------------------------------------------------------------------------------------
# Image folders


def _png(path: Path, value: int, size=(10, 12), mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, 0, 255 - value) if mode == "RGB" else value).save(path)


def test_image_folder_loads_class_subfolders(tmp_path):
    root = tmp_path / "pets"
    for c, (name, value) in enumerate((("cat", 10), ("dog", 200), ("eel", 120))):
        for i in range(10):
            _png(root / name / f"{i}.png", value + i, mode="RGB" if c else "L")
    (root / "notes.txt").write_text("not an image")
    outside = tmp_path / "elsewhere.png"
    _png(outside, 0)
    (root / "cat" / "link.png").symlink_to(outside)  # leads outside the folder: not read
    d = load_dataset(f"imagefolder:{root}", val_size=3, image_size=16)
    assert d.classes == 3 and d.in_shape == (3, 16, 16)
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 30  # the link is skipped
    assert len(d.test_x) == 6 and len(d.val_x) == 3
    labels = torch.cat([d.train_y, d.val_y, d.test_y])
    assert sorted(labels.tolist()) == sorted([0] * 10 + [1] * 10 + [2] * 10)
    grey = load_dataset(f"imagefolder:{root}", val_size=3, image_size=8, channels=1)
    assert grey.in_shape == (1, 8, 8)


def test_image_folder_with_train_and_test_splits(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for name, value in (("a", 0), ("b", 255)):
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.png", value)
    d = load_dataset(f"imagefolder:{tmp_path}", val_size=2)
    assert d.in_shape == (3, 32, 32) and len(d.test_x) == 4 and len(d.train_x) + len(d.val_x) == 12
    # class b is bright in every channel's first plane, a is dark: normalised values keep the order
    assert float(d.test_x[d.test_y == 1, 0].mean()) > float(d.test_x[d.test_y == 0, 0].mean())
    _png(tmp_path / "test" / "c" / "0.png", 9)
    with pytest.raises(LtcError, match="differ from the training split"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "channels"])
def test_image_folder_bad_input(case, tmp_path):
    root = tmp_path / "imgs"
    if case != "missing":
        root.mkdir()
    if case in ("corrupt", "channels"):
        for i in range(4):
            _png(root / "a" / f"{i}.png", 0)
    if case == "corrupt":
        (root / "a" / "bad.png").write_bytes(b"\x89PNG not really")
    words = {"missing": "no such folder", "empty": "no images", "corrupt": "cannot decode the image",
             "channels": "1 \\(grey\\) or 3"}[case]
    with pytest.raises(LtcError, match=words):
        load_dataset(f"imagefolder:{root}", channels=2 if case == "channels" else 0)
    r = CliRunner().invoke(main, ["ticket", "--dataset", f"imagefolder:{root}", "--model", "conv2",
                                  "--iterations", "2", "--out", str(tmp_path / "o"), "--no-progress",
                                  *(["--channels", "2"] if case == "channels" else [])])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_channels_and_image_size_adapt_registry_data():
    d = load_dataset("synthetic", channels=3, image_size=12)
    assert d.in_shape == (3, 12, 12)
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 2])  # grey repeated


# ---------------------------------------------------------------------------------------------------
# --model path/to/file.py:function, torchvision:NAME, timm:NAME


FACTORY = '''
import torch
from torch import nn


def build(classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def broken(classes):
    raise ValueError("no such width")
'''

TICKET_ARGS = ["--dataset", "synthetic", "--rounds", "1", "--iterations", "6", "--eval-every", "3",
               "--controls", "none", "--no-progress"]


def test_model_from_a_factory_file(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(FACTORY)
    out = tmp_path / "runs"
    r = CliRunner().invoke(main, ["ticket", "--model", f"{src}:build", "--strategy", "channel", "--rate-conv", "0.5",
                                  "--out", str(out), *TICKET_ARGS])
    assert r.exit_code == 0, r.output
    [run] = out.iterdir()
    assert run.name.startswith("mynet-build-synthetic-")
    ticket = run / "trial0" / "ticket_round1.pt"
    assert load_ticket(ticket)["arch"]["name"] == f"{src}:build"
    r = CliRunner().invoke(main, ["export", str(ticket), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "pass --model" in r.output and not (tmp_path / "m.onnx").exists()
    r = CliRunner().invoke(main, ["export", str(ticket), "-o", str(tmp_path / "m.onnx"), "--model", f"{src}:build"])
    assert r.exit_code == 0, r.output
    doc = compress_file(tmp_path / "m.onnx", tmp_path / "c.onnx", ticket, round_to=1)
    assert doc["verification"]["passed"] and doc["after"]["parameters"] < doc["before"]["parameters"]


@pytest.mark.parametrize("spec, words", [
    ("{src}:broken", "building the model raised ValueError: no such width"),
    ("{src}:nothing", "has no function 'nothing'"),
    ("{tmp}/absent.py:build", "not found"),
    ("{tmp}/syntax.py:build", "importing .* raised SyntaxError"),
    ("torchvision:no_such_net", "no such torchvision model|torchvision is not installed"),
    ("timm:no_such_net", "no such timm model|timm is not installed"),
    ("nonet", "unknown model 'nonet'"),
])
def test_bad_model_specs_are_one_line(spec, words, tmp_path):
    (tmp_path / "mynet.py").write_text(FACTORY)
    (tmp_path / "syntax.py").write_text("def build(:\n")
    spec = spec.format(src=tmp_path / "mynet.py", tmp=tmp_path)
    r = CliRunner().invoke(main, ["ticket", "--model", spec, "--out", str(tmp_path / "o"), *TICKET_ARGS])
    lines = [line for line in r.output.strip().splitlines() if not line.startswith(IMPORT_NOTICE)]
    assert r.exit_code in (1, 2) and len(lines) == 1, r.output
    assert r.exit_code == 1 or "unknown model" in r.output  # click's own usage error is exit 2
    import re

    assert re.search(words, r.output), r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(TORCHVISION is None, reason="torchvision is not installed (an optional extra)")
@pytest.mark.parametrize("structure", ["unstructured", "refill", "regroup"])
def test_torchvision_resnet18_at_tiny_resolution(structure, tmp_path):
    train, val, test = (torch.utils.data.TensorDataset(*blobs(n, s, (3, 16, 16))) for n, s in ((96, 1), (24, 2), (24, 3)))
    opts = {"groups": 2, "group_align": 1} if structure == "regroup" else {}
    summary = ltc.search(TORCHVISION.models.resnet18(num_classes=4), train, val, test, out=tmp_path / "runs",
                         rounds=2, structure=structure, controls="none", iterations=4, eval_every=2, batch_size=16,
                         exclude="conv1", **opts)
    ticket_path = Path(summary["run_dir"]) / "trial0" / "ticket_round2.pt"
    ticket = load_ticket(ticket_path)
    assert "conv1.weight" not in ticket["masks"] and "fc.weight" in ticket["masks"]
    assert summary["rounds"][2]["density"] < 1
    compressed_matches_masked(TORCHVISION.models.resnet18(num_classes=4), ticket_path, tmp_path, (3, 16, 16))


@pytest.mark.skipif(TORCHVISION is None, reason="torchvision is not installed (an optional extra)")
def test_cli_ticket_with_a_torchvision_model(tmp_path):
    r = CliRunner().invoke(main, ["ticket", "--model", "torchvision:resnet18", "--channels", "3", "--out",
                                  str(tmp_path), *TICKET_ARGS])
    assert r.exit_code == 0, r.output
    [run] = tmp_path.iterdir()
    assert run.name.startswith("torchvision-resnet18-synthetic-")
    ticket = run / "trial0" / "ticket_round1.pt"
    r = CliRunner().invoke(main, ["export", str(ticket), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output


@pytest.mark.skipif(TIMM is None, reason="timm is not installed (an optional extra)")
def test_cli_ticket_with_a_timm_model(tmp_path):
    r = CliRunner().invoke(main, ["ticket", "--model", "timm:resnet10t", "--out", str(tmp_path), *TICKET_ARGS])
    assert r.exit_code == 0, r.output


def test_search_under_torchrun_matches_one_process(tmp_path):
    """ltc.search on a DatasetSplits under 2 gloo ranks finds the masks one process finds."""
    script = tmp_path / "s.py"
    script.write_text(f'''
import sys, torch
from torch import nn
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import ltc
g = torch.Generator().manual_seed(0)
x = torch.randn(120, 10, generator=g); y = (x[:, 0] > 0).long()
net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
ltc.search(net, torch.utils.data.TensorDataset(x[:90], y[:90]), torch.utils.data.TensorDataset(x[90:], y[90:]),
           run_dir=sys.argv[1], rounds=1, controls="none", iterations=20, eval_every=10, batch_size=30)
''')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd, folder in (([sys.executable], "single"),
                        ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                         "ddp")):
        r = subprocess.run([*cmd, str(script), str(tmp_path / folder)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    a = torch.load(tmp_path / "single" / "trial0" / "ticket_round1.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "trial0" / "ticket_round1.pt", weights_only=True)
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    for name in a["final"]:
        torch.testing.assert_close(a["final"][name], b["final"][name], rtol=1e-3, atol=1e-4)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_a(self.a(x)) + self.bn_b(self.b(x))


@pytest.mark.parametrize("equal", [True, False])
def test_masks_of_weights_the_exporter_stored_once(equal, tmp_path):
    """Two BN shifts fed by one sum get equal gradients and stay equal; the legacy exporter then stores
    them once. Both masks find that initializer, and a weight is dead where either mask says so."""
    import onnx

    from ltc.masks import MaskSet, match_masks

    net = TwoBranches().eval()
    # masked values as ltc.export writes them: b's mask drops a weight that is zero anyway
    ma, mb = np.array([True, True, True, True]), np.array([True, False, True, True])
    with torch.no_grad():
        net.bn_a.bias.copy_(torch.tensor([0.5, 0.0, -1.0, 2.0]))
        net.bn_b.bias.copy_(net.bn_a.bias if equal else torch.tensor([0.5, 0.0, -1.0, 3.0]))
    path = tmp_path / "m.onnx"
    from ltc.exporters.torch_export import export_onnx

    export_onnx(net, path, (2, 3, 3), keep_batchnorm=True)
    model = onnx.load(path)
    names = {t.name for t in model.graph.initializer}
    assert ("bn_b.bias" in names) != equal  # stored once when equal
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    ms = MaskSet({"bn_a.bias": ma, "bn_b.bias": mb}, {k: state[k] for k in ("bn_a.bias", "bn_b.bias")}, "ticket")
    m = match_masks(model, ms)
    assert m.unmatched == []
    if equal:
        assert m.shared == {"bn_b.bias": "bn_a.bias"} and m.matched == {"bn_a.bias": "bn_a.bias"}
        np.testing.assert_array_equal(m.masks["bn_a.bias"], ma & mb)
    else:
        assert m.shared == {} and m.masks["bn_b.bias"].tolist() == mb.tolist()


# ---------------------------------------------------------------------------------------------------
# Run identity: a run folder is resumed only by the same model, data and loss


class Act(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), act(), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _folder(tmp_path, model, train, val, **kw) -> str:
    return ltc.search(model, train, val, out=tmp_path, rounds=1, controls="none", iterations=2, eval_every=1,
                      batch_size=8, **kw)["run_dir"]


def test_other_model_data_or_loss_never_resume_each_other(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, vx = torch.randn(40, 4, generator=g), torch.randn(20, 4, generator=g)
    y, vy = (x[:, 0] > 0).long(), (vx[:, 0] > 0).long()
    base = _folder(tmp_path, Act(), (x, y), (vx, vy))
    assert _folder(tmp_path, Act(), (x, y), (vx, vy)) == base  # the same: resumed
    others = [_folder(tmp_path, Act(nn.Tanh), (x, y), (vx, vy)),  # same shapes, another activation
              _folder(tmp_path, Act(), (x, y), (vx, 1 - vy)),  # other validation labels
              _folder(tmp_path, Act(), (x, torch.roll(y, 1)), (vx, vy)),  # other training labels
              _folder(tmp_path, Act(), (x, y), (vx, vy), loss=lambda o, t: nn.functional.cross_entropy(o, t, label_smoothing=0.1))]
    assert len({base, *others}) == 5


def test_an_edited_factory_file_does_not_resume_the_old_run(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text(FACTORY)
    args = ["ticket", "--model", f"{src}:build", "--out", str(tmp_path / "runs"), *TICKET_ARGS]
    assert CliRunner().invoke(main, args).exit_code == 0
    src.write_text(FACTORY.replace("nn.ReLU()", "nn.GELU()"))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "another model" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_templates_whose_parameters_no_reset_reaches_are_refused(tmp_path):
    class Pos(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(4))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + self.pos)

    x, y = torch.randn(30, 4), torch.randint(0, 2, (30,))
    with pytest.raises(LtcError, match="pos are not re-initialised.*pass a function"):
        ltc.search(Pos(), (x, y), (x, y), out=tmp_path, iterations=2)
    ltc.search(lambda: Pos(), (x, y), (x, y), out=tmp_path, rounds=1, controls="none", iterations=2, eval_every=1)

    class Attn(nn.Module):  # MultiheadAttention resets in_proj_weight in _reset_parameters
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0].mean(1))

    xs = torch.randn(30, 3, 4)
    ltc.search(Attn(), (xs, y), (xs, y), out=tmp_path, rounds=1, controls="none", iterations=2, eval_every=1)


def test_image_folder_with_train_but_no_test_is_refused(tmp_path):
    for name in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "train" / name / f"{i}.png", 0)
    with pytest.raises(LtcError, match="not both train/ and test/"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_image_folder_memory_is_estimated_before_decoding(tmp_path, monkeypatch):
    import ltc.compressor.userdata as ud

    for i in range(4):
        _png(tmp_path / "a" / f"{i}.png", 0)
        _png(tmp_path / "b" / f"{i}.png", 9)
    monkeypatch.setattr(ud, "MAX_FOLDER_BYTES", 8 * 3 * 64 * 64 * 9 - 1)
    monkeypatch.setattr(ud, "_load_image", lambda *a: pytest.fail("decoded before the estimate"))
    with pytest.raises(LtcError, match="GiB.*smaller --image-size"):
        load_dataset(f"imagefolder:{tmp_path}", image_size=64)


def test_samples_with_more_than_input_and_label(tmp_path):
    class Triples(torch.utils.data.Dataset):
        def __init__(self, n):
            self.x, self.y = blobs(n, n)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i], i  # (input, label, index): the extra item is ignored

    loader = torch.utils.data.DataLoader(Triples(60), batch_size=10)
    summary = ltc.search(Net(), loader, Triples(20), out=tmp_path, rounds=1, controls="none", **FAST)
    assert summary["rounds"][1]["density"] < 1


def test_regression_loss_and_conv1d_layers(tmp_path):
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(2, 8, 3, padding=1), nn.Conv1d(8, 8, 3, padding=1)
            self.out = nn.Linear(8, 1)

        def forward(self, x):
            return self.out(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(2)).squeeze(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, 16, generator=g)
    y = x.mean((1, 2))
    summary = ltc.search(Seq(), (x[:60], y[:60]), (x[60:], y[60:]), out=tmp_path, rounds=1, controls="none",
                         structure="refill", loss=nn.functional.mse_loss, **FAST)
    rec = summary["rounds"][1]["variants"]["ticket"]
    assert np.isnan(rec["test_accuracy"]["mean"])  # not class scores: no accuracy
    ticket = Path(summary["run_dir"]) / "trial0" / "ticket_round1.pt"
    assert not load_ticket(ticket)["masks"]["c1.weight"].flatten(1).any(1).all()  # refill dropped channels
    compressed_matches_masked(Seq(), ticket, tmp_path, (2, 16))


def test_export_traces_the_example_input(tmp_path):
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(10, 4), nn.Linear(4, 2)

        def forward(self, t):
            return self.fc(self.emb(t).mean(1))

    t = torch.randint(0, 10, (30, 5))
    y = torch.randint(0, 2, (30,))
    summary = ltc.search(lambda: Tokens(), (t, y), (t, y), out=tmp_path, rounds=1, controls="none", iterations=2,
                         eval_every=1)
    ticket = Path(summary["run_dir"]) / "trial0" / "ticket_round1.pt"
    out = ltc.export(Tokens(), ticket, t[:2], tmp_path / "tok.onnx")
    import onnxruntime as ort

    got = ort.InferenceSession(str(out)).run(None, {"input": t[:3].numpy()})[0]
    want = masked_reference(Tokens(), load_ticket(ticket))(t[:3]).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


BROKEN_FORWARD = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        assert x.shape[-1] == 28, "this net wants 28x28 images"
        return self.fc(x.flatten(1))


def build(classes):
    return Net(classes)
'''


def test_a_users_model_that_raises_is_bad_input(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(BROKEN_FORWARD)
    r = CliRunner().invoke(main, ["ticket", "--model", f"{src}:build", "--out", str(tmp_path / "o"), *TICKET_ARGS])
    assert r.exit_code == 1 and "AssertionError: this net wants 28x28 images" in r.output, r.output
    assert [line for line in r.output.strip().splitlines() if not line.startswith(IMPORT_NOTICE)] == \
        [r.output.strip().splitlines()[-1]]


def test_dense_training_of_a_factory_model_names_its_folder_inside_out(tmp_path):
    src = tmp_path / "nets" / "mynet.py"
    src.parent.mkdir()
    src.write_text(FACTORY)
    out = tmp_path / "runs"
    r = CliRunner().invoke(main, ["train", "--model", f"{src}:build", "--dataset", "synthetic", "--iterations", "4",
                                  "--eval-every", "2", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    [run] = out.iterdir()  # one folder, directly in --out, whatever the factory's path
    assert run.name.startswith("train-mynet-build-synthetic-") and (run / "ticket.pt").is_file()
