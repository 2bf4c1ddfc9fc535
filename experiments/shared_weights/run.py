"""An ALBERT-like model (one layer's weights reused by every layer, half its MLP neurons dead) through
both torch exporters and `ltc compress`: parameters per use and as stored, before and after.

    .venv/bin/python experiments/shared_weights/run.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from ltc.exporters.torch_export import export_onnx
from ltc.passes import compress


class Layer(nn.Module):
    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.up, self.down, self.ln = nn.Linear(c, hidden), nn.Linear(hidden, c), nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x + self.down(nn.functional.gelu(self.up(x))))


class AlbertLike(nn.Module):
    def __init__(self, c: int = 32, hidden: int = 64, layers: int = 3):
        super().__init__()
        self.inp, self.layer, self.head, self.layers = nn.Linear(16, c), Layer(c, hidden), nn.Linear(c, 4), layers

    def forward(self, x):
        x = self.inp(x)
        for _ in range(self.layers):  # the same weights every time
            x = self.layer(x)
        return self.head(x)


def stored(model: onnx.ModelProto) -> int:
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def main() -> None:
    torch.manual_seed(0)
    net = AlbertLike().eval()
    with torch.no_grad():  # half the MLP neurons dead: their up rows and biases zero
        dead = torch.arange(0, 64, 2)
        net.layer.up.weight[dead] = 0
        net.layer.up.bias[dead] = 0
    print("| exporter | parameters per use, before -> after | stored, before -> after | verified |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in ("legacy", "dynamo"):
            path = export_onnx(net, Path(tmp) / f"{exporter}.onnx", (5, 16), exporter=exporter)
            model = onnx.load(str(path))
            r = compress(model, round_to=1)
            print(f"| {exporter} | {r.before['parameters']:,} -> {r.after['parameters']:,} | "
                  f"{stored(model):,} -> {stored(r.model):,} | {r.verification.passed} |")


if __name__ == "__main__":
    main()
