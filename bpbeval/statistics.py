"""Paired figures for two models scored on the same documents.

Both models see the same bytes, so each document is a paired observation: its
nats under A, its nats under B, and its byte count (shared). Pooled bits per
byte is a ratio of sums, so the confidence interval comes from a paired
bootstrap of that ratio: resample documents with replacement and recompute
``Σnats_A / (ln 2 · Σbytes) − Σnats_B / (ln 2 · Σbytes)`` on each replicate.
Averaging per-document bpbs instead would weigh a ten-byte document like a
novel.

Beside the interval: a p-value from a paired sign-flip permutation test of the same pooled
Δbpb (:func:`sign_flip_p_value`), and the minimum detectable effect, the smallest Δbpb
this many documents would detect (``2.80 ×`` the bootstrap standard error, see
:data:`MDE_STANDARD_ERRORS`).

Everything here is numpy on float64 / int64 arrays, one entry per document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bpbeval.attribution import PartSums

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
# The minimum detectable effect is the true Δbpb that a two-sided test at level 1 - CONFIDENCE
# detects with probability POWER: with Δ̂ ~ Normal(Δ, SE²), that Δ sits z(0.975) + z(0.8)
# = 2.80 standard errors from 0. The SE is the bootstrap replicates' standard deviation.
POWER = 0.8
MDE_STANDARD_ERRORS = NormalDist().inv_cdf((1 + CONFIDENCE) / 2) + NormalDist().inv_cdf(POWER)
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
        replicates: bootstrap replicates behind ``ci``, and sign flips behind ``p_value``.
        p_value: two-sided p-value of ``delta`` by the paired sign-flip permutation test
            (:func:`sign_flip_p_value`); valid at any number of documents.
        mde: minimum detectable effect, ``MDE_STANDARD_ERRORS`` bootstrap standard errors;
            ``None`` where ``ci`` is.
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
    p_value: float
    mde: float | None

    @property
    def too_few(self) -> str | None:
        """Why there is no interval (too few documents or replicates); ``None`` if there is one."""
        return too_few(self.documents, self.replicates)

    @property
    def verdict(self) -> str:
        """One line: which model is better, by how much and how sure, or that neither is."""
        if self.ci is None or self.mde is None:
            return f"no verdict, {self.too_few}: A − B = {self.delta:.4f} bpb"
        return verdict(self.delta, self.ci, p_value=self.p_value, mde=self.mde)


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


def verdict(delta: float, ci: tuple[float, float], *, p_value: float, mde: float) -> str:
    """The one-line verdict for a Δbpb (A − B), its confidence interval, p-value and MDE.

    A difference is called only when the interval excludes 0 and the sign-flip test
    agrees (``p_value < 1 - CONFIDENCE``); where they disagree the verdict says so. With no
    difference, it says how large one would have had to be to show (``mde``).

    Example:
        >>> verdict(-0.1234, (-0.15, -0.1), p_value=0.001, mde=0.05)
        'A is better by 0.1234 bpb (95% CI 0.1000 to 0.1500, sign-flip p = 0.001)'
        >>> verdict(0.01, (-0.002, 0.02), p_value=0.2, mde=0.015)  # doctest: +NORMALIZE_WHITESPACE
        'no significant difference: A − B = 0.0100 bpb (95% CI -0.0020 to 0.0200, sign-flip
         p = 0.2); at this many documents a true difference of 0.0150 bpb is detected 80% of
         the time'
        >>> verdict(0.01, (0.001, 0.02), p_value=0.07, mde=0.009)  # doctest: +NORMALIZE_WHITESPACE
        'borderline: A − B = 0.0100 bpb (95% CI 0.0010 to 0.0200, sign-flip p = 0.07);
         the interval excludes 0, the sign-flip test does not reject'
    """
    lo, hi = ci
    tested = f"sign-flip p = {p_value:.2g}"
    rejects = p_value < 1 - CONFIDENCE
    level = f"{CONFIDENCE:.0%} CI"
    if (hi < 0 or lo > 0) and rejects:
        if hi < 0:
            return f"A is better by {-delta:.4f} bpb ({level} {-hi:.4f} to {-lo:.4f}, {tested})"
        return f"B is better by {delta:.4f} bpb ({level} {lo:.4f} to {hi:.4f}, {tested})"
    figures = f"A − B = {delta:.4f} bpb ({level} {lo:.4f} to {hi:.4f}, {tested})"
    if hi < 0 or lo > 0:
        return f"borderline: {figures}; the interval excludes 0, the sign-flip test does not reject"
    if rejects:
        return f"borderline: {figures}; the sign-flip test rejects, the interval includes 0"
    return (
        f"no significant difference: {figures}; at this many documents a true difference of "
        f"{mde:.4f} bpb is detected {POWER:.0%} of the time"
    )


def bootstrap_delta(
    nats_a: ArrayLike, nats_b: ArrayLike, nbytes: ArrayLike, *, replicates: int, seed: int
) -> NDArray[np.float64]:
    """Pooled Δbpb (A − B) on each of ``replicates`` paired bootstrap resamples of the documents.

    Replicate ``r`` resamples with the indices of the ``r``-th call of
    ``rng.integers(0, n, size=n)`` on ``rng = np.random.default_rng(seed)``. Rows
    are drawn one call each, so the result does not depend on the block size used
    to bound memory; the gathers and sums run on whole blocks of rows at once.

    With a column per part of each document (a character class, a position bucket: shape
    [n, k]), every column is pooled on the same resamples: column ``j`` equals this function
    on column ``j`` alone, and a replicate where no resampled document has bytes in a
    column gives NaN there.

    Args:
        nats_a: per-document nats under model A, shape [n] or [n, k].
        nats_b: per-document nats under model B, same shape.
        nbytes: per-document UTF-8 bytes, same shape; each document has some.
        replicates: number of resamples, at least 1.
        seed: seed of the resampling.

    Returns:
        float64 array [replicates] (or [replicates, k]) of pooled Δbpb.

    Example:
        >>> d = bootstrap_delta([2.0, 4.0], [2.0, 4.0], [3, 5], replicates=4, seed=0)
        >>> d.tolist()
        [0.0, 0.0, 0.0, 0.0]
        >>> bootstrap_delta([[2.0, 0.0]], [[1.0, 0.0]], [[2, 0]], replicates=1, seed=0).shape
        (1, 2)
    """
    a = np.asarray(nats_a, dtype=np.float64)
    b = np.asarray(nats_b, dtype=np.float64)
    n_bytes = np.asarray(nbytes, dtype=np.int64)
    n = len(n_bytes)
    if not (a.shape == b.shape == n_bytes.shape) or n == 0:
        raise ValueError(
            f"need equal, non-empty shapes; got {a.shape}, {b.shape} and {n_bytes.shape}"
        )
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    rng = np.random.default_rng(seed)
    out = np.empty((replicates, *n_bytes.shape[1:]), dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // n_bytes.size)
    index = _draw_dtype(n)
    for start in range(0, replicates, rows):
        block = range(start, min(start + rows, replicates))
        idx = _stacked([rng.integers(0, n, size=n, dtype=index) for _ in block])
        denominator = math.log(2) * n_bytes[idx].sum(axis=1)
        with np.errstate(invalid="ignore"):  # 0 / 0: a part absent from the whole resample
            out[start : block.stop] = a[idx].sum(1) / denominator - b[idx].sum(1) / denominator
        del idx  # not alive while the next block is drawn: a column of millions of rows
    return out


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    # A block of one row (millions of documents): a view of it, not np.stack's copy.
    return rows[0][None] if len(rows) == 1 else np.stack(rows)


def _draw_dtype(n: int) -> type:
    # Below 2**31, numpy's bounded draws give the same numbers as int32 as they do as int64
    # (both take 32 bits a number): half the memory for the index columns of millions of rows.
    return np.int32 if n <= 2**31 else np.int64


def enumerates_all_flips(documents: int, permutations: int) -> bool:
    """Whether :func:`sign_flip_p_value` enumerates all ``2**documents`` sign vectors.

    Example:
        >>> enumerates_all_flips(9, 1000), enumerates_all_flips(10, 1000)
        (True, False)
    """
    return documents < 63 and 2**documents <= permutations


def sign_flip_p_value(
    nats_a: ArrayLike, nats_b: ArrayLike, *, permutations: int, seed: int
) -> float:
    """Two-sided p-value of pooled Δbpb by a paired sign-flip permutation test over documents.

    If the models were interchangeable, swapping the two models' nats on any document would
    be as likely as not. Swapping on a set of documents flips the sign of their difference
    ``d = nats_a - nats_b``; it leaves the shared bytes, the denominator of pooled Δbpb, as
    they are. So the test statistic is ``|Σ s·d|`` over sign vectors ``s``, and the p-value
    is the share of sign vectors at least as extreme as the observed one (all +1):

    - when ``2**n <= permutations``, all ``2**n`` of them: the exact p-value;
    - otherwise ``permutations`` random ones, the ``r``-th flipping where the ``r``-th call
      of ``rng.integers(0, 2, size=n)`` gives 1; ``p = (1 + extreme) / (1 + permutations)``,
      never 0 and a valid p-value at any count (Phipson and Smyth, 2010).

    Sums over flips round differently from the observed sum; those within ``1e-9 × Σ|d|``
    of it count as ties, which are extreme (the conservative side).

    Args:
        nats_a: per-document nats under A, shape [n], n >= 1.
        nats_b: per-document nats under B, shape [n].
        permutations: sign flips drawn, at least 1.
        seed: seed of the flips.

    Example:
        >>> sign_flip_p_value([3.0, 5.0], [1.0, 2.0], permutations=1000, seed=0)  # all 4
        0.5
        >>> sign_flip_p_value([1.0] * 9, [1.0] * 9, permutations=10, seed=0)
        1.0
    """
    d = np.asarray(nats_a, dtype=np.float64) - np.asarray(nats_b, dtype=np.float64)
    n = len(d)
    if n == 0 or d.shape != np.shape(nats_b):
        raise ValueError(f"need equal, non-empty lengths; got {len(d)} and {len(nats_b)}")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    threshold = abs(math.fsum(d)) - 1e-9 * float(np.abs(d).sum())
    if enumerates_all_flips(n, permutations):
        flips = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        return float(np.mean(np.abs((1 - 2 * flips) @ d) >= threshold))
    rng = np.random.default_rng(seed)
    extreme = 0
    rows = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, permutations, rows):
        block = range(start, min(start + rows, permutations))
        signs = _stacked([rng.integers(0, 2, size=n, dtype=np.int32) for _ in block]) * -2.0
        signs += 1.0  # a flip is -1
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
        del signs  # as in bootstrap_delta
    return (1 + extreme) / (1 + permutations)


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
        'B is better by 0.2094 bpb (95% CI 0.1846 to 0.2327, sign-flip p = 0.001)'
    """
    n_bytes = np.asarray(nbytes, dtype=np.int64)
    keep = n_bytes > 0
    if not keep.any():
        raise ValueError("no document has any bytes: nothing to compare")
    # Usually every document has bytes: then no copies (millions of documents, five columns).
    kept = slice(None) if keep.all() else keep
    n_bytes = n_bytes[kept]
    a, b = (np.asarray(x, dtype=np.float64)[kept] for x in (nats_a, nats_b))
    t_a, t_b = (np.asarray(x, dtype=np.int64)[kept] for x in (tokens_a, tokens_b))
    total_bytes = int(n_bytes.sum())
    fig_a = ModelFigures(math.fsum(a), total_bytes, int(t_a.sum()))
    fig_b = ModelFigures(math.fsum(b), total_bytes, int(t_b.sum()))
    ci = mde = None
    if too_few(len(n_bytes), replicates) is None:
        deltas = bootstrap_delta(a, b, n_bytes, replicates=replicates, seed=seed)
        ci = _percentile_interval(deltas)
        mde = MDE_STANDARD_ERRORS * float(np.std(deltas, ddof=1))
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
        p_value=sign_flip_p_value(a, b, permutations=replicates, seed=seed),
        mde=mde,
    )


