"""Defaults that several layers share (the CLI, the file API, the passes): one place, no imports."""

RTOL = 1e-4  # verification: an output passes when max|diff| <= ATOL + RTOL * max|output|
ATOL = 1e-5
MAX_MEMORY_GIB = 4.0  # ltc export: refuse a ticket whose model would need more memory to build and export
