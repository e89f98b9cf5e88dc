"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """One intra-op thread for the whole session, module fixtures included: the tensors here are
    small, and a second thread saves little on two idle cores but costs several times over on
    busy ones (the threads wait for each other); sums then do not depend on the machine, so runs
    compare exactly with each other and with subprocesses started with OMP_NUM_THREADS=1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """One thread for the test, said where the test depends on it (the session default too)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