def _percentile_interval(deltas: NDArray[np.float64]) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(deltas, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_figures_by_domain(
    domains: ArrayLike,
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
    keys = np.asarray(domains, dtype=object)
    arrays = [np.asarray(x) for x in (nats_a, nats_b, nbytes, tokens_a, tokens_b)]
    out = {}
    # No copy of the labels (millions of documents): None is matched where "" is.
    for domain in sorted({"" if key is None else key for key in set(keys)}):
        mask = keys == domain
        if domain == "":
            mask |= np.equal(keys, None)
        if arrays[2].sum(where=mask) > 0:
            rows = slice(None) if mask.all() else mask  # one domain: no copies either
            out[domain] = paired_figures(
                *(x[rows] for x in arrays), replicates=replicates, seed=seed
            )
    return out


@dataclass(frozen=True)
class PartFigures:
    """Both models on one part of every document's bytes (a character class, a position bucket).

    Attributes:
        documents: documents with at least one byte in this part.
        bytes: the part's bytes over all documents.
        share: ``bytes`` over all documents' bytes.
        nats_a, nats_b: each model's nats attributed to the part.
        ci: the ``CONFIDENCE`` paired-bootstrap interval of :attr:`delta`, resampling whole
            documents (groups of them past ``GROUPS``, see :func:`paired_breakdown`); ``None``
            below ``MIN_DOCUMENTS`` documents (groups) with bytes in this part, or
            ``MIN_REPLICATES`` replicates.
    """

    documents: int
    bytes: int
    share: float
    nats_a: float
    nats_b: float
    ci: tuple[float, float] | None

    @property
    def bits_per_byte_a(self) -> float:
        return self.nats_a / (math.log(2) * self.bytes)

    @property
    def bits_per_byte_b(self) -> float:
        return self.nats_b / (math.log(2) * self.bytes)

    @property
    def delta(self) -> float:
        """Pooled bpb of A minus pooled bpb of B on this part."""
        return (self.nats_a - self.nats_b) / (math.log(2) * self.bytes)


def paired_breakdown(
    names: Sequence[str], a: PartSums, b: PartSums, *, replicates: int = 1000, seed: int = 0
) -> dict[str, PartFigures]:
    """:class:`PartFigures` for each part of a corpus's sums (:class:`PartSums`), keyed by name.

    The interval resamples the groups of documents (:func:`~bpbeval.attribution.document_groups`)
    that hold bytes, in group order, with the same seed draws as :func:`paired_figures`. Up to
    ``GROUPS`` documents a group is a document, so then every part is pooled on the same
    resamples of the documents as the overall figures, and a part's interval is the bootstrap
    of its own pooled Δbpb; past that, groups are random samples of the corpus, and resampling
    them is the cluster bootstrap. Parts with no bytes are left out.

    Args:
        names: one name per part.
        a: model A's sums.
        b: model B's sums over the same documents (the same bytes).
        replicates: bootstrap replicates.
        seed: bootstrap seed.

    Example:
        >>> def sums(nats):  # 50 documents, each with these nats over 2, 2 and 0 bytes
        ...     n, b = np.array([nats] * 50), np.array([[2, 2, 0]] * 50)
        ...     return PartSums(n.sum(0), b.sum(0), (b > 0).sum(0), n, b)
        >>> parts = paired_breakdown(["x", "y", "z"], sums([4.0, 2.0, 0.0]), sums([2.0, 2.0, 0.0]),
        ...                          replicates=500)
        >>> {k: (round(p.delta, 4), p.share, p.ci is not None) for k, p in parts.items()}
        {'x': (1.4427, 0.5, True), 'y': (0.0, 0.5, True)}
    """
    if not (len(names) == len(a.bytes) == len(b.bytes)) or not np.array_equal(
        a.group_bytes, b.group_bytes
    ):
        raise ValueError(
            f"need sums of the same {len(names)} parts over the same bytes; got {len(a.bytes)} "
            f"and {len(b.bytes)} parts, over {a.group_bytes.sum()} and {b.group_bytes.sum()} bytes"
        )
    units = (a.group_bytes > 0).sum(axis=0)  # groups with bytes in each part: what is resampled
    deltas = None
    if len(a.group_bytes) and too_few(int(units.max()), replicates) is None:
        deltas = bootstrap_delta(
            a.group_nats, b.group_nats, a.group_bytes, replicates=replicates, seed=seed
        )
    total = int(a.bytes.sum())
    out = {}
    for j, name in enumerate(names):
        part_bytes = int(a.bytes[j])
        if part_bytes == 0:
            continue
        ci = None
        if deltas is not None and too_few(int(units[j]), replicates) is None:
            ci = _percentile_interval(deltas[:, j])
        out[name] = PartFigures(
            documents=int(a.documents[j]),
            bytes=part_bytes,
            share=part_bytes / total,
            nats_a=float(a.nats[j]),
            nats_b=float(b.nats[j]),
            ci=ci,
        )
    return out


def _correlation(x: NDArray[np.float64], y: NDArray[np.float64]) -> float | None:
    # Pearson r; undefined (None, not NaN, so that it survives JSON) when either side is constant.
    # Centres x and y in place (the caller's temporaries): no more copies of millions of rows.
    if len(x) < 2:
        return None
    x -= x.mean()
    y -= y.mean()
    dx, dy = x, y
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else None
