"""Regroup: block-diagonal Convs (under permutation) become Conv(group=G), exactly, with Gathers only
where a channel class cannot take the Conv's order."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from ltc.api import compress_file
from ltc.errors import LtcError
from ltc.passes import ApplyMasks, RemoveDeadChannels, compress
from ltc.passes.regroup import Regroup, block_structure, nonzero_kernels
from ltc.passes.stats import count_parameters
from tests.helpers import make_model, node, run, vec
from tests.random_graphs import RandomGraph


def blocky(rng: np.random.Generator, cout: int, cin: int, groups: int, k: int = 3,
           perms: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A [cout, cin, k, k] weight that is ``groups`` dense blocks under random (or given) permutations."""
    po, pi = perms if perms is not None else (rng.permutation(cout), rng.permutation(cin))
    w = np.zeros((cout, cin, k, k), np.float32)
    for g in range(groups):
        oo, ii = po[g * cout // groups:(g + 1) * cout // groups], pi[g * cin // groups:(g + 1) * cin // groups]
        w[np.ix_(oo, ii)] = rng.standard_normal((len(oo), len(ii), k, k))
    return w


def groups_of(model: onnx.ModelProto) -> dict[str, int]:
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            out[n.name] = next((a.i for a in n.attribute if a.name == "group"), 1)
    return out


def gathers(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Gather" for n in model.graph.node)


def assert_exact(a: onnx.ModelProto, b: onnx.ModelProto, shape=(2, 4, 8, 8), seed: int = 0) -> None:
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    for optimize in (True, False):
        for ya, yb in zip(run(a, feeds, optimize), run(b, feeds, optimize), strict=True):
            np.testing.assert_allclose(yb, ya, rtol=1e-4, atol=1e-5 + 1e-5 * float(np.abs(ya).max()))


# ---------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("seed", range(40))
def test_block_structure_recovers_permuted_blocks(seed):
    rng = np.random.default_rng(seed)
    g = int(rng.choice([2, 3, 4, 8]))
    cout, cin = g * int(rng.integers(1, 6)), g * int(rng.integers(1, 6))
    w = blocky(rng, cout, cin, g, k=int(rng.choice([1, 3])))
    if rng.random() < 0.5:  # some kernels inside blocks zero too: the blocks may split, G still fits
        w[rng.random(w.shape[:2]) < 0.2] = 0
    b = block_structure(nonzero_kernels(w), groups=g)
    assert b is not None and b.groups == g
    assert np.bincount(b.out_group, minlength=g).tolist() == [cout // g] * g
    assert np.bincount(b.in_group, minlength=g).tolist() == [cin // g] * g
    nz = nonzero_kernels(w)
    assert not nz[b.out_group[:, None] != b.in_group[None, :]].any()  # no non-zero outside its block


def test_block_structure_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    assert block_structure(np.ones((8, 8), bool)) is None  # dense
    w = blocky(rng, 8, 8, 2)
    assert block_structure(nonzero_kernels(w), groups=4) is None  # 2 blocks of 4 cannot make 4 groups
    assert block_structure(nonzero_kernels(w), align=8) is None  # widths 4, not a multiple of 8
    uneven = np.zeros((6, 6), bool)
    uneven[:4, :4] = True
    uneven[4:, 4:] = True
    assert block_structure(uneven) is None  # 4+2: no equal packing
    assert block_structure(nonzero_kernels(blocky(rng, 64, 64, 4)), align=16).groups == 4


def test_cost_table_picks_fewer_wider_groups_when_narrow_ones_are_slow():
    rng = np.random.default_rng(1)
    w = blocky(rng, 32, 32, 4)  # 4 blocks of 8: 8-wide 3x3 groups cost 4.5x per MAC (4/4.5 < 1), 16-wide 1.85x
    b = block_structure(nonzero_kernels(w))
    assert b is not None and b.groups == 2
    assert block_structure(nonzero_kernels(w), groups=4).groups == 4  # the ticket's G wins over the table


# ---------------------------------------------------------------------------------------------- hand-built
def _graph(kind: str, rng: np.random.Generator, c: int = 16, g: int = 4):
    """x(4ch) -> stem conv (c) -> Relu -> [the case] -> GAP -> Flatten -> Gemm (unless the case ends
    at the graph output). Returns (model, targets: weight names that must end grouped)."""
    inits = {"w0": rng.standard_normal((c, 4, 3, 3)).astype(np.float32), "b0": vec(c)}
    nodes = [node("Conv", ["x", "w0", "b0"], ["a0"], pads=[1] * 4), node("Relu", ["a0"], ["a"])]
    head = "h"
    if kind == "chain":
        inits |= {"w1": blocky(rng, c, c, g), "b1": vec(c), "w2": blocky(rng, c, c, g)}
        inits |= {"s": vec(c), "bb": vec(c), "mu": vec(c), "var": vec(c, 0.5, 2)}
        nodes += [node("Conv", ["a", "w1", "b1"], ["c1"], pads=[1] * 4),
                  node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"]), node("Relu", ["n1"], ["r1"]),
                  node("Conv", ["r1", "w2"], [head], pads=[1] * 4)]
        targets = ["w1", "w2"]
    elif kind == "residual":
        inits |= {"w1": blocky(rng, c, c, g), "w2": blocky(rng, c, c, g)}
        nodes += [node("Conv", ["a", "w1"], ["c1"], pads=[1] * 4), node("Relu", ["c1"], ["r1"]),
                  node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4), node("Add", ["c2", "a"], [head])]
        targets = ["w1", "w2"]
    elif kind == "frozen":  # its output is a graph output: only a Gather can restore the order
        inits |= {"w1": blocky(rng, c, c, g)}
        nodes += [node("Conv", ["a", "w1"], ["y"], pads=[1] * 4)]
        return make_model(nodes, {"x": ["N", 4, 8, 8]}, ["y"], inits), ["w1"]
    elif kind == "depthwise":
        inits |= {"w1": blocky(rng, c, c, g, k=1), "dw": rng.standard_normal((c, 1, 3, 3)).astype(np.float32),
                  "w2": blocky(rng, c, c, g, k=1)}
        nodes += [node("Conv", ["a", "w1"], ["c1"]), node("Conv", ["c1", "dw"], ["d"], pads=[1] * 4, group=c),
                  node("Relu", ["d"], ["r"]), node("Conv", ["r", "w2"], [head])]
        targets = ["w1", "w2"]
    elif kind == "concat":
        inits |= {"w1": blocky(rng, c, c, g), "w2": blocky(rng, c, 2 * c, g)}
        nodes += [node("Conv", ["a", "w1"], ["c1"], pads=[1] * 4), node("Relu", ["c1"], ["r1"]),
                  node("Concat", ["r1", "a"], ["cat"], axis=1), node("Conv", ["cat", "w2"], [head], pads=[1] * 4)]
        targets = ["w1", "w2"]
    elif kind == "split":
        inits |= {"sp": np.array([c // 2, c // 2], np.int64), "w1": blocky(rng, c, c // 2, g),
                  "w2": blocky(rng, c, c // 2, g)}
        nodes += [node("Split", ["a", "sp"], ["s0", "s1"], axis=1), node("Conv", ["s0", "w1"], ["c1"], pads=[1] * 4),
                  node("Conv", ["s1", "w2"], ["c2"], pads=[1] * 4), node("Mul", ["c1", "c2"], [head])]
        targets = ["w1", "w2"]
    else:
        raise ValueError(kind)
    inits |= {"fc": rng.standard_normal((5, c)).astype(np.float32)}
    nodes += [node("GlobalAveragePool", [head], ["p"]), node("Flatten", ["p"], ["f"]),
              node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return make_model(nodes, {"x": ["N", 4, 8, 8]}, ["y"], inits), targets


@pytest.mark.parametrize("kind", ["chain", "residual", "frozen", "depthwise", "concat", "split"])
@pytest.mark.parametrize("seed", range(3))
def test_regroup_families_exact_and_grouped(kind, seed):
    rng = np.random.default_rng(seed)
    model, targets = _graph(kind, rng)
    r = Regroup({t: 4 for t in targets})(model)
    assert r.modified
    convs = {n.input[1].split("__")[0]: n for n in r.model.graph.node if n.op_type == "Conv"}
    for t in targets:
        n = convs[t]
        assert {a.name: a.i for a in n.attribute}.get("group") == 4, (kind, t)
    weights = {i.name: tuple(i.dims) for i in r.model.graph.initializer}
    for t in targets:
        shape = weights[convs[t].input[1]]
        assert shape[1] * 4 == onnx.numpy_helper.to_array(
            next(i for i in model.graph.initializer if i.name == t)).shape[1]
    assert_exact(model, r.model, seed=seed)
    reported = {la.weight: la for la in r.info.layers}
    assert sum(len(reported[t].gathers) for t in targets) == gathers(r.model)
    if kind == "frozen":
        assert reported["w1"].gathers == ["output"]  # the graph output keeps its channel order


def test_consistent_partitions_need_no_gather():
    """When conv2 groups its inputs as conv1 groups its outputs (and classes are free), the permutations
    fold into the weights: no Gather at all."""
    rng = np.random.default_rng(3)
    c, g = 16, 4
    mid = rng.permutation(c)
    w1 = blocky(rng, c, c, g, perms=(mid, rng.permutation(c)))
    w2 = blocky(rng, c, c, g, perms=(rng.permutation(c), mid))
    inits = {"w1": w1, "w2": w2, "fc": rng.standard_normal((5, c)).astype(np.float32)}
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4), node("GlobalAveragePool", ["c2"], ["p"]),
             node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "fc"], ["y"], transB=1)]
    model = make_model(nodes, {"x": ["N", c, 8, 8]}, ["y"], inits)
    r = Regroup({"w2": g})(model)
    assert gathers(r.model) == 0
    assert groups_of(r.model) and max(groups_of(r.model).values()) == g
    assert_exact(model, r.model, shape=(2, c, 8, 8))


def test_regroup_then_removal_is_exact_and_smaller():
    """A dead filter in each group of a grouped Conv: removal (after regroup) drops them, groups equal."""
    rng = np.random.default_rng(5)
    model, _ = _graph("residual", rng, c=16, g=2)
    w1 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1")).copy()
    blocks = block_structure(nonzero_kernels(w1), groups=2)
    dead = [int(np.flatnonzero(blocks.out_group == k)[0]) for k in range(2)]  # one per group
    masks = {"w1": np.ones(w1.shape, bool)}
    masks["w1"][dead] = False
    r = compress(model, masks, regroup=True, groups={"w1": 2, "w2": 2}, round_to=1)
    assert r.verification.passed
    assert r.regroup is not None and len(r.regroup.grouped) == 2
    convs = [n for n in r.model.graph.node if n.op_type == "Conv"]
    shapes = {i.name: tuple(i.dims) for i in r.model.graph.initializer}
    assert [shapes[n.input[1]] for n in convs][1:] == [(14, 8, 3, 3), (16, 7, 3, 3)]  # 16->14 out; w2 reads 14
    assert_exact(r.reference, r.model)


def test_regroup_rejects_bad_group_counts():
    with pytest.raises(LtcError):
        Regroup({"w": 0})
    with pytest.raises(LtcError):
        Regroup(align=0)


# ---------------------------------------------------------------------------------------------- random graphs
def check_random_regroup(seed: int) -> None:
    """Random graphs with some dense Convs made block-diagonal (equal or unequal blocks): regroup, then
    removal, stays exact and every such Conv whose input is a known channel tensor ends grouped."""
    g = RandomGraph(seed)
    rng = np.random.default_rng(seed)
    made: dict[str, int] = {}
    for n in g.nodes:
        if n.op_type != "Conv" or any(a.name == "group" and a.i != 1 for a in n.attribute):
            continue
        w = g.inits.get(n.input[1])
        if w is None or rng.random() < 0.3:
            continue
        alive = (w != 0).any(axis=(2, 3), keepdims=True)
        divisors = [d for d in (2, 3, 4) if w.shape[0] % d == 0 and w.shape[1] % d == 0]
        if rng.random() < 0.35 and min(w.shape[:2]) >= 3:  # unequal blocks
            k = 2 if min(w.shape[:2]) < 5 else int(rng.integers(2, 4))
            outs = np.bincount(rng.integers(0, k, w.shape[0] - k), minlength=k) + 1
            ins = np.bincount(rng.integers(0, k, w.shape[1] - k), minlength=k) + 1
            g.inits[n.input[1]] = unequal_blocky(rng, outs.tolist(), ins.tolist(), k=w.shape[2]) * alive
            made[n.input[1]] = k
        elif divisors:
            gg = int(rng.choice(divisors))
            g.inits[n.input[1]] = blocky(rng, w.shape[0], w.shape[1], gg, k=w.shape[2]) * alive
            made[n.input[1]] = gg
    model = g.model()
    reference = ApplyMasks(g.masks)(model).model if g.masks else model
    grouped = Regroup(made, min_speedup=0.0)(reference)
    r = RemoveDeadChannels()(grouped.model)
    done = {la.weight for la in grouped.info.grouped}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in reference.graph.initializer}
    for la in grouped.info.layers:  # a made Conv whose zeros still form blocks stays dense only for a stated reason
        fits = la.weight in made and block_structure(nonzero_kernels(inits[la.weight]), made[la.weight],
                                                     unequal=True) is not None
        if fits and la.weight not in done:
            assert any(w in la.reason for w in ("channel-first", "shared", "nothing reads")), (seed, la)
    feeds = {"x": np.random.default_rng(seed).standard_normal((3, 4, 8, 8)).astype(np.float32)}
    for a, b in zip(run(reference, feeds, False), run(r.model, feeds, False), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 + 1e-4 * float(np.abs(a).max(initial=0)),
                                   equal_nan=True, err_msg=f"seed {seed}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return
    onnx.checker.check_model(r.model)


@pytest.mark.parametrize("block", range(3))
def test_random_graphs_regroup(block):
    for seed in range(block * 40, block * 40 + 40):  # 120 graphs
        check_random_regroup(seed)


@pytest.mark.slow
def test_many_random_graphs_regroup():
    for seed in range(2000, 3500):
        check_random_regroup(seed)


# ---------------------------------------------------------------------------------------------- files
def test_compress_file_regroup_report(tmp_path):
    rng = np.random.default_rng(7)
    model, targets = _graph("residual", rng, c=32, g=2)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    doc = compress_file(src, tmp_path / "o.onnx", regroup=True, round_to=1, report=tmp_path / "r.json")
    assert doc["options"]["regroup"] is True
    assert doc["regroup"]["grouped"] == 2 and doc["after"]["macs"] < doc["before"]["macs"]
    saved = json.loads((tmp_path / "r.json").read_text())
    import jsonschema

    schema = json.loads((__import__("pathlib").Path(__file__).parents[1] / "ltc/passes/compress-schema.json").read_text())
    jsonschema.validate(saved, schema)
    off = compress_file(src, tmp_path / "p.onnx", round_to=1)  # no ticket: regroup is off by default
    assert off["regroup"] is None and off["options"]["regroup"] is False


def test_group_ticket_turns_regroup_on(tmp_path):
    """A ticket whose structure says group: compress regroups with the ticket's G, no flag needed."""
    rng = np.random.default_rng(8)
    model, targets = _graph("chain", rng, c=16, g=4)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    ticket = {"format": "ltc.ticket", "version": 1, "arch": {"name": "custom", "kwargs": {}},
              "masks": {t: torch.from_numpy(inits[t] != 0) for t in targets},
              "init": {t: torch.from_numpy(inits[t].copy()) for t in targets},
              "structure": {"kind": "group", "layers": {"w1": {"groups": 4}, "w2": {"groups": 2}}}}
    torch.save(ticket, tmp_path / "t.pt")
    doc = compress_file(src, tmp_path / "o.onnx", tmp_path / "t.pt", round_to=1)
    got = {la["weight"]: la["groups"] for la in doc["regroup"]["layers"]}
    assert got["w1"] == 4 and got["w2"] == 2
    ticket["structure"]["layers"]["w1"] = {"groups": "four"}
    torch.save(ticket, tmp_path / "bad.pt")
    with pytest.raises(LtcError, match="groups"):
        compress_file(src, tmp_path / "o2.onnx", tmp_path / "bad.pt", round_to=1)


# ---------------------------------------------------------------------------------------------- unequal blocks
def unequal_blocky(rng: np.random.Generator, out_sizes: list[int], in_sizes: list[int], k: int = 3) -> np.ndarray:
    po, pi = rng.permutation(sum(out_sizes)), rng.permutation(sum(in_sizes))
    w = np.zeros((sum(out_sizes), sum(in_sizes), k, k), np.float32)
    o = i = 0
    for a, b in zip(out_sizes, in_sizes, strict=True):
        w[np.ix_(po[o:o + a], pi[i:i + b])] = rng.standard_normal((a, b, k, k))
        o, i = o + a, i + b
    return w


@pytest.mark.parametrize("seed", range(8))
def test_unequal_blocks_become_split_convs_exactly(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 4))
    outs = [int(v) for v in rng.choice([16, 32, 48], size=k)]
    ins = [int(v) for v in rng.choice([16, 32, 48], size=k)]
    if len(set(outs)) == 1 and len(set(ins)) == 1:
        outs[0] += 16
    c_in = sum(ins)
    inits = {"w0": rng.standard_normal((c_in, 4, 3, 3)).astype(np.float32), "w1": unequal_blocky(rng, outs, ins),
             "b1": vec(sum(outs)), "fc": rng.standard_normal((5, sum(outs))).astype(np.float32)}
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]),
             node("Conv", ["r", "w1", "b1"], ["c"], pads=[1] * 4), node("GlobalAveragePool", ["c"], ["p"]),
             node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "fc"], ["y"], transB=1)]
    model = make_model(nodes, {"x": ["N", 4, 8, 8]}, ["y"], inits)
    b = block_structure(nonzero_kernels(inits["w1"]), unequal=True)
    assert b is not None and not b.equal and b.groups == k
    assert sorted(np.bincount(b.out_group).tolist()) == sorted(outs)
    r = Regroup()(model)
    layer = next(la for la in r.info.layers if la.weight == "w1")
    assert layer.groups == k and sorted(layer.out_widths) == sorted(outs), layer
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Split") == 1 and ops.count("Concat") == 1 and ops.count("Conv") == 1 + k
    assert gathers(r.model) == 0  # the stem and the head absorb both permutations
    assert_exact(model, r.model, seed=seed)
    # removal runs through the split form: a dead filter in a block goes
    w1 = inits["w1"]
    mask = np.ones(w1.shape, bool)
    mask[int(np.flatnonzero(nonzero_kernels(w1).any(axis=1))[0])] = False
    c = compress(model, {"w1": mask}, regroup=True, round_to=1)
    assert c.verification.passed
    assert count_parameters(c.model) < count_parameters(r.model)  # (the dead filter's bias folds into the Gemm)


