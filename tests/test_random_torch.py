"""Random torch modules through both exporters: what the exporters really write (BN folding, Gemm or
MatMul+Add, Shape/Gather chains, permutes, LayerNorm) must compress to a model that computes what
the torch module computes."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from ltc.exporters.torch_export import export_onnx  # noqa: E402
from ltc.passes import compress  # noqa: E402
from ltc.passes.stats import count_parameters  # noqa: E402
from tests.helpers import run  # noqa: E402


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, act: type = nn.ReLU):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


class Residual(nn.Module):
    def __init__(self, c: int, mid: int):
        super().__init__()
        self.a, self.b = ConvBN(c, mid), nn.Sequential(nn.Conv2d(mid, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.b(self.a(x)))


class SE(nn.Module):
    def __init__(self, c: int, mid: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class ChannelLastMLP(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


class Dense(nn.Module):  # DenseNet-style: concatenate new features to the input
    def __init__(self, c: int, grow: int):
        super().__init__()
        self.conv = ConvBN(c, grow)

    def forward(self, x):
        return torch.cat([x, self.conv(x)], 1)


class Head(nn.Module):
    def __init__(self, c: int, flatten: bool, classes: int = 5):
        super().__init__()
        self.flatten = flatten
        self.fc1, self.fc2 = nn.Linear(c * (4 if flatten else 1), 12), nn.Linear(12, classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(x, 2 if self.flatten else 1)
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


class RandomNet(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        rng = random.Random(seed)
        c = rng.choice([4, 6, 8])
        blocks = [ConvBN(3, c)]
        for _ in range(rng.randint(2, 5)):
            kind = rng.choice(["convbn", "residual", "se", "mlp", "dense", "depthwise", "grouped", "pool"])
            if kind == "convbn":
                cout = rng.choice([4, 6, 8, 12])
                blocks.append(ConvBN(c, cout, rng.choice([1, 3]), act=rng.choice([nn.ReLU, nn.ReLU6, nn.Hardswish,
                                                                                    nn.LeakyReLU, nn.SiLU])))
                c = cout
            elif kind == "residual":
                blocks.append(Residual(c, rng.choice([4, 8])))
            elif kind == "se":
                blocks.append(SE(c, max(c // 2, 2)))
            elif kind == "mlp":
                blocks.append(ChannelLastMLP(c, 2 * c))
            elif kind == "dense":
                grow = rng.choice([2, 4])
                blocks.append(Dense(c, grow))
                c += grow
            elif kind == "depthwise":
                blocks.append(ConvBN(c, c, 3, groups=c, act=nn.ReLU6))
            elif kind == "grouped" and c % 2 == 0:
                blocks.append(ConvBN(c, c, 3, groups=2))
            elif kind == "pool":
                blocks.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*blocks)
        self.head = Head(c, flatten=rng.random() < 0.5)
        self.input_shape = (3, 8, 8)
        self._kill(rng)

    def _kill(self, rng: random.Random) -> None:
        """Random dead filters and neurons; their BN scale and shift, or only the scale, go to zero."""
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.6, 0.6)
            modules = list(self.modules())
            for i, m in enumerate(modules):
                if m is self.head.fc2 or not isinstance(m, nn.Conv2d | nn.Linear):
                    continue
                rows = m.weight.shape[0]
                dead = [r for r in range(rows) if rng.random() < 0.4]
                if not dead or (isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1):
                    continue
                m.weight[dead] = 0
                if m.bias is not None and rng.random() < 0.7:
                    m.bias[dead] = 0
                bn = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else None
                if bn is not None:
                    bn.weight[dead] = 0
                    if rng.random() < 0.7:
                        bn.bias[dead] = 0
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(self.body(x))


def check_torch_model(seed: int, exporter: str, tmp_path) -> bool:
    model = RandomNet(seed).eval()
    path = export_onnx(model, tmp_path / f"m{seed}-{exporter}.onnx", model.input_shape, exporter=exporter)
    full = onnx.load(str(path))
    r = compress(full)
    assert r.verification.passed and r.verification.optimizer_ok, seed
    onnx.checker.check_model(r.model)
    assert count_parameters(r.model) <= count_parameters(full)
    x = torch.randn(3, *model.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = model(x).numpy()
    got = run(r.model, {full.graph.input[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 + 1e-4 * float(np.abs(want).max()),
                               err_msg=f"seed {seed} {exporter}")
    return count_parameters(r.model) < count_parameters(full)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_random_torch_models(exporter, tmp_path):
    shrunk = sum(check_torch_model(seed, exporter, tmp_path) for seed in range(8))
    assert shrunk >= 6  # dead filters with zero shift are in almost every model


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_many_random_torch_models(exporter, tmp_path):
    for seed in range(100, 300):
        check_torch_model(seed, exporter, tmp_path)
