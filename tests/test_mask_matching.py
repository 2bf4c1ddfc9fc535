"""Masks keyed by torch parameter names, matched to ONNX initializers that both exporters rename and
(Linear) transpose: a mask lands on its own weight or is refused, never on another weight of the same
shape. Random MLP/attention-like stacks of Linear layers whose shapes collide (up [h, c] vs down^T
[h, c], square q/k/v/o), every mask source, both exporters. The oracle is torch itself: the masked
torch model's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
prune = pytest.importorskip("torch.nn.utils.prune")

from ltc.errors import LtcError  # noqa: E402
from ltc.exporters.torch_export import export_onnx  # noqa: E402
from ltc.masks import match_masks, read_masks  # noqa: E402
from ltc.passes import ApplyMasks  # noqa: E402
from tests.helpers import run  # noqa: E402


class Block(nn.Module):
    """A transformer-like block: square projections and an up/down MLP whose shapes are each other's
    transpose (the pair that collides once an exporter stores Linear weights as [in, out])."""

    def __init__(self, c: int, hidden: int, attention: bool):
        super().__init__()
        self.attention = attention
        if attention:
            self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.up, self.down = nn.Linear(c, hidden), nn.Linear(hidden, c)

    def forward(self, x):
        if self.attention:
            scores = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1), dim=-1)
            x = x + self.o(scores @ self.v(x))
        return x + self.down(torch.relu(self.up(x)))


def _net(seed: int) -> nn.Module:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c = int(rng.choice([8, 12]))
    blocks = [Block(c, int(rng.choice([2 * c, 3 * c])), bool(rng.random() < 0.6)) for _ in range(int(rng.integers(1, 3)))]
    return nn.Sequential(*blocks).eval()


def _prune(net: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """torch.nn.utils.prune on every Linear weight: unstructured, or whole rows (structured); returns
    the masks by parameter name."""
    rng = np.random.default_rng(seed)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            if rng.random() < 0.5:
                prune.l1_unstructured(m, "weight", float(rng.choice([0.3, 0.6])))
            else:
                prune.ln_structured(m, "weight", 0.25, n=1, dim=0)
    return {k[: -len("_mask")]: v.clone() for k, v in net.state_dict().items() if k.endswith("_mask")}


def _export(net: nn.Module, path, exporter: str) -> onnx.ModelProto:
    export_onnx(net, path, (5, net[0].up.in_features), exporter=exporter)
    return onnx.load(path)


def _outputs_equal(model: onnx.ModelProto, net: nn.Module, seed: int) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 5, net[0].up.in_features)).astype(np.float32))
    with torch.no_grad():
        want = net(x).numpy()
    got = run(model, {model.graph.input[0].name: x.numpy()}, optimize=False)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


CASES = [(seed, exporter) for seed in range(3) for exporter in ("legacy", "dynamo")]


@pytest.mark.parametrize(("seed", "exporter"), CASES)
def test_prune_state_dict_of_a_dense_export_lands_on_its_weights(seed, exporter, tmp_path):
    """The model is exported before pruning (dense weights): only the ``*_orig`` values can tell the
    weights apart. Applying the matched masks to the dense export computes what the pruned torch
    model computes."""
    net = _net(seed)
    model = _export(net, tmp_path / "m.onnx", exporter)
    _prune(net, seed)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    m = match_masks(model, read_masks(tmp_path / "sd.pt"))
    assert not [n for n in m.unmatched if n.endswith("weight")]
    _outputs_equal(ApplyMasks(m.masks)(model).model, net, seed)


@pytest.mark.parametrize(("seed", "exporter"), CASES)
def test_plain_masks_of_a_masked_export_land_on_their_weights(seed, exporter, tmp_path):
    """The model is exported pruned (its zeros are the masks'); the mask file holds masks only, by
    torch name. Every mask lands on its weight (re-applying them changes nothing), none is refused."""
    net = _net(seed)
    masks = _prune(net, seed)
    model = _export(net, tmp_path / "m.onnx", exporter)
    torch.save(masks, tmp_path / "masks.pt")
    m = match_masks(model, read_masks(tmp_path / "masks.pt"))
    assert sorted(m.matched) == sorted(masks)
    for name, init in m.matched.items():  # the initializer holds the masked weight (transposed or not)
        w = net.get_submodule(name.rsplit(".", 1)[0]).weight.detach().numpy()
        a = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == init))
        np.testing.assert_array_equal(a.T if name in m.transposed else a, w)
    _outputs_equal(ApplyMasks(m.masks)(model).model, net, seed)


@pytest.mark.parametrize(("seed", "exporter"), CASES[:2])
def test_plain_masks_of_a_dense_export_are_refused(seed, exporter, tmp_path):
    """Masks only, on a model whose weights carry none of their zeros: nothing confirms any match, so
    a renamed weight is refused by name, never guessed from its shape (even when one shape fits)."""
    net = _net(seed)
    model = _export(net, tmp_path / "m.onnx", exporter)
    masks = _prune(net, seed)
    torch.save(masks, tmp_path / "masks.pt")
    with pytest.raises(LtcError, match="does not guess by shape"):
        match_masks(model, read_masks(tmp_path / "masks.pt"))


def test_one_candidate_of_the_right_shape_is_not_enough(tmp_path):
    """The reported case: an up projection's mask [h, c] and one initializer of that shape, the down
    projection stored transposed. Its values contradict the mask, so it is not taken."""
    net = nn.Sequential(Block(8, 32, attention=False)).eval()
    model = _export(net, tmp_path / "m.onnx", "legacy")
    up_mask = torch.ones(32, 8, dtype=torch.bool)
    up_mask[:4] = False
    torch.save({"0.up.weight": up_mask}, tmp_path / "masks.pt")
    with pytest.raises(LtcError, match=r"'0\.up\.weight'.*does not guess"):
        match_masks(model, read_masks(tmp_path / "masks.pt"))


@pytest.mark.parametrize("orig", ["a string", 3, None, "shape"])
def test_prune_state_dict_with_a_bad_orig_is_refused(orig, tmp_path):
    mask = torch.ones(4, 3)
    value = torch.ones(2, 2) if orig == "shape" else orig
    torch.save({"fc.weight_mask": mask, "fc.weight_orig": value}, tmp_path / "sd.pt")
    with pytest.raises(LtcError, match="fc.weight_orig"):
        read_masks(tmp_path / "sd.pt")


def test_an_all_zero_layer_of_the_same_shape_takes_no_mask(tmp_path):
    """A zero-initialised layer (ControlNet's zero convs, adapters) holds every mask's zeros and equals
    any weights scaled by 0: it is no evidence. A mask that only it would fit is refused; with the
    real weight masked in the export, the mask lands there."""
    from ltc.masks import MaskSet
    from tests.helpers import conv_weight, make_model, node

    trained = conv_weight(4, 4, 3)
    mask = np.ones((4, 4, 3, 3), bool)
    mask[1] = False
    nodes = [node("Conv", ["x", "onnx::Conv_1"], ["a"], pads=[1] * 4), node("Conv", ["a", "onnx::Conv_2"], ["y"], pads=[1] * 4)]
    for weights in ({"layer1.conv.weight": trained}, {}):
        model = make_model(nodes, {"x": ["N", 4, 6, 6]}, ["y"], {"onnx::Conv_1": trained, "onnx::Conv_2": np.zeros((4, 4, 3, 3), np.float32)})
        if weights:  # the file's weights are the dense layer's: that confirms it, not the zero one
            assert match_masks(model, MaskSet({"layer1.conv.weight": mask}, weights)).matched == {
                "layer1.conv.weight": "onnx::Conv_1"}
        else:
            with pytest.raises(LtcError, match="does not guess"):
                match_masks(model, MaskSet({"layer1.conv.weight": mask}, weights))
        masked = make_model(nodes, {"x": ["N", 4, 6, 6]}, ["y"], {"onnx::Conv_1": np.where(mask, trained, 0),
                                                                  "onnx::Conv_2": np.zeros((4, 4, 3, 3), np.float32)})
        assert match_masks(masked, MaskSet({"layer1.conv.weight": mask}, weights)).matched == {"layer1.conv.weight": "onnx::Conv_1"}


def test_a_mask_for_a_layer_the_export_dropped_is_unmatched_not_refused(tmp_path):
    """An auxiliary head (Inception's AuxLogits) is gone from an eval export; its mask has the shape
    of a weight another mask took by its values: listed as unmatched, not refused."""
    from ltc.masks import MaskSet
    from tests.helpers import conv_weight, make_model, node

    w = conv_weight(4, 4, 3)
    m = np.ones((4, 4, 3, 3), bool)
    m[2] = False
    model = make_model([node("Conv", ["x", "onnx::Conv_9"], ["y"], pads=[1] * 4)], {"x": ["N", 4, 6, 6]}, ["y"],
                       {"onnx::Conv_9": np.where(m, w, 0)})
    aux = np.ones((4, 4, 3, 3), bool)
    aux[0] = False
    r = match_masks(model, MaskSet({"body.conv.weight": m, "aux.conv.weight": aux}, {"body.conv.weight": w}))
    assert r.matched == {"body.conv.weight": "onnx::Conv_9"} and r.unmatched == ["aux.conv.weight"]
