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
    ``reset_parameters()`` under the seed the search sets (parameters of modules without one keep the
    template's values)."""
    template = copy.deepcopy(model).cpu()

    def build() -> nn.Module:
        m = copy.deepcopy(template)
        for module in m.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return m

    return build


def _factory_builder(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        m = factory()
        if not isinstance(m, nn.Module):
            raise LtcError(f"the model factory returned a {type(m).__name__}, not an nn.Module")
        return m

    return build


def architecture_id(model: nn.Module) -> str:
    """Class name and a hash of the state's names and shapes: a run folder holds one architecture."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
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
    from ltc.compressor.search import Setup, check_out_dir, run_folder, run_search
    from ltc.compressor.training import init_distributed
    from ltc.compressor.userdata import fingerprint, user_splits

    init_distributed()  # under torchrun: join the process group (gloo), as `ltc ticket` does
    train_opts, prune_opts = _options(options)
    if isinstance(model, nn.Module):
        build = _template_builder(model)
    elif callable(model):
        build = _factory_builder(model)
    else:
        raise LtcError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")
    data = user_splits(train, val, test)
    torch.manual_seed(0)
    probe = build()
    thp = TrainHparams(model=architecture_id(probe), dataset=f"custom:{fingerprint(data)}", **train_opts)
    php = PruneHparams(**prune_opts)
    thp.validate()
    php.validate()
    if not run_dir:
        check_out_dir(Path(out), "out")
    folder = Path(run_dir) if run_dir else run_folder(Path(out), thp, php)
    check_out_dir(folder, "run_dir" if run_dir else "out")
    arch = {"in_shape": list(data.in_shape), "classes": getattr(data, "classes", None) or 0,
            "dropout": thp.dropout, "class": f"{type(probe).__module__}.{type(probe).__qualname__}"}
    return run_search(thp, php, Setup(build, data, arch, loss), folder, progress=progress)
