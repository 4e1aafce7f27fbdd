import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The models here are tiny: one thread is faster than several (and fair to a shared machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
