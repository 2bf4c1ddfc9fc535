"""torch -> ONNX export, and readers that turn mask files into ``{initializer name: bool array}``."""
