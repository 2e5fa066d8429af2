"""bpbeval: exact, fast bits-per-byte evaluation for PyTorch language models."""

__version__ = "0.1.0"
