"""One training loop: masked weights stay exactly zero, validation every N iterations, early stopping
recorded as the paper does (iteration of minimum validation loss, test accuracy there).

Under ``torchrun`` (torch.distributed initialised) the loop runs DistributedDataParallel: every rank
draws the same seeded global batch and trains on its own slice of it, so the averaged gradient is the
global batch's gradient; only rank 0 logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ltc.compressor.data import Splits, augment_batch
from ltc.compressor.hparams import TrainHparams
from ltc.compressor.pruning import Mask, apply_mask
from ltc.compressor.usercode import describe, is_users_failure
from ltc.errors import LtcError


@dataclass
class TrainResult:
    history: list[dict]
    early_stop_iteration: int
    early_stop_val_loss: float
    test_accuracy: float  # at the early-stop iteration
    final_test_accuracy: float
    final_train_accuracy: float
    iterations: int
    final_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    rewind_state: dict[str, torch.Tensor] | None = field(repr=False, default=None)

    def summary(self) -> dict:
        return {"early_stop_iteration": self.early_stop_iteration, "early_stop_val_loss": self.early_stop_val_loss,
                "test_accuracy": self.test_accuracy, "final_test_accuracy": self.final_test_accuracy,
                "final_train_accuracy": self.final_train_accuracy, "iterations": self.iterations}


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not under torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group when started by torchrun. The training loop keeps tensors on the CPU,
    so the backend is gloo even where CUDA is visible (nccl needs CUDA tensors: with it, two ranks on a
    GPU machine failed at the first all-reduce; seen on an H100 machine, experiments/gpu_check).
    True when this call joined it (then :func:`finish_distributed` leaves it)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
        return True
    return False


def finish_distributed(joined: bool) -> None:
    """Leave the process group that :func:`init_distributed` joined, after every rank is done: a rank
    that exits while another still uses the group aborts ("terminate called without an active
    exception")."""
    if joined and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def total_iterations(hp: TrainHparams, n_train: int) -> int:
    if hp.iterations:
        return hp.iterations
    return max(1, math.ceil(hp.epochs * math.ceil(n_train / hp.batch_size)))


def _lr_factor(hp: TrainHparams, it: int, total: int) -> float:
    f = 1.0
    if hp.schedule == "step":
        for m in (int(s) for s in hp.milestones.split(",") if s.strip()):
            if it >= m:
                f *= hp.gamma
    elif hp.schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    if hp.warmup and it < hp.warmup:
        f *= (it + 1) / hp.warmup
    return f


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, batches, loss_fn: Loss | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) over ``batches`` of (inputs, labels); accuracy is NaN when the outputs are not
    class scores ([N, K] against integer labels [N])."""
    model.eval()
    loss, correct, n, classify = 0.0, 0, 0, True
    try:
        for x, y in batches:
            out = model(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum")) if loss_fn is None \
                else float(loss_fn(out, y)) * len(x)
            if classify and out.ndim == 2 and y.ndim == 1 and not y.is_floating_point():
                correct += int((out.argmax(1) == y).sum())
            else:
                classify = False
            n += len(x)
    finally:
        model.train()
    if n == 0:
        return float("nan"), float("nan")
    return loss / n, correct / n if classify else float("nan")


# ----------------------------------------------------------------------------------------- callbacks
@dataclass
class TrainState:
    """What callbacks see: the model being trained, where the loop is, and what it evaluated so far.
    A callback sets ``stop`` to end training after the current evaluation."""

    model: nn.Module
    label: str
    total: int
    iteration: int = 0
    history: list[dict] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Hooks of the training loop (after open_lth's callbacks). ``on_iteration`` runs at the start of
    every iteration, before its evaluation; ``on_eval`` after each evaluation (every ``eval_every``
    iterations and at the end) with the row it logged; ``on_step`` after each optimizer step;
    ``on_end`` once, when the loop ends or fails."""

    def on_iteration(self, state: TrainState) -> None:
        pass

    def on_eval(self, state: TrainState, row: dict) -> None:
        pass

    def on_step(self, state: TrainState) -> None:
        pass

    def on_end(self, state: TrainState) -> None:
        pass


