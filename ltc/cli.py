"""The ``ltc`` command: parses options, calls the library, prints. No logic lives here."""

from __future__ import annotations

import json
import os
import sys

import click

from ltc import __version__
from ltc.defaults import ATOL, MAX_MEMORY_GIB, RTOL
from ltc.errors import InternalError, LtcError, first_line
from ltc.exporters.torch_export import EXPORTERS
from ltc.hardware import BENCH_PROVIDERS, OPT_LEVELS, PROVIDERS, UNEQUAL_GROUPS
from ltc.options import NON_NEGATIVE, POSITIVE_INT, FiniteFloat

# Modules that only the `torch` extra installs: a command that needs one says how to get it.
_EXTRAS = {"torch": "torch", "torchvision": "torch", "onnxscript": "torch", "sklearn": "torch",
           "matplotlib": "torch"}


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _terminate_as_interrupt() -> None:
    """SIGTERM (timeout, CI cancellation, a container stop) unwinds like Ctrl-C, so temporaries are removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


class _Group(click.Group):
    """Every failure is one line on stderr, never a traceback. Exit 1: the input is wrong (library
    errors, bad options, missing extras); exit 2: ltc is wrong (LTC_DEBUG=1 shows the traceback)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _terminate_as_interrupt()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "ltc"
            _fail(f"{where}: {exc.format_message()} (see {where} --help)", 1)
        except click.ClickException as exc:
            _fail(exc.format_message(), 1)
        except click.Abort:
            _fail("interrupted; nothing was written", 130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LtcError as exc:  # the whole message: a path in it may hold a newline (printed as a space)
            _fail(str(exc) or type(exc).__name__, 1)
        except InternalError as exc:
            _fail(f"{exc}; nothing was written. This is a bug in ltc: please report it", 2)
        except KeyboardInterrupt:
            _fail("interrupted; nothing half-written is left (ltc ticket keeps its completed rounds and resumes "
                  "after them)", 130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root in _EXTRAS and not os.environ.get("LTC_DEBUG"):
                _fail(f"this command needs the '{_EXTRAS[root]}' extra (no module named {root}): "
                      f"pip install 'ltc[{_EXTRAS[root]}]'", 1)
            return self._internal(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
            return self._internal(exc)

    @staticmethod
    def _internal(exc: Exception) -> None:
        if os.environ.get("LTC_DEBUG"):
            raise exc
        _fail(f"internal error ({type(exc).__name__}: {first_line(exc)}); nothing was written. Please "
              "report it; LTC_DEBUG=1 shows the traceback", 2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="ltc")
def main() -> None:
    """ltc: lottery tickets that are really smaller and faster at deployment."""


@main.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--mask", type=click.Path(dir_okay=False), help="ticket.pt, prune state dict (.pt) or .npz; default: zeros in the weights")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="where to write the compressed model")
@click.option("--allow-lossy", is_flag=True, help="fold dead-channel constants across zero padding into the bias instead of adding their exact map (fewer nodes, wrong at the borders); the error is measured and reported")
@click.option("--round-to", default="auto", show_default=True, help="keep channel counts a multiple of N (extra dead channels stay, exact); 'auto' picks per --provider")
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True, help="deployment target that --round-to auto aligns for")
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz of real inputs for verification (one array per model input)")
@click.option("--rtol", type=NON_NEGATIVE, default=RTOL, show_default=True, help="relative tolerance of verification")
@click.option("--atol", type=NON_NEGATIVE, default=ATOL, show_default=True, help="absolute tolerance of verification")
@click.option("--no-verify", is_flag=True, help="skip numerical verification")
@click.option("--strict-mask", is_flag=True, help="fail if any mask entry matches nothing in the model")
@click.option("--report", type=click.Path(dir_okay=False), help="also write the report as JSON")
@click.option("--external-data/--no-external-data", default=None, help="store weights in <output>.data (default: as the input, or when >2 GB)")
@click.option("--regroup/--no-regroup", default=None, help="turn Convs whose zeros form dense blocks into grouped Convs (default: when the mask is a group-wise ticket); --round-to applies to group widths")
@click.option("--unequal-groups", type=click.Choice(UNEQUAL_GROUPS), default="auto", show_default=True, help="let a grouped Conv lose different numbers of channels per group (it is then split into Convs): always, never (extra dead channels stay), auto (where the cost table predicts it faster)")
@click.option("--no-chains", is_flag=True, help="keep dead channels whose constant zero padding or a live gate made input-dependent, instead of writing their run of channel-wise ops again for them (fewer nodes; can be faster at batch 1 when few channels go)")
@click.option("--keep-initializer-inputs", is_flag=True, help="refuse a model whose initializers are also graph inputs (default: treat them as constants and drop them from the output's inputs)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of tables")
def compress_cmd(model, mask, output, allow_lossy, round_to, provider, inputs, rtol, atol, no_verify,
                 strict_mask, report, external_data, regroup, unequal_groups, no_chains, keep_initializer_inputs,
                 as_json) -> None:
    """Physically remove pruned channels from MODEL, exactly, and verify the result."""
    from ltc.api import compress_file
    from ltc.reporting.tables import print_compress

    doc = compress_file(model, output, mask, allow_lossy=allow_lossy, round_to=round_to, provider=provider,
                        verify=not no_verify, inputs=inputs, rtol=rtol, atol=atol, strict_mask=strict_mask,
                        report=report, external_data=external_data, regroup=regroup,
                        unequal_groups=unequal_groups, keep_initializer_inputs=keep_initializer_inputs,
                        chains=not no_chains)
    if as_json:
        _echo_json(doc)
    else:
        print_compress(doc)


def _echo_json(report) -> None:
    from ltc.reports import to_json

    click.echo(json.dumps(report.to_dict(), indent=2, default=to_json))


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--mask", type=click.Path(dir_okay=False), help="ticket.pt, prune state dict (.pt) or .npz")
@click.option("--allow-lossy", is_flag=True, help="count channels removable with lossy folding as removable")
@click.option("--strict-mask", is_flag=True)
@click.option("--unequal-groups", type=click.Choice(UNEQUAL_GROUPS), default="auto", show_default=True, help="let a grouped Conv lose different numbers of channels per group (it is then split into Convs): always, never (extra dead channels stay), auto (where the cost table predicts it faster)")
@click.option("--no-chains", is_flag=True, help="keep dead channels whose constant zero padding or a live gate made input-dependent, instead of writing their run of channel-wise ops again for them (fewer nodes; can be faster at batch 1 when few channels go)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
def inspect_cmd(model, mask, allow_lossy, strict_mask, unequal_groups, no_chains, as_json) -> None:
    """Channel classes, dead channels per layer, what is removable and what blocks the rest."""
    from ltc.api import inspect_file
    from ltc.reporting.tables import print_inspect

    doc = inspect_file(model, mask, strict_mask, allow_lossy, unequal_groups, not no_chains)
    if as_json:
        _echo_json(doc)
    else:
        print_inspect(doc)


def _search_options(fn):
    from ltc.compressor.hparams import PruneHparams, TrainHparams, options

    return options(TrainHparams)(options(PruneHparams)(fn))


def _train_options(fn):
    from ltc.compressor.hparams import TrainHparams, options

    return options(TrainHparams)(fn)


@main.command("train")
@_train_options
@click.option("--data-dir", type=click.Path(file_okay=False), help="folder with the dataset's files")
@click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="root folder; the run folder inside is named by the hyperparameters")
@click.option("--progress/--no-progress", default=True, help="progress bar")
def train_cmd(data_dir, out, progress, **kwargs) -> None:
    """Train a dense model; writes a ticket.pt (all-ones masks, trained weights) and a JSONL log."""
    from ltc.api import train_file
    from ltc.compressor.hparams import TrainHparams, from_kwargs

    thp = from_kwargs(TrainHparams, kwargs)
    doc = train_file(thp, out, data_dir=data_dir, progress=progress)
    click.echo(f"early stop at iteration {doc['early_stop_iteration']}: test accuracy "
               f"{100 * doc['test_accuracy']:.2f}% (final {100 * doc['final_test_accuracy']:.2f}%, train "
               f"{100 * doc['final_train_accuracy']:.2f}%); ticket {doc['ticket']}; log {doc['log']}")


@main.command("ticket")
@_search_options
@click.option("--data-dir", type=click.Path(file_okay=False), help="folder with the dataset's files")
@click.option("--out", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="root folder; the run folder inside is named by the hyperparameters")
@click.option("--run-dir", type=click.Path(file_okay=False), help="use this run folder instead")
@click.option("--progress/--no-progress", default=True, help="progress bars")
def ticket_cmd(data_dir, out, run_dir, progress, **kwargs) -> None:
    """Find lottery tickets by one-shot or iterative magnitude pruning, with the paper's controls.

    Re-running the same command resumes after the last completed round.
    """
    import matplotlib  # noqa: F401 - the plots come at the end: a missing extra fails before training

    from ltc.api import find_tickets
    from ltc.compressor.hparams import PruneHparams, TrainHparams, from_kwargs
    from ltc.compressor.training import distributed
    from ltc.reporting.runs import summary_markdown

    thp = from_kwargs(TrainHparams, kwargs)
    php = from_kwargs(PruneHparams, kwargs)
    summary = find_tickets(thp, php, out, data_dir=data_dir, run_dir=run_dir, progress=progress)
    if distributed()[0] == 0:
        click.echo(summary_markdown(summary))
        click.echo(f"run folder: {summary['run_dir']}")


@main.command("export")
@click.argument("ticket", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Choice(["final", "init"]), default="final", show_default=True)
@click.option("--exporter", type=click.Choice(EXPORTERS), default="legacy", show_default=True)
@click.option("--opset", type=click.IntRange(13, 26), default=None,
              help="ONNX opset: legacy 13..20 (default 17), dynamo 18..26 (default 18)")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True)
@click.option("--fold-batchnorm", is_flag=True, help="fold BN into conv (BN masks then match nothing)")
@click.option("--max-memory", type=FiniteFloat(min=0, min_open=True), default=MAX_MEMORY_GIB, show_default=True, metavar="GIB",
              help="refuse a ticket whose model would need more memory to build and export (estimated first)")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="rebuild the model from this name instead of the ticket's (needed for path/to/file.py:function "
                   "models: ltc imports and runs a file only when you name it here)")
