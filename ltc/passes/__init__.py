"""ONNX graph passes: channel-class analysis, dead-channel removal, verification.

    from ltc.passes import RemoveDeadChannels, ApplyMasks, compress
"""

from ltc.passes.base import Pass, PassManager, PassResult, Sequential
from ltc.passes.channels import RULES, ChannelGraph
from ltc.passes.compress import ApplyMasks, CompressResult, RemoveDeadChannels, compress
from ltc.passes.verify import Verification, verify

__all__ = [
    "RULES", "ApplyMasks", "ChannelGraph", "CompressResult", "Pass", "PassManager", "PassResult",
    "RemoveDeadChannels", "Sequential", "Verification", "compress", "verify",
]
