"""File-level entry points, one per command: what the CLI (and ``make demo``) call, and what a
deployment script can call instead. Each checks its inputs and outputs, writes atomically and returns
a typed result (:mod:`ltc.reports`): ``compress_file`` (``ltc compress``), ``inspect_file``
(``ltc inspect``), ``bench_files`` (``ltc bench``), ``report_files`` (``ltc report``), ``export_file``
(``ltc export``), ``train_file`` (``ltc train``), ``find_tickets`` (``ltc ticket``).

Heavy modules (onnx, numpy, torch, onnxruntime, matplotlib) are imported inside the function that
needs them: importing this module costs nothing, and ``report_files`` on bench JSON never loads torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ltc.defaults import ATOL, MAX_MEMORY_GIB, RTOL
from ltc.errors import LtcError
from ltc.reports import BenchReport, CompressReport, InspectReport


def _masks_for(model, mask: str | os.PathLike | None, strict: bool) -> tuple[dict | None, dict, dict[str, int]]:
    """Masks by initializer name, the report's mask entry, and a group ticket's G by initializer name."""
    if mask is None:
        return None, {"source": "zeros in the model's weights"}, {}
    from ltc.masks import match_masks, read_masks

    ms = read_masks(mask)
    m = match_masks(model, ms, strict)
    groups = {m.matched[name]: g for name, g in ms.groups.items() if name in m.matched}
    info = {"source": f"{ms.source} ({mask})", "matched": len(m.matched), "unmatched": m.unmatched}
    if m.shared:
        info["shared"] = m.shared
    if m.transposed:
        info["transposed"] = m.transposed
    return m.masks, info, groups


def resolve_round_to(round_to: int | str, provider: str) -> int:
    from ltc.hardware import default_round_to

    if round_to in ("auto", None):
        return default_round_to(provider)
    try:
        value = int(round_to)
    except ValueError:
        raise LtcError(f"--round-to must be a positive integer or 'auto', got {round_to!r}") from None
    if value < 1:
        raise LtcError(f"--round-to must be >= 1, got {value}")
    return value


def compress_file(model_path: str | os.PathLike, out_path: str | os.PathLike, mask: str | os.PathLike | None = None,
                  *, allow_lossy: bool = False, round_to: int | str = "auto", provider: str = "cpu",
                  verify: bool = True, inputs: str | os.PathLike | None = None, rtol: float = RTOL,
                  atol: float = ATOL, strict_mask: bool = False, report: str | os.PathLike | None = None,
                  external_data: bool | None = None, regroup: bool | None = None,
                  unequal_groups: str = "auto", keep_initializer_inputs: bool = False,
                  chains: bool = True, rules: dict | None = None) -> CompressReport:
    """Compress ``model_path`` into ``out_path``; returns the report (also written to ``report`` as JSON).

    ``regroup``: turn block-diagonal Convs into grouped Convs; None (default) does it when the mask is
    a group-wise ticket, with the ticket's group counts. ``rules``: the rule table
    (:class:`ltc.passes.rules.RuleTable`; default: the default table).

    Nothing is written unless every step succeeds; no output may be an input (checked after
    resolving links, external-data files included); outputs are written atomically.
    """
    from ltc.fileio import check_outputs
    from ltc.onnx_io import TWO_GB, model_size_bytes, read_model, save_model
    from ltc.passes import compress
    from ltc.passes.verify import load_inputs

    start = time.perf_counter()
    model_path, out_path = Path(model_path), Path(out_path)
    check_tolerances(rtol, atol)
    rounding = resolve_round_to(round_to, provider)
    data_out = out_path.with_name(out_path.name + ".data")
    check_outputs([out_path, report], [model_path, mask, inputs])
    model, source = read_model(model_path, keep_initializer_inputs)
    read = [*source.files, mask, inputs]
    if external_data is None and source.external:
        external_data = True
    check_outputs([out_path, report, data_out if external_data else None], read)  # again once it is decided
    masks, mask_info, groups = _masks_for(model, mask, strict_mask)
    regroup = bool(groups) if regroup is None else regroup
    feeds = load_inputs(inputs, model) if inputs else None
    result = compress(model, masks, allow_lossy=allow_lossy, round_to=rounding, check=verify, feeds=feeds,
                      rtol=rtol, atol=atol, inputs_label=str(inputs) if inputs else "random (seed 0, batch 2)",
                      model_file=None if source.external else model_path, regroup=regroup, groups=groups,
                      unequal_groups=unequal_groups, chains=chains, rules=rules)
    if external_data is None:
        external_data = model_size_bytes(result.model) > TWO_GB
    check_outputs([out_path, report, data_out if external_data else None], read)
    options = {"allow_lossy": allow_lossy, "round_to": rounding, "provider": provider, "verify": verify,
               "regroup": regroup, "unequal_groups": unequal_groups, "chains": chains}
    doc = CompressReport(input=str(model_path), output=str(out_path), mask=mask_info, options=options,
                         **result.to_dict(), file_size={"before": source.bytes, "after": None})
    save_model(result.model, out_path, external_data, serialized=result.serialized)
    doc.file_size["after"] = out_path.stat().st_size + (data_out.stat().st_size if external_data else 0)
    doc.seconds_total = time.perf_counter() - start
    if report is not None:
        doc.write(report)
    return doc


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise LtcError(f"--{name} must be a finite number >= 0, got {value!r}")


def inspect_file(model_path: str | os.PathLike, mask: str | os.PathLike | None = None,
                 strict_mask: bool = False, allow_lossy: bool = False, unequal_groups: str = "auto",
                 chains: bool = True, rules: dict | None = None) -> InspectReport:
    """Channel classes, dead channels per layer, what is removable and what freezes the rest."""
    from ltc.onnx_io import read_model
    from ltc.passes.pipeline import inspect

    model, _source = read_model(model_path)
    masks, mask_info, _ = _masks_for(model, mask, strict_mask)
    doc = inspect(model, masks, allow_lossy, unequal_groups, chains, rules)
    doc.update({"input": str(model_path), "mask": mask_info})
    return InspectReport(**doc)


def bench_files(models: Sequence[str | os.PathLike], *, providers: Sequence[str] = ("cpu",),
                batches: Sequence[int] = (1,), threads: int = 0, warmup: int = 5, iterations: int = 20,
                rounds: int = 5, time_budget: float = 0.0, opt_level: str = "all", fp16: bool = False,
                io_binding: bool = False, profile: bool = False, per_layer: bool = False,
                engine_cache: str | os.PathLike = ".ltc-trt-cache", json_out: str | os.PathLike | None = None,
                md_out: str | os.PathLike | None = None, progress=None) -> BenchReport:
    """Latency of ``models``, interleaved, compared as ratios to the first (``ltc bench``); the report is
    also written as JSON (``json_out``) and Markdown (``md_out``)."""
    from ltc.benchmarks.bench import BenchOptions
    from ltc.benchmarks.bench import bench_files as run

    opts = BenchOptions(batches=tuple(batches), providers=tuple(providers), threads=threads, warmup=warmup,
                        iterations=iterations, rounds=rounds, time_budget=time_budget, opt_level=opt_level,
                        fp16=fp16, io_binding=io_binding, profile=profile, per_layer=per_layer,
                        engine_cache=str(engine_cache))
    doc = run([str(m) for m in models], opts, json_out=json_out, md_out=md_out, progress=progress)
    return BenchReport(**{k: v for k, v in doc.items() if k != "ltc_report"})


def report_files(run_dir: str | os.PathLike | None = None, benches: Sequence[str | os.PathLike] = (),
                 compresses: Sequence[str | os.PathLike] = (), output: str | os.PathLike = "report.html",
                 markdown: str | os.PathLike | None = None) -> list[Path]:
    """One self-contained HTML page (and Markdown with PNGs) from a run folder, bench JSON and compress
    reports (``ltc report``); every file read is validated against its schema. Returns the files written."""
    from ltc.reporting.report import write_report

    return write_report(run_dir, [str(b) for b in benches], [str(c) for c in compresses], output, markdown)


def export_file(ticket: str | os.PathLike, output: str | os.PathLike, *, weights: str = "final",
                exporter: str = "legacy", opset: int | None = None, dynamic_batch: bool = True,
                fold_batchnorm: bool = False, max_memory: float = MAX_MEMORY_GIB, model_spec: str | None = None) -> Path:
    """A ticket's masked model as ONNX, initializers named as the ticket's parameters (``ltc export``)."""
    from ltc.exporters.ticket_export import export_ticket

    return export_ticket(ticket, output, weights=weights, exporter=exporter, opset=opset,
                         dynamic_batch=dynamic_batch, fold_batchnorm=fold_batchnorm, max_memory=max_memory,
                         model_spec=model_spec)


def train_file(thp, out: str | os.PathLike = "runs", *, data_dir: str | os.PathLike | None = None,
               progress: bool = False) -> dict:
    """Train a dense model (``ltc train``): ``thp`` is a :class:`~ltc.compressor.hparams.TrainHparams`;
    writes a ticket.pt (all-ones masks) and a JSONL log in a run folder under ``out``."""
    from ltc.compressor.workflows import train_dense

    return train_dense(thp, out, data_dir=None if data_dir is None else str(data_dir), progress=progress)


def find_tickets(thp, php, out: str | os.PathLike = "runs", *, data_dir: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Ticket search (``ltc ticket``) with :class:`~ltc.compressor.hparams.TrainHparams` ``thp`` and
    :class:`~ltc.compressor.hparams.PruneHparams` ``php``; resumes a run folder after its last completed
    round. Under torchrun it joins the process group, and leaves it once every rank is done. Returns
    the run's summary (``summary.json``)."""
    from ltc.compressor.search import ticket_search
    from ltc.compressor.training import finish_distributed, init_distributed

    joined = init_distributed()
    summary = ticket_search(thp, php, Path(out), data_dir=None if data_dir is None else str(data_dir),
                            run_dir=Path(run_dir) if run_dir else None, progress=progress)
    finish_distributed(joined)  # on success only: a rank that failed must not wait for the others
    return summary
