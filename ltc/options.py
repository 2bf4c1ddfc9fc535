"""Click parameter types that validate ranges while parsing, so ``--help`` shows them and a bad value
is a one-line error before any work starts."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float in a range that is neither NaN nor infinite (click's FloatRange lets NaN through)."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


class IntList(click.ParamType):
    """Comma-separated non-negative integers, e.g. ``1000,2000``; kept as the normalised string."""

    name = "ints"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            value = ",".join(str(v) for v in value)
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers (e.g. 1000,2000)", param, ctx)
        if any(n < 0 for n in numbers):
            self.fail(f"{value!r} has a negative entry", param, ctx)
        return ",".join(str(n) for n in numbers)


NON_NEGATIVE = FiniteFloat(min=0.0)
POSITIVE_INT = click.IntRange(min=1)
