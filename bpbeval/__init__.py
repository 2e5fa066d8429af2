"""bpbeval: exact, fast bits-per-byte evaluation for PyTorch language models."""

from bpbeval.metric import BitsPerByte

__all__ = ["BitsPerByte"]
__version__ = "0.1.0"
