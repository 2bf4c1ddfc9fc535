"""Model architectures with explicit per-layer widths, so that a natively narrow version exists.

Every model takes ``widths``: a dict from a width key to a channel count. ``channel_layers()`` maps
each key to the modules that produce those channels (the layer and its BatchNorm), which is what a
channel ticket masks. Building the same class with smaller ``widths`` gives the natively narrow model
that a compressed ticket must match parameter for parameter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

Widths = dict[str, int]


class WidthModel(nn.Module):
    """A model whose prunable widths are named; subclasses fill ``self.layers_of``."""

    default_widths: Widths = {}
    input_shape: tuple[int, ...] = ()

    def __init__(self, widths: Widths | None = None):
        super().__init__()
        self.widths = {**self.default_widths, **(widths or {})}
        self.layers_of: dict[str, tuple[nn.Module, nn.Module | None]] = {}

    def channel_layers(self) -> dict[str, tuple[nn.Module, nn.Module | None]]:
        return self.layers_of


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class MLP(WidthModel):
    """LeNet-300-100 style fully connected net."""

    default_widths = {"fc1": 300, "fc2": 100}
    input_shape = (1, 28, 28)

    def __init__(self, widths: Widths | None = None, in_features: int = 784, classes: int = 10):
        super().__init__(widths)
        w = self.widths
        self.in_features = in_features
        self.fc1 = nn.Linear(in_features, w["fc1"])
        self.fc2 = nn.Linear(w["fc1"], w["fc2"])
        self.out = nn.Linear(w["fc2"], classes)
        self.layers_of = {"fc1": (self.fc1, None), "fc2": (self.fc2, None)}

    dropout = 0.0

    def forward(self, x):
        x = torch.flatten(x, 1)
        drop = nn.functional.dropout
        x = drop(torch.relu(self.fc1(x)), self.dropout, self.training)
        return self.out(drop(torch.relu(self.fc2(x)), self.dropout, self.training))


class LeNet5(WidthModel):
    default_widths = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}
    input_shape = (1, 28, 28)

    def __init__(self, widths: Widths | None = None, classes: int = 10):
        super().__init__(widths)
        w = self.widths
        self.conv1 = nn.Conv2d(1, w["conv1"], 5, padding=2)
        self.conv2 = nn.Conv2d(w["conv1"], w["conv2"], 5)
        self.fc1 = nn.Linear(w["conv2"] * 5 * 5, w["fc1"])
        self.fc2 = nn.Linear(w["fc1"], w["fc2"])
        self.out = nn.Linear(w["fc2"], classes)
        self.layers_of = {k: (getattr(self, k), None) for k in ("conv1", "conv2", "fc1", "fc2")}

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(WidthModel):
    """VGG for CIFAR (32x32): conv-BN-ReLU stacks, max pools, one linear classifier."""

    input_shape = (3, 32, 32)

    def __init__(self, widths: Widths | None = None, cfg: list | None = None, classes: int = 10,
                 image: int = 32, in_channels: int = 3):
        cfg = cfg or VGG16_CFG
        convs = [c for c in cfg if c != "M"]
        self.default_widths = {f"conv{i}": c for i, c in enumerate(convs)}
        super().__init__(widths)
        self.input_shape = (in_channels, image, image)
        layers: list[nn.Module] = []
        cin, i, size = in_channels, 0, image
        for c in cfg:
            if c == "M":
                if size >= 2:  # small inputs (8x8 digits) skip the pools they cannot afford
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            block = conv_bn(cin, self.widths[f"conv{i}"], 3)
            self.layers_of[f"conv{i}"] = (block[0], block[1])
            layers.append(block)
            cin, i = self.widths[f"conv{i}"], i + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin * size * size, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block; the inner width ``mid`` is prunable, the output is tied to the shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, mid, 3, stride)
        self.conv2 = conv_bn(mid, cout, 3, act=None)
        self.shortcut = (nn.Sequential() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, 1, stride, act=None))

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(WidthModel):
    """CIFAR ResNet (3 stages, 3x3 stem) or ImageNet ResNet-18 (4 stages, 7x7 stem + max pool)."""

    def __init__(self, widths: Widths | None = None, blocks: tuple[int, ...] = (3, 3, 3),
                 stage_widths: tuple[int, ...] = (16, 32, 64), imagenet: bool = False, classes: int = 10,
                 image: int = 32, in_channels: int = 3):
        self.default_widths = {f"s{s}b{b}": w for s, (n, w) in enumerate(zip(blocks, stage_widths, strict=True))
                               for b in range(n)}
        super().__init__(widths)
        self.input_shape = (in_channels, image, image)
        stem = stage_widths[0]
        if imagenet:
            self.stem = nn.Sequential(conv_bn(in_channels, stem, 7, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn(in_channels, stem, 3)
        stages = []
        cin = stem
        for s, (n, w) in enumerate(zip(blocks, stage_widths, strict=True)):
            for b in range(n):
                stride = 2 if b == 0 and s > 0 else 1
                block = BasicBlock(cin, self.widths[f"s{s}b{b}"], w, stride)
                self.layers_of[f"s{s}b{b}"] = (block.conv1[0], block.conv1[1])
                stages.append(block)
                cin = w
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(widths: Widths | None = None, classes: int = 1000) -> ResNet:
    return ResNet(widths, (2, 2, 2, 2), (64, 128, 256, 512), imagenet=True, classes=classes, image=224)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (ReLU6); residual when shapes allow."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.expand = conv_bn(cin, hidden, 1, act=nn.ReLU6)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # expansion t, channels c, repeats n, stride s


class MobileNetV2(WidthModel):
    """MobileNetV2 (224). The first block has no expansion conv in the paper; here every block has one
    (t=1 means hidden = input width), which keeps the hidden width uniformly prunable."""

    def __init__(self, widths: Widths | None = None, settings: list | None = None, classes: int = 1000,
                 image: int = 224, stem: int = 32, last: int = 1280):
        settings = settings or MOBILENET_V2
        defaults, cin = {}, stem
        for i, (t, c, n, _s) in enumerate(settings):
            for j in range(n):
                defaults[f"b{i}_{j}"] = cin * t
                cin = c
        self.default_widths = defaults
        super().__init__(widths)
        self.input_shape = (3, image, image)
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 2, act=nn.ReLU6)]
        cin = stem
        for i, (_t, c, n, s) in enumerate(settings):
            for j in range(n):
                block = InvertedResidual(cin, self.widths[f"b{i}_{j}"], c, s if j == 0 else 1)
                self.layers_of[f"b{i}_{j}"] = (block.expand[0], block.expand[1])
                layers.append(block)
                cin = c
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DenseBlockNet(WidthModel):
    """A DenseNet-style block: each layer's output is concatenated to its input."""

    default_widths = {"stem": 8, "l0": 4, "l1": 4, "l2": 4}
    input_shape = (3, 16, 16)

    def __init__(self, widths: Widths | None = None, classes: int = 10):
        super().__init__(widths)
        w = self.widths
        self.stem = conv_bn(3, w["stem"], 3)
        self.layers_of["stem"] = (self.stem[0], self.stem[1])
        self.dense = nn.ModuleList()
        cin = w["stem"]
        for k in ("l0", "l1", "l2"):
            layer = conv_bn(cin, w[k], 3)
            self.layers_of[k] = (layer[0], layer[1])
            self.dense.append(layer)
            cin += w[k]
        self.transition = conv_bn(cin, 8, 1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SENet(WidthModel):
    """Conv blocks with squeeze-and-excitation gating (mean over H,W -> FC -> ReLU -> FC -> sigmoid -> Mul)."""

    default_widths = {"conv0": 16, "se0": 4, "conv1": 16, "se1": 4}
    input_shape = (3, 16, 16)

    def __init__(self, widths: Widths | None = None, classes: int = 10, linear_se: bool = True):
        super().__init__(widths)
        w = self.widths
        self.conv0 = conv_bn(3, w["conv0"], 3)
        self.se0 = self._se(w["conv0"], w["se0"], linear_se)
        self.conv1 = conv_bn(w["conv0"], w["conv1"], 3)
        self.se1 = self._se(w["conv1"], w["se1"], linear_se)
        self.linear_se = linear_se
        self.fc = nn.Linear(w["conv1"], classes)
        self.layers_of = {"conv0": (self.conv0[0], self.conv0[1]), "conv1": (self.conv1[0], self.conv1[1]),
                          "se0": (self.se0[0], None), "se1": (self.se1[0], None)}

    @staticmethod
    def _se(c: int, r: int, linear: bool) -> nn.Sequential:
        if linear:
            return nn.Sequential(nn.Linear(c, r), nn.ReLU(), nn.Linear(r, c), nn.Sigmoid())
        return nn.Sequential(nn.Conv2d(c, r, 1), nn.ReLU(), nn.Conv2d(r, c, 1), nn.Sigmoid())

    def _gate(self, x, se):
        if self.linear_se:
            s = se(x.mean((2, 3)))
            return x * s.view(x.size(0), -1, 1, 1)
        return x * se(nn.functional.adaptive_avg_pool2d(x, 1))

    def forward(self, x):
        x = self._gate(self.conv0(x), self.se0)
        x = nn.functional.max_pool2d(self._gate(self.conv1(x), self.se1), 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InceptionNet(WidthModel):
    """One Inception-style block: 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 branches, concatenated."""

    default_widths = {"b1": 8, "b3r": 6, "b3": 8, "b5r": 4, "b5": 6, "bp": 4}
    input_shape = (3, 16, 16)

    def __init__(self, widths: Widths | None = None, classes: int = 10):
        super().__init__(widths)
        w = self.widths
        self.stem = conv_bn(3, 12, 3)
        self.b1 = conv_bn(12, w["b1"], 1)
        self.b3 = nn.Sequential(conv_bn(12, w["b3r"], 1), conv_bn(w["b3r"], w["b3"], 3))
        self.b5 = nn.Sequential(conv_bn(12, w["b5r"], 1), conv_bn(w["b5r"], w["b5"], 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(12, w["bp"], 1))
        self.head = conv_bn(w["b1"] + w["b3"] + w["b5"] + w["bp"], 16, 1)
        self.fc = nn.Linear(16, classes)
        self.layers_of = {"b1": (self.b1[0], self.b1[1]), "b3r": (self.b3[0][0], self.b3[0][1]),
                          "b3": (self.b3[1][0], self.b3[1][1]), "b5r": (self.b5[0][0], self.b5[0][1]),
                          "b5": (self.b5[1][0], self.b5[1][1]), "bp": (self.bp[1][0], self.bp[1][1])}

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))


class ResNeXtNet(WidthModel):
    """Two ResNeXt-style bottlenecks: 1x1 reduce, grouped 3x3 (``groups``), 1x1 expand, residual."""

    default_widths = {"mid0": 16, "mid1": 16}
    input_shape = (3, 16, 16)

    def __init__(self, widths: Widths | None = None, classes: int = 10, groups: int = 4):
        super().__init__(widths)
        self.stem = conv_bn(3, 32, 3)
        self.blocks = nn.ModuleList()
        for key in ("mid0", "mid1"):
            mid = self.widths[key]
            block = nn.Sequential(conv_bn(32, mid, 1), conv_bn(mid, mid, 3, groups=groups), conv_bn(mid, 32, 1, act=None))
            self.layers_of[key] = (block[0][0], block[0][1])
            self.blocks.append(block)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConvN(WidthModel):
    """The LTH paper's Conv-2/4/6: pairs of 3x3 convs (64, 128, 256) each followed by a max pool,
    then FC 256-256-classes. Glorot (normal) init as in the paper."""

    def __init__(self, widths: Widths | None = None, pairs: int = 2, in_shape: tuple[int, ...] = (3, 32, 32),
                 classes: int = 10, dropout: float = 0.0):
        chans = [64, 64, 128, 128, 256, 256][: 2 * pairs]
        self.default_widths = {**{f"conv{i}": c for i, c in enumerate(chans)}, "fc0": 256, "fc1": 256}
        super().__init__(widths)
        self.input_shape = tuple(in_shape)
        w = self.widths
        layers: list[nn.Module] = []
        cin, size = in_shape[0], in_shape[1]
        for i in range(2 * pairs):
            conv = nn.Conv2d(cin, w[f"conv{i}"], 3, padding=1)
            self.layers_of[f"conv{i}"] = (conv, None)
            layers += [conv, nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = w[f"conv{i}"]
        self.features = nn.Sequential(*layers)
        self.fc0 = nn.Linear(cin * size * size, w["fc0"])
        self.fc1 = nn.Linear(w["fc0"], w["fc1"])
        self.out = nn.Linear(w["fc1"], classes)
        self.layers_of |= {"fc0": (self.fc0, None), "fc1": (self.fc1, None)}
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        glorot_init(self)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        x = self.dropout(torch.relu(self.fc0(x)))
        return self.out(self.dropout(torch.relu(self.fc1(x))))


def glorot_init(model: nn.Module) -> None:
    """Glorot (Xavier) normal weights, zero biases: the LTH paper's init for LeNet and Conv-N."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def kaiming_init(model: nn.Module) -> None:
    """Kaiming (He) normal for convs, BN scale 1 / shift 0: the paper's init for VGG and ResNet."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": VGG16_CFG,
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _lenet300(in_shape, classes, dropout):
    m = MLP(in_features=math.prod(in_shape), classes=classes)
    m.input_shape = tuple(in_shape)
    m.dropout = dropout
    glorot_init(m)
    return m


def _lenet5(in_shape, classes, dropout):
    if tuple(in_shape) != (1, 28, 28):
        raise ValueError("lenet5 needs 1x28x28 inputs")
    m = LeNet5(classes=classes)
    glorot_init(m)
    return m


def _vgg(cfg):
    def build(in_shape, classes, dropout):
        m = VGG(cfg=VGG_CFGS[cfg], classes=classes, image=in_shape[1], in_channels=in_shape[0])
        kaiming_init(m)
        return m
    return build


def _resnet(blocks, widths, imagenet=False):
    def build(in_shape, classes, dropout):
        m = ResNet(None, blocks, widths, imagenet=imagenet, classes=classes, image=in_shape[1],
                   in_channels=in_shape[0])
        kaiming_init(m)
        return m
    return build


# name -> builder(in_shape, classes, dropout); the ticket format stores the name and these kwargs
REGISTRY: dict[str, Callable[..., WidthModel]] = {
    "lenet300": _lenet300,
    "lenet5": _lenet5,
    "conv2": lambda in_shape, classes, dropout: ConvN(pairs=1, in_shape=in_shape, classes=classes, dropout=dropout),
    "conv4": lambda in_shape, classes, dropout: ConvN(pairs=2, in_shape=in_shape, classes=classes, dropout=dropout),
    "conv6": lambda in_shape, classes, dropout: ConvN(pairs=3, in_shape=in_shape, classes=classes, dropout=dropout),
    "vgg11": _vgg("vgg11"),
    "vgg16": _vgg("vgg16"),
    "vgg19": _vgg("vgg19"),
    "resnet20": _resnet((3, 3, 3), (16, 32, 64)),
    "resnet56": _resnet((9, 9, 9), (16, 32, 64)),
    "resnet18": _resnet((2, 2, 2, 2), (64, 128, 256, 512), imagenet=True),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_arch(name, in_shape, classes, dropout=0.0) -> tuple[str, tuple[int, int, int], int, float]:
    """Types and ranges of a model's build arguments, which may come from a stranger's ticket:
    a registered name, ``in_shape`` of three positive integers (channels, height, width), a positive
    integer class count and a dropout in [0, 1). Returns them normalised; a one-line error otherwise."""
    from ltc.compressor import sources
    from ltc.errors import LtcError

    if not isinstance(name, str) or (name not in REGISTRY and sources.kind(name) == "registry"):
        raise LtcError(f"unknown model {_short(name)}; choose one of {', '.join(REGISTRY)}, torchvision:NAME, "
                       "timm:NAME or path/to/file.py:function")
    if not isinstance(in_shape, (list, tuple)) or len(in_shape) != 3 or not all(_is_int(d) for d in in_shape):
        raise LtcError(f"in_shape must be 3 integers (channels, height, width), got {_short(in_shape)}")
    if any(d < 1 for d in in_shape):
        raise LtcError(f"in_shape must be positive, got {list(in_shape)}")
    if not _is_int(classes) or classes < 1:
        raise LtcError(f"classes must be a positive integer, got {_short(classes)}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise LtcError(f"dropout must be a number in [0, 1), got {_short(dropout)}")
    return name, tuple(in_shape), classes, float(dropout)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _builder(name: str) -> Callable[..., nn.Module]:
    from ltc.compressor import sources

    return REGISTRY[name] if name in REGISTRY else sources.builder(name)


def build_model(name: str, in_shape: tuple[int, ...], classes: int, dropout: float = 0.0) -> nn.Module:
    """Build a registered model (or a torchvision:, timm: or file.py: one, see :mod:`ltc.compressor.sources`) for inputs of ``in_shape`` (C, H, W); unknown names list the choices."""
    from ltc.errors import LtcError

    name, in_shape, classes, dropout = check_arch(name, in_shape, classes, dropout)
    try:
        model = _builder(name)(tuple(in_shape), classes, dropout)
    except ValueError as exc:
        raise LtcError(f"model {name!r} cannot take inputs of shape {tuple(in_shape)}: {exc}") from None
    if name not in REGISTRY:  # the user's (or a model library's) model: it must hold values
        from ltc.compressor.usercode import check_materialised

        check_materialised(model, f"--model {name}")
    return model


def memory_estimate(name: str, in_shape: tuple[int, ...], classes: int, dropout: float = 0.0,
                    batch: int = 2, limit: int | None = None) -> dict[str, int]:
    """Bytes of parameters (and buffers) and of the activations of one forward pass of ``batch``
    inputs, measured on the meta device: nothing is allocated, and a shape the model cannot take is
    a one-line error. Arguments are checked as by :func:`check_arch`. When a lower bound (the input,
    the logits and the output layer's bias) already exceeds ``limit``, that bound is returned
    (``"lower_bound": 1``) so an absurd architecture is not even built on meta."""
    from ltc.errors import LtcError, first_line

    name, in_shape, classes, dropout = check_arch(name, in_shape, classes, dropout)
    input_bytes = 4 * batch * math.prod(in_shape)
    # at least: the output layer's bias; the input and the logits
    low = {"parameters": 4 * classes, "activations": input_bytes + 4 * batch * classes, "lower_bound": 1}
    if limit is not None and low["parameters"] + low["activations"] > limit:
        return low
    # A model from elsewhere may not run on the meta device (.item(), asserts, sys.exit): its estimate is
    # then the lower bound, and its errors surface when it is built for real. A factory file is imported
    # here, before the meta device is entered: its module-level tensors are real ones.
    ours = name in REGISTRY
    build = _builder(name)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
            model = build(in_shape, classes, dropout)
    except BaseException as exc:
        if not ours and not isinstance(exc, KeyboardInterrupt):
            return low
        if isinstance(exc, LtcError) or not isinstance(exc, (ValueError, RuntimeError, OverflowError)):
            raise
        raise LtcError(f"model {name!r} cannot be built for inputs of shape {in_shape} with {classes} classes: "
                       f"{first_line(exc)}") from None
    tensors = [*model.parameters(), *model.buffers()]
    if any(nn.parameter.is_lazy(t) for t in tensors):  # shapes unknown until a call: refused when built
        return low
    params = sum(t.numel() * t.element_size() for t in tensors)
    acts = [input_bytes]

    def hook(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                acts[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(batch, *in_shape, device="meta"))
    except BaseException as exc:
        if not ours and not isinstance(exc, KeyboardInterrupt):
            return low
        if not isinstance(exc, (ValueError, RuntimeError, IndexError, OverflowError)):
            raise
        raise LtcError(f"model {name!r} cannot take inputs of shape {in_shape}: {first_line(exc)}") from None
    finally:
        for h in handles:
            h.remove()
    return {"parameters": params, "activations": acts[0], "lower_bound": 0}


@torch.no_grad()
def kill_channels(model: WidthModel, keep: dict[str, list[int]], shift: float = 0.0) -> None:
    """Zero every channel of ``model``'s width keys that is not in ``keep[key]``.

    The layer's filter (and bias) go to zero; with a BatchNorm its scale goes to zero and its shift to
    ``shift``: a non-zero ``shift`` makes the dead channel a non-zero constant, as in a real ticket.
    """
    for key, kept in keep.items():
        layer, bn = model.channel_layers()[key]
        dead = sorted(set(range(layer.weight.shape[0])) - set(kept))
        layer.weight[dead] = 0
        if layer.bias is not None:
            layer.bias[dead] = shift if bn is None else 0
        if bn is not None:
            bn.weight[dead] = 0
            bn.bias[dead] = shift
