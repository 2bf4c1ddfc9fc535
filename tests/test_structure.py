"""Structured tickets: refill, refill+ and regroup masks, and each structure through search -> export ->
compress -> verify -> bench."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ltc.api import compress_file  # noqa: E402
from ltc.benchmarks.bench import BenchOptions, bench  # noqa: E402
from ltc.compressor.hparams import PruneHparams, TrainHparams  # noqa: E402
from ltc.compressor.models import build_model  # noqa: E402
from ltc.compressor.pruning import full_mask, prune_magnitude  # noqa: E402
from ltc.compressor.search import ticket_search  # noqa: E402
from ltc.compressor.structure import choose_groups, cocluster, dead_inputs, refill, regroup  # noqa: E402
from ltc.errors import LtcError  # noqa: E402
from ltc.exporters.ticket_export import export_ticket, load_ticket  # noqa: E402


def _pruned(seed: int, rate: float = 0.6, model_name: str = "conv2"):
    torch.manual_seed(seed)
    model = build_model(model_name, (1, 16, 16), 10)
    mask = prune_magnitude(model, full_mask(model, "channel"), {"conv": rate, "fc": rate, "output": 0.2})
    return model, mask


# ----------------------------------------------------------------------------------------------- refill
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("criterion", ["l1", "count"])
def test_refill_whole_channels_under_the_same_budget(seed, criterion):  # noqa: PLR0914
    model, mask = _pruned(seed, rate=float(np.random.default_rng(seed).choice([0.6, 0.85])))
    new, layers = refill(model, mask, criterion)
    dead = dead_inputs(model, new)
    params = dict(model.named_parameters())
    for name, info in layers.items():
        live = ~dead[name]
        m, w = new[name], params[name]
        assert not m[:, ~live].any(), name  # nothing reads a dropped channel
        rows = m[:, live].flatten(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()), name  # every filter all-0 or all-1 on its live inputs
        kernel = m[0, 0].numel() if m.dim() > 2 else 1
        expect = max(1, round(int(mask[name].sum()) / (int(live.sum()) * kernel)))  # the layer's survivors
        assert info["channels"] == int(rows.all(1).sum()) == min(expect, int(mask[name].flatten(1).any(1).sum()))
        layer = name.rsplit(".", 1)[0]
        dropped = ~rows.all(1)
        if f"{layer}.bias" in new:
            assert torch.equal(new[f"{layer}.bias"], ~dropped)
        scores = ((w.detach().abs() * mask[name])[:, live].flatten(1).sum(1) if criterion == "l1"
                  else mask[name][:, live].flatten(1).sum(1).double())
        if dropped.any():
            assert float(scores[dropped].max()) <= float(scores[~dropped].min())  # the kept ones matter most
    last = max((n for n in mask if n.endswith(".weight") and new[n].dim() == 2), key=lambda n: list(mask).index(n))
    live = ~dead[last]
    assert torch.equal(new[last][:, live], mask[last][:, live])  # the output layer keeps its IMP mask on live inputs
    assert not new[last][:, ~live].any() and bool(new[last].any(1).all())  # and never loses an output


def test_dead_inputs_follow_the_paths_of_kept_weights():
    model = build_model("conv2", (1, 16, 16), 10)
    mask = full_mask(model, "channel")
    convs = [n for n in mask if n.endswith("weight") and mask[n].dim() == 4]
    mask[convs[0]][[3, 5]] = False  # two filters of the first conv gone, with their bias
    mask[convs[0].replace("weight", "bias")][[3, 5]] = False
    dead = dead_inputs(model, mask)
    assert dead[convs[1]].nonzero().flatten().tolist() == [3, 5]
    assert not dead[convs[0]].any()
    assert not dead["fc0.weight"].any()  # the second conv's outputs all live
    mask[convs[1]][[1, 6]] = False
    mask[convs[1].replace("weight", "bias")][[1, 6]] = False
    fc = dead_inputs(model, mask)["fc0.weight"].reshape(64, -1)  # after the flatten: every feature of 1 and 6
    assert fc.all(1).nonzero().flatten().tolist() == [1, 6] and not fc[[0, 2, 3, 4, 5]].any()
    mask[convs[0].replace("weight", "bias")][[3, 5]] = True  # a bias alone keeps a channel alive
    assert not dead_inputs(model, mask)[convs[1]].any()


def test_refill_zeroes_the_batchnorm_of_dropped_channels():
    model, mask = _pruned(0, model_name="resnet20")
    new, layers = refill(model, mask, "l1")
    bn_checked = 0
    names = list(dict(model.named_modules()))
    for name in layers:
        layer = name.rsplit(".", 1)[0]
        i = names.index(layer)
        bn = names[i + 1] if i + 1 < len(names) else None
        if bn and f"{bn}.weight" in new and new[f"{bn}.weight"].shape[0] == new[name].shape[0]:
            dropped = ~new[name].flatten(1).any(1)
            assert not new[f"{bn}.weight"][dropped].any() and not new[f"{bn}.bias"][dropped].any()
            assert new[f"{bn}.weight"][~dropped].all()
            bn_checked += 1
    assert bn_checked >= 10


def test_count_criterion_ties_go_to_the_lower_index():
    model = build_model("conv2", (1, 16, 16), 10)
    mask = full_mask(model, "channel")
    name = "features.0.0.weight" if "features.0.0.weight" in mask else next(n for n in mask if n.endswith("weight"))
    mask[name][:, :] = False
    mask[name][:, :, 0, 0] = True  # every filter keeps one weight: all tie, budget = C / 9 channels
    new, layers = refill(model, mask, "count")
    kept = torch.flatten(new[name], 1).all(1).nonzero().flatten().tolist()
    assert kept == list(range(layers[name]["channels"]))


def test_refill_plus_reactivates_the_requested_fraction():
    model, mask = _pruned(1)
    base, lb = refill(model, mask, "l1")
    plus, lp = refill(model, mask, "l1", rate=0.5)
    for name, info in lp.items():
        assert info["reactivated"] == round(0.5 * (info["of"] - info["budget"]))
        assert info["channels"] == info["budget"] + info["reactivated"] == int(plus[name].flatten(1).any(1).sum())
    first = next(iter(lb))  # (later layers' budgets depend on what refill+ kept before them)
    assert lp[first]["budget"] == lb[first]["channels"]
    kept_base, kept_plus = base[first].flatten(1).any(1), plus[first].flatten(1).any(1)
    assert bool((kept_plus | ~kept_base).all()) and int(kept_plus.sum()) > int(kept_base.sum())  # a superset


# ----------------------------------------------------------------------------------------------- regroup
@pytest.mark.parametrize("seed", range(6))
def test_cocluster_recovers_planted_blocks(seed):
    rng = np.random.default_rng(seed)
    g = int(rng.choice([2, 4]))
    n_out, n_in = g * int(rng.integers(2, 9)), g * int(rng.integers(2, 9))
    og, ig = rng.permutation(n_out) % g, rng.permutation(n_in) % g
    m = np.where(og[:, None] == ig[None, :], rng.uniform(1, 2, (n_out, n_in)), rng.uniform(0, 0.05, (n_out, n_in)))
    out_group, in_group, kept = cocluster(m, g)
    planted = float(m[og[:, None] == ig[None, :]].sum() / m.sum())
    assert kept == pytest.approx(planted)
    assert np.bincount(out_group).tolist() == [n_out // g] * g and np.bincount(in_group).tolist() == [n_in // g] * g


def test_cocluster_beats_random_partitions():
    rng = np.random.default_rng(3)
    m = np.abs(rng.standard_normal((32, 32))) ** 3
    _, _, kept = cocluster(m, 4)
    rand = [float(m[(rng.permutation(32) % 4)[:, None] == (rng.permutation(32) % 4)[None, :]].sum() / m.sum())
            for _ in range(50)]
    assert kept > max(rand)


@pytest.mark.parametrize("seed", range(3))
def test_regroup_masks_are_block_diagonal_under_the_recorded_permutations(seed):
    model, mask = _pruned(seed, rate=0.7)
    new, layers = regroup(model, mask, group_width=16, align=8)
    grouped = {n: i for n, i in layers.items() if i["groups"] > 1}
    assert grouped
    for name, info in grouped.items():
        g = info["groups"]
        m = new[name].reshape(new[name].shape[0], new[name].shape[1], -1)
        assert bool((m.all(2) | ~m.any(2)).all())  # whole kernels
        p = m.all(2)[info["out_perm"]][:, info["in_perm"]]
        wo, wi = p.shape[0] // g, p.shape[1] // g
        assert min(p.shape) // g == 16 or g == min(p.shape) // 16
        expect = torch.block_diag(*[torch.ones(wo, wi, dtype=torch.bool)] * g)
        assert torch.equal(p, expect), name


def _residual_chain(rng, g: int, planted: bool):
    """Layers of a residual stage as channel-class ids: a stream S read and written by blocks
    S -> H_b -> S. ``planted``: magnitudes block-diagonal under one random labelling of every class."""
    from ltc.compressor.structure import _Layer

    n_s = g * int(rng.integers(2, 6))
    n_blocks = int(rng.integers(1, 4))
    widths = [g * int(rng.integers(2, 6)) for _ in range(n_blocks)]
    total = n_s + sum(widths)
    ids = rng.permutation(total)  # class ids in any order
    truth = np.concatenate([rng.permutation(n) % g for n in [n_s, *widths]])
    stream, start, layers = ids[:n_s], n_s, []
    for b, w in enumerate(widths):
        hidden = ids[start:start + w]
        start += w
        for k, (x, y) in enumerate(((stream, hidden), (hidden, stream))):
            m = rng.uniform(0.0, 1.0, (len(y), len(x)))
            if planted:
                lab = np.empty(total, dtype=np.int64)
                lab[ids] = truth
                m = np.where(lab[y][:, None] == lab[x][None, :], m + 1.0, m * 0.01)
            layers.append(_Layer(f"b{b}.conv{k}", m, g, 9, x.copy(), y.copy(), int(m.size)))
    lab = np.empty(total, dtype=np.int64)
    lab[ids] = truth
    return layers, lab


@pytest.mark.parametrize("seed", range(12))
def test_chained_groups_give_every_class_one_group(seed):
    """Residual stages: each channel class gets one group in every layer that reads or writes it (so
    the permutations fold and no Gather is needed), every layer's blocks are balanced, and a planted
    block structure shared by the whole stage is recovered."""
    from ltc.compressor.structure import chained_groups

    rng = np.random.default_rng(seed)
    g = int(rng.choice([2, 4]))
    planted = bool(seed % 2)
    layers, truth = _residual_chain(rng, g, planted)
    got = chained_groups(layers, groups=g)
    assert set(got) == {la.name for la in layers}
    label: dict[int, int] = {}
    kept = 0.0
    for la in layers:
        og, ig, gg, chain = got[la.name]
        assert gg == g and chain == 0
        assert np.bincount(og, minlength=g).tolist() == [len(og) // g] * g
        assert np.bincount(ig, minlength=g).tolist() == [len(ig) // g] * g
        for ids, grp in ((la.y_ids, og), (la.x_ids, ig)):
            for c, k in zip(ids.tolist(), grp.tolist(), strict=True):
                assert label.setdefault(c, k) == k, (la.name, c)
        kept += float(la.mag[og[:, None] == ig[None, :]].sum())
    if planted:  # the planted labelling's kept magnitude (up to renaming the groups)
        assert kept == pytest.approx(sum(float(la.mag[truth[la.y_ids][:, None] == truth[la.x_ids][None, :]].sum())
                                         for la in layers))
    else:  # never worse than a random labelling of the classes
        rand = []
        for _ in range(20):
            lab = {c: k for c, k in zip(label, rng.permutation(len(label)) % g, strict=True)}
            rand.append(sum(float(la.mag[np.array([lab[c] for c in la.y_ids])[:, None]
                                         == np.array([lab[c] for c in la.x_ids])[None, :]].sum()) for la in layers))
        assert kept >= max(rand)


def test_chained_groups_settle_one_g_per_class_by_macs():
    """A layer whose classes already run another G takes it when it fits, else it stays dense; a
    chain whose channel sets overlap partly (a Concat) is clustered layer by layer."""
    from ltc.compressor.structure import _Layer, chained_groups

    rng = np.random.default_rng(0)
    a = _Layer("a", rng.uniform(size=(64, 64)), 4, 9, np.arange(64), np.arange(64, 128), 10_000)
    b = _Layer("b", rng.uniform(size=(64, 32)), 2, 9, np.arange(200, 232), np.arange(64), 100)
    got = chained_groups([a, b], align=8)  # b would need 8-wide groups (slower than dense): dense
    assert set(got) == {"a"} and got["a"][2] == 4
    got = chained_groups([a, b], groups=4)  # the user asked for G: b takes the G of its neighbour
    assert got["b"][2] == 4 and np.array_equal(got["b"][0], got["a"][1])
    c = _Layer("c", rng.uniform(size=(64, 32)), 4, 9, np.arange(200, 232), np.arange(32, 96), 10)  # half of a's input
    got = chained_groups([a, c], groups=4)
    for la in (a, c):
        og, ig, g, _ = got[la.name]
        assert g == 4 and np.bincount(og).tolist() == [len(og) // 4] * 4 and np.bincount(ig).tolist() == [len(ig) // 4] * 4


def test_regroup_without_channel_links_clusters_layer_by_layer():
    """A model ltc cannot export (no ``input_shape`` here) still gets a regroup ticket: each layer
    co-clustered alone, as with ``chain=False``."""
    model, mask = _pruned(1, rate=0.75, model_name="resnet20")
    alone, layers_alone = regroup(model, mask, chain=False)
    del model.input_shape
    new, layers = regroup(model, mask)
    assert layers == layers_alone and all(torch.equal(new[k], alone[k]) for k in new)
    assert not any("chain" in info for info in layers.values())


@pytest.mark.parametrize("chain", [True, False])
def test_chained_regroup_of_a_resnet_needs_no_gathers(chain):
    """ResNet-20's stages as one chain: the grouped model is exact and, chained, needs no channel
    Gather (clustered layer by layer, the residual stream's readers disagree on its order)."""
    from ltc.compressor.pruning import apply_mask
    from ltc.exporters.torch_export import export_onnx
    from ltc.passes import compress

    model, mask = _pruned(0, rate=0.75, model_name="resnet20")
    new, layers = regroup(model, mask, chain=chain)
    grouped = {n: i["groups"] for n, i in layers.items() if i["groups"] > 1}
    assert len(grouped) >= 8
    assert all(("chain" in layers[n]) == chain for n in grouped)
    apply_mask(model, new)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        export_onnx(model, f"{tmp}/m.onnx", (1, 16, 16), keep_batchnorm=True)
        r = compress(onnx.load(f"{tmp}/m.onnx"), regroup=True, groups=grouped, round_to=1)
    assert r.verification.passed and len(r.regroup.grouped) == len(grouped)
    assert (r.regroup.gathers == 0) == chain


def test_choose_groups_respects_density_alignment_and_overrides():
    assert choose_groups(64, 64, 9, density=0.3, align=8) == 4  # 1/4 is nearest to 0.3 (3 does not divide)
    assert choose_groups(64, 64, 9, density=0.05, align=16) == 4  # widths 32 or 16 only
    assert choose_groups(64, 64, 9, density=0.9) == 1  # dense is nearer than 1/2
    # across IMP rounds (38% of the survivors each) G grows with the sparsity while a finer G is faster;
    # at 7.75% G=16 (16 wide, nearest) would be slower than G=8 (cost table: 4.5 vs 1.85 per MAC): 8 stays
    g, gs = 1, []
    for _ in range(4):
        g = choose_groups(128, 128, 9, density=0.62 / g, align=8)
        gs.append(g)
    assert gs == [2, 4, 8, 8]
    assert choose_groups(128, 128, 9, density=0.07, align=8, window=1.0) == 16  # nearest, without a window
    assert choose_groups(64, 48, 9, density=0.1, groups=4) == 4
    assert choose_groups(64, 48, 9, density=0.1, groups=5) == 1  # does not divide
    assert choose_groups(64, 64, 9, density=0.1, group_width=16) == 4


@pytest.mark.parametrize("seed", range(4))
def test_chosen_groups_are_aligned_faster_and_fastest_near_the_density(seed):
    from ltc.passes.cost import predicted_speedup

    rng = np.random.default_rng(seed)
    for _ in range(200):
        n_out, n_in = (int(8 * rng.integers(1, 33)) for _ in range(2))
        kernel, align = int(rng.choice([1, 9])), int(rng.choice([1, 8, 16]))
        density = float(rng.uniform(0.01, 1.0))
        g = choose_groups(n_out, n_in, kernel, density, align=align)
        if g == 1:
            continue
        assert n_out % g == 0 and n_in % g == 0 and (n_out // g) % align == 0 and (n_in // g) % align == 0
        speed = predicted_speedup(g, min(n_out, n_in) // g, kernel)
        assert speed > 1.0
        if 0.5 <= g * density <= 2.0:  # inside the window: no aligned G there is predicted faster
            for h in range(2, min(n_out, n_in) + 1):
                if (n_out % h or n_in % h or (n_out // h) % align or (n_in // h) % align
                        or not 0.5 <= h * density <= 2.0):
                    continue
                assert predicted_speedup(h, min(n_out, n_in) // h, kernel) <= speed + 1e-12, (n_out, n_in, density, g, h)


def test_structure_needs_weight_pruning():
    with pytest.raises(LtcError, match="--structure refill"):
        PruneHparams(strategy="channel", structure="refill").validate()
    with pytest.raises(LtcError, match="structure"):
        PruneHparams(structure="blocks").validate()


# ----------------------------------------------------------------------------------------------- end to end
THP = TrainHparams(model="conv2", dataset="synthetic", iterations=20, eval_every=10, batch_size=30, lr=1e-3)


@pytest.mark.parametrize("structure", ["refill", "refill+", "regroup"])
def test_structured_ticket_exports_compresses_verifies_and_benches(tmp_path, structure):
    php = PruneHparams(rounds=1, rate_conv=0.6, rate_fc=0.6, controls="random", structure=structure,
                       group_width=16)
    run = Path(ticket_search(THP, php, tmp_path)["run_dir"]) / "trial0"
    path = run / "ticket_round1.pt"
    ticket = load_ticket(path)
    assert ticket["structure"]["method"] == structure
    onnx_path = export_ticket(path, tmp_path / "m.onnx")
    doc = compress_file(onnx_path, tmp_path / "c.onnx", path, round_to=1)
    assert doc["verification"]["passed"] and doc["mask"]["unmatched"] == []
    if structure == "regroup":
        assert ticket["structure"]["kind"] == "group"
        assert doc["options"]["regroup"] and doc["regroup"]["grouped"] >= 1
        groups = [a.i for n in onnx.load(tmp_path / "c.onnx").graph.node for a in n.attribute if a.name == "group"]
        assert max(groups) > 1
    else:
        assert ticket["structure"]["kind"] == "channel" and doc["regroup"] is None
        assert doc["after"]["parameters"] < 0.7 * doc["before"]["parameters"]
    rep = bench([str(onnx_path), str(tmp_path / "c.onnx")], BenchOptions(warmup=1, iterations=3, rounds=2))
    assert len(rep["models"]) == 2 and rep["runs"]


@pytest.mark.parametrize("reset", ["init", "rewind"])
def test_resumed_structured_search_equals_a_fresh_one(tmp_path, reset):
    """A structured search interrupted after round 1 resumes to the same round-2 ticket as an
    uninterrupted one (masks and trained weights bit for bit)."""
    php = PruneHparams(rounds=2, rate_conv=0.6, rate_fc=0.6, controls="none", structure="regroup",
                       reset=reset, rewind_iteration=10 if reset == "rewind" else 0)
    fresh = Path(ticket_search(THP, php, tmp_path / "a")["run_dir"]) / "trial0"
    resumed = Path(ticket_search(dataclasses.replace(THP), php, tmp_path / "b")["run_dir"]) / "trial0"
    for f in ("round2.json", "ticket_round2.pt"):
        (resumed / f).unlink()
    ticket_search(THP, php, tmp_path / "b")
    a, b = load_ticket(fresh / "ticket_round2.pt"), load_ticket(resumed / "ticket_round2.pt")
    for name in a["final"]:
        assert torch.equal(a["final"][name], b["final"][name]), name
    for name in a["masks"]:
        assert torch.equal(a["masks"][name], b["masks"][name]), name
