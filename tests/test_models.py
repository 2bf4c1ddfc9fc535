"""Models built in torch, exported with both exporters, random dead channels: exact and as small as
the natively narrow model."""

from __future__ import annotations

import logging
import random

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ltc.compressor.models import (  # noqa: E402
    MLP,
    VGG,
    DenseBlockNet,
    InceptionNet,
    LeNet5,
    MobileNetV2,
    ResNet,
    SENet,
    kill_channels,
)
from ltc.exporters.torch_export import export_onnx  # noqa: E402
from ltc.passes import compress  # noqa: E402
from ltc.passes.stats import count_parameters  # noqa: E402
from tests.helpers import assert_equivalent  # noqa: E402

logging.getLogger("torch").setLevel(logging.ERROR)

MODELS = {
    "mlp": lambda w=None: MLP(w, in_features=64, classes=10),
    "lenet5": LeNet5,
    "vgg": lambda w=None: VGG(w, cfg=[8, 8, "M", 16, "M", 16], image=16),
    "resnet": lambda w=None: ResNet(w, (2, 2), (8, 16), image=16),  # identity and 1x1 projection shortcuts
    "mobilenetv2": lambda w=None: MobileNetV2(w, settings=[(1, 8, 1, 1), (4, 16, 2, 2), (4, 16, 1, 1)],
                                              image=32, stem=8, last=32),
    "densenet": DenseBlockNet,
    "se-linear": SENet,
    "se-conv": lambda w=None: SENet(w, linear_se=False),
    "inception": InceptionNet,
}
MLP_INPUT = (1, 8, 8)


