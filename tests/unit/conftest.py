"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def torch_one_thread():
    """Run torch on one thread: on a shared 2-core CPU oversubscription makes tiny models 10x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
