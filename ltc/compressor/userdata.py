"""A user's data for the ticket search: torch Datasets, DataLoaders or (inputs, labels) arrays, and image
folders (one sub-folder per class).

:class:`DatasetSplits` offers what the training loop reads (:class:`ltc.compressor.data.Splits` offers the
same over in-memory tensors): seeded training batches sliced per rank, and evaluation batches in order.
Examples are (input, label) pairs; inputs are taken as they come (no normalisation: that is the user's
transform's job).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ltc.compressor.usercode import guard
from ltc.errors import LtcError, first_line
from ltc.fileio import check_input_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_IMAGES = 1_000_000
MAX_IMAGE_PIXELS = 50_000_000  # per image: a decompression bomb is refused before it is decoded


def _collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import default_collate

    return tuple(default_collate(samples))[:2]


class DatasetSplits:
    """Train/val/test from torch Datasets (map-style for training) or DataLoaders (their dataset,
    ``collate_fn`` and ``num_workers`` are used; their sampler is not: ltc draws its own seeded order)."""

    augment = False

    def __init__(self, name: str, train, val, test=None, classes: int | None = None) -> None:
        self.name = name
        self.sources = {"train": train, "val": val, "test": test if test is not None else val}
        self.test_is_val = test is None
        self.train = _map_style(train, "train")
        self.collate = getattr(train, "collate_fn", None) or _collate
        self.workers = int(getattr(train, "num_workers", 0) or 0)
        first = self._sample(0)
        self._in_shape = tuple(first[0].shape)
        self.classes = classes

    def _sample(self, i: int):
        with _reading(f"train[{i}]"):
            s = self.train[i]
        if not isinstance(s, (tuple, list)) or len(s) < 2 or not hasattr(s[0], "shape"):
            raise LtcError(f"train[{i}] is a {type(s).__name__}; ltc.search needs (input, label) pairs with a "
                           "tensor or array input")
        return s

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self._in_shape

    def n_train(self) -> int:
        with _reading("train data: len()"):
            return len(self.train)

    def train_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.examples("train", idx)

    def examples(self, split: str, idx: torch.Tensor) -> tuple:
        """(inputs, labels) of examples ``idx`` of ``split``; () for a split that cannot be indexed."""
        if split == "train":
            samples = [self._sample(int(i)) for i in idx]
        else:
            src = self.sources[split]
            ds = getattr(src, "dataset", src)
            if not hasattr(ds, "__getitem__"):
                return ()
            with _reading(f"{split} data: reading an example"):
                samples = [ds[int(i)] for i in idx]
        with _reading(f"{split} data: collating a batch"):
            batch = tuple(self.collate(samples))
        if len(batch) < 2:
            raise LtcError(f"{split}: a batch collates to {len(batch)} item(s); ltc.search needs (input, label)")
        return batch[:2]

    def n_eval(self, split: str) -> int:
        src = self.sources[split]
        ds = getattr(src, "dataset", src)
        with _reading(f"{split} data: len()"):
            try:
                return len(ds)
            except TypeError:  # no len(): an iterable dataset
                return 0

    def train_batches(self, gen: torch.Generator, batch: int, rank: int = 0, world: int = 1
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless seeded batches: a permutation per epoch, ``batch`` examples per step, this rank's slice."""
        from torch.utils.data import DataLoader

        from ltc.compressor.data import epoch_batches

        order_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        index_lists = (idx.tolist() for idx in epoch_batches(self.n_train(), order_gen, batch, rank, world))

        while True:  # one DataLoader over an endless sampler: workers keep their state between steps
            loader = DataLoader(self.train, batch_sampler=index_lists, collate_fn=self.collate,
                                num_workers=self.workers)
            yield from _batches(loader, "train")

    def eval_batches(self, split: str, batch: int = 256, limit: int | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        src = self.sources[split]
        loader = src if isinstance(src, DataLoader) else DataLoader(src, batch_size=batch, shuffle=False,
                                                                     collate_fn=self.collate)
        seen = 0
        for x, y in _batches(loader, split):
            if limit is not None and seen + len(x) > limit:
                x, y = x[:limit - seen], y[:limit - seen]
            if len(x) == 0:
                return
            yield x, y
            seen += len(x)
            if limit is not None and seen >= limit:
                return


def _reading(what: str):
    """Where the user's dataset (or its collate_fn) runs: what it raises is one line that begins with ``what``."""
    return guard(what, "fix the dataset and run again")


_END = object()


def _batches(loader, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) of each batch of ``loader``; a failure of the user's dataset is one line."""
    with _reading(f"{split} data: reading a batch"):
        batches = iter(loader)
    while True:
        with _reading(f"{split} data: reading a batch"):
            batch = next(batches, _END)
            if batch is _END:
                return
            x, y, *_ = batch
        yield x, y  # outside the guard: what the consumer throws in here is not the dataset's


def _map_style(src, split: str):
    from torch.utils.data import DataLoader, IterableDataset

    ds = src.dataset if isinstance(src, DataLoader) else src
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise LtcError(f"{split}: a {type(ds).__name__} cannot be indexed; the training data must be a map-style "
                       "Dataset (len and [i]) or a DataLoader over one, so that ltc can draw seeded batches")
    with _reading(f"{split} data: len()"):
        n = len(ds)
    if n == 0:
        raise LtcError(f"{split}: the dataset is empty")
    return ds


def _as_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    try:
        return torch.from_numpy(np.ascontiguousarray(a))
    except (TypeError, ValueError) as exc:
        raise LtcError(f"{what}: not an array ({first_line(exc)})") from None


def _pair(p, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) arrays as tensors: float inputs as float32, integer labels as int64."""
    x, y = _as_tensor(p[0], f"{split} inputs"), _as_tensor(p[1], f"{split} labels")
    if len(x) != len(y):
        raise LtcError(f"{split}: {len(x)} inputs but {len(y)} labels")
    if x.is_floating_point():
        x = x.to(torch.float32)
    return x, (y.to(torch.int64) if not y.is_floating_point() else y)


def _is_pair(p) -> bool:
    return isinstance(p, (tuple, list)) and len(p) == 2


def user_splits(train, val, test=None, name: str = "custom"):
    """The search's data from what a user passes: (inputs, labels) pairs of arrays or tensors become
    in-memory :class:`~ltc.compressor.data.Splits`; Datasets and DataLoaders a :class:`DatasetSplits`
    (where some splits are Datasets and others pairs of arrays, the pairs become TensorDatasets)."""
    from torch.utils.data import TensorDataset

    from ltc.compressor.data import Splits

    if val is None:
        raise LtcError("val is required: early stopping and the reported accuracy read the validation set")
    parts = [train, val, test]
    if all(p is None or _is_pair(p) for p in parts):
        arrays = {split: _pair(p, split) for split, p in
                  zip(("train", "val", "test"), (train, val, test if test is not None else val), strict=True)}
        if len(arrays["train"][0]) == 0:
            raise LtcError("train: no examples")
        classes = int(max(int(arrays[s][1].max()) for s in arrays if len(arrays[s][1])) + 1) \
            if not arrays["train"][1].is_floating_point() else 0
        return Splits(name, *arrays["train"], *arrays["val"], *arrays["test"], classes)
    train, val, test = (TensorDataset(*_pair(p, split)) if _is_pair(p) and all(hasattr(t, "shape") for t in p)
                        else p for split, p in zip(("train", "val", "test"), parts, strict=True))
    return DatasetSplits(name, train, val, test)


FINGERPRINT_EXAMPLES = 64


def fingerprint(data) -> str:
    """A short hash of what identifies a user's data for a run folder: split sizes, the input shape, every
    label of in-memory data, and (inputs and labels of) up to 64 evenly spaced examples of each split,
    read under fixed seeds (so a random transform gives the same hash every time and on every rank)."""
    import random

    h = hashlib.sha256()
    h.update(repr((data.n_train(), data.n_eval("val"), data.n_eval("test"), tuple(data.in_shape))).encode())
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    try:
        for split in ("train", "val", "test"):
            n = data.n_train() if split == "train" else data.n_eval(split)
            if n == 0:
                continue
            idx = torch.unique(torch.linspace(0, n - 1, min(n, FINGERPRINT_EXAMPLES)).round().long())
            for t in data.examples(split, idx):
                if isinstance(t, torch.Tensor):
                    h.update(t.detach().cpu().contiguous().numpy().tobytes())
            labels = getattr(data, f"{split}_y", None)
            if isinstance(labels, torch.Tensor):
                h.update(labels.numpy().tobytes())
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# Image folders: ROOT/<class>/<image>, or ROOT/train/<class>/... with ROOT/test (or val) beside it


def _class_folders(root: Path) -> list[Path]:
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError as exc:
        raise LtcError(f"{root}: cannot read the image folder ({exc.strerror or exc})") from None
    return subs


def _images(folder: Path, root: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), sorted; links leading outside ``root`` are skipped."""
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in sorted(files):
            p = Path(dirpath) / f
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError) as exc:  # a loop is a RuntimeError before Python 3.13
                what = "a dangling symbolic link" if isinstance(exc, FileNotFoundError) else \
                    f"a link that cannot be resolved ({first_line(exc)}; a symlink loop?)"
                raise LtcError(f"{p}: is {what}; remove it from the image folder") from None
            if real != root and root not in real.parents:
                continue  # ltc reads only inside the folder it was given
            # a FIFO would block the decoder forever, a device never end: only regular files are read
            check_input_file(p, "image file", "remove it from the image folder")
            out.append(p)
            if len(out) > MAX_IMAGES:
                raise LtcError(f"{folder}: more than {MAX_IMAGES:,} images; ltc loads an image folder into memory, "
                               "use the Python API with a Dataset for larger data")
    return sorted(out)


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise LtcError(f"{path}: {im.width}x{im.height} pixels is over the {MAX_IMAGE_PIXELS:,} ltc decodes; "
                               "is it an image of the dataset?")
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except LtcError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged image file raises many kinds of error
        raise LtcError(f"{path}: cannot decode the image ({type(exc).__name__}: {first_line(exc)}); remove it or "
                       "fix it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _list_split(root: Path, folder: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    subs = _class_folders(folder)
    names = [p.name for p in subs]
    if classes is None:
        classes = names
    elif names != classes:
        raise LtcError(f"{folder}: class folders {names[:5]} differ from the training split's {classes[:5]}; each "
                       "split needs the same class sub-folders")
    files = [(p, label) for label, sub in enumerate(subs) for p in _images(sub, root)]
    if not files:
        raise LtcError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders; expected "
                       f"{folder}/<class>/<image>")
    return files, classes


