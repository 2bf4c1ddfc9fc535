"""Built-in channel rules, one module per op family; importing this package registers them."""

from ltc.passes.ops import elementwise, layers, norm, shape  # noqa: F401
