"""Hostile torch files (masks, tickets) and files that run the machine out of memory. A torch view
over a one-element storage with zero strides is legal, tiny on disk and loads in no time, yet claims
2^40 elements: every tensor of a loaded file is checked before anything copies one, in every
container, for every dtype and every command that reads one. A MemoryError while reading a user's file
is that file's problem: exit 1 with one line, never exit 2."""

from __future__ import annotations

import collections
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from ltc.errors import LtcError
from tests.badinput import refused
from tests.test_bad_input import _model

torch = pytest.importorskip("torch")

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int64, torch.float16, torch.bfloat16, torch.float32,
          torch.float64, torch.complex64]
HUGE_SHAPES = [(2 ** 40,), (2 ** 20, 2 ** 20), (2 ** 10,) * 4, (2 ** 40, 3, 3), (8, 3, 3, 2 ** 33)]


def _views(dtype) -> dict[str, torch.Tensor]:
    """Ways to make a tensor claim far more elements than its storage holds, without allocating them."""
    one = torch.zeros(1, dtype=dtype)
    views = {f"as_strided{list(s)}": one.as_strided(s, (0,) * len(s)) for s in HUGE_SHAPES}
    views["expand"] = one.expand(2 ** 41)
    reset = torch.empty(0, dtype=dtype)
    reset.set_(one.untyped_storage(), 0, (2 ** 20, 2 ** 21), (0, 0))
    views["set_"] = reset
    return views


def _placements(t: torch.Tensor) -> dict[str, tuple[object, str]]:
    """Where a tensor can sit in a file ltc reads: (object saved, the name the error must give)."""
    return {"top": (t, "(top level)"), "dict": ({"conv.weight": t}, "conv.weight"),
            "list": ([torch.ones(2), t], "1"), "tuple": ({"a": (t,)}, "a/0"),
            "ticket": ({"format": "ltc.ticket", "version": 1, "masks": {"w1": t}, "init": {}}, "masks/w1"),
            "prune": ({"state_dict": {"w1_orig": torch.ones(2), "w1_mask": t}}, "state_dict/w1_mask")}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    onnx.save(_model(), tmp_path / "m.onnx")
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_huge_view_in_every_container_is_refused_before_it_is_copied(tmp_path, dtype):
    from ltc.fileio import load_torch_data

    for how, view in _views(dtype).items():
        for where, (obj, name) in _placements(view).items():
            path = tmp_path / f"{how}-{where}.pt"
            torch.save(obj, path)
            assert path.stat().st_size < 10_000
            with pytest.raises(LtcError) as info:
                load_torch_data(path, "mask file")
            msg = str(info.value)
            assert "\n" not in msg and f"tensor '{name}' claims" in msg and "4 GiB" in msg, (how, where, msg)


@pytest.mark.parametrize("command", ["compress", "inspect", "export"])
def test_commands_refuse_a_huge_view_with_one_line(work, command):
    """The MemoryError (exit 2) this used to be: the mask of a model and the masks of a ticket."""
    huge = torch.zeros(1, dtype=torch.bool).as_strided((2 ** 20, 2 ** 20, 3, 3), (0, 0, 0, 0))
    if command == "export":
        torch.save({"format": "ltc.ticket", "version": 1, "arch": {"name": "lenet300", "kwargs": {}},
                    "masks": {"fc1.weight": huge}, "init": {}}, work / "t.pt")
        args = ["export", work / "t.pt", "-o", work / "out" / "t.onnx"]
    else:
        torch.save({"w1": huge}, work / "mask.pt")
        args = [command, work / "m.onnx", "--mask", work / "mask.pt"]
        args += ["-o", work / "out" / "o.onnx"] if command == "compress" else []
    refused(args, r"tensor '(w1|masks/fc1\.weight)' claims 9,895,604,649,984 elements .*limit of 4 GiB",
            watch=[work])


def test_the_limit_counts_every_tensor_together(tmp_path):
    from ltc.fileio import check_tensors

    obj = {"a": torch.zeros(100), "b": [torch.zeros(100, dtype=torch.float64)], "c": "text", "d": 3}
    check_tensors(obj, tmp_path / "f.pt", max_bytes=1200)  # 400 + 800 bytes: exactly the limit
    with pytest.raises(LtcError, match=r"tensor 'a' claims 100 elements \(400 bytes\)"):
        check_tensors(obj, tmp_path / "f.pt", max_bytes=399)
    with pytest.raises(LtcError, match=r"tensor 'b/0' brings the tensors to 1,200 bytes"):
        check_tensors(obj, tmp_path / "f.pt", max_bytes=1199)


