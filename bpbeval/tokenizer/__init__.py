"""Tokenizers for exact bits per byte: train, run, save, audit, adapt, and read nanochat's.

bpb is only as fair as ``token_bytes``, the UTF-8 bytes each token id stands for. Ours come
from each token's raw bytes, never from ``decode`` (which turns a partial UTF-8 sequence into
a 3-byte U+FFFD); :func:`audit` checks that they add up to the text's bytes.
"""

from bpbeval.tokenizer.adapters import HuggingFaceTokenizer, from_huggingface, from_tiktoken
from bpbeval.tokenizer.audit import AuditReport, TokenMismatch, Violation, audit
from bpbeval.tokenizer.core import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    TextTokenizer,
    Tokenizer,
    sha256_json,
    train,
)
from bpbeval.tokenizer.loading import load_tokenizer
from bpbeval.tokenizer.nanochat import load_nanochat

__all__ = [
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "AuditReport",
    "HuggingFaceTokenizer",
    "TextTokenizer",
    "TokenMismatch",
    "Tokenizer",
    "Violation",
    "audit",
    "from_huggingface",
    "from_tiktoken",
    "load_nanochat",
    "load_tokenizer",
    "sha256_json",
    "train",
]