def export_cmd(ticket, output, weights, exporter, opset, dynamic_batch, fold_batchnorm, max_memory,
               model_spec) -> None:
    """Export a ticket's masked model to ONNX, initializers named as the ticket's parameters."""
    from ltc.api import export_file

    out = export_file(ticket, output, weights=weights, exporter=exporter, opset=opset,
                        dynamic_batch=dynamic_batch, fold_batchnorm=fold_batchnorm, max_memory=max_memory,
                        model_spec=model_spec)
    click.echo(f"wrote {out}; next: ltc compress {out} --mask {ticket} -o compressed.onnx")


@main.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--provider", "providers", multiple=True, default=["cpu"], show_default=True,
              type=click.Choice(tuple(BENCH_PROVIDERS)),
              help="cpu/cuda/tensorrt: ONNX Runtime execution providers; trt: native TensorRT (repeatable)")
@click.option("--batch", "batches", multiple=True, type=POSITIVE_INT, default=[1], show_default=True,
              help="batch size (repeatable: a sweep)")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="intra-op threads (0: ONNX Runtime's default)")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--iterations", type=POSITIVE_INT, default=20, show_default=True, help="timed runs per model per round")
@click.option("--rounds", type=POSITIVE_INT, default=5, show_default=True,
              help="interleaved rounds (A B A B ...); >= 2 to compare models")
