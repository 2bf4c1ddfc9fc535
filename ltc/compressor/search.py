"""Ticket search: iterative (or one-shot) magnitude pruning with reset/rewind, the paper's controls,
several trials, resumable run folders named by their hyperparameters.

Everything that can be checked is checked before a folder is made: hyperparameters, the dataset, that
the model takes the dataset's inputs, the rewind point, and every file of a run folder being resumed
(``hparams.json``, ``round*.json``, ``ticket_round*.pt``, ``dense.pt``). A run that still fails removes
the folders (and files) it created that hold no completed round; an interrupted run keeps its completed
rounds, so re-running the command resumes after them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from ltc.compressor.data import DEFAULT_DIRS, Splits, load_dataset
from ltc.compressor.hparams import PruneHparams, TrainHparams, canonical, run_hash, to_dict
from ltc.compressor.models import build_model, memory_estimate
from ltc.compressor.pruning import (
    STRATEGIES,
    Mask,
    apply_mask,
    density,
    full_mask,
    layer_densities,
    random_like,
    select_layers,
)
from ltc.compressor.structure import random_regroup, refill, regroup
from ltc.compressor.training import distributed, total_iterations, train
from ltc.compressor.usercode import guard
from ltc.controls import VARIANTS as CONTROL_VARIANTS
from ltc.errors import LtcError, first_line
from ltc.fileio import check_input_file, load_torch_data, write_json_atomic, write_text_atomic
from ltc.reporting.runs import summary_markdown
from ltc.ticket import entry_mismatch, make_ticket, save_ticket, save_torch, validate_ticket

VARIANTS = tuple(CONTROL_VARIANTS)  # the ticket and its controls (ltc.controls)
RESULT_KEYS = ("test_accuracy", "early_stop_iteration", "final_train_accuracy", "final_test_accuracy")
MAX_JSON_BYTES = 64 << 20
_ROUND_JSON = re.compile(r"round(\d+)\.json")
_TRIAL = re.compile(r"trial(\d+)")


# ---------------------------------------------------------------------------------------------------
# Run folders: checked before anything is written, removed again when a run fails with nothing done


def check_out_dir(path: Path, flag: str) -> None:
    """``path`` is a writable folder, or can be created as one (its nearest existing ancestor is)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise LtcError(f"{flag} {path}: is a file, not a folder; choose a folder (it is created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise LtcError(f"{flag} {path}: folder is not writable; choose another {flag}")
        return
    if path.is_symlink():
        raise LtcError(f"{flag} {path}: is a dangling symbolic link; remove it or choose another {flag}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LtcError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LtcError(f"{flag} {path}: cannot create it, {ancestor} is not writable; choose another {flag}")


def check_not_in_data(folder: Path, dataset: str, data_dir: str | os.PathLike | None, flag: str) -> None:
    """ltc never writes into its inputs: the run folder may not lie inside the dataset folder."""
    data = data_dir or DEFAULT_DIRS.get(dataset)
    if dataset.startswith("imagefolder:"):
        data = dataset.partition(":")[2]
    if not data or not Path(data).is_dir():
        return
    data_root, target = Path(data).resolve(), Path(folder).resolve()
    if target == data_root or data_root in target.parents:
        raise LtcError(f"{flag} {folder}: is inside the dataset folder {data}; ltc never writes into its inputs, "
                       f"choose another {flag}")


def completed(folder: Path) -> bool:
    """Whether ``folder`` holds a completed round (``roundN.json`` beside ``ticket_roundN.pt``) or a
    completed dense training (``ticket.pt``), at any depth."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for f in folder.rglob("*"):
        if f.name == "ticket.pt":
            return True
        m = _ROUND_JSON.fullmatch(f.name)
        if m and (f.parent / f"ticket_round{m.group(1)}.pt").exists():
            return True
    return False


class Created:
    """The folders and files one invocation creates, to take back on failure (see :meth:`rollback`)."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        self.files: list[Path] = []

    def mkdir(self, path: Path) -> None:
        path = Path(path)
        missing = []
        p = path
        while not p.exists() and not p.is_symlink():
            missing.append(p)
            p = p.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LtcError(f"{path}: cannot create the folder ({exc.strerror or exc}); choose another --out") from None
        self.dirs.extend(reversed(missing))

    def file(self, path: Path) -> None:
        """Remember ``path`` if it does not exist yet (call before writing it)."""
        if not os.path.lexists(path):
            self.files.append(Path(path))

    def rollback(self, keep: Callable[[Path], bool] = completed) -> None:
        """Remove what was created, except folders (and files in folders) for which ``keep`` is true:
        a failed run leaves nothing behind, an interrupted one keeps its completed rounds."""
        for f in reversed(self.files):
            if not keep(f.parent):
                with contextlib.suppress(OSError):
                    f.unlink()
        for d in reversed(self.dirs):  # deepest first
            if d.is_dir() and not d.is_symlink() and not keep(d):
                shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Reading a run folder back: every file is checked and a bad one is named


def read_json(path: Path, what: str):
    path = check_input_file(path, what)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise LtcError(f"{path}: {path.stat().st_size:,} bytes is too large for a {what}; the run folder is damaged")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LtcError(f"{path}: not a valid {what} ({first_line(exc)}); the run folder is damaged: delete the "
                       "file to recompute it, or choose another --out") from None
    except OSError as exc:
        raise LtcError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_record(path: Path, round_: int | None = None) -> dict:
    """A ``roundN.json`` of a run folder, checked for what :func:`summarize` reads."""
    rec = read_json(path, "round record")
    way = "the run folder is damaged: delete it (and the rounds after it) to recompute the round"
    if not isinstance(rec, dict):
        raise LtcError(f"{path}: a round record must be a JSON object, found {type(rec).__name__}; {way}")
    if not isinstance(rec.get("round"), int) or (round_ is not None and rec["round"] != round_):
        raise LtcError(f"{path}: 'round' is {rec.get('round')!r}, expected {round_}; {way}")
    if not _number(rec.get("density")) or not 0 <= rec["density"] <= 1:
        raise LtcError(f"{path}: 'density' is {rec.get('density')!r}, not a number in [0, 1]; {way}")
    results = rec.get("results")
    if not isinstance(results, dict) or not results:
        raise LtcError(f"{path}: 'results' must be an object of variants; {way}")
    for variant, res in results.items():
        if variant not in VARIANTS:
            raise LtcError(f"{path}: unknown variant '{variant}' in 'results' (known: {', '.join(VARIANTS)}); {way}")
        if not isinstance(res, dict) or not all(_number(res.get(k)) for k in RESULT_KEYS):
            raise LtcError(f"{path}: results of '{variant}' lack numbers for {', '.join(RESULT_KEYS)}; {way}")
    return rec


def _fits(state, reference: dict[str, torch.Tensor], field: str, path: Path, bool_ok: bool = False) -> None:
    """``state`` has exactly ``reference``'s names, shapes and kinds of dtype."""
    way = ("the run folder is damaged or holds another model: delete the file (and the rounds after it) to recompute "
           "them, or delete the run folder")
    if not isinstance(state, dict):
        raise LtcError(f"{path}: '{field}' is {'missing' if state is None else f'a {type(state).__name__}'}, not "
                       f"the model's tensors; {way}")
    if set(state) != set(reference):
        names = sorted(set(state) ^ set(reference))
        raise LtcError(f"{path}: '{field}' does not hold this model's tensors (differs in {', '.join(names[:4])}"
                       f"{'...' if len(names) > 4 else ''}); {way}")
    for name, ref in reference.items():
        problem = entry_mismatch(state[name], ref, ("bool",) if bool_ok else None)
        if problem:
            raise LtcError(f"{path}: '{field}' entry '{name}' {problem}; {way}")


def read_round_ticket(path: Path, model: torch.nn.Module, structure: str) -> dict:
    """A ``ticket_roundN.pt`` of a run folder, checked against the model it must fit."""
    try:
        t = validate_ticket(load_torch_data(path, "ticket"), path)
    except LtcError as exc:
        raise LtcError(f"{exc}; the run folder is damaged: delete the file (and the rounds after it) to recompute "
                       "them, or delete the run folder") from None
    state = {k: v for k, v in model.state_dict().items()}
    _fits(t.get("final"), state, "final", path)
    _fits(t["init"], state, "init", path)
    _fits(t["masks"], full_mask(model, structure), "masks", path, bool_ok=True)
    if not isinstance(t.get("history"), list) or not all(isinstance(h, dict) for h in t["history"]):
        raise LtcError(f"{path}: 'history' must be a list of round records; the run folder is damaged: delete the "
                       "file (and the rounds after it) to recompute them, or delete the run folder")
    return t


def read_dense(path: Path, model: torch.nn.Module) -> dict:
    """``dense.pt`` (init and final state of the dense training), checked against the model."""
    d = load_torch_data(path, "dense-training file")
    if not isinstance(d, dict):
        raise LtcError(f"{path}: expected a dict with 'init' and 'final', found {type(d).__name__}; delete the "
                       "trial's rounds to recompute")
    state = model.state_dict()
    _fits(d.get("init"), state, "init", path)
    _fits(d.get("final"), state, "final", path)
    return d


def slug(name: str) -> str:
    """A model or dataset name as a folder-name part: ``torchvision:resnet18`` -> ``torchvision-resnet18``,
    ``imagefolder:/data/pets`` -> ``imagefolder-pets``, ``nets/my.py:build`` -> ``my-build``."""
    from ltc.compressor import sources

    if sources.kind(name) == "file":
        path, _, function = name.rpartition(":")
        name = f"{Path(path).stem}-{function}"
    elif ":" in name:
        head, _, rest = name.partition(":")
        name = f"{head}-{Path(rest.rstrip('/')).name or 'root'}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:48]


def run_folder(root: Path, thp: TrainHparams, php: PruneHparams) -> Path:
    return root / f"{slug(thp.model)}-{slug(thp.dataset)}-{run_hash(thp, php)}"


def _hparams_doc(thp: TrainHparams, php: PruneHparams, identity: dict | None = None) -> dict:
    doc = {"canonical": canonical(thp, php), **to_dict(thp, php)}
    if identity:
        doc["identity"] = identity
    return doc


def _check_hparams(run_dir: Path, thp: TrainHparams, php: PruneHparams, identity: dict | None = None) -> bool:
    """Refuse to resume a folder made with other hyperparameters, or (``identity``: hashes of the model's
    code and initialisation, the data, the loss) with another model or data under the same names;
    True when hparams.json exists."""
    path = run_dir / "hparams.json"
    if not os.path.lexists(path):
        return False
    theirs = read_json(path, "hparams.json")
    if not isinstance(theirs, dict) or not isinstance(theirs.get("canonical", ""), str):
        raise LtcError(f"{path}: not an ltc hparams.json (expected an object with 'canonical'); the run folder is "
                       "damaged: choose another --run-dir or --out")
    mine = canonical(thp, php)
    if theirs.get("canonical") != mine:
        raise LtcError(f"{run_dir} holds a run with other hyperparameters ({theirs.get('canonical') or 'defaults'}"
                       f" vs {mine or 'defaults'}); choose another --run-dir or --out")
    recorded = theirs.get("identity") or {}
    changed = sorted(k for k, v in (identity or {}).items() if recorded.get(k, v) != v)
    if changed:
        raise LtcError(f"{run_dir} holds a run of another {' and '.join(changed)} under the same names (its "
                       f"{', '.join(changed)} hash differs: the code, the initialisation or the data changed); choose "
                       "another --out or --run-dir, or delete that folder to start over")
    return True


def prepare(thp: TrainHparams, data_dir: str | os.PathLike | None) -> Splits:
    """Check the hyperparameters, load the dataset and check that the model takes its inputs (on the
    meta device: nothing is computed): everything that can fail before a folder is made."""
    thp.validate()
    _, world = distributed()
    if thp.batch_size % world:
        raise LtcError(f"--batch-size {thp.batch_size} must be divisible by the {world} ranks")
    data = load_dataset(thp.dataset, thp.val_size, data_dir, seed=0, channels=thp.channels,
                        image_size=thp.image_size)
    memory_estimate(thp.model, data.in_shape, data.classes, thp.dropout)
    return data


def _scan(run_dir: Path, thp: TrainHparams, php: PruneHparams, setup: Setup) -> dict[int, tuple[int, dict]]:
    """Check every file a resumed run reads; per trial, its last completed round and that round's ticket."""
    resume: dict[int, tuple[int, dict]] = {}
    if not run_dir.is_dir():
        return resume
    if not _check_hparams(run_dir, thp, php, setup.identity) and any(run_dir.iterdir()):
        raise LtcError(f"{run_dir}: a folder with files but no hparams.json is not an ltc run folder; ltc would "
                       "write over its files: give an empty or new --run-dir")
    structure = php.mask_layout()
    model = setup.fresh(0)
    for trial in range(php.trials):
        tdir = run_dir / f"trial{trial}"
        if os.path.lexists(tdir) and (tdir.is_symlink() or not tdir.is_dir()):
            raise LtcError(f"{tdir}: is not a folder; the run folder is damaged: remove it or choose another --out")
        if not tdir.is_dir():
            continue
        last = -1
        while last < php.rounds and (tdir / f"round{last + 1}.json").exists() \
                and (tdir / f"ticket_round{last + 1}.pt").exists():
            last += 1
        if last < 0:
            continue
        for r in range(last + 1):  # every round the folder vouches for: its record and its ticket
            read_record(tdir / f"round{r}.json", r)
            ticket = read_round_ticket(tdir / f"ticket_round{r}.pt", model, structure)
        resume[trial] = (last, ticket)
        if os.path.lexists(tdir / "dense.pt"):
            read_dense(tdir / "dense.pt", model)
    return resume


# ---------------------------------------------------------------------------------------------------
# The search


@dataclasses.dataclass
class Setup:
    """What a search runs on: ``build()`` makes a fresh model (called under ``torch.manual_seed(seed)``),
    the data (:class:`Splits` or :class:`~ltc.compressor.userdata.DatasetSplits`), the ticket's
    architecture entry, the loss (default cross-entropy) and the layers to prune (set by :func:`select`)."""

    build: Callable[[], torch.nn.Module]
    data: Splits
    arch: dict
    loss: Callable | None = None
    layers: dict[str, str] | None = None
    identity: dict[str, str] | None = None  # hashes checked when a run folder is resumed
    users_code: bool = False  # the model (or loss) is the user's: its exceptions are bad input, exit 1

    def fresh(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = self.build()
        if self.layers is not None:
            model._ltc_layers = self.layers  # read by pruning.prunable_layers
        if getattr(model, "input_shape", None) is None:
            model.input_shape = tuple(self.data.in_shape)  # the structure probes' input
        return model

    def select(self, php: PruneHparams) -> None:
        """Choose the layers to prune (``--include``/``--exclude``, the output layer by a forward pass)."""
        probe = self.fresh(0)
        x, _ = self.data.train_batch(torch.arange(min(2, self.data.n_train())))
        with self.running("the model, on an example batch,"):
            self.layers = select_layers(probe, php.include, php.exclude, x)

    def running(self, what: str):
        """Where a step runs the user's model, data or loss (``users_code``): what it raises, sys.exit
        included, is one LtcError line that begins with ``what``."""
        if not self.users_code:
            return contextlib.nullcontext()
        return guard(what, "fix it and run again (completed rounds are kept)")


def registry_setup(thp: TrainHparams, data: Splits) -> Setup:
    """A CLI search: a registered, torchvision, timm or factory-file model on a registered dataset or an
    image folder. A factory file's bytes and the data's fingerprint are the run's identity."""
    from ltc.compressor import sources
    from ltc.compressor.userdata import fingerprint

    arch = {"in_shape": list(data.in_shape), "classes": data.classes, "dropout": thp.dropout}
    kind = sources.kind(thp.model)
    identity = {}
    if kind == "file":
        identity["model"] = sources.file_hash(thp.model)
    if thp.dataset.startswith("imagefolder:"):
        identity["data"] = fingerprint(data)
    return Setup(lambda: build_model(thp.model, data.in_shape, data.classes, thp.dropout), data, arch,
                 identity=identity or None, users_code=kind != "registry")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ticket_search(thp: TrainHparams, php: PruneHparams, out: Path, *, data_dir: str | None = None,
                  run_dir: Path | None = None, progress: bool = False) -> dict:
    """Run (or resume) the search; returns the summary (also written to the run folder)."""
    thp.validate()
    php.validate()
    flag = "--run-dir" if run_dir else "--out"
    if not run_dir:
        check_out_dir(Path(out), "--out")
    run_dir = Path(run_dir) if run_dir else run_folder(Path(out), thp, php)
    check_out_dir(run_dir, flag)
    check_not_in_data(run_dir, thp.dataset, data_dir, flag)
    data = prepare(thp, data_dir)
    return run_search(thp, php, registry_setup(thp, data), run_dir, progress=progress)


def run_search(thp: TrainHparams, php: PruneHparams, setup: Setup, run_dir: Path, *, progress: bool = False) -> dict:
    """The search on a prepared :class:`Setup` in ``run_dir`` (checked by the caller)."""
    setup.select(php)
    total = total_iterations(thp, setup.data.n_train())
    if php.reset == "rewind" and php.rewind_iteration > total:
        raise LtcError(f"--rewind-iteration {php.rewind_iteration} is past the end of training ({total} iterations); "
                       "choose a smaller --rewind-iteration or train longer")
    resume = _scan(run_dir, thp, php, setup)
    rank, world = distributed()
    if world > 1:  # every rank has read the folder before rank 0 writes into it (a half-written
        torch.distributed.barrier()  # hparams.json would make a slower rank refuse the folder)
    created = Created()
    try:
        if rank == 0:
            created.mkdir(run_dir)
            if not os.path.lexists(run_dir / "hparams.json"):
                created.file(run_dir / "hparams.json")
                write_json_atomic(run_dir / "hparams.json", _hparams_doc(thp, php, setup.identity))
        for trial in range(php.trials):
            _run_trial(thp, php, setup, run_dir / f"trial{trial}", thp.seed + trial, progress, created,
                       resume.get(trial))
        summary = summarize(run_dir)
        if rank == 0:
            from ltc.compressor.analysis import write_plots

            summary["plots"] = write_plots(run_dir, summary)
            write_json_atomic(run_dir / "summary.json", summary)
            write_text_atomic(run_dir / "summary.md", summary_markdown(summary))
    except BaseException:
        if rank == 0:
            created.rollback()
        raise
    return summary


def _run_trial(thp: TrainHparams, php: PruneHparams, setup: Setup, trial_dir: Path, seed: int,
               progress: bool, created: Created, resume: tuple[int, dict] | None = None) -> None:
    rank, world = distributed()
    if rank == 0:
        created.mkdir(trial_dir)
    thp_t = dataclasses.replace(thp, seed=seed)
    structure = php.mask_layout()
    detail: dict = {}  # the structure's per-layer detail of the current round
    data = setup.data
    model = setup.fresh(seed)
    theta0 = _state(model)
    mask = full_mask(model, structure)
    start = theta0
    prev_final: dict[str, torch.Tensor] | None = None
    log = trial_dir / "train.jsonl"
    arch = setup.arch
    history: list[dict] = []  # every round so far: each ticket carries the path that led to it
    first = 0
    if resume is not None:  # rounds 0..last completed earlier (checked by _scan): resume after them
        last, t = resume
        mask, prev_final, start = t["masks"], t["final"], t["init"]
        if php.mask_layout() == "channel" and php.strategy != "channel":  # structures re-activate weights: they
            start = _unmasked_start(php, theta0, trial_dir, model, start)  # restart from their own values
        history = list(t["history"])
        first = last + 1
    if rank == 0 and first <= php.rounds:
        created.file(log)
    for r in range(first, php.rounds + 1):
        record_path = trial_dir / f"round{r}.json"
        ticket_path = trial_dir / f"ticket_round{r}.pt"
        if r > 0:
            pruned_from = setup.fresh(seed)
            pruned_from.load_state_dict(prev_final)
            with setup.running(f"trial {seed} round {r}, pruning: the model"):  # structure probes run it
                mask = STRATEGIES[php.strategy](pruned_from, mask, php.rates())
                mask, detail = apply_structure(php, pruned_from, mask)
            _check_same_on_ranks(mask, world)
        record = {"round": r, "density": density(mask), "layer_density": layer_densities(mask), "results": {}}
        rewind = php.rewind_iteration if (r == 0 and php.reset == "rewind") else None
        model = setup.fresh(seed)
        model.load_state_dict(start)
        res = train(model, data, thp_t, mask, log_path=log, rewind_iteration=rewind, progress=progress,
                    label=f"trial {seed} round {r} ticket", loss_fn=setup.loss, users_code=setup.users_code)
        record["results"]["ticket"] = res.summary()
        if r == 0:
            if php.reset == "rewind":
                if res.rewind_state is None:
                    raise LtcError(f"--rewind-iteration {php.rewind_iteration} was not reached: training stopped "
                                   f"early at iteration {res.iterations} (--patience); choose a smaller "
                                   "--rewind-iteration or a larger --patience")
                start = res.rewind_state
            record["weight_change"] = {"init": "theta0", "final": "dense"}
            if rank == 0:
                created.file(trial_dir / "dense.pt")
                dense_doc = {"init": theta0, "final": res.final_state}
                if php.reset == "rewind":
                    dense_doc["rewind"] = start  # what later rounds reset to, unmasked (refill re-activates)
                save_torch(dense_doc, trial_dir / "dense.pt")
        else:
            for control in php.control_list():
                record["results"][control] = _control(control, setup, thp_t, mask, start, structure, seed,
                                                      r, log, progress, detail if php.kind() == "group" else None)
        prev_final = res.final_state
        history.append(record)
        if rank == 0:
            masked_start = {k: v.clone() for k, v in start.items()}
            for name, m in mask.items():
                masked_start[name] = masked_start[name] * m
            ticket = make_ticket(thp.model, arch, mask, masked_start, res.final_state,
                                 structure=_structure_doc(php, r, detail),
                                 history=history, hparams=to_dict(thp, php), seed=seed)
            created.file(ticket_path)
            created.file(record_path)
            save_ticket(ticket, ticket_path)
            write_json_atomic(record_path, record)  # written last: marks the round complete
        if world > 1:
            torch.distributed.barrier()


def _unmasked_start(php: PruneHparams, theta0: dict, trial_dir: Path, model: torch.nn.Module,
                    masked: dict) -> dict:
    """The reset point of a resumed run before masking: θ0 (reproduced from the seed), or the rewind
    state saved in ``dense.pt``; a run folder from before that was saved keeps the masked one."""
    if php.reset == "init":
        return theta0
    path = trial_dir / "dense.pt"
    if os.path.lexists(path):
        d = read_dense(path, model)
        rewind = d.get("rewind")
        if isinstance(rewind, dict):
            _fits(rewind, dict(model.state_dict()), "rewind", path)
            return rewind
    return masked


def apply_structure(php: PruneHparams, model: torch.nn.Module, mask: Mask) -> tuple[Mask, dict]:
    """The structure step after a round's pruning (``model`` holds the weights it pruned)."""
    if php.structure in ("refill", "refill+"):
        return refill(model, mask, php.refill_criterion, php.refill_rate if php.structure == "refill+" else 0.0)
    if php.structure == "regroup":
        return regroup(model, mask, php.groups, php.group_width, php.group_align)
    return mask, {}


def _structure_doc(php: PruneHparams, r: int, detail: dict) -> dict:
    doc = {"kind": php.kind(), "strategy": php.strategy, "round": r}
    if php.structure != "unstructured":
        doc["method"] = php.structure
        doc["layers"] = detail
    return doc


def _reinit_start(setup: Setup, mask: Mask, start: dict, structure: str, seed: int, r: int,
                  groups: dict | None) -> tuple[torch.nn.Module, Mask]:
    """The reinit control: the same mask under a new random initialisation."""
    return setup.fresh(10_000 + 100 * seed + r), mask


def _random_start(setup: Setup, mask: Mask, start: dict, structure: str, seed: int, r: int,
                  groups: dict | None) -> tuple[torch.nn.Module, Mask]:
    """The random-pruning control: a random mask with the same per-layer sparsity (and structure),
    from the same start as the ticket."""
    gen = torch.Generator().manual_seed(20_000 + 100 * seed + r)
    model = setup.fresh(seed)
    model.load_state_dict(start)
    return model, (random_regroup(mask, groups, gen) if groups is not None else random_like(model, mask, structure, gen))


# How each control of ltc.controls.CONTROLS starts its training (a test checks that they agree)
CONTROL_STARTS = {"reinit": _reinit_start, "random": _random_start}


def _control(control: str, setup: Setup, thp_t: TrainHparams, mask: Mask,
             start: dict, structure: str, seed: int, r: int, log: Path, progress: bool,
             groups: dict | None = None) -> dict:
    model, control_mask = CONTROL_STARTS[control](setup, mask, start, structure, seed, r, groups)
    apply_mask(model, control_mask)
    res = train(model, setup.data, thp_t, control_mask, log_path=log, progress=progress,
                label=f"trial {seed} round {r} {control}", loss_fn=setup.loss, users_code=setup.users_code)
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
    trials = sorted(p for p in run_dir.glob("trial*") if _TRIAL.fullmatch(p.name) and p.is_dir())
    rounds: dict[int, dict] = {}
    for t in trials:
        for f in sorted(t.glob("round*.json")):
            m = _ROUND_JSON.fullmatch(f.name)
            if not m:
                continue
            rec = read_record(f, int(m.group(1)))
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
    hp = read_json(run_dir / "hparams.json", "hparams.json") if (run_dir / "hparams.json").exists() else {}
    return {"run_dir": str(run_dir), "hparams": hp, "rounds": table}


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
