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


def test_pass_manager_takes_a_list_steps_and_early_stop_as_onnx_ir_does():
    """``PassManager([a, b], steps, early_stop)``: the passes run in order each round; with
    early_stop the rounds end at the first that modifies nothing, without it every step runs;
    ``max_steps`` still works, with a DeprecationWarning."""
    import warnings

    from ltc.passes import FoldConstants

    model = _model(dead=[3])
    r = PassManager([FoldConstants(), RemoveDeadChannels()], steps=5)(model)
    assert r.modified and len(r.info.steps) == 2  # (removes, then finds nothing more)
    assert [name for name, _ in r.info.steps[0].info.steps] == ["fold-constants", "remove-dead-channels"]
    assert len(PassManager(RemoveDeadChannels(), steps=5, early_stop=False)(model).info.steps) == 5
    assert len(PassManager(RemoveDeadChannels(), steps=1)(model).info.steps) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(PassManager(RemoveDeadChannels(), max_steps=1)(model).info.steps) == 1
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_crash_blames_an_invalid_model_and_ltc_on_a_valid_one(wrapped):
    """A pass that crashes (alone, or inside a Sequential or PassManager, which turn the crash into an
    InternalError naming the pass) is the input's fault when the model fails onnx.checker (exit 1,
    LtcError) and ltc's when it is valid (exit 2, InternalError)."""
    from ltc.passes.pipeline import input_blamed

    class Crashes(Pass):
        name = "crashes"

        def call(self, model):
            raise ValueError("boom")

    def run(model):
        with input_blamed(model):
            (PassManager([Crashes()]) if wrapped else Crashes())(model)

    import onnx

    valid = onnx.shape_inference.infer_shapes(_model())
    shapes = {v.name: v.type for v in valid.graph.value_info}
    for o in valid.graph.output:  # (the helper leaves output shapes out, which the checker refuses)
        o.type.CopyFrom(shapes.get(o.name, o.type))
    onnx.checker.check_model(valid)
    invalid = onnx.ModelProto.FromString(valid.SerializeToString())
    invalid.graph.node.append(node("Relu", ["undefined"], ["z"]))
    with pytest.raises(LtcError, match="not valid ONNX"):
        run(invalid)
    with pytest.raises(InternalError if wrapped else ValueError, match="crashes: ValueError: boom" if wrapped else "boom"):
        run(valid)


def test_a_pass_that_edits_its_input_inside_a_sequence_is_caught_by_the_outer_check():
    """Only the outermost pass of a nest fingerprints its input (the caller's model); a pass inside a
    Sequential or PassManager that edits that model in place is still caught."""
    class Mutates(Pass):
        name = "mutates"

        def call(self, model):
            model.graph.node[0].name = "renamed"
            return PassResult(model, True)

    for outer in (lambda: Sequential(Mutates()), lambda: PassManager([Mutates()], steps=1)):
        with pytest.raises(InternalError, match="modified its input model"):
            outer()(_model(dead=[3]))
