"""toolsim: simulated tools for training and evaluating tool-using language models."""

__version__ = "0.1.0"
