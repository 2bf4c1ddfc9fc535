"""Hyperparameters as typed dataclasses: the single source of the CLI flags, the help text, and the
canonical string whose hash names a run folder (so re-running the same command resumes it)."""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass, field

import click


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class TrainHparams:
    model: str = _help("model name (lenet300, lenet5, conv2/4/6, vgg11/16/19, resnet20/56, resnet18)",
                       default="lenet300")
    dataset: str = _help("dataset name (digits, fashion-mnist, mnist, cifar10, synthetic)", default="digits")
    val_size: int | None = _help("validation examples held out of train (default: per dataset; paper 5000)",
                                 default=None)
    optimizer: str = _help("sgd or adam", default="adam")
    lr: float = _help("learning rate", default=1.2e-3)
    momentum: float = _help("SGD momentum", default=0.9)
    weight_decay: float = _help("L2 weight decay", default=0.0)
    batch_size: int = _help("global batch size (split across ranks under torchrun)", default=60)
    iterations: int = _help("training iterations (use this or --epochs)", default=0)
    epochs: float = _help("training epochs (converted to iterations)", default=0.0)
    schedule: str = _help("lr schedule: constant, step, cosine", default="constant")
    milestones: str = _help("step schedule: comma-separated iterations where lr *= gamma", default="")
    gamma: float = _help("step schedule factor", default=0.1)
    warmup: int = _help("linear lr warm-up iterations", default=0)
    eval_every: int = _help("evaluate validation and test every N iterations", default=100)
    patience: int = _help("stop after N evaluations without a lower validation loss (0: train to the end)",
                          default=0)
    dropout: float = _help("dropout on fully connected layers (paper: 0.5)", default=0.0)
    augment: bool = _help("random crop + flip (on by default for cifar10)", default=False)
    seed: int = _help("random seed (init, data order)", default=0)

    def validate(self) -> None:
        from ltc.compressor.data import DATASETS
        from ltc.compressor.models import REGISTRY
        from ltc.errors import LtcError

        if self.model not in REGISTRY:
            raise LtcError(f"unknown model {self.model!r}; choose one of {', '.join(REGISTRY)}")
        if self.dataset not in DATASETS:
            raise LtcError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.optimizer not in ("sgd", "adam"):
            raise LtcError(f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.schedule not in ("constant", "step", "cosine"):
            raise LtcError(f"--schedule must be constant, step or cosine, got {self.schedule!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.eval_every < 1:
            raise LtcError("--lr must be > 0, --batch-size and --eval-every >= 1")
        if (self.iterations > 0) == (self.epochs > 0):
            raise LtcError("give exactly one of --iterations and --epochs (> 0)")
        if not 0 <= self.dropout < 1:
            raise LtcError(f"--dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class PruneHparams:
    strategy: str = _help("magnitude (layer-wise), global (one threshold), channel (whole filters by L1)",
                          default="magnitude")
    rounds: int = _help("pruning rounds (1 = one-shot)", default=5)
    rate_conv: float = _help("fraction of surviving conv weights pruned per round (paper 0.1-0.15)", default=0.1)
    rate_fc: float = _help("fraction of surviving fc weights pruned per round (paper 0.2)", default=0.2)
    rate_output: float = _help("fraction of the output layer pruned per round (paper 0.1)", default=0.1)
    target: float = _help("overall fraction to prune after all rounds; overrides the per-kind rates "
                          "(each round prunes 1-(1-target)^(1/rounds) of the survivors)", default=0.0)
    reset: str = _help("init (winning ticket: reset to theta0) or rewind (to --rewind-iteration)",
                       default="init")
    rewind_iteration: int = _help("iteration k to rewind to with --reset rewind", default=0)
    controls: str = _help("comma-separated controls: reinit (same mask, new init), random (random mask, "
                          "same per-layer sparsity), or none", default="reinit,random")
    trials: int = _help("independent trials (seeds seed, seed+1, ...)", default=1)

    def validate(self) -> None:
        from ltc.errors import LtcError

        if self.strategy not in ("magnitude", "global", "channel"):
            raise LtcError(f"--strategy must be magnitude, global or channel, got {self.strategy!r}")
        for name in ("rate_conv", "rate_fc", "rate_output"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise LtcError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if not 0 <= self.target < 1:
            raise LtcError(f"--target must be in [0, 1), got {self.target}")
        if self.rounds < 1 or self.trials < 1:
            raise LtcError("--rounds and --trials must be >= 1")
        if self.reset not in ("init", "rewind"):
            raise LtcError(f"--reset must be init or rewind, got {self.reset!r}")
        unknown = set(self.control_list()) - {"reinit", "random"}
        if unknown:
            raise LtcError(f"unknown control(s) {sorted(unknown)}; choose reinit, random or none")

    def control_list(self) -> list[str]:
        return [c for c in self.controls.split(",") if c and c != "none"]

    def rates(self) -> dict[str, float]:
        if self.target:
            q = 1 - (1 - self.target) ** (1 / self.rounds)
            return {"conv": q, "fc": q, "output": q}
        return {"conv": self.rate_conv, "fc": self.rate_fc, "output": self.rate_output}


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
    """Click options generated from a hparams dataclass (flag names, types, defaults, help)."""
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            flag = "--" + f.name.replace("_", "-")
            typ = hints[f.name]
            default = f.default
            if typ is bool:
                fn = click.option(flag + "/--no-" + f.name.replace("_", "-"), default=default,
                                  help=f.metadata["help"])(fn)
                continue
            base = {int: int, float: float, str: str}.get(typ)
            if base is None:  # Optional[int]
                base = int if "int" in str(typ) else float
            fn = click.option(flag, type=base, default=default, show_default=default is not None,
                              help=f.metadata["help"])(fn)
        return fn

    return decorate
