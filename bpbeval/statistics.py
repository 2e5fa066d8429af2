"""Paired figures for two models scored on the same documents.

Both models see the same bytes, so each document is a paired observation: its
nats under A, its nats under B, and its byte count (shared). Pooled bits per
byte is a ratio of sums, so the confidence interval comes from a paired
bootstrap of that ratio: resample documents with replacement and recompute
``Σnats_A / (ln 2 · Σbytes) − Σnats_B / (ln 2 · Σbytes)`` on each replicate.
Averaging per-document bpbs instead would weigh a ten-byte document like a
novel.

Everything here is numpy on float64 / int64 arrays, one entry per document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

CONFIDENCE = 0.95
# An interval called 95% should cover 95% to within a percentage point. At the edges it cannot,
# so below either minimum there is no interval (and no verdict of significance):
# - documents: a percentile bootstrap is too narrow in small samples (plug-in variance with
#   divisor n, normal tails instead of Student's). Even for normal per-document differences its
#   coverage is P(|t[n-1]| <= 1.96 * sqrt((n-1)/n)): 85% at 5 documents, 90% at 10, 94% first
#   at 41 (skewed data need more; this is the floor). One document gives a zero-width interval.
# - replicates: the ends are sample quantiles of R replicates, and the share of the bootstrap
#   distribution they leave out has a Monte Carlo sd of sqrt(0.05 * 0.95 / R): one point at 475.
MIN_DOCUMENTS = 41
MIN_REPLICATES = 475
# Index-matrix elements per bootstrap block: a few MB whatever the corpus size, and small
# enough for the gathers to stay in cache (faster than bigger blocks; see benchmarks/).
_BLOCK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class ModelFigures:
    """One model's pooled totals over a set of documents."""

    nats: float
    bytes: int
    tokens: int

    @property
    def bits_per_byte(self) -> float:
        return self.nats / (math.log(2) * self.bytes)

    @property
    def bits_per_token(self) -> float:
        return self.nats / (math.log(2) * self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens


@dataclass(frozen=True)
class PairedFigures:
    """The paired comparison of models A and B on the same documents.

    Attributes:
        documents: documents compared (those with at least one byte).
        a, b: each model's pooled totals.
        delta: pooled bpb of A minus pooled bpb of B; negative means A is better.
        ci: the ``CONFIDENCE`` paired-bootstrap interval of ``delta``; ``None`` below
            ``MIN_DOCUMENTS`` documents or ``MIN_REPLICATES`` replicates (see :func:`too_few`).
        a_wins: share of documents on which A has strictly fewer nats (lower bpb) than B.
        ties: share of documents on which both have exactly the same nats.
        correlation: Pearson correlation of per-document bpb; ``None`` when undefined
            (fewer than two documents, or one model's bpb is constant).
        replicates: bootstrap replicates behind ``ci``.
    """

    documents: int
    a: ModelFigures
    b: ModelFigures
    delta: float
    ci: tuple[float, float] | None
    a_wins: float
    ties: float
    correlation: float | None
    replicates: int

    @property
    def too_few(self) -> str | None:
        """Why there is no interval (too few documents or replicates); ``None`` if there is one."""
        return too_few(self.documents, self.replicates)

    @property
    def verdict(self) -> str:
        """One line: which model is better, by how much and how sure, or that neither is."""
        if self.ci is None:
            return f"no verdict, {self.too_few}: A − B = {self.delta:.4f} bpb"
        return verdict(self.delta, self.ci)


def too_few(documents: int, replicates: int) -> str | None:
    """Why ``documents`` and ``replicates`` are too few for an interval, or ``None``.

    Example:
        >>> too_few(1, 1000)
        'too few documents for a 95% interval (1; at least 41)'
        >>> too_few(1000, 1)
        'too few bootstrap replicates for a 95% interval (1; at least 475)'
        >>> too_few(MIN_DOCUMENTS, MIN_REPLICATES) is None
        True
    """
    level = f"{CONFIDENCE:.0%} interval"
    if documents < MIN_DOCUMENTS:
        return f"too few documents for a {level} ({documents}; at least {MIN_DOCUMENTS})"
    if replicates < MIN_REPLICATES:
        return (
            f"too few bootstrap replicates for a {level} ({replicates}; at least {MIN_REPLICATES})"
        )
    return None


def verdict(delta: float, ci: tuple[float, float]) -> str:
    """The one-line verdict for a Δbpb (A − B) and its confidence interval.

    Example:
        >>> verdict(-0.1234, (-0.15, -0.1))
        'A is better by 0.1234 bpb (95% CI 0.1000 to 0.1500)'
        >>> verdict(0.01, (-0.002, 0.02))
        'no significant difference: A − B = 0.0100 bpb (95% CI -0.0020 to 0.0200)'
    """
    lo, hi = ci
    level = f"{CONFIDENCE:.0%} CI"
    if hi < 0:
        return f"A is better by {-delta:.4f} bpb ({level} {-hi:.4f} to {-lo:.4f})"
    if lo > 0:
        return f"B is better by {delta:.4f} bpb ({level} {lo:.4f} to {hi:.4f})"
    return f"no significant difference: A − B = {delta:.4f} bpb ({level} {lo:.4f} to {hi:.4f})"


def bootstrap_delta(
    nats_a: ArrayLike, nats_b: ArrayLike, nbytes: ArrayLike, *, replicates: int, seed: int
) -> NDArray[np.float64]:
    """Pooled Δbpb (A − B) on each of ``replicates`` paired bootstrap resamples of the documents.

    Replicate ``r`` resamples with the indices of the ``r``-th call of
    ``rng.integers(0, n, size=n)`` on ``rng = np.random.default_rng(seed)``. Rows
    are drawn one call each, so the result does not depend on the block size used
    to bound memory; the gathers and sums run on whole blocks of rows at once.

    Args:
        nats_a: per-document nats under model A, shape [n].
        nats_b: per-document nats under model B, shape [n].
        nbytes: per-document UTF-8 bytes, shape [n], every entry positive.
        replicates: number of resamples, at least 1.
        seed: seed of the resampling.

    Returns:
        float64 array [replicates] of pooled Δbpb.

    Example:
        >>> d = bootstrap_delta([2.0, 4.0], [2.0, 4.0], [3, 5], replicates=4, seed=0)
        >>> d.tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    a = np.asarray(nats_a, dtype=np.float64)
    b = np.asarray(nats_b, dtype=np.float64)
    n_bytes = np.asarray(nbytes, dtype=np.int64)
    n = len(n_bytes)
    if not (len(a) == len(b) == n) or n == 0:
        raise ValueError(f"need equal, non-empty lengths; got {len(a)}, {len(b)} and {n}")
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    rng = np.random.default_rng(seed)
    out = np.empty(replicates, dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, replicates, rows):
        block = range(start, min(start + rows, replicates))
        idx = np.stack([rng.integers(0, n, size=n) for _ in block])
        denominator = math.log(2) * n_bytes[idx].sum(axis=1)
        out[start : block.stop] = a[idx].sum(1) / denominator - b[idx].sum(1) / denominator
    return out


def paired_figures(
    nats_a: ArrayLike,
    nats_b: ArrayLike,
    nbytes: ArrayLike,
    tokens_a: ArrayLike,
    tokens_b: ArrayLike,
    *,
    replicates: int = 1000,
    seed: int = 0,
) -> PairedFigures:
    """Every paired figure for two models' per-document results on the same documents.

    Documents with no bytes carry no evidence about either model and are left out. Below
    ``MIN_DOCUMENTS`` documents or ``MIN_REPLICATES`` replicates there is no interval
    (``ci`` is ``None``) and the verdict says why instead of judging.

    Args:
        nats_a: per-document nats under A.
        nats_b: per-document nats under B.
        nbytes: per-document bytes (the same for both models).
        tokens_a: per-document scored tokens under A.
        tokens_b: per-document scored tokens under B.
        replicates: bootstrap replicates.
        seed: bootstrap seed.

    Example:
        >>> f = paired_figures([8.0, 9.0, 7.0], [6.0, 7.0, 6.5], [10, 12, 9], [4, 5, 3], [3, 4, 3])
        >>> round(f.delta, 4), f.a_wins, f.ci
        (0.2094, 0.0, None)
        >>> f.verdict
        'no verdict, too few documents for a 95% interval (3; at least 41): A − B = 0.2094 bpb'
        >>> f = paired_figures([8.0, 9.0, 7.0] * 14, [6.0, 7.0, 6.5] * 14, [10, 12, 9] * 14,
        ...                    [4, 5, 3] * 14, [3, 4, 3] * 14)
        >>> f.verdict
        'B is better by 0.2094 bpb (95% CI 0.1846 to 0.2327)'
    """
    n_bytes = np.asarray(nbytes, dtype=np.int64)
    keep = n_bytes > 0
    if not keep.any():
        raise ValueError("no document has any bytes: nothing to compare")
    n_bytes = n_bytes[keep]
    a, b = (np.asarray(x, dtype=np.float64)[keep] for x in (nats_a, nats_b))
    t_a, t_b = (np.asarray(x, dtype=np.int64)[keep] for x in (tokens_a, tokens_b))
    total_bytes = int(n_bytes.sum())
    fig_a = ModelFigures(math.fsum(a), total_bytes, int(t_a.sum()))
    fig_b = ModelFigures(math.fsum(b), total_bytes, int(t_b.sum()))
    ci = None
    if too_few(len(n_bytes), replicates) is None:
        deltas = bootstrap_delta(a, b, n_bytes, replicates=replicates, seed=seed)
        tail = (1 - CONFIDENCE) / 2
        lo, hi = np.quantile(deltas, [tail, 1 - tail])
        ci = (float(lo), float(hi))
    return PairedFigures(
        documents=len(n_bytes),
        a=fig_a,
        b=fig_b,
        delta=fig_a.bits_per_byte - fig_b.bits_per_byte,
        ci=ci,
        a_wins=float(np.mean(a < b)),
        ties=float(np.mean(a == b)),
        correlation=_correlation(a / n_bytes, b / n_bytes),
        replicates=replicates,
    )


def paired_figures_by_domain(
    domains: list[str | None],
    nats_a: ArrayLike,
    nats_b: ArrayLike,
    nbytes: ArrayLike,
    tokens_a: ArrayLike,
    tokens_b: ArrayLike,
    *,
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, PairedFigures]:
    """:func:`paired_figures` pooled within each domain, keyed by domain in sorted order.

    Every domain is resampled with a fresh generator seeded with ``seed``, so a
    domain's figures do not depend on which other domains are present. Documents
    without a domain (``None``) are grouped under ``""``.

    Example:
        >>> by = paired_figures_by_domain(["x", "y", "x"], [1.0, 2.0, 3.0], [1.0, 1.0, 2.0],
        ...                               [4, 4, 4], [1, 1, 1], [1, 1, 1], replicates=10)
        >>> {k: (v.documents, v.a.nats) for k, v in by.items()}
        {'x': (2, 4.0), 'y': (1, 2.0)}
    """
    keys = np.array(["" if d is None else d for d in domains], dtype=object)
    arrays = [np.asarray(x) for x in (nats_a, nats_b, nbytes, tokens_a, tokens_b)]
    out = {}
    for domain in sorted(set(keys)):
        mask = keys == domain
        if arrays[2][mask].sum() > 0:
            out[domain] = paired_figures(
                *(x[mask] for x in arrays), replicates=replicates, seed=seed
            )
    return out


def _correlation(x: NDArray[np.float64], y: NDArray[np.float64]) -> float | None:
    # Pearson r; undefined (None, not NaN, so that it survives JSON) when either side is constant.
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else None
