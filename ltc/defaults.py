"""Defaults that several layers share (the CLI, the file API, the passes): one place, no imports."""

RTOL = 1e-4  # verification: an output passes when max|diff| <= ATOL + RTOL * max|output|
ATOL = 1e-5
