"""`ltc train`: one dense training run, saved as a ticket with all-ones masks."""

from __future__ import annotations

from pathlib import Path

import torch

from ltc.compressor.data import load_dataset
from ltc.compressor.hparams import TrainHparams, run_hash, to_dict
from ltc.compressor.models import build_model
from ltc.compressor.pruning import full_mask
from ltc.compressor.ticket import make_ticket, save_ticket
from ltc.compressor.training import distributed, init_distributed, train


def train_dense(thp: TrainHparams, out: str | Path, *, data_dir: str | None = None, progress: bool = False) -> dict:
    init_distributed()
    thp.validate()
    data = load_dataset(thp.dataset, thp.val_size, data_dir)
    torch.manual_seed(thp.seed)
    model = build_model(thp.model, data.in_shape, data.classes, thp.dropout)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run_dir = Path(out) / f"train-{thp.model}-{thp.dataset}-{run_hash(thp)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.jsonl"
    res = train(model, data, thp, None, log_path=log, progress=progress, label=f"{thp.model} on {thp.dataset}")
    ticket_path = run_dir / "ticket.pt"
    if distributed()[0] == 0:
        arch = {"in_shape": list(data.in_shape), "classes": data.classes, "dropout": thp.dropout}
        record = {"round": 0, "density": 1.0, "results": {"ticket": res.summary()}}
        save_ticket(make_ticket(thp.model, arch, full_mask(model), init, res.final_state, history=[record],
                                hparams=to_dict(thp), seed=thp.seed), ticket_path)
    return {**res.summary(), "ticket": str(ticket_path), "log": str(log)}
