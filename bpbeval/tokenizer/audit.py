"""The byte-conservation audit: do a tokenizer's ``token_bytes`` add up to the text's bytes?

bpb divides by the text's UTF-8 bytes but counts them through ``token_bytes[ids]``; the two
agree only if every text's tokens stand for exactly its bytes. Ours always do (their table
comes from raw token bytes); adapted tokenizers may not: a normaliser rewrites the text, a
pre-tokenizer adds a prefix space, unknown characters are dropped or become ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, runtime_checkable

from bpbeval.tokenizer.core import TextTokenizer

# Texts are encoded this many at a time, so a large corpus is audited in bounded memory.
_CHUNK = 1024


@dataclass(frozen=True)
class TokenMismatch:
    """A token, or a run of tokens sharing one span of text, whose bytes disagree with it.

    Attributes:
        position: index of the first token in the text's token sequence.
        ids: the token ids.
        text: the span of the original text they cover ("" if they cover none).
        expected_bytes: UTF-8 bytes of ``text``.
        counted_bytes: the sum of ``token_bytes`` over ``ids``.
    """

    position: int
    ids: tuple[int, ...]
    text: str
    expected_bytes: int
    counted_bytes: int


@dataclass(frozen=True)
class Violation:
    """A text whose tokens do not stand for exactly its bytes.

    Attributes:
        index: position of the text in the audited sequence.
        expected_bytes: the text's UTF-8 bytes.
        counted_bytes: ``token_bytes`` summed over its tokens.
        tokens: the tokens responsible, where the tokenizer can say (see :class:`Explains`).
        cause: why, in words.
    """

    index: int
    expected_bytes: int
    counted_bytes: int
    tokens: tuple[TokenMismatch, ...]
    cause: str


@dataclass(frozen=True)
class AuditReport:
    """The result of :func:`audit`: totals over all texts and every violation.

    Attributes:
        texts: how many texts were audited.
        tokens: how many tokens they encode to.
        expected_bytes: their UTF-8 bytes.
        counted_bytes: the bytes ``token_bytes`` counts for their tokens.
        violations: every text whose two counts differ.
    """

    texts: int
    tokens: int
    expected_bytes: int
    counted_bytes: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        """True if every text's tokens stand for exactly its bytes (bpb is exact)."""
        return not self.violations

    def __str__(self) -> str:
        if self.ok:
            return f"bytes conserved on all {self.texts} texts ({self.expected_bytes} bytes)"
        error = (self.counted_bytes - self.expected_bytes) / max(self.expected_bytes, 1)
        lines = [
            f"bytes NOT conserved on {len(self.violations)} of {self.texts} texts: counted "
            f"{self.counted_bytes} for {self.expected_bytes} ({error:+.3%}); bpb would be off"
        ]
        for v in self.violations[:5]:
            lines.append(
                f"  text {v.index}: {v.counted_bytes} bytes counted for {v.expected_bytes}: "
                f"{v.cause}"
            )
            lines.extend(
                f"    token {t.position} ids {list(t.ids)} over {t.text!r}: "
                f"{t.counted_bytes} for {t.expected_bytes}"
                for t in v.tokens[:3]
            )
        if len(self.violations) > 5:
            lines.append(f"  ... and {len(self.violations) - 5} more")
        return "\n".join(lines)


@runtime_checkable
class Explains(Protocol):
    """A tokenizer that can locate and explain a violation (the Hugging Face adapter can)."""

    def explain(self, text: str) -> tuple[list[TokenMismatch], str]:
        """The tokens of ``text`` whose bytes disagree with the text, and the cause."""
        ...


def audit(tokenizer: TextTokenizer, texts: Iterable[str]) -> AuditReport:
    """Check ``sum(token_bytes[encode(t)]) == len(t.encode("utf-8"))`` for every text.

    Args:
        tokenizer: any :class:`~bpbeval.tokenizer.TextTokenizer`.
        texts: the corpus to check on (bpb is exact on exactly the texts that pass).

    Example:
        >>> from bpbeval.tokenizer import train
        >>> tok = train(["naïve café, 東京"] * 5, vocab_size=256 + 9 + 8)
        >>> report = audit(tok, ["café", "東京タワー", "🙂 ok"])
        >>> report.ok, report.expected_bytes
        (True, 27)
    """
    table = tokenizer.token_bytes().tolist()
    violations = []
    n = n_tokens = expected_total = counted_total = 0
    it = iter(texts)
    while chunk := list(islice(it, _CHUNK)):
        for text, ids in zip(chunk, tokenizer.encode_batch(chunk), strict=True):
            expected = len(text.encode("utf-8"))
            counted = sum(table[i] for i in ids)
            if counted != expected:
                violations.append(_violation(tokenizer, n, text, expected, counted))
            expected_total += expected
            counted_total += counted
            n_tokens += len(ids)
            n += 1
    return AuditReport(n, n_tokens, expected_total, counted_total, tuple(violations))


def _violation(
    tokenizer: TextTokenizer, index: int, text: str, expected: int, counted: int
) -> Violation:
    tokens: Sequence[TokenMismatch] = ()
    cause = "the tokenizer cannot map its tokens to the text, so the tokens are not named"
    if isinstance(tokenizer, Explains):
        tokens, cause = tokenizer.explain(text)
    return Violation(index, expected, counted, tuple(tokens), cause)