class EarlyStop(Callback):
    """The paper's early-stopping criterion: the iteration of minimum validation loss, and the test
    accuracy there. With ``patience`` > 0, training stops once the minimum is ``patience``
    evaluations behind."""

    def __init__(self, patience: int, eval_every: int):
        self.patience, self.eval_every = patience, eval_every
        self.best = (float("inf"), 0, float("nan"))  # (val loss, iteration, test accuracy)

    def on_eval(self, state: TrainState, row: dict) -> None:
        if row["val_loss"] < self.best[0] or math.isnan(self.best[0]):
            self.best = (row["val_loss"], row["iteration"], row["test_acc"])
        if self.patience and (row["iteration"] - self.best[1]) >= self.patience * self.eval_every:
            state.stop = True


class RewindCapture(Callback):
    """A copy of the model's state at the start of ``iteration`` (late resetting / rewinding)."""

    def __init__(self, iteration: int):
        self.iteration = iteration
        self.state: dict[str, torch.Tensor] | None = None

    def on_iteration(self, state: TrainState) -> None:
        if state.iteration == self.iteration:
            self.state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


class KeepMasked(Callback):
    """Masked weights stay exactly zero: re-applied after every optimizer step."""

    def __init__(self, model: nn.Module, mask: Mask):
        named = dict(model.named_parameters())
        self.masked = [(named[n], m.to(named[n].dtype)) for n, m in mask.items()]

    @torch.no_grad()
    def on_step(self, state: TrainState) -> None:
        for p, m in self.masked:
            p.mul_(m)


class JsonlLog(Callback):
    """Each evaluation row as one JSON line, labelled (appended; never through a link)."""

    def __init__(self, path: Path):
        self.file = open_log(path)

    def on_eval(self, state: TrainState, row: dict) -> None:
        self.file.write(json.dumps({"label": state.label, **row}) + "\n")
        self.file.flush()

    def on_end(self, state: TrainState) -> None:
        self.file.close()


class ProgressBar(Callback):
    """A rich progress bar over the iterations."""

    def __init__(self, label: str, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn())
        self.task = self.bar.add_task(label, total=total)
        self.bar.start()

    def on_step(self, state: TrainState) -> None:
        self.bar.update(self.task, advance=1)

    def on_end(self, state: TrainState) -> None:
        self.bar.stop()


class _OnEval(Callback):
    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_eval(self, state: TrainState, row: dict) -> None:
        self.fn(row)


