"""Moved to :mod:`ltc.reporting.tables` (this name is kept so code importing the old path keeps working: it is the
same module object)."""

import sys

from ltc.reporting import tables

sys.modules[__name__] = tables
