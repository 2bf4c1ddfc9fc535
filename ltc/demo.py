"""`make demo`: export a built-in CNN, make a channel ticket for it, and run `ltc compress` on it.

Until ticket search lands (training on the embedded digits data), the ticket is a one-shot L1-norm
channel mask over the CNN's filters: the naive structured baseline, enough to show the compression.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import torch

from ltc.compressor.models import VGG
from ltc.compressor.ticket import make_ticket, save_ticket
from ltc.exporters.torch_export import export_onnx

CFG = [32, 32, "M", 64, 64, "M", 128, 128, "M"]


def l1_channel_masks(model: VGG, fraction: float) -> dict[str, torch.Tensor]:
    """Per conv layer, mask out ``fraction`` of the filters with the smallest L1 norm (and their BN)."""
    names = {id(p): n for n, p in model.named_parameters()}
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for conv, bn in model.channel_layers().values():
        norms = conv.weight.detach().abs().flatten(1).sum(1)
        dead = norms.argsort()[: int(len(norms) * fraction)]
        for p in (conv.weight, bn.weight, bn.bias):
            masks[names[id(p)]][dead] = False
    return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out", help="folder for the demo's files")
    parser.add_argument("--fraction", type=float, default=0.5, help="fraction of filters to prune per layer")
    args = parser.parse_args(argv)
    logging.getLogger("torch").setLevel(logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = VGG(cfg=CFG, image=32).eval()
    with torch.no_grad():  # trained-looking BN statistics so that the dead channels' constants matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    masks = l1_channel_masks(model, args.fraction)
    with torch.no_grad():  # the ticket's weights are the masked ones; ltc export writes those
        for name, p in model.named_parameters():
            p.mul_(masks[name])
    ticket = make_ticket("vgg", {"cfg": CFG, "image": 32}, masks, model.state_dict(), model.state_dict(),
                         structure={"kind": "channel", "fraction": args.fraction})
    save_ticket(ticket, out / "ticket.pt")
    export_onnx(model, out / "model.onnx", model.input_shape, exporter="dynamo")
    print(f"exported a {len(CFG) - CFG.count('M')}-conv VGG-style CNN to {out / 'model.onnx'}; "
          f"channel ticket ({args.fraction:.0%} of filters by L1 norm) in {out / 'ticket.pt'}\n")

    command = ["compress", str(out / "model.onnx"), "--mask", str(out / "ticket.pt"),
               "-o", str(out / "compressed.onnx"), "--report", str(out / "compress-report.json")]
    print("$ ltc " + " ".join(command), flush=True)
    result = subprocess.run([sys.executable, "-m", "ltc.cli", *command], check=False)
    if result.returncode == 0:
        print(f"\ncompressed model: {out / 'compressed.onnx'}; JSON report: {out / 'compress-report.json'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