def train(model: nn.Module, data: Splits, hp: TrainHparams, mask: Mask | None = None, *,
          log_path: Path | None = None, rewind_iteration: int | None = None, progress: bool = False,
          label: str = "train", on_eval: Callable[[dict], None] | None = None,
          loss_fn: Loss | None = None, users_code: bool = False,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``model`` in place; masked entries are zero before training and after every step.
    ``data`` is a :class:`~ltc.compressor.data.Splits` or anything with its ``n_train``,
    ``train_batches`` and ``eval_batches`` (:class:`~ltc.compressor.userdata.DatasetSplits`);
    ``loss_fn(outputs, labels)`` defaults to cross-entropy. With ``users_code`` (a user's model or loss)
    an exception in the forward pass or the loss is a bad input (:class:`~ltc.errors.LtcError`).

    The loop itself trains and evaluates; early stopping, rewind capture, masking, the JSONL log and
    the progress bar are :class:`Callback` s, and ``callbacks`` adds the caller's own (they run after
    ltc's, in order; ``on_eval(row)`` is a shorthand for one that only watches evaluations)."""
    user_loss = loss_fn
    loss_fn = loss_fn or cross_entropy
    rank, world = distributed()
    torch.manual_seed(hp.seed)
    if mask is not None:
        mask = Mask(mask).check(model)
        apply_mask(model, mask)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if hp.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    total = total_iterations(hp, data.n_train())
    gen = torch.Generator().manual_seed(hp.seed)  # identical on every rank: the same global batches
    augment = hp.augment or data.augment
    if hp.batch_size % world:
        raise LtcError(f"--batch-size {hp.batch_size} must be divisible by the {world} ranks")
    state = TrainState(model, label, total)
    early = EarlyStop(hp.patience, hp.eval_every)
    rewind = RewindCapture(rewind_iteration) if rewind_iteration is not None else None
    hooks: list[Callback] = [early, *([rewind] if rewind else []), *([KeepMasked(model, mask)] if mask else [])]
    try:
        if log_path is not None and rank == 0:
            hooks.append(JsonlLog(log_path))
        if progress and rank == 0:
            hooks.append(ProgressBar(label, total))
        hooks += [*([_OnEval(on_eval)] if on_eval else []), *callbacks]
        _loop(state, net, data, hp, opt, gen, augment, rank, world, loss_fn, user_loss, users_code, hooks)
    finally:
        for cb in hooks:
            cb.on_end(state)
    final = state.history[-1]
    best = early.best
    if math.isnan(best[0]):  # no validation set: early stop = end
        best = (float("nan"), total, final["test_acc"])
    with _users(users_code, label, final["iteration"]):
        _, train_acc = evaluate(model, data.eval_batches("train", limit=10000), user_loss)
    return TrainResult(state.history, best[1], best[0], best[2], final["test_acc"], train_acc, final["iteration"],
                       {k: v.detach().clone() for k, v in model.state_dict().items()},
                       rewind.state if rewind else None)


def _loop(state: TrainState, net: nn.Module, data: Splits, hp: TrainHparams, opt: torch.optim.Optimizer,
          gen: torch.Generator, augment: bool, rank: int, world: int, loss_fn: Loss, user_loss: Loss | None,
          users_code: bool, hooks: list[Callback]) -> None:
    """Iterations 0..total: evaluate every ``eval_every`` and at the end, step otherwise (this rank's
    slice of the seeded global batch)."""
    model, total, label = state.model, state.total, state.label
    batches = data.train_batches(gen, hp.batch_size, rank, world)
    model.train()
    for it in range(total + 1):
        state.iteration = it
        for cb in hooks:
            cb.on_iteration(state)
        if it % hp.eval_every == 0 or it == total:
            with _users(users_code, label, it):
                row = _eval_row(model, data, it, user_loss)
            state.history.append(row)
            for cb in hooks:
                cb.on_eval(state, row)
            if state.stop:
                break
        if it == total:
            break
        with _users(users_code, label, it):  # a user's dataset is read here
            x, y = next(batches)
        if augment:
            x = augment_batch(x, gen)
        for g in opt.param_groups:
            g["lr"] = hp.lr * _lr_factor(hp, it, total)
        opt.zero_grad(set_to_none=True)
        with _users(users_code, label, it):
            loss = loss_fn(net(x), y)
            loss.backward()
        opt.step()
        for cb in hooks:
            cb.on_step(state)


@contextlib.contextmanager
def _users(users_code: bool, label: str, it: int):
    """An exception from a user's model, data or loss (sys.exit included) is a bad input (exit 1), not an
    ltc fault."""
    try:
        yield
    except BaseException as exc:
        if not users_code or not is_users_failure(exc):
            raise
        raise LtcError(f"{label}, iteration {it}: the model, the data or the loss {describe(exc)}; fix it and run "
                       "again (completed rounds are kept)") from None


def open_log(path: Path):
    """Open a JSONL log for appending, never through a symbolic link and never a FIFO or device."""
    import stat

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise LtcError(f"{path}: cannot write the training log ({exc.strerror or exc}); it must be a regular file, "
                       "not a link: remove it or choose another --out") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LtcError(f"{path}: the training log is not a regular file; remove it or choose another --out")
    return os.fdopen(fd, "a")


def _eval_row(model: nn.Module, data: Splits, it: int, loss_fn: Loss | None) -> dict:
    val_loss, val_acc = evaluate(model, data.eval_batches("val"), loss_fn)
    test_loss, test_acc = evaluate(model, data.eval_batches("test"), loss_fn)
    return {"iteration": it, "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}
