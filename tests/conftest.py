"""What several test files share: a clean gin configuration and the smallest agent."""

import gin
import pytest

# The smallest agent that still exercises every part: a one-layer GRU of width 16.
TINY_AGENT = [
    'Agent.traj_encoder = "gru"',
    "Agent.d_model = 16",
    "Agent.n_layers = 1",
    "Agent.d_tstep = 16",
    "Agent.d_hidden = 32",
]


@pytest.fixture
def clean_gin():
    """Gin bindings start empty and are dropped afterwards, so tests cannot leak config."""
    gin.clear_config()
    yield
    gin.clear_config()
