"""Ticket search: iterative (or one-shot) magnitude pruning with reset/rewind, the paper's controls,
several trials, resumable run folders named by their hyperparameters."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch

from ltc.compressor.data import Splits, load_dataset
from ltc.compressor.hparams import PruneHparams, TrainHparams, canonical, run_hash, to_dict
from ltc.compressor.models import build_model
from ltc.compressor.pruning import (
    STRATEGIES,
    Mask,
    apply_mask,
    density,
    full_mask,
    layer_densities,
    random_like,
)
from ltc.compressor.ticket import make_ticket, save_ticket
from ltc.compressor.training import distributed, train
from ltc.errors import LtcError
from ltc.fileio import write_json_atomic, write_text_atomic

VARIANTS = ("ticket", "reinit", "random")


def run_folder(root: Path, thp: TrainHparams, php: PruneHparams) -> Path:
    return root / f"{thp.model}-{thp.dataset}-{run_hash(thp, php)}"


def _check_hparams(run_dir: Path, thp: TrainHparams, php: PruneHparams) -> None:
    """Refuse to resume a folder made with other hyperparameters."""
    path = run_dir / "hparams.json"
    mine = {"canonical": canonical(thp, php), **to_dict(thp, php)}
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs.get("canonical") != mine["canonical"]:
            raise LtcError(f"{run_dir} holds a run with other hyperparameters ({theirs.get('canonical') or 'defaults'}"
                           f" vs {mine['canonical'] or 'defaults'}); choose another --run-dir or --out")
    elif distributed()[0] == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, mine)


def _arch(thp: TrainHparams, data: Splits) -> dict:
    return {"in_shape": list(data.in_shape), "classes": data.classes, "dropout": thp.dropout}


def _fresh(thp: TrainHparams, data: Splits, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(thp.model, data.in_shape, data.classes, thp.dropout)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ticket_search(thp: TrainHparams, php: PruneHparams, out: Path, *, data_dir: str | None = None,
                  run_dir: Path | None = None, progress: bool = False) -> dict:
    """Run (or resume) the search; returns the summary (also written to the run folder)."""
    thp.validate()
    php.validate()
    data = load_dataset(thp.dataset, thp.val_size, data_dir, seed=0)
    run_dir = Path(run_dir) if run_dir else run_folder(Path(out), thp, php)
    _check_hparams(run_dir, thp, php)
    for trial in range(php.trials):
        _run_trial(thp, php, data, run_dir / f"trial{trial}", thp.seed + trial, progress)
    summary = summarize(run_dir)
    if distributed()[0] == 0:
        from ltc.compressor.analysis import write_plots

        summary["plots"] = write_plots(run_dir, summary)
        write_json_atomic(run_dir / "summary.json", summary)
        write_text_atomic(run_dir / "summary.md", summary_markdown(summary))
    return summary


def _run_trial(thp: TrainHparams, php: PruneHparams, data: Splits, trial_dir: Path, seed: int,
               progress: bool) -> None:
    rank, world = distributed()
    trial_dir.mkdir(parents=True, exist_ok=True)
    thp_t = dataclasses.replace(thp, seed=seed)
    structure = "channel" if php.strategy == "channel" else "unstructured"
    model = _fresh(thp, data, seed)
    theta0 = _state(model)
    mask = full_mask(model, structure)
    start = theta0
    prev_final: dict[str, torch.Tensor] | None = None
    log = trial_dir / "train.jsonl"
    arch = _arch(thp, data)
    history: list[dict] = []  # every round so far: each ticket carries the path that led to it
    for r in range(php.rounds + 1):
        record_path = trial_dir / f"round{r}.json"
        ticket_path = trial_dir / f"ticket_round{r}.pt"
        if record_path.exists() and ticket_path.exists():  # completed earlier: resume after it
            t = torch.load(ticket_path, map_location="cpu", weights_only=True)
            mask, prev_final, start = t["masks"], t["final"], t["init"]
            history = list(t["history"])
            continue
        if r > 0:
            pruned_from = _fresh(thp, data, seed)
            pruned_from.load_state_dict(prev_final)
            mask = STRATEGIES[php.strategy](pruned_from, mask, php.rates())
            _check_same_on_ranks(mask, world)
        record = {"round": r, "density": density(mask), "layer_density": layer_densities(mask), "results": {}}
        rewind = php.rewind_iteration if (r == 0 and php.reset == "rewind") else None
        model = _fresh(thp, data, seed)
        model.load_state_dict(start)
        res = train(model, data, thp_t, mask, log_path=log, rewind_iteration=rewind, progress=progress,
                    label=f"trial {seed} round {r} ticket")
        record["results"]["ticket"] = res.summary()
        if r == 0:
            if php.reset == "rewind":
                if res.rewind_state is None:
                    raise LtcError(f"--rewind-iteration {php.rewind_iteration} is past the end of training")
                start = res.rewind_state
            record["weight_change"] = {"init": "theta0", "final": "dense"}
            if rank == 0:
                torch.save({"init": theta0, "final": res.final_state}, trial_dir / "dense.pt")
        else:
            for control in php.control_list():
                record["results"][control] = _control(control, thp, thp_t, data, mask, start, structure, seed,
                                                      r, log, progress)
        prev_final = res.final_state
        history.append(record)
        if rank == 0:
            masked_start = {k: v.clone() for k, v in start.items()}
            for name, m in mask.items():
                masked_start[name] = masked_start[name] * m
            ticket = make_ticket(thp.model, arch, mask, masked_start, res.final_state,
                                 structure={"kind": structure, "strategy": php.strategy, "round": r},
                                 history=history, hparams=to_dict(thp, php), seed=seed)
            save_ticket(ticket, ticket_path)
            write_json_atomic(record_path, record)  # written last: marks the round complete
        if world > 1:
            torch.distributed.barrier()


def _control(control: str, thp: TrainHparams, thp_t: TrainHparams, data: Splits, mask: Mask,
             start: dict, structure: str, seed: int, r: int, log: Path, progress: bool) -> dict:
    if control == "reinit":  # same mask, a new random initialisation
        model = _fresh(thp, data, 10_000 + 100 * seed + r)
        control_mask = mask
    else:  # random pruning with the same per-layer sparsity, from the same start
        gen = torch.Generator().manual_seed(20_000 + 100 * seed + r)
        model = _fresh(thp, data, seed)
        model.load_state_dict(start)
        control_mask = random_like(model, mask, structure, gen)
    apply_mask(model, control_mask)
    res = train(model, data, thp_t, control_mask, log_path=log, progress=progress,
                label=f"trial {seed} round {r} {control}")
    return res.summary()


def _check_same_on_ranks(mask: Mask, world: int) -> None:
    """After pruning, every rank must hold the same mask (else DDP trains different subnetworks)."""
    if world <= 1:
        return
    for name, m in mask.items():
        mine = m.to(torch.int64).sum().reshape(1)
        lo, hi = mine.clone(), mine.clone()
        torch.distributed.all_reduce(lo, torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, torch.distributed.ReduceOp.MAX)
        digest = torch.tensor([float((m.flatten().to(torch.float64) * torch.arange(m.numel())).sum())])
        dlo, dhi = digest.clone(), digest.clone()
        torch.distributed.all_reduce(dlo, torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(dhi, torch.distributed.ReduceOp.MAX)
        if lo != hi or dlo != dhi:
            raise LtcError(f"mask '{name}' differs between ranks after pruning; training is not in sync")


def summarize(run_dir: Path) -> dict:
    """Per round and variant: mean/min/max over trials of accuracy and early-stop iteration."""
    trials = sorted(p for p in run_dir.glob("trial*") if p.is_dir())
    rounds: dict[int, dict] = {}
    for t in trials:
        for f in sorted(t.glob("round*.json")):
            rec = json.loads(f.read_text())
            entry = rounds.setdefault(rec["round"], {"round": rec["round"], "density": [], "variants": {}})
            entry["density"].append(rec["density"])
            for variant, res in rec["results"].items():
                entry["variants"].setdefault(variant, []).append(res)
    table = []
    for r in sorted(rounds):
        e = rounds[r]
        row = {"round": r, "density": statistics.mean(e["density"]), "trials": len(e["density"]), "variants": {}}
        for variant, results in e["variants"].items():
            row["variants"][variant] = {
                key: _stats([res[key] for res in results])
                for key in ("test_accuracy", "early_stop_iteration", "final_train_accuracy", "final_test_accuracy")
            }
        table.append(row)
    hp = json.loads((run_dir / "hparams.json").read_text()) if (run_dir / "hparams.json").exists() else {}
    return {"run_dir": str(run_dir), "hparams": hp, "rounds": table}


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def summary_markdown(summary: dict) -> str:
    lines = [f"# Ticket search: {summary['run_dir']}", "",
             "| round | P_m (remaining) | variant | test acc at early stop (mean [min, max]) | early-stop iteration (mean [min, max]) | train acc (final) |",
             "|---|---|---|---|---|---|"]
    for row in summary["rounds"]:
        for variant, s in row["variants"].items():
            a, it, tr = s["test_accuracy"], s["early_stop_iteration"], s["final_train_accuracy"]
            lines.append(f"| {row['round']} | {100 * row['density']:.1f}% | {variant} | {100 * a['mean']:.2f}% "
                         f"[{100 * a['min']:.2f}, {100 * a['max']:.2f}] | {it['mean']:.0f} [{it['min']:.0f}, "
                         f"{it['max']:.0f}] | {100 * tr['mean']:.2f}% |")
    for name, path in summary.get("plots", {}).items():
        lines += ["", f"![{name}]({Path(path).name})"]
    return "\n".join(lines) + "\n"
