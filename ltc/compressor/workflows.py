"""`ltc train`: one dense training run, saved as a ticket with all-ones masks.

As for the ticket search, everything is checked before the run folder is made, and a run that fails
removes the folders it created unless they hold a completed training (``ticket.pt``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltc.compressor import sources
from ltc.compressor.hparams import TrainHparams, run_hash, to_dict
from ltc.compressor.models import build_model
from ltc.compressor.pruning import full_mask
from ltc.compressor.search import Created, check_not_in_data, check_out_dir, prepare, slug
from ltc.compressor.training import distributed, finish_distributed, init_distributed, train
from ltc.ticket import make_ticket, save_ticket


def train_dense(thp: TrainHparams, out: str | Path, *, data_dir: str | None = None, progress: bool = False) -> dict:
    joined = init_distributed()
    thp.validate()
    run_dir = Path(out) / f"train-{slug(thp.model)}-{slug(thp.dataset)}-{run_hash(thp)}"
    check_out_dir(Path(out), "--out")
    check_out_dir(run_dir, "--out")
    check_not_in_data(run_dir, thp.dataset, data_dir, "--out")
    data = prepare(thp, data_dir)
    torch.manual_seed(thp.seed)
    model = build_model(thp.model, data.in_shape, data.classes, thp.dropout)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log = run_dir / "train.jsonl"
    ticket_path = run_dir / "ticket.pt"
    rank = distributed()[0]
    created = Created()
    try:
        if rank == 0:
            created.mkdir(run_dir)
            created.file(log)
        res = train(model, data, thp, None, log_path=log, progress=progress, label=f"{thp.model} on {thp.dataset}",
                    users_code=sources.kind(thp.model) != "registry")
        if rank == 0:
            arch = {"in_shape": list(data.in_shape), "classes": data.classes, "dropout": thp.dropout}
            record = {"round": 0, "density": 1.0, "results": {"ticket": res.summary()}}
            save_ticket(make_ticket(thp.model, arch, full_mask(model), init, res.final_state, history=[record],
                                    hparams=to_dict(thp), seed=thp.seed), ticket_path)
    except BaseException:
        if rank == 0:
            created.rollback()
        raise
    finish_distributed(joined)
    return {**res.summary(), "ticket": str(ticket_path), "log": str(log)}
