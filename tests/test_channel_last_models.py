"""Channel-last and transformer blocks as the torch exporters write them: the MLP hidden neurons
between two Linear layers are channels on the last axis, and dead ones must go, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from ltc.exporters.torch_export import export_onnx  # noqa: E402
from ltc.passes import compress  # noqa: E402
from tests.helpers import assert_equivalent  # noqa: E402


class ViTBlock(nn.Module):
    """Pre-norm transformer block on [B, T, C]: attention + MLP (Linear C->4C, GELU, Linear 4C->C)."""

    def __init__(self, c: int = 16, heads: int = 2):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.input_shape = (5, c)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ConvNeXtBlock(nn.Module):
    """dwconv -> permute -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> gamma -> permute -> + x."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.input_shape = (3, 8, 8)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.fc2(nn.functional.gelu(self.fc1(y)))
        return x + y.permute(0, 3, 1, 2)


def _kill_half_hidden(model: nn.Module) -> int:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
        hidden = model.fc1.out_features
        dead = torch.arange(0, hidden, 2)
        model.fc1.weight[dead] = 0
        model.fc1.bias[dead] = 0  # GELU(0) = 0: the neuron is exactly dead
        if isinstance(model, ConvNeXtBlock):
            model.gamma.data = model.gamma.data.abs() + 0.5
    return hidden // 2


def _matmul_widths(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            w = next((inits[i] for i in n.input[1:2] if i in inits), None)
            if w is not None:
                shapes.append(w)
    return shapes


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("block", [ViTBlock, ConvNeXtBlock])
def test_dead_mlp_hidden_neurons_are_removed(block, exporter, tmp_path):
    model = block().eval()
    live = _kill_half_hidden(model)
    path = export_onnx(model, tmp_path / "m.onnx", model.input_shape, exporter=exporter)
    full = onnx.load(str(path))
    r = compress(full)
    assert r.verification.passed and r.verification.optimizer_ok
    c = model.fc1.in_features
    widths = _matmul_widths(r.model)
    # fc1 keeps its live neurons as outputs, fc2 reads only them (weights as [in, out] or [out, in])
    assert any(set(w) == {c, live} for w in widths), widths
    assert not any(4 * c in w for w in widths), widths
    fc1 = next(la for la in r.layers if la["out_before"] == 4 * c)  # the report counts the contracted axis
    assert (fc1["in_before"], fc1["out_after"]) == (c, live)
    assert all(la["op"] in ("MatMul", "Gemm", "Conv") for la in r.layers)  # no activation @ activation rows
    x = {full.graph.input[0].name: [None, *model.input_shape]}
    assert_equivalent(full, r.model, x, batch_sizes=(1, 3))
    with torch.no_grad():  # and the compressed ONNX model still computes what the torch module does
        t = torch.randn(2, *model.input_shape)
        from tests.helpers import run

        got = run(r.model, {full.graph.input[0].name: t.numpy()})[0]
        np.testing.assert_allclose(got, model(t).numpy(), rtol=1e-4, atol=1e-4)
