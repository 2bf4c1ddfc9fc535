"""ONNX graph passes: channel-class analysis, re-indexing, dead-channel removal, verification.

    from ltc.passes import RemoveDeadChannels, ApplyMasks, compress, register_rule

Custom ops: subclass :class:`ltc.passes.rules.Rule` and :func:`register_rule` it (see ltc/passes/ops).
"""

from ltc.passes.base import Pass, PassManager, PassResult, Sequential
from ltc.passes.channels import RULES, ChannelGraph
from ltc.passes.compress import ApplyMasks, CompressResult, RemoveDeadChannels, compress
from ltc.passes.reindex import apply_reindex, permutation_plan
from ltc.passes.rules import Refuse, Rule, register_rule
from ltc.passes.verify import Verification, verify

__all__ = [
    "RULES", "ApplyMasks", "ChannelGraph", "CompressResult", "Pass", "PassManager", "PassResult", "Refuse",
    "RemoveDeadChannels", "Rule", "Sequential", "Verification", "apply_reindex", "compress", "permutation_plan",
    "register_rule", "verify",
]
