"""ltc: lottery tickets that are really smaller and faster at deployment.

``ltc.search`` and ``ltc.export`` (the ticket search and ONNX export for any PyTorch model) import
torch on first use only, so ``import ltc`` stays light."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "search":
        from ltc.compressor.usermodel import search

        return search
    if name == "export":
        from ltc.exporters.ticket_export import export

        return export
    raise AttributeError(f"module 'ltc' has no attribute {name!r}")