@click.option("--time-budget", type=NON_NEGATIVE, default=0.0, help="seconds per model per round instead of --iterations")
@click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="all", show_default=True)
@click.option("--fp16", is_flag=True, help="fp16 where supported (TensorRT EP and native TensorRT)")
@click.option("--io-binding", is_flag=True, help="GPU: keep inputs/outputs on the device (copies not timed)")
@click.option("--profile", is_flag=True, help="per-operator profile (ONNX Runtime profiling)")
@click.option("--per-layer", is_flag=True,
              help="per-layer latency (ONNX Runtime profiling) of every model, charged to the first model's weight "
                   "layers, with each layer's MACs: which layers did not speed up as much as their MAC cut")
@click.option("--engine-cache", default=".ltc-trt-cache", show_default=True, type=click.Path(dir_okay=True, file_okay=False),
              help="TensorRT engine cache folder")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the report as JSON (schema v2)")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False), help="write the report as Markdown")
def bench_cmd(models, providers, batches, threads, warmup, iterations, rounds, time_budget, opt_level, fp16,
              io_binding, profile, per_layer, engine_cache, json_out, md_out) -> None:
    """Latency of one or more ONNX models, interleaved, compared as ratios to the first."""
    from ltc.api import bench_files
    from ltc.reporting.report import bench_markdown as markdown

    report = bench_files(models, providers=providers, batches=batches, threads=threads, warmup=warmup,
                         iterations=iterations, rounds=rounds, time_budget=time_budget, opt_level=opt_level, fp16=fp16,
                         io_binding=io_binding, profile=profile, per_layer=per_layer, engine_cache=engine_cache,
                         json_out=json_out, md_out=md_out)
    click.echo(markdown(report))


@main.command("report")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="ticket-search run folder (ltc ticket)")
@click.option("--bench", "benches", multiple=True, type=click.Path(dir_okay=False), help="ltc bench --json output (repeatable)")
@click.option("--compress", "compresses", multiple=True, type=click.Path(dir_okay=False),
              help="ltc compress --report output (repeatable): per-layer channel tables")
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False), help="also write Markdown (plots as PNG beside it)")
def report_cmd(run_dir, benches, compresses, output, md_out) -> None:
    """A self-contained HTML report (plots embedded) and Markdown, from runs and bench results."""
    from ltc.api import report_files

    written = report_files(run_dir, benches, compresses, output, md_out)
    click.echo("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
