"""Every list of names has one home, and each place that acts on a name agrees with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ltc
from ltc.controls import CONTROLS, VARIANTS


def test_controls_registry_is_what_the_search_runs_and_the_schema_allows():
    from ltc.compressor.search import CONTROL_STARTS
    from ltc.compressor.search import VARIANTS as SEARCH_VARIANTS

    assert set(CONTROL_STARTS) == set(CONTROLS) and tuple(VARIANTS) == SEARCH_VARIANTS
    assert [n for n, v in VARIANTS.items() if not v.control] == ["ticket"]
    schema = json.loads((Path(ltc.__file__).parent / "compressor/summary-schema.json").read_text())
    variants = schema["properties"]["rounds"]["items"]["properties"]["variants"]
    assert variants["propertyNames"]["enum"] == list(VARIANTS)


def test_search_options_name_the_registries():
    from ltc.compressor.hparams import STRATEGY_NAMES, STRUCTURE_NAMES, PruneHparams
    from ltc.compressor.pruning import STRATEGIES
    from ltc.compressor.structure import STRUCTURES

    assert tuple(STRATEGIES) == STRATEGY_NAMES and STRUCTURES == STRUCTURE_NAMES
    assert PruneHparams().controls == "reinit,random"  # the default (and so old run folders' names) stays
    for name in CONTROLS:
        assert name in PruneHparams.__dataclass_fields__["controls"].metadata["help"]


def test_a_round_record_with_an_unknown_variant_is_refused(tmp_path):
    from ltc.compressor.search import RESULT_KEYS, read_record
    from ltc.errors import LtcError

    res = dict.fromkeys(RESULT_KEYS, 1.0)
    (tmp_path / "round1.json").write_text(json.dumps({"round": 1, "density": 0.5, "results": {"ticket": res}}))
    assert read_record(tmp_path / "round1.json", 1)["results"]["ticket"] == res
    (tmp_path / "round1.json").write_text(json.dumps({"round": 1, "density": 0.5, "results": {"lucky": res}}))
    with pytest.raises(LtcError, match="unknown variant 'lucky'"):
        read_record(tmp_path / "round1.json", 1)


def test_run_tables_list_the_ticket_first_then_the_controls_in_registry_order():
    from ltc.reporting.runs import run_rows, summary_markdown

    stat = {"mean": 0.5, "min": 0.4, "max": 0.6, "n": 2}
    res = {"test_accuracy": stat, "early_stop_iteration": stat, "final_train_accuracy": stat,
           "final_test_accuracy": stat}
    summary = {"run_dir": "r", "rounds": [{"round": 1, "density": 0.8, "trials": 2,
                                           "variants": {"random": res, "ticket": res, "reinit": res}}]}
    assert [r[2] for r in run_rows(summary)] == ["ticket", "reinit", "random"]
    md = summary_markdown(summary)
    assert md.count("\n| 1 | 80.0% |") == 3 and "| 50.00% [40.00, 60.00] | 0 [0, 1] | 50.00% |" in md
