"""Dataset registry: train / validation / test splits as tensors, loaded from local files only.

No loader downloads anything. ``digits`` ships inside scikit-learn and is the default; ``fashion-mnist``
and ``mnist`` read IDX files (gzipped or not); ``cifar10`` reads the python batches with an unpickler
that only rebuilds plain containers and numpy arrays; ``synthetic`` is for tests.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltc.errors import LtcError

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


def _split(name: str, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, val_size: int,
           classes: int, augment: bool = False, seed: int = 0) -> Splits:
    """Hold ``val_size`` examples out of train (fixed permutation), normalise by the train statistics."""
    if not 0 <= val_size < len(x):
        raise LtcError(f"--val-size {val_size} must be between 0 and {len(x) - 1} for {name}")
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


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise LtcError(f"{folder / stem}(.gz) not found; put the dataset's IDX files in {folder} or pass --data-dir "
                   "(Fashion-MNIST: apt-get install dataset-fashion-mnist)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; refuses anything that is not IDX."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise LtcError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LtcError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise LtcError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _idx_dataset(name: str) -> Callable[..., Splits]:
    def load(val_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> Splits:
        folder = Path(data_dir or DEFAULT_DIRS[name])
        if not folder.is_dir():
            hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
            raise LtcError(f"{folder}: no such folder for {name}; pass --data-dir with the IDX files{hint}")
        x = read_idx(_find(folder, "train-images-idx3-ubyte"))[:, None] / 255.0
        y = read_idx(_find(folder, "train-labels-idx1-ubyte"))
        tx = read_idx(_find(folder, "t10k-images-idx3-ubyte"))[:, None] / 255.0
        ty = read_idx(_find(folder, "t10k-labels-idx1-ubyte"))
        return _split(name, x, y, tx, ty, 5000 if val_size is None else val_size, 10, seed=seed)

    return load


class _SafeUnpickler(pickle.Unpickler):
    """Rebuild only what CIFAR-10 batches contain: dicts, lists, bytes, str, numbers, numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise LtcError(f"{path} not found; pass --data-dir with CIFAR-10's python batches (cifar-10-batches-py)")
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise LtcError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    return x, y


def load_cifar10(val_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> Splits:
    folder = Path(data_dir or DEFAULT_DIRS["cifar10"])
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
                 seed: int = 0) -> Splits:
    if name not in DATASETS:
        raise LtcError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](val_size=val_size, data_dir=str(data_dir) if data_dir else None, seed=seed)


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
