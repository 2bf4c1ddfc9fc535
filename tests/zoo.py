"""torchvision and timm for tests and experiments, when installed (they are optional, not ltc
dependencies).

torchvision's PyPI wheel is a CUDA build: with this project's CPU torch its compiled ops (NMS,
RoIAlign; no classification model uses them) fail to register and ``import torchvision`` raises.
The model definitions are plain Python, so :func:`import_zoos` skips the failing registrations while
it imports. Once imported, ``import torchvision`` anywhere (ltc's ``--model torchvision:NAME``) finds
the module.
"""

from __future__ import annotations


def import_zoos():
    """(torchvision, timm); either is None when not installed."""
    import torch.library

    real = torch.library.register_fake

    def tolerant(name, *args, **kwargs):
        def deco(fn):
            try:
                return real(name, *args, **kwargs)(fn)
            except RuntimeError:  # torchvision::nms and friends: the compiled op did not load
                return fn
        return deco

    torch.library.register_fake = tolerant
    try:
        try:
            import torchvision
        except ImportError:
            torchvision = None
        try:
            import timm
        except ImportError:
            timm = None
    finally:
        torch.library.register_fake = real
    return torchvision, timm
