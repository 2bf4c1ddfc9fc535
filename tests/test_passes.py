"""The pass contract: call -> PassResult(model, modified), invariants, composition."""

from __future__ import annotations

import numpy as np
import pytest

from ltc.errors import InternalError, LtcError
from ltc.passes import ApplyMasks, Pass, PassManager, PassResult, RemoveDeadChannels, Sequential
from tests.helpers import assert_equivalent, conv_weight, make_model, node, vec, weight_shapes

X = {"x": ["N", 4, 6, 6]}


def _model(dead=()):
    nodes = [node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), node("Relu", ["a"], ["r"]),
             node("Conv", ["r", "w1", "b1"], ["y"])]
    return make_model(nodes, X, ["y"], {"w0": conv_weight(8, 4, dead=list(dead)), "w1": conv_weight(5, 8, 1),
                                        "b1": vec(5)})


def test_masks_then_removal_in_sequence():
    model = _model()
    mask = np.ones((8, 4, 3, 3), bool)
    mask[[0, 5]] = False
    r = Sequential(ApplyMasks({"w0": mask}), RemoveDeadChannels())(model)
    assert r.modified
    assert r.details["apply-masks"]["weights_zeroed"] == 2 * 36
    assert weight_shapes(r.model, "Conv") == [(6, 4, 3, 3), (5, 6, 1, 1)]
    assert weight_shapes(model, "Conv") == [(8, 4, 3, 3), (5, 8, 1, 1)]  # the input is not modified


def test_removal_is_idempotent():
    first = RemoveDeadChannels()(_model(dead=[1, 2]))
    assert first.modified
    second = RemoveDeadChannels()(first.model)
    assert not second.modified
    assert_equivalent(first.model, second.model, X)


def test_pass_manager_repeats_until_nothing_changes():
    r = PassManager(RemoveDeadChannels())(_model(dead=[3]))
    assert r.modified and len(r.details["steps"]) == 2


def test_nothing_dead_is_not_modified():
    assert not RemoveDeadChannels()(_model()).modified


def test_mask_shape_mismatch_is_an_error_naming_the_tensor():
    with pytest.raises(LtcError, match="w0"):
        ApplyMasks({"w0": np.ones((4, 4, 3, 3), bool)})(_model())


def test_ensures_catches_a_pass_that_drops_a_graph_output():
    class Broken(Pass):
        name = "broken"

        def call(self, model):
            out = type(model)()
            out.CopyFrom(model)
            del out.graph.node[-1]
            return PassResult(out, True)

    with pytest.raises(InternalError, match="broken.*'y'"):  # a broken postcondition is ltc's fault: exit 2
        Sequential(Broken())(_model())


def test_bad_round_to_is_refused():
    with pytest.raises(LtcError, match="round_to"):
        RemoveDeadChannels(round_to=0)