def _load_split(files: list[tuple[Path, int]], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, (p, _) in enumerate(files):
        x[i] = _load_image(p, size, channels)
    return x, np.asarray([label for _, label in files], dtype=np.int64)


MAX_FOLDER_BYTES = 8 * 2**30


def load_imagefolder(path: str, val_size: int | None = None, seed: int = 0, image_size: int = 0,
                     channels: int = 0):
    """An image folder as :class:`~ltc.compressor.data.Splits`, images resized to ``image_size`` (default
    32) and converted to ``channels`` (1 grey, 3 RGB; default 3). ``PATH/train`` beside ``PATH/test`` (or
    ``val``) are the splits; otherwise PATH holds the class folders and a fixed fifth of the images is the
    test split. The files are counted and the memory estimated before any image is decoded."""
    from ltc.compressor.data import _split

    root = Path(path)
    if not root.is_dir():
        raise LtcError(f"{root}: {'is not a folder' if root.exists() else 'no such folder'}; --dataset "
                       "imagefolder:PATH needs a folder with one sub-folder of images per class")
    root = root.resolve()
    size, channels = image_size or 32, channels or 3
    if channels not in (1, 3):
        raise LtcError(f"--channels {channels}: an image folder is read as 1 (grey) or 3 (RGB) channels")
    split_dirs = [n for n in ("train", "test", "val") if (root / n).is_dir()]
    if split_dirs:
        if "train" not in split_dirs or len(split_dirs) < 2:
            raise LtcError(f"{root}: has {'/, '.join(split_dirs)}/ but not both train/ and test/ (or val/); add the "
                           "missing split, or put the class folders directly in the folder")
        files, classes = _list_split(root, root / "train", None)
        test_files, _ = _list_split(root, root / ("test" if "test" in split_dirs else "val"), classes)
    else:
        files, classes = _list_split(root, root, None)
        perm = np.random.default_rng(1234).permutation(len(files))
        n_test = max(1, len(files) // 5)
        if len(files) - n_test < 2:
            raise LtcError(f"{root}: {len(files)} images are too few to hold out a test split; add images")
        test_files = [files[i] for i in perm[:n_test]]
        files = [files[i] for i in perm[n_test:]]
    n = len(files) + len(test_files)
    need = n * channels * size * size * 9  # uint8 images, float32 while normalising, float32 splits
    if n > MAX_IMAGES or need > MAX_FOLDER_BYTES:
        raise LtcError(f"{root}: {n:,} images at {channels}x{size}x{size} need about {need / 2**30:.1f} GiB; ltc loads "
                       "an image folder into memory: choose a smaller --image-size, or use ltc.search with a Dataset")
    x, y = _load_split(files, size, channels)
    tx, ty = _load_split(test_files, size, channels)
    val = max(1, len(x) // 10) if val_size is None else val_size
    return _split(f"imagefolder:{root.name}", x.astype(np.float32) / 255, y, tx.astype(np.float32) / 255, ty, val,
                  len(classes), seed=seed)


def adapt_images(data, channels: int = 0, image_size: int = 0):
    """Registry data brought to a model's input: grey repeated to 3 channels (or RGB averaged to 1), and
    images resized (bilinear) to ``image_size``. 0 leaves that as it is."""
    import dataclasses

    def conv(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise LtcError(f"--channels/--image-size apply to images [N, C, H, W]; {data.name} holds {list(x.shape)}")
        if channels and x.shape[1] != channels:
            if x.shape[1] == 1:
                x = x.repeat(1, channels, 1, 1)
            elif channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise LtcError(f"--channels {channels}: {data.name} has {x.shape[1]} channels; ltc converts 1 to N "
                               "channels or N to 1")
        if image_size and tuple(x.shape[2:]) != (image_size, image_size):
            out = [torch.nn.functional.interpolate(x[i:i + 4096], size=(image_size, image_size), mode="bilinear",
                                                   align_corners=False) for i in range(0, len(x), 4096)]
            x = torch.cat(out) if out else x.new_zeros((0, x.shape[1], image_size, image_size))
        return x.contiguous()

    if not channels and not image_size:
        return data
    est = 4 * (data.n_train() + len(data.val_x) + len(data.test_x)) * (channels or data.in_shape[0]) \
        * (image_size or data.in_shape[1]) * (image_size or data.in_shape[2])
    if est > 8 * 2**30:
        raise LtcError(f"{data.name} at --channels {channels or data.in_shape[0]} --image-size "
                       f"{image_size or data.in_shape[1]} needs {est / 2**30:.1f} GiB in memory; choose a smaller "
                       "--image-size")
    return dataclasses.replace(data, train_x=conv(data.train_x), val_x=conv(data.val_x), test_x=conv(data.test_x))
