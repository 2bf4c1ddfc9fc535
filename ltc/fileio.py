"""Atomic writes of text and JSON: a temp file beside the target, then a rename; never half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ltc.errors import LtcError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename; a one-line error if it cannot."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise LtcError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, doc, default=None) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, default=default))