def _randomize_bn(model) -> None:
    """Non-trivial BN statistics, so that folding and shifts are exercised."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


def _ticket(name: str, seed: int, shift: float):
    torch.manual_seed(seed)
    model = MODELS[name]()
    _randomize_bn(model)
    rng = random.Random(seed)
    keep = {k: sorted(rng.sample(range(v), max(1, v // 2))) for k, v in model.widths.items()}
    kill_channels(model, keep, shift)
    narrow = MODELS[name]({k: len(v) for k, v in keep.items()})
    _randomize_bn(narrow)
    return model, narrow


def _shape(model) -> tuple[int, ...]:
    return MLP_INPUT if isinstance(model, MLP) else model.input_shape


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(MODELS))
def test_dead_channels_compress_to_the_natively_narrow_model(name, exporter, tmp_path):
    model, narrow = _ticket(name, seed=7, shift=0.0)
    shape = _shape(model)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", shape, exporter=exporter))
    small = onnx.load(export_onnx(narrow, tmp_path / "narrow.onnx", shape, exporter=exporter))
    r = compress(full)
    assert r.verification.passed
    assert_equivalent(full, r.model, {"input": (None, *shape)})
    assert r.after["parameters"] == count_parameters(small)
    assert r.after["parameters"] < r.before["parameters"]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(MODELS))
def test_dead_channels_with_bn_shift_stay_exact(name, exporter, tmp_path):
    """Dead channels whose BN shift makes them a non-zero constant: folded where exact, else kept."""
    model, narrow = _ticket(name, seed=11, shift=0.4)
    shape = _shape(model)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", shape, exporter=exporter))
    r = compress(full)
    assert r.verification.passed
    assert_equivalent(full, r.model, {"input": (None, *shape)})
    assert r.after["parameters"] <= r.before["parameters"]
    kept_reasons = [reason for layer in r.layers for reason in layer["kept_because"]]
    if r.after["parameters"] == r.before["parameters"]:
        assert kept_reasons  # nothing removed: the report must say why


def test_fc_models_with_bias_shift_still_compress_fully(tmp_path):
    model, narrow = _ticket("lenet5", seed=5, shift=0.4)  # fc dead neurons output relu(0.4): folded
    shape = _shape(model)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", shape))
    small = onnx.load(export_onnx(narrow, tmp_path / "narrow.onnx", shape))
    r = compress(full)
    assert r.after["parameters"] == count_parameters(small)


def test_static_batch_export_compresses_too(tmp_path):
    model, narrow = _ticket("resnet", seed=2, shift=0.0)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", model.input_shape, dynamic_batch=False))
    r = compress(full)
    assert r.verification.passed and r.after["parameters"] < r.before["parameters"]


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "densenet"])
def test_batchnorm_kept_as_nodes(name, tmp_path):
    """Exported without constant folding, BN stays a node: its four parameter vectors are re-indexed."""
    model, narrow = _ticket(name, seed=9, shift=0.0)
    shape = _shape(model)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", shape, keep_batchnorm=True))
    small = onnx.load(export_onnx(narrow, tmp_path / "narrow.onnx", shape, keep_batchnorm=True))
    assert any(n.op_type == "BatchNormalization" for n in full.graph.node)
    r = compress(full)
    assert r.verification.passed
    assert_equivalent(full, r.model, {"input": (None, *shape)})
    # a dead channel's constant (BN shift of the depthwise) folds into a bias the next conv may lack:
    # ltc adds one, which the natively narrow model does not have
    added = sum(int(np.prod(t.dims)) for t in r.model.graph.initializer if t.name.endswith("__ltc_bias"))
    assert (name == "mobilenetv2") == (added > 0)
    assert r.after["parameters"] == count_parameters(small) + added


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_grouped_conv_model_matches_narrow_when_dead_channels_are_balanced(exporter, tmp_path):
    from ltc.compressor.models import ResNeXtNet

    torch.manual_seed(4)
    model = ResNeXtNet()
    _randomize_bn(model)
    rng = random.Random(4)
    # half of each group's 4 channels dead: the grouped conv keeps 2 per group
    keep = {k: sorted(g * 4 + i for g in range(4) for i in rng.sample(range(4), 2)) for k in model.widths}
    kill_channels(model, keep)
    with torch.no_grad():  # the grouped conv's outputs for the same channels die too (mid -> mid)
        for key, block in zip(("mid0", "mid1"), model.blocks, strict=True):
            dead = sorted(set(range(16)) - set(keep[key]))
            block[1][0].weight[dead] = 0
            block[1][1].weight[dead] = 0
            block[1][1].bias[dead] = 0
    narrow = ResNeXtNet({k: 8 for k in keep})
    _randomize_bn(narrow)
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", model.input_shape, exporter=exporter))
    small = onnx.load(export_onnx(narrow, tmp_path / "narrow.onnx", model.input_shape, exporter=exporter))
    r = compress(full)
    assert r.verification.passed
    assert_equivalent(full, r.model, {"input": (None, *model.input_shape)})
    assert r.after["parameters"] == count_parameters(small)


def test_grouped_conv_unbalanced_dead_channels_stay_exact(tmp_path):
    from ltc.compressor.models import ResNeXtNet

    torch.manual_seed(5)
    model = ResNeXtNet()
    _randomize_bn(model)
    kill_channels(model, {"mid0": [0, 1, 2, 3, 4, 8, 12], "mid1": list(range(8, 16))})
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx", model.input_shape))
    r = compress(full, unequal_groups="never")
    assert r.verification.passed
    assert_equivalent(full, r.model, {"input": (None, *model.input_shape)})
    groups = [a.i for n in r.model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 2 in groups  # mid1: groups 2 and 3 entirely dead -> dropped, group 4 -> 2
    kept = [la for la in r.layers if any("equal channels per group" in k for k in la["kept_because"])]
    assert kept  # mid0: unbalanced, extras kept and the report says why
    split = compress(full, unequal_groups="always")  # mid0 loses all 7 (its Conv split by group), exactly
    assert_equivalent(full, split.model, {"input": (None, *model.input_shape)})
    assert not any("equal channels per group" in k for la in split.layers for k in la["kept_because"])
    assert "Split" in [n.op_type for n in split.model.graph.node]
    assert split.after["parameters"] < r.after["parameters"]
