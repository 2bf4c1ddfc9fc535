"""Shared checks for bad-input tests: exit code, one line naming the problem, no traceback, nothing
written, inputs untouched."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from click.testing import CliRunner

from ltc.cli import main

# The line ltc prints before it imports a --model file.py (not an error: the user is told their code runs)
IMPORT_NOTICE = "ltc: importing and running "


def digest(paths) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), symlinks not followed."""
    out = {}
    for p in paths:
        p = Path(p)
        files = [f for f in p.rglob("*")] if p.is_dir() else [p]
        for f in files:
            if f.is_symlink():
                out[str(f)] = "link->" + str(f.readlink())
            elif f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def refused(args: list, pattern: str, *, watch=(), code: int = 1, env: dict | None = None) -> str:
    """Run ``ltc ARGS``; assert exit ``code``, one ``error:`` line matching ``pattern`` (a regex),
    no traceback, and that nothing under the ``watch`` folders/files changed (no file written,
    no input modified). Returns the message."""
    before_hash = digest(watch)
    before_files = {str(w): listing(w) for w in watch if Path(w).is_dir()}
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    out = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}: {out!r} {result.exception!r}"
    assert "Traceback" not in out, out
    lines = [line for line in out.strip().splitlines() if line.strip() and not line.startswith(IMPORT_NOTICE)]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert re.search(pattern, lines[0], re.IGNORECASE), f"{pattern!r} not in {lines[0]!r}"
    assert digest(watch) == before_hash, "an input or an existing file changed"
    for w, names in before_files.items():
        assert listing(w) == names, f"files appeared or vanished in {w}: {listing(w) ^ names}"
    if os.environ.get("LTC_SHOW_ERRORS"):
        print("\nMSG", lines[0])
    return lines[0]
