"""The ticket and its controls: one registry that the search, the plots and the report read.

Frankle & Carbin compare a winning ticket (the pruned mask, reset to the original initialisation)
with two controls: the same mask under a fresh random initialisation, and a random mask with the
same per-layer sparsity. Each variant's name is what ``--controls`` takes and what a run's
``summary.json`` keys its results by; the label, colour and line style are how plots and reports
show it. No heavy imports: the CLI builds its options from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # legend and table wording
    description: str  # --help wording
    color: str  # matplotlib colour
    linestyle: str
    control: bool  # False for the ticket itself


TICKET = Variant("ticket", "winning ticket", "the pruned mask, reset to its original initialisation",
                 "tab:blue", "-", control=False)
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    TICKET,
    Variant("reinit", "random reinit", "same mask, new init", "tab:orange", "--", control=True),
    Variant("random", "random pruning", "random mask, same per-layer sparsity", "tab:green", ":", control=True),
)}
CONTROLS: tuple[str, ...] = tuple(name for name, v in VARIANTS.items() if v.control)


def controls_help() -> str:
    """``--controls`` help text: every control with what it is."""
    return ("comma-separated controls: " + ", ".join(f"{n} ({VARIANTS[n].description})" for n in CONTROLS)
            + ", or none")
