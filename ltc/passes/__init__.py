"""ONNX graph passes: channel-class analysis, re-indexing, dead-channel removal, regroup, verification.

    from ltc.passes import RemoveDeadChannels, Regroup, ApplyMasks, compress, register_rule

Custom ops: subclass :class:`ltc.passes.rules.Rule`, add it to a table of your own
(``default_rules().with_rule(...)``, passed as ``rules=``) or to the default one with
:func:`register_rule` (see ltc/passes/ops).
"""

from ltc.passes.base import Pass, PassManager, PassResult, Sequential
from ltc.passes.channels import ChannelGraph
from ltc.passes.fold import FoldConstants
from ltc.passes.pipeline import ApplyMasks, CompressResult, RemoveDeadChannels, compress
from ltc.passes.regroup import Regroup
from ltc.passes.reindex import apply_reindex, ordered_plan, permutation_plan
from ltc.passes.rules import RULES, Refuse, Rule, RuleTable, default_rules, register_rule
from ltc.passes.verify import Verification, verify

__all__ = [
    "RULES", "ApplyMasks", "ChannelGraph", "CompressResult", "FoldConstants", "Pass", "PassManager", "PassResult", "Refuse",
    "Regroup", "RemoveDeadChannels", "Rule", "RuleTable", "Sequential", "Verification", "apply_reindex", "compress",
    "default_rules", "ordered_plan", "permutation_plan", "register_rule", "verify",
]
