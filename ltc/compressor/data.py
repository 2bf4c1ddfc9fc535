"""Dataset registry: train / validation / test splits as tensors, loaded from local files only.

No loader downloads anything. ``digits`` ships inside scikit-learn and is the default; ``fashion-mnist``
and ``mnist`` read IDX files (gzipped or not); ``cifar10`` reads the python batches with an unpickler
that only rebuilds plain containers and numpy arrays; ``synthetic`` is for tests.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltc.errors import LtcError, first_line
from ltc.fileio import check_input_file

DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
    "cifar10": "cifar-10-batches-py",
}


@dataclass
class Splits:
    """Normalised float tensors [N, C, H, W] and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    augment: bool = False

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    # The training loop reads data only through these three (see :class:`DatasetSplits`).
    def n_train(self) -> int:
        return len(self.train_x)

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_x[idx], self.train_y[idx]

    def examples(self, split: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{split}_x")[idx], getattr(self, f"{split}_y")[idx]

    def train_batches(self, gen: torch.Generator, batch: int, rank: int = 0, world: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless seeded batches: a permutation per epoch, ``batch`` examples per step, this rank's slice."""
        for idx in epoch_batches(self.n_train(), gen, batch, rank, world):
            yield self.train_batch(idx)

    def eval_batches(self, split: str, batch: int = 1000, limit: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) of ``split`` (train, val or test) in order, the first ``limit`` examples."""
        x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
        n = len(x) if limit is None else min(limit, len(x))
        for i in range(0, n, batch):
            yield x[i:min(i + batch, n)], y[i:min(i + batch, n)]

    def n_eval(self, split: str) -> int:
        return len(getattr(self, f"{split}_x"))


def epoch_batches(n: int, gen: torch.Generator, batch: int, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """Endless indices: a seeded permutation of ``n`` per epoch, ``batch`` per step (a partial last step
    starts the next epoch), and this rank's slice of each global batch."""
    order, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + batch > len(order):
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos:pos + batch][rank::world]
        pos += batch


def _split(name: str, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, val_size: int,
           classes: int, augment: bool = False, seed: int = 0) -> Splits:
    """Hold ``val_size`` examples out of train (fixed permutation), normalise by the train statistics."""
    if not 0 <= val_size < len(x):
        raise LtcError(f"--val-size {val_size} must be between 0 and {len(x) - 1} for {name} ({len(x):,} training "
                       "examples); pass a smaller --val-size")
    perm = np.random.default_rng(seed).permutation(len(x))
    val, train = perm[:val_size], perm[val_size:]
    x = x.astype(np.float32)
    mean = x[train].mean(axis=(0, 2, 3), keepdims=True)
    std = x[train].std(axis=(0, 2, 3), keepdims=True) + 1e-8

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray((a.astype(np.float32) - mean) / std))

    def lab(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Splits(name, t(x[train]), lab(y[train]), t(x[val]), lab(y[val]), t(test_x), lab(test_y), classes, augment)


def load_digits(val_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> Splits:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images[:, None].astype(np.float32) / 16.0
    y = d.target
    perm = np.random.default_rng(1234).permutation(len(x))  # fixed test split of 360 images
    test, rest = perm[:360], perm[360:]
    return _split("digits", x[rest], y[rest], x[test], y[test], 144 if val_size is None else val_size, 10,
                  seed=seed)


# IDX files hold unsigned bytes; refuse headers that declare more than this before reading them.
MAX_IDX_BYTES = 2**31
_GZIP_MAGIC = b"\x1f\x8b"
_HINT = {"fashion-mnist": " (apt-get install dataset-fashion-mnist)"}


def _names(stem: str) -> list[str]:
    """MNIST's files go by ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``, each maybe .gz."""
    head, _, tail = stem.rpartition("-idx")
    dotted = f"{head}.idx{tail}"
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find(folder: Path, stem: str) -> Path:
    for candidate in _names(stem):
        path = folder / candidate
        if os.path.lexists(path):
            return check_input_file(path, "dataset file", f"put the dataset's IDX files in {folder} or pass --data-dir")
    raise LtcError(f"{folder / stem}(.gz) not found (nor {_names(stem)[2]}(.gz)); put the dataset's IDX files in "
                   f"{folder} or pass --data-dir (Fashion-MNIST: apt-get install dataset-fashion-mnist)")


def _read_exactly(f, n: int) -> bytes:
    """``n`` bytes from ``f`` in chunks (a lying header cannot make us allocate what is not there)."""
    chunks, got = [], 0
    while got < n:
        chunk = f.read(min(n - got, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_idx(path: Path, rank: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array; refuses anything else.

    The header is checked before the body is read: its rank (``rank`` if given), that no dimension is
    zero, that the declared size is at most :data:`MAX_IDX_BYTES` and equals what the file holds.
    """
    path = check_input_file(path, "dataset file")
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise LtcError(f"{path}: not an IDX file of unsigned bytes (the magic number is wrong); is this "
                               "the right file?")
            ndim = head[3]
            if rank is not None and ndim != rank:
                what = "images (count, rows, columns)" if rank == 3 else "labels (count)"
                raise LtcError(f"{path}: IDX file has {ndim} dimension(s), expected {rank} for {what}; are the "
                               "image and label files swapped?")
            if ndim == 0:
                raise LtcError(f"{path}: IDX file declares no dimensions")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise LtcError(f"{path}: truncated IDX header")
            dims = struct.unpack(">" + "I" * ndim, raw_dims)
            if 0 in dims:
                raise LtcError(f"{path}: IDX file declares an empty dimension {list(dims)}; the file holds no data")
            total = math.prod(dims)
            if total > MAX_IDX_BYTES:
                raise LtcError(f"{path}: IDX header declares {list(dims)} = {total:,} values, more than the "
                               f"{MAX_IDX_BYTES:,} ltc reads; the header is corrupt or this is not a dataset file")
            if not gz:
                stored = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
                if stored != total:
                    raise LtcError(f"{path}: IDX header declares {list(dims)} = {total:,} values but the file holds "
                                   f"{stored:,}; the file is truncated or corrupt")
            body = _read_exactly(f, total)
            extra = f.read(1)
    except LtcError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise LtcError(f"{path}: cannot read ({first_line(exc)}); is the file complete?") from None
    if len(body) < total:
        raise LtcError(f"{path}: truncated IDX file ({len(body):,} of {total:,} values)")
    if extra:
        raise LtcError(f"{path}: IDX file holds more data than its header declares {list(dims)}; the file is corrupt")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _labels(y: np.ndarray, x_count: int, classes: int, y_path: Path, x_path: Path) -> np.ndarray:
    if len(y) != x_count:
        raise LtcError(f"{y_path}: {len(y):,} labels for the {x_count:,} images of {x_path}; the files do not "
                       "belong together")
    if len(y) and int(y.max()) >= classes:
        raise LtcError(f"{y_path}: label {int(y.max())} is out of range for {classes} classes (0..{classes - 1}); "
                       "is this the right label file?")
    return y


def _idx_dataset(name: str) -> Callable[..., Splits]:
    def load(val_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> Splits:
        folder = Path(data_dir or DEFAULT_DIRS[name])
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "no such folder"
            raise LtcError(f"{folder}: {what} for {name}; pass --data-dir with the IDX files{_HINT.get(name, '')}")
        arrays = {}
        for split in ("train", "t10k"):
            xp = _find(folder, f"{split}-images-idx3-ubyte")
            yp = _find(folder, f"{split}-labels-idx1-ubyte")
            x = read_idx(xp, rank=3)
            y = _labels(read_idx(yp, rank=1), len(x), 10, yp, xp)
            arrays[split] = (x, y, xp)
        (x, y, xp), (tx, ty, txp) = arrays["train"], arrays["t10k"]
        if x.shape[1:] != tx.shape[1:]:
            raise LtcError(f"{txp}: test images are {tx.shape[1]}x{tx.shape[2]} but the training images of {xp} "
                           f"are {x.shape[1]}x{x.shape[2]}; the files do not belong together")
        return _split(name, x[:, None] / 255.0, y, tx[:, None] / 255.0, ty, 5000 if val_size is None else val_size,
                      10, seed=seed)

    return load


class _SafeUnpickler(pickle.Unpickler):
    """Rebuild only what CIFAR-10 batches contain: dicts, lists, bytes, str, numbers, numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        found = super().find_class(module, name)
        return _bounded(found) if name == "_reconstruct" else found


def _bounded(reconstruct):
    """numpy's ``_reconstruct`` allocates the shape it is given (numpy's own pickles pass an empty one
    and fill it from the pickled bytes); a forged shape must not allocate what the file does not hold."""

    def rebuild(subtype, shape, dtype):
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) > 1 << 16:
            raise pickle.UnpicklingError(f"refused an array of shape {shape!r} before its data")
        return reconstruct(subtype, shape, dtype)

    return rebuild


MAX_CIFAR_BATCH_BYTES = 2**30


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.lexists(path):
        raise LtcError(f"{path} not found; pass --data-dir with CIFAR-10's python batches (cifar-10-batches-py)")
    path = check_input_file(path, "CIFAR-10 batch", "pass --data-dir with CIFAR-10's python batches")
    if path.stat().st_size > MAX_CIFAR_BATCH_BYTES:
        raise LtcError(f"{path}: {path.stat().st_size:,} bytes is far more than a CIFAR-10 batch (30 MB); is this "
                       "the right file?")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise LtcError(f"{path}: not a CIFAR-10 python batch (expected a dict with data and labels)")
        x = np.asarray(d[b"data"])
        y = np.asarray(d[b"labels"])
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.dtype.kind not in "ui":
            raise LtcError(f"{path}: CIFAR-10 data must be [N, 3072] bytes, found {list(x.shape)} of {x.dtype}; is "
                           "this the right file?")
        if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
            raise LtcError(f"{path}: CIFAR-10 pixel values must be 0..255")
        if y.ndim != 1 or y.dtype.kind not in "ui" or len(y) != len(x):
            raise LtcError(f"{path}: {y.size} labels ({list(y.shape)} of {y.dtype}) for {len(x)} images; the batch is "
                           "corrupt")
        if len(x) == 0:
            raise LtcError(f"{path}: CIFAR-10 batch holds no images")
        if int(y.min()) < 0 or int(y.max()) >= 10:
            raise LtcError(f"{path}: label {int(y.max()) if int(y.max()) >= 10 else int(y.min())} is out of range "
                           "for the 10 classes (0..9)")
    except LtcError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling hostile bytes raises many kinds of error
        raise LtcError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {first_line(exc)})") from None
    return x.astype(np.uint8).reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_cifar10(val_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> Splits:
    folder = Path(data_dir or DEFAULT_DIRS["cifar10"])
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "no such folder"
        raise LtcError(f"{folder}: {what} for cifar10; pass --data-dir with CIFAR-10's python batches "
                       "(cifar-10-batches-py)")
    parts = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts]) / 255.0
    y = np.concatenate([p[1] for p in parts])
    tx, ty = _cifar_batch(folder / "test_batch")
    return _split("cifar10", x, y, tx / 255.0, ty, 5000 if val_size is None else val_size, 10, augment=True,
                  seed=seed)


def load_synthetic(val_size: int | None = None, data_dir: str | None = None, seed: int = 0,
                   n: int = 600, shape: tuple[int, ...] = (1, 8, 8), classes: int = 4) -> Splits:
    """Class-conditional Gaussian blobs: learnable in a few steps, for tests."""
    rng = np.random.default_rng(42)
    centers = rng.standard_normal((classes, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n + n // 4)
    x = centers[y] + 0.8 * rng.standard_normal((len(y), *shape)).astype(np.float32)
    return _split("synthetic", x[:n], y[:n], x[n:], y[n:], 60 if val_size is None else val_size, classes,
                  seed=seed)


DATASETS: dict[str, Callable[..., Splits]] = {
    "digits": load_digits,
    "fashion-mnist": _idx_dataset("fashion-mnist"),
    "mnist": _idx_dataset("mnist"),
    "cifar10": load_cifar10,
    "synthetic": load_synthetic,
}


def load_dataset(name: str, val_size: int | None = None, data_dir: str | os.PathLike | None = None,
                 seed: int = 0, channels: int = 0, image_size: int = 0) -> Splits:
    """A registered dataset or ``imagefolder:PATH``; images converted to ``channels`` and resized to
    ``image_size`` when those are given (see :func:`ltc.compressor.userdata.adapt_images`)."""
    from ltc.compressor.userdata import adapt_images, load_imagefolder

    if isinstance(name, str) and name.startswith("imagefolder:"):
        return load_imagefolder(name.partition(":")[2], val_size, seed, image_size, channels)
    if name not in DATASETS:
        raise LtcError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or imagefolder:PATH")
    data = DATASETS[name](val_size=val_size, data_dir=str(data_dir) if data_dir else None, seed=seed)
    return adapt_images(data, channels, image_size)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel zero padding) and horizontal flip, per example: the CIFAR standard."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[idx_n, idx_c, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
