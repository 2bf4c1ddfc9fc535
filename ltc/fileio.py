"""Every file ltc writes goes through here: inputs are checked, outputs are planned, writes are atomic.

- :func:`check_input_file` refuses what is not a regular file (a FIFO would hang, ``/dev/zero`` would
  fill memory) before anything reads it.
- :func:`check_outputs` compares every file a command will write with every file it reads, after
  resolving symlinks (and by inode), before anything is written: ltc never writes over or through an
  input.
- :func:`atomic_path` gives a temporary name created with exclusive creation and an unpredictable name
  in the target folder, then renames it over the target (a rename never follows a symlink at the
  target) with the permissions the user's umask asks for. On any failure the temporary is removed.
- :func:`sniff` says what a file holds from its first bytes; :func:`load_torch_data` reads a .pt file
  with ``weights_only=True`` (tensors and plain containers only).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ltc.defaults import MAX_MEMORY_GIB
from ltc.errors import LtcError, first_line

PathLike = str | os.PathLike


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_file(path: PathLike, what: str = "file", hint: str = "") -> Path:
    """``path`` exists and is a regular file (symlinks to one are fine); a one-line error otherwise."""
    path = Path(path)
    way = f"; {hint}" if hint else ""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LtcError(f"{path}: no such file (expected the {what}){way}") from None
    except OSError as exc:
        raise LtcError(f"{path}: cannot read {what} ({exc.strerror or exc}){way}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LtcError(f"{path}: is {_kind(st.st_mode)}, not a regular {what}{way}")
    if not os.access(path, os.R_OK):
        raise LtcError(f"{path}: {what} is not readable (permission denied)")
    return path


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """The resolved path, and (device, inode) when the file exists."""
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop (RuntimeError before Python 3.13), NUL
        raise LtcError(f"{path}: cannot resolve the path ({first_line(exc)}); is it a symlink loop?") from None
    try:
        st = resolved.stat()
        return resolved, (st.st_dev, st.st_ino)
    except OSError:
        return resolved, None


# The longest file name whose temporary (".NAME.XXXXXXXX.tmp", see _atomic) still fits in NAME_MAX.
_MAX_NAME = 255 - len("..XXXXXXXX.tmp")


def _expand(paths: Iterable[PathLike | None]) -> list[Path]:
    """Input paths, with the files inside any input folder (a run folder, an image folder)."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        try:
            if p.is_dir():
                out.extend(f for f in p.rglob("*") if f.is_file())
                continue
        except (OSError, ValueError) as exc:
            raise LtcError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        out.append(p)
    return out


