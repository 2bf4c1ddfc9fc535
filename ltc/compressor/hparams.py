"""Hyperparameters as typed dataclasses: the single source of the CLI flags, their help text and
ranges, and the canonical string whose hash names a run folder (so re-running the same command resumes
it).

Each field carries its check in its metadata (:class:`Range`, :class:`OneOf`, :class:`Ints`,
:class:`Names`): :func:`options` turns it into a click type, so ``--help`` shows the range and a bad
value is refused while parsing; ``validate()`` applies the same checks for API callers.

This module must not import torch: the CLI imports it to build its options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from dataclasses import dataclass, field

import click

from ltc.controls import CONTROLS, controls_help
from ltc.errors import LtcError
from ltc.options import FiniteFloat, IntList

# The registries' names, here so that building the CLI does not import torch (a test checks that
# they equal ltc.compressor.models.REGISTRY and ltc.compressor.data.DATASETS).
MODEL_NAMES = ("lenet300", "lenet5", "conv2", "conv4", "conv6", "vgg11", "vgg16", "vgg19", "resnet20",
               "resnet56", "resnet18")
DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "synthetic")
MODEL_PREFIXES = ("torchvision", "timm", "custom")  # custom: ltc.search on a user's nn.Module
DATASET_PREFIXES = ("imagefolder", "custom")
STRATEGY_NAMES = ("magnitude", "global", "channel")  # ltc.compressor.pruning.STRATEGIES
STRUCTURE_NAMES = ("unstructured", "refill", "refill+", "regroup")  # ltc.compressor.structure.STRUCTURES


@dataclass(frozen=True)
class Range:
    """A number in [min, max] (each end optionally open); NaN and infinities are always refused."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def ok(self, v) -> bool:
        if not math.isfinite(v):
            return False
        if self.min is not None and (v < self.min or (self.min_open and v == self.min)):
            return False
        return not (self.max is not None and (v > self.max or (self.max_open and v == self.max)))

    def describe(self) -> str:
        lo = None if self.min is None else f"{'>' if self.min_open else '>='} {_num(self.min)}"
        hi = None if self.max is None else f"{'<' if self.max_open else '<='} {_num(self.max)}"
        if lo and hi:
            return (f"in {'(' if self.min_open else '['}{_num(self.min)}, {_num(self.max)}"
                    f"{')' if self.max_open else ']'}")
        return lo or hi or "finite"

    def click_type(self, base: type) -> click.ParamType:
        kw = {"min": self.min, "max": self.max, "min_open": self.min_open, "max_open": self.max_open}
        if base is int:
            return click.IntRange(**{k: (int(v) if isinstance(v, float) else v) for k, v in kw.items()})
        return FiniteFloat(**kw)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


class _OneOfType(click.Choice):
    """click.Choice with ltc's wording: ``unknown model 'x'; choose one of a, b, c``."""

    def __init__(self, names: tuple[str, ...], what: str):
        super().__init__(names)
        self.what = what

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value in self.choices:
            return value
        self.fail(f"unknown {self.what} {value!r}; choose one of {', '.join(self.choices)}", param, ctx)


@dataclass(frozen=True)
class OneOf:
    names: tuple[str, ...]
    what: str

    def message(self, v) -> str:
        return f"unknown {self.what} {v!r}; choose one of {', '.join(self.names)}"

    def click_type(self, base: type) -> click.ParamType:
        return _OneOfType(self.names, self.what)


class _KeepText(click.ParamType):
    """Validate with ``check`` but keep the text as given: the canonical string (and so the run folder
    name) of a valid value stays what it always was."""

    def __init__(self, name: str, check):
        self.name = name
        self.check = check

    def convert(self, value, param, ctx):
        problem = self.check(value)
        if problem:
            self.fail(problem, param, ctx)
        return value


def _ints_problem(value) -> str | None:
    if not isinstance(value, str):
        return f"{value!r} is not a comma-separated list of integers (e.g. 1000,2000)"
    try:
        IntList().convert(value, None, None)
    except click.BadParameter as exc:
        return exc.message
    return None


