"""Moved to :mod:`ltc.reporting.report` (this name is kept so code importing the old path keeps working: it is the
same module object)."""

import sys

from ltc.reporting import report

sys.modules[__name__] = report
