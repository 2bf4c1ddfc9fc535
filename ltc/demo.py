"""`make demo`: the whole pipeline on the embedded digits data, in a few minutes on 2 cores.

1. ltc ticket: train Conv-4 on digits, find a channel-structured ticket over 3 rounds (+ reinit control),
   and a group-wise ticket (IMP + regroup) over 2 rounds
2. ltc export: the dense network (round 0) and both tickets
3. ltc compress: physically remove the channel ticket's dead channels; turn the group ticket's blocks
   into grouped convolutions; both verified
4. ltc bench: dense vs ticket (zeros only) vs both compressed models, interleaved, ONNX Runtime CPU
5. ltc report: HTML + Markdown
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltc.errors import LtcError


def _step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(out: Path, rounds: int = 3, iterations: int = 300) -> Path:
    from ltc.api import bench_files, compress_file, export_file, find_tickets, report_files
    from ltc.compressor.hparams import PruneHparams, TrainHparams
    from ltc.reporting.report import bench_markdown as markdown
    from ltc.reporting.runs import summary_markdown
    from ltc.reporting.tables import print_compress

    out.mkdir(parents=True, exist_ok=True)
    thp = TrainHparams(model="conv4", dataset="digits", optimizer="adam", lr=1e-3, batch_size=60,
                       iterations=iterations, eval_every=50)
    php = PruneHparams(strategy="channel", rounds=rounds, rate_conv=0.3, rate_fc=0.3, controls="reinit")
    _step(f"ltc ticket --model conv4 --dataset digits --iterations {iterations} --eval-every 50 --lr 0.001 "
          f"--strategy channel --rounds {rounds} --rate-conv 0.3 --rate-fc 0.3 --controls reinit --out {out / 'runs'}")
    summary = find_tickets(thp, php, out / "runs", progress=True)
    print(summary_markdown(summary))
    trial = Path(summary["run_dir"]) / "trial0"

    _step(f"ltc export (dense round 0 and the round-{rounds} ticket)")
    dense = export_file(trial / "ticket_round0.pt", out / "round0.onnx") if not (out / "round0.onnx").exists() \
        else out / "round0.onnx"
    last = trial / f"ticket_round{rounds}.pt"
    ticket = out / f"round{rounds}.onnx"
    if not ticket.exists():
        export_file(last, ticket)
    print(f"{dense}\n{ticket}")

    compressed = out / f"round{rounds}-compressed.onnx"
    _step(f"ltc compress {ticket} --mask {last} -o {compressed} --report {out / 'compress.json'}")
    compressed.unlink(missing_ok=True)
    doc = compress_file(ticket, compressed, last, report=out / "compress.json")
    print_compress(doc)

    gthp = PruneHparams(rounds=2, rate_conv=0.5, rate_fc=0.5, controls="none", structure="regroup")
    _step(f"ltc ticket --model conv4 --dataset digits --iterations {iterations} --eval-every 50 --lr 0.001 "
          f"--structure regroup --rounds 2 --rate-conv 0.5 --rate-fc 0.5 --controls none --out {out / 'runs'}")
    gsummary = find_tickets(thp, gthp, out / "runs", progress=True)
    print(summary_markdown(gsummary))
    glast = Path(gsummary["run_dir"]) / "trial0" / "ticket_round2.pt"
    gticket = out / "round2-group.onnx"
    if not gticket.exists():
        export_file(glast, gticket)
    grouped = out / "round2-group-compressed.onnx"
    _step(f"ltc compress {gticket} --mask {glast} -o {grouped} --report {out / 'compress-group.json'}"
          "   (a group ticket: --regroup is on)")
    grouped.unlink(missing_ok=True)
    print_compress(compress_file(gticket, grouped, glast, report=out / "compress-group.json"))

    _step(f"ltc bench {dense.name} {ticket.name} {compressed.name} {grouped.name} --batch 1 --batch 32 "
          "--rounds 5 --threads 2")
    report = bench_files([dense, ticket, compressed, grouped], batches=(1, 32), threads=2, rounds=5, iterations=20,
                         warmup=5, profile=True, json_out=out / "bench.json")
    print(markdown(report))

    _step(f"ltc report --run {summary['run_dir']} --bench {out / 'bench.json'} --compress {out / 'compress.json'} "
          f"--compress {out / 'compress-group.json'}")
    report_files(summary["run_dir"], [out / "bench.json"], [out / "compress.json", out / "compress-group.json"],
                 out / "report.html", out / "report.md")
    print(f"\nreport: {(out / 'report.html').resolve()}  (Markdown: {(out / 'report.md').resolve()})")
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out", help="folder for the demo's files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args(argv)
    try:
        run(Path(args.out), args.rounds, args.iterations)
    except LtcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