@dataclass(frozen=True)
class Ints:
    """Comma-separated non-negative integers, kept as the text given."""

    def problem(self, v) -> str | None:
        return _ints_problem(v)

    def click_type(self, base: type) -> click.ParamType:
        return _KeepText("ints", _ints_problem)


@dataclass(frozen=True)
class Names:
    """Comma-separated names out of ``names`` (or ``none``), kept as the text given."""

    names: tuple[str, ...]
    what: str

    def problem(self, v) -> str | None:
        if not isinstance(v, str):
            return f"{v!r} is not a comma-separated list of {self.what}s"
        unknown = sorted({c.strip() for c in v.split(",") if c.strip()} - {*self.names, "none"})
        if unknown:
            return f"unknown {self.what}(s) {unknown}; choose {', '.join(self.names)} or none"
        return None

    def click_type(self, base: type) -> click.ParamType:
        return _KeepText(self.what + "s", self.problem)


@dataclass(frozen=True)
class Spec:
    """A registered name, or ``PREFIX:rest`` for one of ``prefixes`` (``torchvision:resnet18``,
    ``imagefolder:PATH``); with ``files``, also ``path/to/file.py:function``. Kept as the text given."""

    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    what: str
    files: bool = False

    def problem(self, v) -> str | None:
        if not isinstance(v, str):
            return f"{self.what} must be a string, got {v!r}"
        if v in self.names:
            return None
        head, sep, rest = v.partition(":")
        if sep and head in self.prefixes and rest.strip():
            return None
        if self.files:
            path, sep, fn = v.rpartition(":")
            if sep and path.endswith(".py") and fn.isidentifier():
                return None
        forms = ", ".join(f"{p}:NAME" for p in self.prefixes if p != "custom")
        files = ", path/to/file.py:function" if self.files else ""
        return f"unknown {self.what} {v!r}; choose one of {', '.join(self.names)}, or {forms}{files}"

    def metavar(self) -> str:
        forms = [f"{p}:NAME" if p != "imagefolder" else "imagefolder:PATH" for p in self.prefixes if p != "custom"]
        return "[" + "|".join([*self.names, *forms, *(["FILE.py:FUNCTION"] if self.files else [])]) + "]"

    def click_type(self, base: type) -> click.ParamType:
        kind = _KeepText(self.what, self.problem)
        kind.get_metavar = lambda *_args, **_kw: self.metavar()
        return kind


def _help(text: str, check=None, **kw):
    return field(metadata={"help": text, "check": check}, **kw)


POSITIVE = Range(min=0, min_open=True)
AT_LEAST_0 = Range(min=0)
AT_LEAST_1 = Range(min=1)
FRACTION = Range(min=0, max=1, max_open=True)  # [0, 1)


@dataclass(frozen=True)
class TrainHparams:
    model: str = _help("model: lenet300, lenet5, conv2/4/6, vgg11/16/19, resnet20/56, resnet18; "
                       "torchvision:NAME or timm:NAME (random init, when that package is installed); or "
                       "path/to/file.py:function, a factory of your own (this imports and runs that file: "
                       "give only code you trust)", Spec(MODEL_NAMES, MODEL_PREFIXES, "model", files=True),
                       default="lenet300")
    dataset: str = _help("dataset: digits, fashion-mnist, mnist, cifar10, synthetic, or imagefolder:PATH (one "
                         "sub-folder of images per class)", Spec(DATASET_NAMES, DATASET_PREFIXES, "dataset"),
                         default="digits")
    channels: int = _help("convert images to N channels (1 grey <-> 3 RGB; 0: as stored, image folders 3), e.g. "
                          "3 for ImageNet architectures on grey data", Range(min=0, max=3), default=0)
    image_size: int = _help("resize images to N x N (0: as stored, image folders 32)", Range(min=0, max=1024),
                            default=0)
    val_size: int | None = _help("validation examples held out of train (default: per dataset; paper 5000)",
                                 AT_LEAST_0, default=None)
    optimizer: str = _help("sgd or adam", OneOf(("sgd", "adam"), "optimizer"), default="adam")
    lr: float = _help("learning rate", POSITIVE, default=1.2e-3)
    momentum: float = _help("SGD momentum", FRACTION, default=0.9)
    weight_decay: float = _help("L2 weight decay", AT_LEAST_0, default=0.0)
    batch_size: int = _help("global batch size (split across ranks under torchrun)", AT_LEAST_1, default=60)
    iterations: int = _help("training iterations (use this or --epochs)", AT_LEAST_0, default=0)
    epochs: float = _help("training epochs (converted to iterations)", Range(min=0, max=1e6), default=0.0)
    schedule: str = _help("lr schedule: constant, step, cosine", OneOf(("constant", "step", "cosine"), "schedule"),
                          default="constant")
    milestones: str = _help("step schedule: comma-separated iterations where lr *= gamma", Ints(), default="")
    gamma: float = _help("step schedule factor", POSITIVE, default=0.1)
    warmup: int = _help("linear lr warm-up iterations", AT_LEAST_0, default=0)
    eval_every: int = _help("evaluate validation and test every N iterations", AT_LEAST_1, default=100)
    patience: int = _help("stop after N evaluations without a lower validation loss (0: train to the end)",
                          AT_LEAST_0, default=0)
    dropout: float = _help("dropout on fully connected layers (paper: 0.5)", FRACTION, default=0.0)
    augment: bool = _help("random crop + flip (on by default for cifar10)", default=False)
    seed: int = _help("random seed (init, data order)", Range(min=0, max=2**32 - 1), default=0)

    def validate(self) -> None:
        _validate_fields(self)
        if (self.iterations > 0) == (self.epochs > 0):
            raise LtcError("give exactly one of --iterations and --epochs (> 0)")


