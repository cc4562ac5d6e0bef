"""amago2: in-context meta-reinforcement learning with long-context sequence agents."""

__version__ = "0.1.0"
