"""Scoring results: per-document sums, their totals, and the ratios of both.

One place for the arithmetic every report shares: bits per byte, bits per token and
bytes per token are ratios of exact sums (float64 nats, int64 bytes and tokens), and a
ratio over nothing (0 bytes, 0 tokens) is NaN, never 0 or an exception. eval, compare,
the cache, the plot and the statistics read them from here.

Per-document figures are kept as numpy columns (:class:`DocumentScores`), not one
Python object per document, and by position, not by id: row ``i`` is the ``i``-th
document of the input, whose id the caller already has. So rank 0 holds ten million
documents in about 320 MB; :class:`DocumentScore` is one row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bpbeval.attribution import Attribution, Attributions, CorpusAttribution

LN2 = math.log(2)


def ratio(numerator: ArrayLike, denominator: ArrayLike) -> float | NDArray[np.float64]:
    """``numerator / denominator`` in float64, NaN where the denominator is 0.

    Example:
        >>> ratio(3, 2), ratio(1.0, 0)
        (1.5, nan)
        >>> ratio(np.array([1.0, 2.0]), np.array([4, 0]))
        array([0.25,  nan])
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    out = np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)
    return float(out) if out.ndim == 0 else out


def bits_per_byte(nats: ArrayLike, n_bytes: ArrayLike) -> float | NDArray[np.float64]:
    """Nats over UTF-8 bytes, in bits: NaN at 0 bytes.

    Example:
        >>> round(bits_per_byte(2 * LN2, 4), 12)
        0.5
    """
    return ratio(nats, LN2 * np.asarray(n_bytes, dtype=np.float64))


def bits_per_token(nats: ArrayLike, tokens: ArrayLike) -> float | NDArray[np.float64]:
    """Nats over tokens, in bits: NaN at 0 tokens.

    Example:
        >>> bits_per_token(0.0, 0)
        nan
    """
    return ratio(nats, LN2 * np.asarray(tokens, dtype=np.float64))


def bytes_per_token(n_bytes: ArrayLike, tokens: ArrayLike) -> float | NDArray[np.float64]:
    """UTF-8 bytes over tokens: NaN at 0 tokens.

    Example:
        >>> bytes_per_token(7, 2)
        3.5
    """
    return ratio(n_bytes, tokens)


@dataclass(frozen=True)
class DocumentScore:
    """One document's sums: nats over its scored tokens, its UTF-8 bytes, its tokens, and
    (where computed) its nats and bytes by character class and position."""

    domain: str | None
    nats: float
    bytes: int
    tokens: int
    attribution: Attribution | None = field(default=None, repr=False)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.bytes)


@dataclass(frozen=True, eq=False)
class DocumentScores(Sequence[DocumentScore]):
    """Per-document sums as columns, in input order; a sequence of :class:`DocumentScore`.

    Attributes:
        domain: domain labels, ``None`` for none (numpy objects).
        nats: float64 nats per document.
        bytes: int64 UTF-8 bytes per document.
        tokens: int64 scored tokens per document.

    Example:
        >>> docs = DocumentScores.from_rows([DocumentScore(None, 1.5, 3, 2)])
        >>> len(docs), docs[0], docs.nats
        (1, DocumentScore(domain=None, nats=1.5, bytes=3, tokens=2), array([1.5]))
    """

    domain: NDArray[np.object_]
    nats: NDArray[np.float64]
    bytes: NDArray[np.int64]
    tokens: NDArray[np.int64]

    @classmethod
    def from_rows(cls, rows: Sequence[DocumentScore]) -> DocumentScores:
        """Columns from rows (small inputs: tests, examples)."""
        return cls(
            np.array([r.domain for r in rows] + [None], dtype=object)[:-1],
            np.array([r.nats for r in rows], dtype=np.float64),
            np.array([r.bytes for r in rows], dtype=np.int64),
            np.array([r.tokens for r in rows], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.nats)

    @overload
    def __getitem__(self, index: int) -> DocumentScore: ...

    @overload
    def __getitem__(self, index: slice) -> DocumentScores: ...

    def __getitem__(self, index: int | slice) -> DocumentScore | DocumentScores:
        if isinstance(index, slice):
            return DocumentScores(*(column[index] for column in self._columns()))
        return DocumentScore(
            self.domain[index],
            float(self.nats[index]),
            int(self.bytes[index]),
            int(self.tokens[index]),
        )

    def __iter__(self) -> Iterator[DocumentScore]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DocumentScores):
            return NotImplemented
        return all(
            np.array_equal(a, b) for a, b in zip(self._columns(), other._columns(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    @property
    def bits_per_byte(self) -> NDArray[np.float64]:
        """Per-document bits per byte, NaN for a document of 0 bytes."""
        return bits_per_byte(self.nats, self.bytes)  # type: ignore[return-value]

    def _columns(self) -> tuple[np.ndarray, ...]:
        return (self.domain, self.nats, self.bytes, self.tokens)


@dataclass(frozen=True)
class Scores:
    """The result of scoring a corpus (:func:`bpbeval.scoring.score_documents`).

    Rank 0 holds every document in input order; other ranks hold no documents and
    the same totals.

    Attributes:
        documents: per-document sums, in input order.
        nats: total nats (``math.fsum`` of the documents').
        bytes: total UTF-8 bytes scored.
        tokens: total tokens scored.
        bytes_from_text: True when the tokenizer was not byte-conservative on some
            document and ``allow_inexact_bytes`` made its text's bytes the denominator.
        attribution: the corpus's nats and bytes by character class and position
            (:mod:`bpbeval.attribution`); ``None`` where not computed.
        per_document_attribution: the same for each document, rows as ``documents``; only
            where asked for (400 bytes a document).

    Example:
        >>> s = Scores(DocumentScores.from_rows([]), 0.0, 0, 0, False)
        >>> s.bits_per_byte, s.bytes_per_token
        (nan, nan)
    """

    documents: DocumentScores
    nats: float
    bytes: int
    tokens: int
    bytes_from_text: bool
    attribution: CorpusAttribution | None = None
    per_document_attribution: Attributions | None = None

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.bytes)  # type: ignore[return-value]

    @property
    def bits_per_token(self) -> float:
        return bits_per_token(self.nats, self.tokens)  # type: ignore[return-value]

    @property
    def bytes_per_token(self) -> float:
        return bytes_per_token(self.bytes, self.tokens)  # type: ignore[return-value]