@dataclass(frozen=True)
class PruneHparams:
    strategy: str = _help("magnitude (layer-wise), global (one threshold), channel (whole filters by L1)",
                          OneOf(STRATEGY_NAMES, "strategy"), default="magnitude")
    rounds: int = _help("pruning rounds (1 = one-shot)", AT_LEAST_1, default=5)
    rate_conv: float = _help("fraction of surviving conv weights pruned per round (paper 0.1-0.15)", FRACTION,
                             default=0.1)
    rate_fc: float = _help("fraction of surviving fc weights pruned per round (paper 0.2)", FRACTION, default=0.2)
    rate_output: float = _help("fraction of the output layer pruned per round (paper 0.1)", FRACTION, default=0.1)
    target: float = _help("overall fraction to prune after all rounds; overrides the per-kind rates "
                          "(each round prunes 1-(1-target)^(1/rounds) of the survivors)", FRACTION, default=0.0)
    reset: str = _help("init (winning ticket: reset to theta0) or rewind (to --rewind-iteration)",
                       OneOf(("init", "rewind"), "reset"), default="init")
    rewind_iteration: int = _help("iteration k to rewind to with --reset rewind", AT_LEAST_0, default=0)
    controls: str = _help(controls_help(), Names(CONTROLS, "control"), default=",".join(CONTROLS))
    trials: int = _help("independent trials (seeds seed, seed+1, ...)", AT_LEAST_1, default=1)
    structure: str = _help("after each round's pruning: unstructured (as pruned), refill (whole channels, "
                           "removable), refill+ (refill, then re-activate --refill-rate of the dropped ones), "
                           "regroup (dense diagonal blocks: grouped convolutions)",
                           OneOf(STRUCTURE_NAMES, "structure"), default="unstructured")
    refill_criterion: str = _help("refill: which channels matter most: l1 (of the trained filter's surviving "
                                  "weights) or count (of surviving weights)", OneOf(("l1", "count"), "criterion"),
                                  default="l1")
    refill_rate: float = _help("refill+: fraction of the dropped channels re-activated", FRACTION, default=0.2)
    groups: int = _help("regroup: groups per layer (0: from the grouped-conv cost table)", AT_LEAST_0, default=0)
    group_width: int = _help("regroup: channels per group (0: from the cost table); --groups wins",
                             AT_LEAST_0, default=0)
    group_align: int = _help("regroup: group widths a multiple of this (ORT CPU: 16 AVX-512, 8 AVX2)",
                             AT_LEAST_1, default=8)
    include: str = _help("prune only Conv/Linear layers whose module name matches one of these comma-separated "
                         "patterns (fnmatch: layer1.*,fc; default: all)", default="")
    exclude: str = _help("do not prune layers whose module name matches one of these comma-separated patterns "
                         "(e.g. conv1 for the stem)", default="")

    def validate(self) -> None:
        _validate_fields(self)
        if self.structure != "unstructured" and self.strategy == "channel":
            raise LtcError(f"--structure {self.structure} post-processes weight pruning; use it with --strategy "
                           "magnitude or global (channel pruning is already channel-wise)")

    def mask_layout(self) -> str:
        """``channel`` when masks also hold biases and BatchNorms (channels die whole), else unstructured."""
        return "channel" if self.strategy == "channel" or self.structure in ("refill", "refill+", "regroup") \
            else "unstructured"

    def kind(self) -> str:
        """The ticket's structure kind: unstructured, channel or group."""
        if self.structure == "regroup":
            return "group"
        return "channel" if self.mask_layout() == "channel" else "unstructured"

    def control_list(self) -> list[str]:
        return [c.strip() for c in self.controls.split(",") if c.strip() and c.strip() != "none"]

    def rates(self) -> dict[str, float]:
        if self.target:
            q = 1 - (1 - self.target) ** (1 / self.rounds)
            return {"conv": q, "fc": q, "output": q}
        return {"conv": self.rate_conv, "fc": self.rate_fc, "output": self.rate_output}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base(typ) -> type:
    """int, float, str or bool from a field's annotation (``int | None`` -> int)."""
    if typ in (int, float, str, bool):
        return typ
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else str