def test_shared_and_cyclic_containers_are_walked_once(tmp_path):
    from ltc.fileio import check_tensors, load_torch_data

    shared = {"w": torch.zeros(3)}
    loop: list = [shared]
    loop.append(loop)
    torch.save({"x": loop, "y": shared}, tmp_path / "f.pt")
    assert load_torch_data(tmp_path / "f.pt")["x"][1][1][0]["w"].shape == (3,)
    check_tensors(loop, tmp_path / "f.pt", max_bytes=12)  # the shared dict counted once


def test_a_view_inside_its_storage_is_accepted(tmp_path):
    """Real masks are views too (a slice of a bigger tensor, a transpose, broadcast zeros): fine."""
    from ltc.fileio import load_torch_data

    base = torch.arange(24.0).reshape(4, 6)
    obj = {"slice": base[1:3], "t": base.t(), "col": base[:, 2], "zero": torch.zeros(1).expand(8, 3),
           "empty": torch.zeros(0, 5)}
    torch.save(obj, tmp_path / "f.pt")
    loaded = load_torch_data(tmp_path / "f.pt")
    assert all(torch.equal(loaded[k], v) for k, v in obj.items())


class _Storage:
    def __init__(self, numel: int):
        self.numel = numel


class _Tensor:
    """Pickles as torch's own tensor rebuild over a storage record that claims ``numel`` elements."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, protocol):
        return torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def forged(path: Path, numel: int, offset: int, size: tuple, stride: tuple, stored: int = 4) -> Path:
    """A torch zip whose data.pkl was edited: the tensor claims (numel, offset, size, stride) over a
    storage record of ``stored`` float32s."""
    real = io.BytesIO()
    torch.save({"w": torch.zeros(stored)}, real)
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump({"w1": _Tensor(_Storage(numel), offset, size, stride)})
    with zipfile.ZipFile(io.BytesIO(real.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            out.writestr(info, pkl.getvalue() if info.filename.endswith("data.pkl") else src.read(info))
    return path


FORGED = {"storage claims 2^40": (2 ** 40, 0, (2 ** 40,), (1,)),
          "size past the storage": (4, 0, (2 ** 20, 2 ** 20), (1, 1)),
          "offset past the storage": (4, 3, (4,), (1,)),
          "zero strides, huge size": (4, 0, (2 ** 20, 2 ** 20), (0, 0)),
          "storage smaller than claimed": (2, 0, (2,), (1,))}


@pytest.mark.parametrize("case", FORGED)
def test_edited_data_pkl_sizes_are_refused_with_one_line(work, case):
    forged(work / "mask.pt", *FORGED[case])
    refused(["compress", work / "m.onnx", "--mask", work / "mask.pt", "-o", work / "out" / "o.onnx"],
            r"mask\.pt: (not a readable mask file|tensor 'w1' claims)", watch=[work])


def _out_of_memory(*args, **kwargs):
    raise MemoryError


def test_memory_error_while_reading_a_torch_file_is_exit_1(work, monkeypatch):
    torch.save({"w1": torch.ones(8, 3, 3, 3)}, work / "mask.pt")
    monkeypatch.setattr(torch, "load", _out_of_memory)
    refused(["compress", work / "m.onnx", "--mask", work / "mask.pt", "-o", work / "out" / "o.onnx"],
            "mask.pt: reading this mask file ran out of memory", watch=[work])


def test_memory_error_while_reading_an_npz_is_exit_1(work, monkeypatch):
    np.savez(work / "mask.npz", w1=np.ones((8, 3, 3, 3)))
    monkeypatch.setattr(np, "load", _out_of_memory)
    refused(["compress", work / "m.onnx", "--mask", work / "mask.npz", "-o", work / "out" / "o.onnx"],
            "mask.npz: reading this mask file ran out of memory", watch=[work])


def test_memory_error_while_reading_a_report_json_is_exit_1(work, monkeypatch):
    from tests.test_report import _bench

    bench = _bench(work)
    monkeypatch.setattr(json, "loads", _out_of_memory)
    refused(["report", "--bench", bench, "-o", work / "out" / "r.html"],
            "bench.json: reading this bench JSON ran out of memory", watch=[work])
