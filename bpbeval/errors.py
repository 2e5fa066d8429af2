"""The exceptions bpbeval raises for bad input.

Every message says what was wrong and how to fix it. Command-line tools catch
:class:`BpbevalError` and print its message as one line, without a traceback.
Argument checks on tensors (the metric, the loss helpers) raise ``ValueError``
and ``TypeError`` instead, following torch and torchmetrics.
"""

from __future__ import annotations


class BpbevalError(Exception):
    """Base class of the errors a user can fix by changing their input."""


class DataError(BpbevalError):
    """A document source is missing, empty, malformed or not UTF-8."""


class TokenizerError(BpbevalError):
    """A tokenizer cannot be trained, loaded, saved or adapted."""


class CheckpointError(BpbevalError):
    """A checkpoint is missing, of an unknown format, corrupt or inconsistent."""


class ScoringError(BpbevalError):
    """Scoring cannot give an exact answer: bytes not conserved, a non-causal model, ..."""


class CacheError(BpbevalError):
    """A result cache cannot be read or written."""


class OutputError(BpbevalError):
    """An output cannot be written where it points, or its name says another format."""


class MissingDependencyError(BpbevalError):
    """An optional extra (``bpbeval[plot]``, ``bpbeval[hf]``) is needed but not installed."""


def is_rust_panic(error: BaseException) -> bool:
    """Whether ``error`` is a panic in a Rust extension (tiktoken, rustbpe, tokenizers).

    pyo3 raises panics as ``pyo3_runtime.PanicException``, a ``BaseException`` (so that
    ``except Exception`` does not swallow them) in a module nobody can import: it is matched
    by name.

    Example:
        >>> is_rust_panic(ValueError("not a panic"))
        False
    """
    return type(error).__name__ == "PanicException" and type(error).__module__ == "pyo3_runtime"