def _validate_fields(hp) -> None:
    """Type and range of every field, with the same checks the CLI's option types apply."""
    hints = typing.get_type_hints(type(hp))
    for f in dataclasses.fields(hp):
        v = getattr(hp, f.name)
        flag = _flag(f.name)
        base = _base(hints[f.name])
        if v is None and f.default is None:
            continue
        if base is bool:
            if not isinstance(v, bool):
                raise LtcError(f"{flag} must be true or false, got {v!r}")
            continue
        if base is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise LtcError(f"{flag} must be an integer, got {v!r}")
        if base is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise LtcError(f"{flag} must be a number, got {v!r}")
        if base is str and not isinstance(v, str):
            raise LtcError(f"{flag} must be a string, got {v!r}")
        check = f.metadata.get("check")
        if isinstance(check, Range) and not check.ok(v):
            finite = "" if math.isfinite(v) else "a finite number "
            raise LtcError(f"{flag} must be {finite}{check.describe()}, got {v!r}")
        if isinstance(check, OneOf) and v not in check.names:
            raise LtcError(f"{flag}: {check.message(v)}")
        if isinstance(check, (Ints, Names, Spec)):
            problem = check.problem(v)
            if problem:
                raise LtcError(f"{flag}: {problem}")


def canonical(*hparams) -> str:
    """Non-default fields only, sorted: equal experiments give equal strings whatever the defaults."""
    parts = []
    for hp in hparams:
        default = type(hp)()
        for f in dataclasses.fields(hp):
            v = getattr(hp, f.name)
            if v != getattr(default, f.name):
                parts.append(f"{type(hp).__name__}.{f.name}={v!r}")
    return ",".join(sorted(parts))


def run_hash(*hparams) -> str:
    return hashlib.sha256(canonical(*hparams).encode()).hexdigest()[:10]


def to_dict(*hparams) -> dict:
    return {type(hp).__name__: dataclasses.asdict(hp) for hp in hparams}


def from_kwargs(cls, kwargs: dict):
    return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls) if f.name in kwargs})


def options(cls):
    """Click options generated from a hparams dataclass: flag names, typed and range-checked values
    (shown in ``--help``), defaults, help text."""
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            flag = _flag(f.name)
            base = _base(hints[f.name])
            default = f.default
            if base is bool:
                fn = click.option(flag + "/--no-" + f.name.replace("_", "-"), default=default,
                                  help=f.metadata["help"])(fn)
                continue
            check = f.metadata.get("check")
            typ = check.click_type(base) if check is not None else base
            fn = click.option(flag, type=typ, default=default, show_default=default is not None,
                              help=f.metadata["help"])(fn)
        return fn

    return decorate
