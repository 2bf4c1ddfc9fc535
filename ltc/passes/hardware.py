"""Moved to :mod:`ltc.hardware` (kept so pipelines importing the old path keep working)."""

from ltc.hardware import PROVIDERS, cpu_flags, default_round_to

__all__ = ["PROVIDERS", "cpu_flags", "default_round_to"]
