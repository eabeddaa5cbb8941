import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from the same global random state: no result depends on test order or on chance."""
    random.seed(0)
    torch.manual_seed(0)
