"""Bring your own model: :func:`search` runs ltc's ticket search (IMP with reset or rewind, refill,
regroup, controls, trials, resumable run folders, DDP under torchrun) on any ``nn.Module`` and data
(re-exported as ``ltc.search``; its tickets go to ONNX with ``ltc.export``,
:func:`ltc.exporters.ticket_export.export`)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ltc.compressor.hparams import PruneHparams, TrainHparams
from ltc.compressor.usercode import check_materialised, guard
from ltc.errors import LtcError

# TrainHparams fields that name or shape the data ltc loads itself: not options of ltc.search
_NOT_OPTIONS = {"model", "dataset", "val_size", "channels", "image_size"}


def _options(options: dict) -> tuple[dict, dict]:
    train = {f.name for f in dataclasses.fields(TrainHparams)} - _NOT_OPTIONS
    prune = {f.name for f in dataclasses.fields(PruneHparams)}
    unknown = sorted(set(options) - train - prune)
    if unknown:
        raise LtcError(f"ltc.search got unknown option(s) {', '.join(unknown)}; the options are the flags of "
                       f"`ltc ticket` with underscores: {', '.join(sorted(train | prune))}")
    return ({k: v for k, v in options.items() if k in train}, {k: v for k, v in options.items() if k in prune})


def _template_builder(model: nn.Module) -> Callable[[], nn.Module]:
    """A module is an architecture template: each fresh copy is re-initialised by its modules'
    ``reset_parameters()`` (or ``_reset_parameters()``, e.g. MultiheadAttention's) under the seed the
    search sets. A parameter that no such method owns (a bare ``nn.Parameter`` such as a position
    embedding) would keep the template's value in every trial and in the reinit control: refused, with
    the factory form as the way out."""
    check_materialised(model, "the model")
    with guard("the model: copying it"):
        template = copy.deepcopy(model).cpu()
    covered = {id(p) for m in template.modules() if _reset_of(m) for p in m.parameters()}
    left = [n for n, p in template.named_parameters() if id(p) not in covered]
    if left:
        raise LtcError(f"parameters {', '.join(left[:4])}{'...' if len(left) > 4 else ''} are not re-initialised by "
                       "any reset_parameters(), so every trial would share their values; pass a function that "
                       "builds the model (ltc.search(lambda: MyNet(), ...)): it is called under each trial's seed")

    def build() -> nn.Module:
        with guard("the model: copying it and re-initialising it with reset_parameters()"):
            m = copy.deepcopy(template)
            for module in m.modules():
                reset = _reset_of(module)
                if reset:
                    reset()
        return m

    return build


def _reset_of(module: nn.Module) -> Callable[[], None] | None:
    """The module's own re-initialisation: ``reset_parameters``, else ``_reset_parameters``."""
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    return reset if callable(reset) else None


def architecture_id(model: nn.Module, loss: Callable | None = None) -> str:
    """``custom:<Class>@<hash>``: the hash covers the module tree as printed (layers, activations,
    strides), the state's names, shapes and θ0 values (the probe is built under seed 0, as trial 0's
    model) and the loss's name; a run folder holds one such model."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    h.update(getattr(loss, "__qualname__", repr(loss)).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return f"custom:{type(model).__name__}@{h.hexdigest()[:8]}"


def search(model: nn.Module | Callable[[], nn.Module], train, val, test=None, *, out: str | os.PathLike = "runs",
           run_dir: str | os.PathLike | None = None, loss: Callable | None = None, progress: bool = False,
           **options) -> dict:
    """Search lottery tickets of ``model`` on the user's data; returns the summary of the run folder.

    ``model``: an ``nn.Module`` (an architecture template, re-initialised per trial and for the reinit
    control by ``reset_parameters()`` under the seed) or a zero-argument factory (called under
    ``torch.manual_seed(seed)``: its own initialisation is θ0). ``train``/``val``/``test``: torch
    Datasets of (input, label), DataLoaders over them, or (inputs, labels) arrays; ``test`` defaults to
    ``val``. ``loss(outputs, labels)``: default cross-entropy (accuracy is reported for class scores).
    ``options``: the flags of ``ltc ticket`` with underscores (``rounds=3, structure="refill",
    target=0.8, reset="rewind", rewind_iteration=100, include="layer*", exclude="conv1",
    iterations=2000, optimizer="sgd", lr=0.1, ...``). The run folder is ``out/<model>-<data>-<hash>``
    (or ``run_dir``); calling again with the same arguments resumes it.
    """
    from ltc.compressor.training import finish_distributed, init_distributed

    joined = init_distributed()  # under torchrun: join the process group (gloo), as `ltc ticket` does
    summary = _search(model, train, val, test, out, run_dir, loss, progress, options)
    finish_distributed(joined)  # on success only: a rank that failed must not wait for the others
    return summary


def _search(model, train, val, test, out, run_dir, loss, progress, options) -> dict:
    from ltc.compressor.search import Setup, check_out_dir, run_folder, run_search
    from ltc.compressor.sources import call_builder
    from ltc.compressor.userdata import fingerprint, user_splits

    train_opts, prune_opts = _options(options)
    if isinstance(model, nn.Module):
        build = _template_builder(model)
    elif callable(model):
        def build() -> nn.Module:
            built = call_builder(model, "the model factory")
            check_materialised(built, "the model factory's model")
            return built
    else:
        raise LtcError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")
    data = user_splits(train, val, test)
    torch.manual_seed(0)
    probe = build()
    with guard("the model: reading its state_dict() and repr()"):
        arch_id = architecture_id(probe, loss)
    thp = TrainHparams(model=arch_id, dataset=f"custom:{fingerprint(data)}", **train_opts)
    php = PruneHparams(**prune_opts)
    thp.validate()
    php.validate()
    if not run_dir:
        check_out_dir(Path(out), "out")
    folder = Path(run_dir) if run_dir else run_folder(Path(out), thp, php)
    check_out_dir(folder, "run_dir" if run_dir else "out")
    arch = {"in_shape": list(data.in_shape), "classes": getattr(data, "classes", None) or 0,
            "dropout": thp.dropout, "class": f"{type(probe).__module__}.{type(probe).__qualname__}"}
    # model and dataset name the model's and the data's hashes: the canonical hyperparameters cover them
    return run_search(thp, php, Setup(build, data, arch, loss, users_code=True), folder, progress=progress)
