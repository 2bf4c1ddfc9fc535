"""ltc: lottery tickets that are really smaller and faster at deployment."""

__version__ = "0.1.0"
