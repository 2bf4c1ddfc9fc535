"""Dead filters whose bias stays, read through a zero-padded depthwise conv or pool (an image, not a
number, by the time a layer reads it): removed exactly by writing the chain again for them
(ltc.passes.chains). Each case is checked against the same graph with zero biases (the control:
what removal takes when the constants are zero) and against ONNX Runtime on the original."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest

from ltc.passes import compress
from ltc.passes.pipeline import RemoveDeadChannels, normalize
from ltc.passes.remove import dead_filters
from ltc.passes.stats import stored_parameters
from tests.helpers import init_shape, make_model, node, run

C = 8
ACTS = ["Relu", "Sigmoid", "Clip", "SiLU", "HardSwish"]


def _act(kind: str, x: str, y: str, nodes: list, inits: dict) -> None:
    if kind == "SiLU":
        nodes += [node("Sigmoid", [x], [y + "_s"]), node("Mul", [x, y + "_s"], [y])]
    elif kind == "Clip":
        inits[y + "_lo"], inits[y + "_hi"] = np.float32(0), np.float32(6)
        nodes.append(node("Clip", [x, y + "_lo", y + "_hi"], [y]))
    else:
        nodes.append(node(kind, [x], [y]))


def _block(seed: int, act: str, spread: str, reader_k: int, dynamic: bool, gate: np.ndarray | None = None,
           zero_bias: bool = False, between: str | None = None, dead_at: str = "first") -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> 1x1 Conv (dead filters; their bias stays unless ``zero_bias``) -> act -> ``spread`` (a
    padded depthwise Conv or AveragePool counting its pads) -> BN -> act -> [an SE gate whose fc2
    rows ``gate`` are dead] -> [``between``] -> Conv(k=reader_k, padded) -> y. Returns the model and
    the dead filters of the first Conv, or with ``dead_at="dw"`` those of the depthwise Conv (their
    BN scale zero, its shift kept unless ``zero_bias``: a constant, not an image)."""
    rng = np.random.default_rng(seed)
    dead = np.flatnonzero(rng.random(C) < 0.5)
    w0 = rng.standard_normal((C, 4, 1, 1)).astype(np.float32)
    b0 = (rng.uniform(0.2, 1.0, C) * rng.choice([-1, 1], C)).astype(np.float32)
    if dead_at == "first":
        w0[dead] = 0
        if zero_bias:
            b0[dead] = 0
    inits = {"w0": w0, "b0": b0}
    nodes = [node("Conv", ["x", "w0", "b0"], ["a"])]
    _act(act, "a", "r", nodes, inits)
    if spread == "depthwise":
        inits["w1"] = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        inits["b1"] = (rng.standard_normal(C) * 0.3).astype(np.float32)
        nodes.append(node("Conv", ["r", "w1", "b1"], ["d"], group=C, pads=[1] * 4))
    else:
        nodes.append(node("AveragePool", ["r"], ["d"], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1))
    inits.update(bn_s=rng.uniform(0.5, 1.5, C).astype(np.float32), bn_b=rng.standard_normal(C).astype(np.float32),
                 bn_m=(rng.standard_normal(C) * 0.2).astype(np.float32), bn_v=rng.uniform(0.5, 1.5, C).astype(np.float32))
    if dead_at == "dw":
        inits["w1"][dead] = 0
        inits["b1"][dead] = 0
        inits["bn_s"][dead] = 0
        inits["bn_b"][dead] = 0 if zero_bias else np.abs(inits["bn_b"][dead]) + 0.2
    nodes.append(node("BatchNormalization", ["d", "bn_s", "bn_b", "bn_m", "bn_v"], ["n"]))
    _act(act, "n", "z", nodes, inits)
    last = "z"
    if gate is not None:
        inits["f1"] = rng.standard_normal((4, C, 1, 1)).astype(np.float32)
        inits["f2"] = rng.standard_normal((C, 4, 1, 1)).astype(np.float32)
        inits["f2"][gate] = 0
        inits["f2b"] = rng.standard_normal(C).astype(np.float32)
        nodes += [node("GlobalAveragePool", ["z"], ["g"]), node("Conv", ["g", "f1"], ["h"]), node("Relu", ["h"], ["hr"]),
                  node("Conv", ["hr", "f2", "f2b"], ["s"]), node("Sigmoid", ["s"], ["sg"]), node("Mul", ["z", "sg"], ["gz"])]
        last = "gz"
    width = C
    if between == "ghost":  # GhostNet's module: Concat([primary, cheap(primary)])[:, :out]
        first = bool(rng.random() < 0.5)
        inits.update(s0=np.array([0], np.int64), s1=np.array([2 * C], np.int64), s2=np.array([1], np.int64))
        nodes += [node("Concat", ["r", last] if first else [last, "r"], ["cat"], axis=1),
                  node("Slice", ["cat", "s0", "s1", "s2"], ["between"])]
        last, width = "between", 2 * C
    elif between == "ghost_dw":  # the constants beside the images, then a padded depthwise Conv over both
        inits["w3"] = rng.standard_normal((2 * C, 1, 3, 3)).astype(np.float32)
        nodes += [node("Concat", ["r", last], ["cat"], axis=1),
                  node("Conv", ["cat", "w3"], ["between"], group=2 * C, pads=[1] * 4, strides=[2, 2])]
        last, width = "between", 2 * C
    elif between is not None:
        nodes.append(node(between, [last], ["between"], perm=[0, 1, 3, 2]))
        last = "between"
    inits["w2"] = rng.standard_normal((5, width, reader_k, reader_k)).astype(np.float32)
    nodes.append(node("Conv", [last, "w2"], ["y"], pads=[reader_k // 2] * 4))
    shape = ["N", 4, "H", "W"] if dynamic else ["N", 4, 7, 7]
    return make_model(nodes, {"x": shape}, ["y"], inits), dead


def _compress(model: onnx.ModelProto):
    side = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value or 9
    x = np.random.default_rng(1).standard_normal((2, 4, side, side)).astype(np.float32)
    return compress(model, feeds={"x": x}, inputs_label="test")


def _exact(a: onnx.ModelProto, b: onnx.ModelProto, sizes=(7,)) -> None:
    rng = np.random.default_rng(0)
    for batch, side in itertools.product((1, 3), sizes):
        x = rng.standard_normal((batch, 4, side, side)).astype(np.float32)
        want, got = run(a, {"x": x})[0], run(b, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 + 1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize(("act", "spread", "reader_k", "dynamic"),
                         list(itertools.product(ACTS, ["depthwise", "pool"], [1, 3], [False, True])))
def test_constants_through_padding_go_as_if_they_were_zero(act, spread, reader_k, dynamic):
    """Every dead filter of the first Conv goes, as many as with zero biases (where nothing needs
    writing again); the model is exact on batch sizes and spatial sizes (the copy takes the input's
    size at run time when it is dynamic) and never stores more parameters."""
    for seed in range(3):
        model, dead = _block(seed, act, spread, reader_k, dynamic)
        control, _ = _block(seed, act, spread, reader_k, dynamic, zero_bias=True)
        r = _compress(model)
        _exact(model, r.model, (7, 10) if dynamic else (7,))
        kept = init_shape(r.model, "w0")[0] if any(t.name == "w0" for t in r.model.graph.initializer) else 0
        assert kept == C - len(dead) == init_shape(_compress(control).model, "w0")[0], (seed, kept)
        assert stored_parameters(r.model) <= stored_parameters(model)


@pytest.mark.parametrize(("seed", "reader_k"), itertools.product(range(6), [1, 3]))
def test_through_a_channel_concat_and_slice(seed, reader_k):
    """GhostNet's module concatenates the constants with their images and slices the channels: the
    chain follows its channels to where they sit in the wider tensor."""
    model, dead = _block(seed, "Sigmoid", "depthwise", reader_k, False, between="ghost")
    control, _ = _block(seed, "Sigmoid", "depthwise", reader_k, False, between="ghost", zero_bias=True)
    r = _compress(model)
    _exact(model, r.model)
    assert init_shape(r.model, "w0")[0] == C - len(dead) == init_shape(_compress(control).model, "w0")[0]


@pytest.mark.parametrize(("seed", "reader_k"), itertools.product(range(6), [1, 3]))
def test_constants_beside_images_join_the_chain(seed, reader_k):
    """A tensor that holds both images (a chain) and constants (GhostNet's Concat of a module's
    primary and cheap halves), read by a padded depthwise Conv: the constants become images there
    and join the chain, so the dead filters go as with zero biases."""
    model, dead = _block(seed, "Relu", "depthwise", reader_k, False, between="ghost_dw")
    control, _ = _block(seed, "Relu", "depthwise", reader_k, False, between="ghost_dw", zero_bias=True)
    r = _compress(model)
    _exact(model, r.model)
    assert _kept(r.model, "w0") == C - len(dead) == _kept(_compress(control).model, "w0"), (seed, dead)


def test_no_chains_keeps_them_through_the_library_and_the_command_line(tmp_path):
    """``chains=False`` / ``--no-chains``: those dead filters stay (exact), the report says so, and
    ``inspect`` agrees with ``compress`` either way."""
    from click.testing import CliRunner

    from ltc.cli import main

    model, dead = _block(3, "Sigmoid", "depthwise", 3, False)  # (no activation that zeroes a constant)
    assert len(dead) > 0
    plain = compress(model, chains=False)
    _exact(model, plain.model)
    assert _kept(plain.model, "w0") == C
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for flags, kept in (([], C - len(dead)), (["--no-chains"], C)):
        out = tmp_path / f"o{len(flags)}.onnx"
        r = CliRunner().invoke(main, ["compress", str(path), "-o", str(out), "--round-to", "1", "--json", *flags])
        assert r.exit_code == 0, r.output
        assert _kept(onnx.load(out), "w0") == kept
        assert json.loads(r.output)["options"]["chains"] == (not flags)
        r = CliRunner().invoke(main, ["inspect", str(path), "--json", *flags])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["dead_filters"]["removed"] == C - kept


def test_without_the_copy_those_filters_stay():
    """The control the family needs: analysed without chains, the same dead filters are kept as
    coupled (a reader sees a value that is not a known number)."""
    model, dead = _block(1, "Relu", "depthwise", 1, False)
    a = RemoveDeadChannels().analyze(normalize(model), chains=False)
    stats = dead_filters(a.cg, a.plan)
    assert stats.coupled >= 1 and stats.removed < stats.dead


def _kept(model: onnx.ModelProto, name: str) -> int:
    return next((int(init_shape(model, name)[0]) for t in model.graph.initializer if t.name == name), 0)


@pytest.mark.parametrize(("seed", "dynamic"), itertools.product(range(6), [False, True]))
def test_behind_a_squeeze_excitation_gate_every_dead_filter_goes(seed, dynamic):
    """Behind a squeeze-excitation gate a dead filter's image is multiplied by the gate, which
    depends on the input where its row is live: the copy multiplies by a copy of those gate rows
    (fc2 and the sigmoid), so every dead filter goes, its gate row too, as with zero biases; the
    model is exact on batch and spatial sizes."""
    rng = np.random.default_rng(100 + seed)
    gate = np.flatnonzero(rng.random(C) < 0.5)
    model, dead = _block(seed, "Sigmoid", "depthwise", 1, dynamic, gate=gate)
    control, _ = _block(seed, "Sigmoid", "depthwise", 1, dynamic, gate=gate, zero_bias=True)
    r, c = _compress(model), _compress(control)
    _exact(model, r.model, (7, 10) if dynamic else (7,))
    assert _kept(r.model, "w0") == C - len(dead) == _kept(c.model, "w0"), (seed, dead, gate)
    assert _kept(r.model, "f2") == _kept(c.model, "f2") == C - len(dead)
    a = RemoveDeadChannels().analyze(normalize(model))
    stats = dead_filters(a.cg, a.plan)
    assert stats.blocked == 0 and stats.removed >= len(dead)


@pytest.mark.parametrize(("seed", "act", "reader_k"), itertools.product(range(4), ["Relu", "SiLU", "HardSwish"], [1, 3]))
def test_a_constant_times_a_live_gate_goes(seed, act, reader_k):
    """A dead depthwise filter whose BN shift stays is a constant, not an image; times a live gate it
    depends on the input. It starts a chain at the gate, and goes as with zero shifts (MobileNetV3's
    blocks, where some channels are images and others constants at the same gate)."""
    rng = np.random.default_rng(200 + seed)
    gate = np.flatnonzero(rng.random(C) < 0.3)
    model, dead = _block(seed, act, "depthwise", reader_k, False, gate=gate, dead_at="dw")
    control, _ = _block(seed, act, "depthwise", reader_k, False, gate=gate, dead_at="dw", zero_bias=True)
    r, c = _compress(model), _compress(control)
    _exact(model, r.model)
    assert _kept(r.model, "w1") == C - len(dead) == _kept(c.model, "w1"), (seed, dead)
    assert stored_parameters(r.model) <= stored_parameters(model)


def _meeting(seed: int, zero_bias: bool, shift: int, gated: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Two blocks read x: 1x1 Conv (dead filters, biases kept unless ``zero_bias``) -> Relu ->
    padded depthwise Conv -> Sigmoid, and their images meet at an Add. The second block's channels
    are placed ``shift`` channels on (a Concat with a live tensor, then a Slice), so that channel
    ``c`` of the first meets channel ``c + shift`` of the second; maybe a gate follows the Add. Then
    a Conv reads the sum. Returns the model and both blocks' dead filters."""
    rng = np.random.default_rng(seed)
    inits, nodes, deads = {}, [], []
    for k in ("a", "b"):
        dead = np.flatnonzero(rng.random(C) < 0.6)
        w = rng.standard_normal((C, 4, 1, 1)).astype(np.float32)
        w[dead] = 0
        b = (rng.uniform(0.2, 1.0, C) * rng.choice([-1, 1], C)).astype(np.float32)
        if zero_bias:
            b[dead] = 0
        inits.update({f"w{k}": w, f"b{k}": b, f"d{k}": rng.standard_normal((C, 1, 3, 3)).astype(np.float32)})
        nodes += [node("Conv", ["x", f"w{k}", f"b{k}"], [f"c{k}"]), node("Relu", [f"c{k}"], [f"r{k}"]),
                  node("Conv", [f"r{k}", f"d{k}"], [f"e{k}"], group=C, pads=[1] * 4), node("Sigmoid", [f"e{k}"], [f"i{k}"])]
        deads.append(dead)
    inits["wl"] = rng.standard_normal((C, 4, 1, 1)).astype(np.float32)
    inits.update(s0=np.array([C - shift], np.int64), s1=np.array([2 * C - shift], np.int64), s2=np.array([1], np.int64))
    nodes += [node("Conv", ["x", "wl"], ["live"]), node("Concat", ["live", "ib"], ["cat"], axis=1),
              node("Slice", ["cat", "s0", "s1", "s2"], ["ib2"]), node("Add", ["ia", "ib2"], ["sum"])]
    last = "sum"
    if gated:
        inits.update(f1=rng.standard_normal((2, 4, 1, 1)).astype(np.float32), f2=rng.standard_normal((C, 2, 1, 1)).astype(np.float32))
        nodes += [node("GlobalAveragePool", ["x"], ["g"]), node("Conv", ["g", "f1"], ["h"]), node("Relu", ["h"], ["hr"]),
                  node("Conv", ["hr", "f2"], ["s"]), node("HardSigmoid", ["s"], ["sg"]), node("Mul", ["sum", "sg"], ["gz"])]
        last = "gz"
    inits["wr"] = rng.standard_normal((5, C, 3, 3)).astype(np.float32)
    nodes.append(node("Conv", [last, "wr"], ["y"], pads=[1] * 4))
    return make_model(nodes, {"x": ["N", 4, 7, 7]}, ["y"], inits), deads[0], deads[1]


@pytest.mark.parametrize(("seed", "shift", "gated"), itertools.product(range(5), [0, 1, 3], [False, True]))
def test_images_that_meet_at_an_add_go_where_both_are_dead(seed, shift, gated):
    """Two chains that meet at a residual Add become one: a channel goes when both of its images
    are of dead filters (the sum does not depend on the input), whatever their positions in the two
    tensors, as with zero biases; where one side is live, both stay."""
    model, da, db = _meeting(seed, False, shift, gated)
    control, _, _ = _meeting(seed, True, shift, gated)
    r, c = _compress(model), _compress(control)
    _exact(model, r.model)
    both = np.intersect1d(da, db + shift)  # channel c of the sum: the first's c, the second's c - shift
    assert _kept(r.model, "wa") == C - len(both) == _kept(c.model, "wa"), (seed, da, db)
    assert _kept(r.model, "wb") == _kept(c.model, "wb")


def test_a_chain_that_meets_an_op_it_cannot_copy_counts_as_blocked_not_coupled():
    """A constant image that meets a Transpose (followed by the analysis, but no chain step) stays; it
    is reported as blocked, with the op named, since an exact tool could remove it (it does not
    depend on the input)."""
    model, dead = _block(2, "Sigmoid", "depthwise", 1, False, between="Transpose")
    a = RemoveDeadChannels().analyze(normalize(model))
    stats = dead_filters(a.cg, a.plan)
    reasons = " ".join(stats.blockers)
    assert stats.blocked >= len(dead) > 0 and "reaches Transpose" in reasons, stats
    r = _compress(model)
    _exact(model, r.model)