def check_outputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None]) -> list[Path]:
    """Refuse, before anything is written, any output that is an input, another output, a directory,
    or in a folder that does not exist or cannot be written. Returns the outputs as paths."""
    sources = [(p, *_identity(p)) for p in _expand(inputs)]
    planned: list[tuple[Path, Path, tuple[int, int] | None]] = []
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        if len(os.fsencode(out.name)) > _MAX_NAME:
            raise LtcError(f"{out.name[:40]}...: the output file name is {len(os.fsencode(out.name))} bytes long; "
                           f"ltc writes through a temporary beside it and needs names of at most {_MAX_NAME} bytes")
        resolved, ident = _identity(out)
        for src, src_resolved, src_ident in sources:
            if resolved == src_resolved or (ident is not None and ident == src_ident):
                raise LtcError(f"{out}: this output would overwrite the input {src}; choose another output "
                               "path (ltc never writes over its inputs)")
        for other, other_resolved, other_ident in planned:
            if resolved == other_resolved or (ident is not None and ident == other_ident):
                raise LtcError(f"{out}: the same file is asked for two outputs ({other} and {out}); give "
                               "each output its own path")
        try:
            is_dir, parent_ok = resolved.is_dir(), resolved.parent.is_dir()
        except OSError as exc:
            raise LtcError(f"{out}: not a usable output path ({exc.strerror or exc})") from None
        if is_dir:
            raise LtcError(f"{out}: is a directory; give a file path for the output")
        parent = resolved.parent
        if not parent_ok:
            raise LtcError(f"{out}: directory {out.parent} does not exist; create it or choose another path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise LtcError(f"{out}: directory {out.parent} is not writable; choose another path")
        planned.append((out, resolved, ident))
    return [p[0] for p in planned]


@functools.cache
def _umask_mode() -> int:
    """0o666 less the umask; read once (reading it means setting it, which is process-wide)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic(path: PathLike) -> Iterator[tuple[int, Path]]:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise LtcError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    tmp_path = Path(tmp)
    try:
        yield fd, tmp_path
        os.chmod(tmp_path, _umask_mode())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise LtcError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (for writers that need a path); on success it is
    renamed over ``path``.

    The temporary is created exclusively (``mkstemp``), so a file or symlink planted beside the
    output is never followed; the final file gets the umask's permissions, not mkstemp's 0600; the
    rename replaces a symlink at ``path`` instead of writing through it.
    """
    with _atomic(path) as (_fd, tmp):
        yield tmp


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator:
    """Yield a binary file open on the exclusive temporary itself; on success it becomes ``path``."""
    with _atomic(path) as (fd, _tmp), os.fdopen(os.dup(fd), "wb") as f:
        yield f


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_all_atomic(files: dict[PathLike, bytes]) -> None:
    """Write several files as one step: every temporary is written before the first rename, so a
    failure (a full disk, a signal) leaves none of them."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            stack.enter_context(atomic_file(path)).write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through an exclusive temp file and a rename; never half a file."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: PathLike, doc, default=None) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, default=default))


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def out_of_memory(path: PathLike, what: str) -> LtcError:
    """The one-line error for a user's file that ran this machine out of memory while it was read (a
    bad input, exit 1, not a fault of ltc)."""
    return LtcError(f"{path}: reading this {what} ran out of memory; is it really a {what}? (a file this "
                    "large needs a machine with more memory)")


def load_npz(path: PathLike, what: str) -> dict:
    """Arrays of an .npz (name -> numpy array): no pickles, each array's declared size checked against
    the archive before it is allocated (a forged header cannot make ltc allocate terabytes)."""
    import math

    import numpy as np

    path = check_input_file(path, what)
    total = 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise LtcError(f"{path}: member '{info.filename}' is not a .npy array; an .npz {what} holds "
                                   "only arrays (numpy.savez)")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = read_header(f)
                    header = f.tell()
                if dtype.hasobject:
                    raise LtcError(f"{path}: '{info.filename}' holds Python objects; save plain numeric arrays")
                declared = math.prod(shape) * dtype.itemsize
                stored = info.file_size - header
                total += declared
                if total > _memory_bytes() // 2:
                    raise LtcError(f"{path}: the arrays declare {total:,} bytes up to '{info.filename[:-4]}', more "
                                   "than half of this machine's memory; refused")
                if declared > stored:
                    raise LtcError(f"{path}: array '{info.filename[:-4]}' declares {declared:,} bytes but the "
                                   f"archive holds {stored:,}; the file is corrupt or forged")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except LtcError:
        raise
    except MemoryError:
        raise out_of_memory(path, what) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise LtcError(f"{path}: not a readable .npz {what} ({first_line(exc)})") from None


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes: torch, npz, onnx, npy, text or unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise LtcError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "broken zip"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz" if any(n.endswith(".npy") for n in names) else "zip"
    if head[:1] == b"\x80":  # a pickle protocol header: torch's legacy (non-zip) format
        return "torch"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] == b"\x08" and b"\x12" in head[:64]:  # ir_version then producer/graph: an ONNX protobuf
        return "onnx"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return "text"
    return "unknown"


def not_torch(kind: str) -> str:
    return {"onnx": "is an ONNX model, not a mask or ticket file (the model is the first argument)",
            "npy": "is a single .npy array; save the masks with numpy.savez as {name: mask}",
            "broken zip": "is a damaged zip archive (truncated download?)",
            "zip": "is a zip archive holding neither a torch file nor .npy arrays",
            "text": "is a text file, not a torch or .npz file",
            }.get(kind, "is neither a torch file (.pt) nor an .npz archive")


def load_torch_data(path: Path, what: str = "torch file"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, a one-line error otherwise.
    Every tensor in it is checked (:func:`check_tensors`) before anything copies one."""
    path = check_input_file(path, what)
    kind = sniff(path)
    if kind != "torch":
        raise LtcError(f"{path}: {not_torch(kind)}; pass a {what} saved with torch.save")
    try:
        import torch
    except ImportError:
        raise LtcError(f"{path}: reading a .pt {what} needs torch (pip install 'ltc[torch]'); masks can "
                       "also be given as .npz") from None
    try:
        with warnings.catch_warnings():  # torch warns about some tensor kinds; the checks below say more
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise out_of_memory(path, what) from None
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise LtcError(f"{path}: refused: the file contains pickled Python objects, not only tensors "
                           "(loaded with weights_only=True); save plain tensors and dicts") from None
        raise LtcError(f"{path}: not a readable {what} ({first_line(exc)}); is the file complete?") from None
    check_tensors(obj, path, what)
    return obj


def check_tensors(obj, path: Path, what: str = "torch file",
                  max_bytes: int = int(MAX_MEMORY_GIB * (1 << 30))) -> None:
    """Walk ``obj`` (dicts, lists, tuples, nested; in order, each container once) and refuse, naming it,
    any tensor that claims more than ``max_bytes`` (its shape's product times its element size; all
    tensors together too) or whose view reaches outside its storage. A view over a small storage with
    zero strides is legal torch and cheap to load, yet claims 2^40 elements: ``.numpy().astype(bool)``
    or ``.clone()`` would then try to allocate them all."""
    import torch

    limit = f"{max_bytes / (1 << 30):g} GiB" if max_bytes >= 1 << 30 else f"{max_bytes:,} bytes"
    total = 0
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [("", obj)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, dict | list | tuple):
            if id(item) in seen:
                continue
            seen.add(id(item))
            entries = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend(reversed([(f"{name}/{key}" if name else str(key), value) for key, value in entries]))
            continue
        if not isinstance(item, torch.Tensor):
            continue
        where = f"{path}: tensor '{name or '(top level)'}'"
        shape = tuple(item.shape)
        nbytes = math.prod(shape) * item.element_size()
        total += nbytes
        if nbytes > max_bytes or total > max_bytes:
            claim = f"claims {math.prod(shape):,} elements ({nbytes:,} bytes)" if nbytes > max_bytes else \
                f"brings the tensors to {total:,} bytes"
            raise LtcError(f"{where} {claim}, over the limit of {limit} that ltc reads from a {what}; the "
                           f"file is forged or not a {what}: save real, contiguous tensors "
                           "(tensor.contiguous().clone())")
        if item.layout != torch.strided or math.prod(shape) == 0:
            continue  # no storage to check (sparse tensors are refused by the readers that get one)
        last = item.storage_offset() + sum((n - 1) * step for n, step in zip(shape, item.stride(), strict=True))
        if (last + 1) * item.element_size() > item.untyped_storage().nbytes():  # torch checks it too, today
            raise LtcError(f"{where}: its shape {list(shape)}, strides {list(item.stride())} and offset "
                           f"{item.storage_offset()} reach past its storage of {item.untyped_storage().nbytes():,} "
                           f"bytes; the file is corrupt or forged: save it again with torch.save")
