"""Structured tickets on real data: dense, unstructured IMP, refill, refill+ and regroup on Conv-4 /
Fashion-MNIST, accuracy and ONNX Runtime CPU latency of the compressed models.

Schedule (fits this 2-core CPU in about 45 minutes; say so when quoting it): Conv-4 (64-64-128-128
conv, 256-256 fc), Adam 1.2e-3, batch 60, 250 iterations per training (a short schedule: 15,000
examples seen, under one epoch), 2,000 of Fashion-MNIST's 60,000 training images held out for
validation and 18,000 of the rest drawn for training, test on 5,000 of the 10,000 test images
(seeded draws); accuracy at the early-stop iteration (evaluations at 125 and 250). 3 trials (seeds 0-2). IMP: 4
rounds pruning 38% of surviving conv and fc weights per round (output layer 20%), reset to the
initialisation (winning tickets); densities 62%, 38%, 24%, 15% of conv/fc weights, i.e. about 38%,
62%, 76%, 85% sparsity. Every structure starts from the same dense training of each trial.

Latency: for trial 0 at rounds 2-4, the ticket is exported (legacy exporter, BN kept), compressed
with ``ltc.api.compress_file`` (round-to auto, i.e. 16 here; regroup on for group tickets, from the
ticket's G) and timed with ``ltc.benchmarks.bench`` against the dense model: ONNX Runtime CPU, 2
threads, batch 1 and 32, interleaved rounds, medians; running-time saving = 1 - median ratio.

    .venv/bin/python experiments/structured_tickets/run.py       # writes results.json, *.png
    .venv/bin/python experiments/structured_tickets/run.py --model resnet20 --trials 1 --rounds 3
                                                     # writes results-resnet20.json, structured_tickets-resnet20.png
    .venv/bin/python experiments/structured_tickets/run.py --structures regroup --trials 1 --tag regroup
                                                     # one structure: results-regroup.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ltc.api import compress_file
from ltc.benchmarks.bench import BenchOptions, bench
from ltc.compressor.data import load_dataset
from ltc.compressor.hparams import PruneHparams, TrainHparams
from ltc.compressor.models import build_model
from ltc.compressor.pruning import full_mask, prune_magnitude
from ltc.compressor.search import apply_structure
from ltc.compressor.training import train
from ltc.exporters.ticket_export import export_ticket
from ltc.ticket import make_ticket, save_ticket

HERE = Path(__file__).parent
STRUCTURES = ("unstructured", "refill", "refill+", "regroup")
ROUNDS, RATE, TRIALS = 4, 0.38, 3
MODEL = "conv4"
THP = TrainHparams(model="conv4", dataset="fashion-mnist", iterations=250, eval_every=125, batch_size=60)
TIMED_ROUNDS = (2, 3, 4)
SUFFIX = ""


def data_subset():
    data = load_dataset("fashion-mnist", 2000, None, seed=0)
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(data.train_x), generator=g)[:18000]
    te = torch.randperm(len(data.test_x), generator=g)[:5000]
    return dataclasses.replace(data, train_x=data.train_x[tr], train_y=data.train_y[tr],
                               test_x=data.test_x[te], test_y=data.test_y[te])


def weight_density(mask: dict) -> float:
    ws = [m for n, m in mask.items() if n.endswith("weight") and m.dim() > 1]
    return sum(int(m.sum()) for m in ws) / sum(m.numel() for m in ws)


def main() -> None:
    global MODEL, THP, ROUNDS, TRIALS, TIMED_ROUNDS, SUFFIX
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated subset")
    ap.add_argument("--tag", default="", help="suffix of the results and plot files")
    ap.add_argument("--first-trial", type=int, default=0,
                    help="run trials first..first+trials-1 (seeds); latency is timed only for trial 0")
    args = ap.parse_args()
    MODEL, TRIALS, ROUNDS = args.model, args.trials, args.rounds
    structures = tuple(x for x in args.structures.split(",") if x)
    THP = dataclasses.replace(THP, model=MODEL)
    TIMED_ROUNDS = tuple(r for r in (2, 3, 4) if r <= ROUNDS)
    SUFFIX = ("" if MODEL == "conv4" else f"-{MODEL}") + (f"-{args.tag}" if args.tag else "")
    data = data_subset()
    arch = {"in_shape": list(data.train_x.shape[1:]), "classes": data.classes, "dropout": 0.0}
    results: dict = {"schedule": dataclasses.asdict(THP), "rounds": ROUNDS, "rate": RATE, "trials": TRIALS,
                     "accuracy": [], "compressed": [], "env": {"python": sys.version.split()[0],
                                                               "torch": torch.__version__}}
    work = Path(tempfile.mkdtemp(prefix="structured_tickets."))
    files: dict[str, str] = {}
    t_start = time.time()
    trials = range(args.first_trial, args.first_trial + TRIALS)
    for trial in trials:
        torch.manual_seed(trial)
        model = build_model(MODEL, data.train_x.shape[1:], data.classes)
        theta0 = {k: v.clone() for k, v in model.state_dict().items()}
        mask0 = full_mask(model, "channel")
        thp = dataclasses.replace(THP, seed=trial)
        dense = train(model, data, thp, mask0)
        results["accuracy"].append({"trial": trial, "structure": "dense", "round": 0, "density": 1.0,
                                    "test_accuracy": dense.test_accuracy})
        if trial == 0:
            ticket = make_ticket(MODEL, arch, mask0, theta0, dense.final_state, seed=trial)
            save_ticket(ticket, work / "dense.pt")
            files["dense"] = str(export_ticket(work / "dense.pt", work / "dense.onnx"))
        for structure in structures:
            php = PruneHparams(rounds=ROUNDS, rate_conv=RATE, rate_fc=RATE, rate_output=0.2, structure=structure)
            mask, prev = mask0, dense.final_state
            for r in range(1, ROUNDS + 1):
                pruned_from = build_model(MODEL, data.train_x.shape[1:], data.classes)
                pruned_from.load_state_dict(prev)
                mask = prune_magnitude(pruned_from, mask, php.rates())
                mask, detail = apply_structure(php, pruned_from, mask)
                model = build_model(MODEL, data.train_x.shape[1:], data.classes)
                model.load_state_dict(theta0)
                res = train(model, data, thp, mask)
                prev = res.final_state
                row = {"trial": trial, "structure": structure, "round": r, "density": weight_density(mask),
                       "test_accuracy": res.test_accuracy}
                results["accuracy"].append(row)
                print(f"[{time.time() - t_start:6.0f}s] trial {trial} {structure:12s} round {r} "
                      f"density {row['density']:.3f} acc {res.test_accuracy:.4f}", flush=True)
                if trial == 0 and r in TIMED_ROUNDS:
                    kind = "group" if structure == "regroup" else ("channel" if structure != "unstructured"
                                                                   else "unstructured")
                    st = {"kind": kind, "method": structure, "round": r, "layers": detail}
                    masked = {k: v * mask[k] if k in mask else v for k, v in theta0.items()}
                    tk = make_ticket(MODEL, arch, mask, masked, res.final_state, structure=st, seed=trial)
                    name = f"{structure}-r{r}"
                    save_ticket(tk, work / f"{name}.pt")
                    src = export_ticket(work / f"{name}.pt", work / f"{name}.onnx")
                    doc = compress_file(src, work / f"{name}.c.onnx", work / f"{name}.pt")
                    files[name] = str(work / f"{name}.c.onnx")
                    results["compressed"].append({
                        "name": name, "structure": structure, "round": r, "density": row["density"],
                        "params": [doc["before"]["parameters"], doc["after"]["parameters"]],
                        "macs": [doc["before"]["macs"], doc["after"]["macs"]],
                        "grouped": doc["regroup"]["grouped"] if doc["regroup"] else 0,
                        "gathers": doc["regroup"]["gathers"] if doc["regroup"] else 0,
                        "verified": doc["verification"]["passed"]})
        (HERE / f"results{SUFFIX}.json").write_text(json.dumps(results, indent=1) + "\n")
    if 0 not in trials:  # accuracy only: merge with the run that timed trial 0 (see summarize)
        results["summary"] = summarize(results, structures)
        (HERE / f"results{SUFFIX}.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    # latency: dense first, then every compressed model, interleaved rounds (nothing else running)
    names = ["dense"] + [c["name"] for c in results["compressed"]]
    print(f"[{time.time() - t_start:6.0f}s] timing {len(names)} models (keep the machine otherwise idle)", flush=True)
    rep = bench([files[n] for n in names], BenchOptions(batches=(1, 32), threads=2, warmup=5, iterations=30, rounds=7))
    results["bench_env"] = rep["environment"]
    for run in rep["runs"]:
        models = list(run["models"].values())
        for c, m in zip(results["compressed"], models[1:], strict=True):
            c[f"speedup_b{run['batch']}"] = m["vs_first"]["speedup"]
            c[f"saving_b{run['batch']}"] = 1 - m["vs_first"]["ratio"]
            c[f"median_ms_b{run['batch']}"] = m["latency"]["median_ms"]
        results[f"dense_median_ms_b{run['batch']}"] = models[0]["latency"]["median_ms"]
    results["summary"] = summarize(results, structures)
    (HERE / f"results{SUFFIX}.json").write_text(json.dumps(results, indent=1) + "\n")
    plots(results, structures)
    print(json.dumps(results["summary"], indent=1))


def summarize(results: dict, structures: tuple[str, ...] = STRUCTURES) -> dict:
    out: dict = {}
    for structure in ("dense", *structures):
        for r in range(ROUNDS + 1):
            rows = [a for a in results["accuracy"] if a["structure"] == structure and a["round"] == r]
            if rows:
                accs = [a["test_accuracy"] for a in rows]
                out[f"{structure}-r{r}"] = {"density": statistics.mean(a["density"] for a in rows),
                                            "acc_mean": statistics.mean(accs), "acc_min": min(accs),
                                            "acc_max": max(accs)}
    return out


def plots(results: dict, structures: tuple[str, ...] = STRUCTURES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"unstructured": "tab:gray", "refill": "tab:blue", "refill+": "tab:cyan", "regroup": "tab:purple"}
    s = results["summary"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    dense = s["dense-r0"]["acc_mean"]
    for structure, color in colors.items():
        if structure not in structures:
            continue
        xs = [1 - s[f"{structure}-r{r}"]["density"] for r in range(1, ROUNDS + 1)]
        ys = [s[f"{structure}-r{r}"]["acc_mean"] * 100 for r in range(1, ROUNDS + 1)]
        lo = [s[f"{structure}-r{r}"]["acc_min"] * 100 for r in range(1, ROUNDS + 1)]
        hi = [s[f"{structure}-r{r}"]["acc_max"] * 100 for r in range(1, ROUNDS + 1)]
        ax[0].plot(xs, ys, "o-", color=color, label=structure)
        ax[0].fill_between(xs, lo, hi, color=color, alpha=0.15)
        comp = [c for c in results["compressed"] if c["structure"] == structure]
        ax[1].plot([1 - c["density"] for c in comp], [100 * c["saving_b1"] for c in comp], "o-", color=color,
                   label=f"{structure} batch 1")
        ax[1].plot([1 - c["density"] for c in comp], [100 * c["saving_b32"] for c in comp], "s--", color=color,
                   label=f"{structure} batch 32")
    ax[0].axhline(dense * 100, color="black", lw=1, label="dense")
    ax[0].set(xlabel="weight sparsity", ylabel="test accuracy % (mean, min-max of 3)", title=f"{MODEL} / Fashion-MNIST")
    ax[1].axhline(65, color="red", lw=1, ls=":", label="goal 65%")
    ax[1].set(xlabel="weight sparsity", ylabel="running-time saving % vs dense (ORT CPU)",
              title="compressed model latency (trial 0)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / f"structured_tickets{SUFFIX}.png", dpi=110)


if __name__ == "__main__":
    main()
