"""bpbeval: exact, fast bits-per-byte evaluation for PyTorch language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpbeval.metric import BitsPerByte

__all__ = ["BitsPerByte"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: torchmetrics adds ~1.5 s to the start of every command
    # line, and the tokenizer's does not need it.
    if name == "BitsPerByte":
        from bpbeval.metric import BitsPerByte

        return BitsPerByte
    raise AttributeError(f"module 'bpbeval' has no attribute {name!r}")
