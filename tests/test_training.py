"""The training loop's callbacks and the validated Mask type."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ltc.compressor.data import load_dataset  # noqa: E402
from ltc.compressor.hparams import TrainHparams  # noqa: E402
from ltc.compressor.models import build_model  # noqa: E402
from ltc.compressor.pruning import Mask, full_mask, prune_magnitude  # noqa: E402
from ltc.compressor.training import Callback, TrainState, train  # noqa: E402
from ltc.errors import LtcError  # noqa: E402

TINY = TrainHparams(model="lenet300", dataset="synthetic", iterations=60, eval_every=20, batch_size=30)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def _model(data, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("lenet300", data.in_shape, data.classes)


# ------------------------------------------------------------------------------------------------ Mask
BAD_VALUES = (2, -1, 0.5, float("nan"), float("inf"), 1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_mask_accepts_exactly_the_zero_one_values(seed):
    """Random entries of random dtypes (torch and numpy, bool and numbers), some with one value
    that is neither 0 nor 1: the Mask takes the dict iff no entry has such a value, and keeps value != 0."""
    rng = np.random.default_rng(seed)
    entries, poisoned = {}, False
    for i in range(int(rng.integers(1, 5))):
        shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(1, 4))))
        dtype = rng.choice(["bool", "uint8", "int64", "float32", "float64"])
        arr = rng.integers(0, 2, size=shape).astype(dtype)
        if dtype not in ("bool", "uint8") and rng.random() < 0.2:
            value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))] if dtype.startswith("float") else 2
            arr.flat[int(rng.integers(arr.size))] = value
            poisoned = True
        entries[f"layer{i}.weight"] = torch.from_numpy(arr) if rng.random() < 0.5 else arr
    if poisoned:
        with pytest.raises(LtcError, match="a mask is 0/1"):
            Mask(entries)
        return
    mask = Mask(entries)
    assert list(mask) == list(entries)
    for name, value in entries.items():
        assert mask[name].dtype == torch.bool
        assert np.array_equal(mask[name].numpy(), np.asarray(value) != 0)


@pytest.mark.parametrize("value,words", [("x", "is a str"), (torch.zeros(2, dtype=torch.complex64), "dtype"),
                                         (None, "not a tensor")])
def test_mask_refuses_what_is_no_tensor_of_numbers(value, words):
    with pytest.raises(LtcError, match=words):
        Mask({"a.weight": value})
    with pytest.raises(LtcError, match="names must be parameter names"):
        Mask({3: torch.ones(2)})


def test_mask_validates_every_way_in():
    m = Mask()
    for put in (lambda: m.__setitem__("a", torch.tensor([3.0])), lambda: m.update({"a": torch.tensor([3.0])}),
                lambda: m.update(a=torch.tensor([3.0])), lambda: m.setdefault("a", torch.tensor([3.0]))):
        with pytest.raises(LtcError):
            put()
    assert not m
    m.update(a=torch.tensor([1.0, 0.0]))
    assert m["a"].tolist() == [True, False]
    c = m.copy()
    c["a"][0] = False
    assert m["a"].tolist() == [True, False] and isinstance(c, Mask)


def test_mask_check_matches_names_and_shapes(synthetic):
    model = _model(synthetic)
    full = full_mask(model)
    assert isinstance(full, Mask) and full.check(model) is full and full.density() == 1.0
    name = next(iter(full))
    with pytest.raises(LtcError, match="names no parameter"):
        Mask({name + "x": full[name]}).check(model)
    with pytest.raises(LtcError, match="has shape"):
        Mask({name: full[name].T}).check(model)


def test_train_refuses_a_mask_for_another_model(synthetic):
    model = _model(synthetic)
    with pytest.raises(LtcError, match="names no parameter"):
        train(model, synthetic, TINY, {"fc9.weight": torch.ones(3)})


# ------------------------------------------------------------------------------------------- callbacks
class Recorder(Callback):
    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.rows, self.events = stop_at, [], []

    def on_iteration(self, state: TrainState) -> None:
        self.events.append(("it", state.iteration))

    def on_eval(self, state: TrainState, row: dict) -> None:
        self.rows.append(row)
        if self.stop_at is not None and row["iteration"] >= self.stop_at:
            state.stop = True

    def on_step(self, state: TrainState) -> None:
        self.events.append(("step", state.iteration))

    def on_end(self, state: TrainState) -> None:
        self.events.append(("end", state.iteration))


def test_callbacks_see_every_evaluation_and_step_in_order(synthetic, tmp_path):
    rec, seen = Recorder(), []
    res = train(_model(synthetic), synthetic, TINY, log_path=tmp_path / "log.jsonl", callbacks=[rec],
                on_eval=seen.append, label="L")
    assert rec.rows == res.history == seen and [r["iteration"] for r in rec.rows] == [0, 20, 40, 60]
    steps = [i for kind, i in rec.events if kind == "step"]
    assert steps == list(range(60)) and rec.events[-1] == ("end", 60)
    assert [kind for kind, _ in rec.events[:3]] == ["it", "step", "it"]
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [{"label": "L", **r} for r in res.history]


def test_a_callback_can_stop_training(synthetic):
    rec = Recorder(stop_at=20)
    res = train(_model(synthetic), synthetic, dataclasses.replace(TINY, iterations=200), callbacks=[rec])
    assert res.iterations == 20 and [r["iteration"] for r in res.history] == [0, 20]
    assert rec.events[-1] == ("end", 20)


def test_on_end_runs_when_training_fails(synthetic):
    class Boom(Recorder):
        def on_step(self, state):
            if state.iteration == 3:
                raise RuntimeError("boom")

    rec = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        train(_model(synthetic), synthetic, TINY, callbacks=[rec])
    assert rec.events[-1] == ("end", 3)


def test_rewind_capture_is_the_state_after_k_iterations(synthetic):
    """The state captured at iteration k of a long run is what a run of exactly k iterations ends
    with (constant learning rate: the schedule does not depend on the length)."""
    hp = dataclasses.replace(TINY, schedule="constant")
    long = train(_model(synthetic), synthetic, dataclasses.replace(hp, iterations=60), rewind_iteration=17)
    short = train(_model(synthetic), synthetic, dataclasses.replace(hp, iterations=17))
    assert long.rewind_state is not None and set(long.rewind_state) == set(short.final_state)
    for k, v in short.final_state.items():
        assert torch.equal(long.rewind_state[k], v), k
    assert not all(torch.equal(long.rewind_state[k], v) for k, v in long.final_state.items())


def test_masking_is_a_callback_that_keeps_pruned_weights_zero(synthetic):
    model = _model(synthetic)
    mask = prune_magnitude(model, full_mask(model), {"conv": 0.5, "fc": 0.7, "output": 0.3})
    hp = dataclasses.replace(TINY, optimizer="adam", lr=1e-2, weight_decay=1e-3)

    class Peek(Callback):
        zeros: list[int] = []

        def on_step(self, state):  # runs after ltc's callbacks: the mask is already re-applied
            p = dict(state.model.named_parameters())
            self.zeros.append(sum(int(torch.count_nonzero(p[n][~m])) for n, m in mask.items()))

    train(model, synthetic, hp, mask, callbacks=[Peek()])
    assert len(Peek.zeros) == 60 and set(Peek.zeros) == {0}
