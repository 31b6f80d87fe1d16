import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for `import oracle`
torch.set_num_threads(int(os.environ.get("EDGEZOO_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
