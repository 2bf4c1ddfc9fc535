"""Every test draws its random weights from its own seed, so results do not depend on test order."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests import helpers


@pytest.fixture(autouse=True)
def _seeded_rng(request):
    helpers.RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
    yield