def test_unequal_needs_a_predicted_speedup_or_stays_dense():
    rng = np.random.default_rng(2)
    w = unequal_blocky(rng, [60, 4], [60, 4])  # one block holds nearly everything: no speed-up to have
    inits = {"w0": rng.standard_normal((64, 4, 3, 3)).astype(np.float32), "w1": w,
             "fc": rng.standard_normal((5, 64)).astype(np.float32)}
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Conv", ["a", "w1"], ["c"], pads=[1] * 4),
             node("GlobalAveragePool", ["c"], ["p"]), node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "fc"], ["y"], transB=1)]
    r = Regroup()(make_model(nodes, {"x": ["N", 4, 8, 8]}, ["y"], inits))
    layer = next(la for la in r.info.layers if la.weight == "w1")
    assert layer.groups == 1 and "no speed-up" in layer.reason


# ---------------------------------------------------------------------------------------------- review cases
def _one_conv(w: np.ndarray, opset: int = 17, bias_input: bool = False, extra_inits: dict | None = None):
    c_out, c_in = w.shape[:2]
    inits = {"w": w, "fc": np.ones((3, c_out), np.float32), **(extra_inits or {})}
    conv_in = ["x", "w", "b"] if bias_input else ["x", "w"]
    nodes = [node("Conv", conv_in, ["c"], pads=[1] * 4), node("GlobalAveragePool", ["c"], ["p"]),
             node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inputs = {"x": ["N", c_in, 6, 6], **({"b": [c_out]} if bias_input else {})}
    return make_model(nodes, inputs, ["y"], inits, opset=opset)


def test_a_computed_bias_keeps_the_conv_dense():
    w = blocky(np.random.default_rng(0), 16, 16, 2)
    r = Regroup({"w": 2})(_one_conv(w, bias_input=True))
    assert not r.modified and "bias is computed" in r.info.layers[0].reason


def test_split_convs_at_opset_11_use_the_split_attribute():
    rng = np.random.default_rng(1)
    model = _one_conv(unequal_blocky(rng, [48, 16], [40, 24]), opset=11)
    r = Regroup(min_speedup=0.0)(model)
    assert [n.op_type for n in r.model.graph.node].count("Split") == 1
    onnx.checker.check_model(r.model)
    assert_exact(model, r.model, shape=(2, 64, 6, 6))


def test_macs_before_are_the_dense_models():
    rng = np.random.default_rng(2)
    w = unequal_blocky(rng, [48, 16], [40, 24])
    r = compress(_one_conv(w), regroup=True, groups={"w": 2}, round_to=1)
    dense = 64 * 64 * 9 * 36 + 3 * 64  # the Conv at 6x6 and the Gemm
    assert r.before["macs"] == dense
    assert r.after["macs"] == (48 * 40 + 16 * 24) * 9 * 36 + 3 * 64


def test_align_applies_to_the_convs_the_pass_picks_not_to_a_tickets_g():
    w = blocky(np.random.default_rng(3), 64, 64, 4)  # 4 blocks of 16
    model = _one_conv(w)
    assert Regroup(align=32)(model).info.layers[0].groups in (1, 2)  # 16-wide groups are not a multiple of 32
    assert all(v % 32 == 0 for v in Regroup(align=32)(model).info.layers[0].in_widths)
    assert Regroup({"w": 4}, align=32)(model).info.layers[0].groups == 4  # the ticket's G wins


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_constants_keep_every_conv_dense(bad):
    rng = np.random.default_rng(4)
    w = blocky(rng, 16, 16, 2)
    w[0, 0, 0, 0] = bad if nonzero_kernels(w)[0, 0] else w[0, 0, 0, 0]
    r = Regroup({"w": 2})(_one_conv(w))
    assert not r.modified and "NaN or infinity" in r.info.layers[0].reason
    w0 = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    w0[3, 1, 1, 1] = bad  # upstream: channel 3 can be non-finite, and the dense Conv spreads it to every output
    inits = {"w0": w0, "w": blocky(rng, 16, 16, 2), "fc": np.ones((3, 16), np.float32)}
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Conv", ["a", "w"], ["c"], pads=[1] * 4),
             node("GlobalAveragePool", ["c"], ["p"]), node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "fc"], ["y"], transB=1)]
    r = Regroup({"w": 2})(make_model(nodes, {"x": ["N", 4, 6, 6]}, ["y"], inits))
    layer = next(la for la in r.info.layers if la.weight == "w")
    assert layer.groups == 1 and "'w0' holds NaN or infinity" in layer.reason
