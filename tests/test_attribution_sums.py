"""A corpus's attribution sums (AttributionSums) against brute force: exact totals, groups of
documents summed the same for any order and any split between ranks, and a bootstrap over
groups that matches the bootstrap over documents."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpbeval import attribution
from bpbeval.attribution import (
    CLASSES,
    GROUPS,
    POSITIONS,
    Attribution,
    AttributionSums,
    CorpusAttribution,
    document_groups,
    exact_partials,
)
from bpbeval.statistics import bootstrap_delta, paired_breakdown

_MASK = (1 << 64) - 1


def _splitmix64(i: int) -> int:
    # The published finaliser, in Python integers: the reference for document_groups.
    z = (i + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def test_groups_are_positions_up_to_groups_then_a_splitmix64_hash():
    rng = np.random.default_rng(0)
    later = [*rng.integers(GROUPS, 2**62, size=200).tolist(), GROUPS, 2**63 - 1]
    indices = [0, 1, GROUPS - 1, *later]
    expected = [0, 1, GROUPS - 1] + [_splitmix64(i) % GROUPS for i in later]
    assert document_groups(indices).tolist() == expected


def test_later_documents_spread_evenly_over_the_groups():
    counts = np.bincount(document_groups(np.arange(GROUPS, 65 * GROUPS)), minlength=GROUPS)
    # 64 a group on average; a fair hash gives Poisson counts: sd 8.
    assert counts.sum() == 64 * GROUPS and counts.mean() == 64
    assert 7.5 < counts.std() < 8.5 and counts.min() > 20


finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, max_size=30), st.lists(finite, max_size=30))
def test_partials_keep_the_exact_sum_and_merge(xs, ys):
    assert math.fsum(exact_partials(xs)) == math.fsum(xs)
    assert math.fsum(exact_partials(xs) + exact_partials(ys)) == math.fsum(xs + ys)
    assert math.fsum(exact_partials([*exact_partials(xs), *ys])) == math.fsum(xs + ys)


def test_partials_of_infinities_and_nan_end():
    assert exact_partials([math.inf, 1.0]) == [math.inf]
    assert math.isnan(exact_partials([math.nan, 1.0])[0])
    assert exact_partials([]) == exact_partials([0.0, -0.0]) == []


def _documents(n: int, seed: int) -> list[Attribution]:
    """Random per-document sums over many magnitudes, some documents without bytes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        class_bytes = rng.integers(0, 50, size=len(CLASSES)) * (rng.random(len(CLASSES)) < 0.4)
        if rng.random() < 0.05:
            class_bytes[:] = 0
        class_nats = (
            class_bytes * rng.uniform(0.1, 3.0, size=len(CLASSES)) * 10.0 ** rng.integers(-3, 4)
        )
        position_bytes = np.zeros(len(POSITIONS), dtype=np.int64)
        position_bytes[0] = class_bytes.sum()
        position_nats = np.zeros(len(POSITIONS))
        position_nats[0] = math.fsum(class_nats)
        out.append(Attribution(class_nats, class_bytes.astype(np.int64), position_nats,
                               position_bytes))  # fmt: skip
    return out


def _sum(documents: list[Attribution], order: np.ndarray, ranks: int) -> CorpusAttribution:
    # As the engine deals them: rank r holds every ranks-th document, each in its own order.
    per_rank = [AttributionSums() for _ in range(ranks)]
    for i in order:
        per_rank[i % ranks].add(int(i), documents[i])
    arrays = [sum(column) for column in zip(*(s.arrays() for s in per_rank), strict=True)]
    return AttributionSums.combine(arrays, [s.partials() for s in per_rank])


def _bits(corpus: CorpusAttribution) -> list[bytes]:
    return [
        getattr(parts, f.name).tobytes()
        for parts in (corpus.classes, corpus.positions)
        for f in fields(parts)
    ]


def test_sums_are_bit_identical_for_any_order_and_split_between_ranks(monkeypatch):
    monkeypatch.setattr(attribution, "GROUPS", 64)  # 1,000 documents: ~15 a group
    documents = _documents(1000, seed=1)
    rng = np.random.default_rng(2)
    reference = _bits(_sum(documents, np.arange(len(documents)), ranks=1))
    for ranks in (1, 2, 3):
        for order in (np.arange(len(documents))[::-1], rng.permutation(len(documents))):
            assert _bits(_sum(documents, order, ranks)) == reference, ranks


@pytest.mark.parametrize("groups", [64, GROUPS])
def test_sums_against_a_brute_force_grouping(monkeypatch, groups):
    monkeypatch.setattr(attribution, "GROUPS", groups)
    documents = _documents(700, seed=3)
    corpus = _sum(documents, np.random.default_rng(4).permutation(len(documents)), ranks=2)
    for parts, nats_of, bytes_of in (
        (corpus.classes, "class_nats", "class_bytes"),
        (corpus.positions, "position_nats", "position_bytes"),
    ):
        nats = np.array([getattr(d, nats_of) for d in documents])
        n_bytes = np.array([getattr(d, bytes_of) for d in documents])
        assert parts.nats.tolist() == [math.fsum(column) for column in nats.T]  # exact
        assert parts.bytes.tolist() == n_bytes.sum(axis=0).tolist()
        assert parts.documents.tolist() == (n_bytes > 0).sum(axis=0).tolist()
        # Brute force: each group's documents with bytes, a loop over the groups.
        members: dict[int, list[int]] = {}
        for i, d in enumerate(documents):
            if d.class_bytes.sum() > 0:
                g = i if i < groups else _splitmix64(i) % groups
                members.setdefault(g, []).append(i)
        held = sorted(members)
        assert len(parts.group_nats) == len(parts.group_bytes) == len(held)
        for row, g in enumerate(held):
            rows = members[g]
            assert parts.group_bytes[row].tolist() == n_bytes[rows].sum(axis=0).tolist()
            if len(rows) == 1:  # exact: below GROUPS documents, the bootstrap is per document
                assert parts.group_nats[row].tolist() == nats[rows[0]].tolist()
            else:  # 2**-24 nat units, each rounded to the nearest
                error = np.abs(parts.group_nats[row] - nats[rows].sum(axis=0))
                assert (error <= len(rows) * 2.0**-25 * (1 + 1e-9)).all()
        if groups == GROUPS:
            assert all(len(rows) == 1 for rows in members.values())


def test_the_bootstrap_over_random_groups_is_as_wide_as_over_documents(monkeypatch):
    # 8,000 documents in 250 groups, sorted by a trend (A's edge grows along the corpus, as
    # when a corpus is ordered by source): groups are random samples of it, so resampling them
    # gives the per-document bootstrap's width. (Groups by position modulo 250 would each hold
    # a slice of every part of the trend, and come out narrower.)
    monkeypatch.setattr(attribution, "GROUPS", 250)
    rng = np.random.default_rng(5)
    n = 8000
    n_bytes = rng.integers(20, 400, size=n)
    trend = np.linspace(0.8, 1.2, n)
    nats_b = n_bytes * rng.uniform(0.5, 1.5, size=n)
    nats_a = nats_b * trend * rng.uniform(0.9, 1.1, size=n)

    def sums(nats: np.ndarray) -> CorpusAttribution:
        rows = []
        for x, b in zip(nats, n_bytes, strict=True):
            class_nats, class_bytes = np.zeros(len(CLASSES)), np.zeros(len(CLASSES), np.int64)
            class_nats[2], class_bytes[2] = x, b
            rows.append(Attribution(class_nats, class_bytes, np.zeros(len(POSITIONS)),
                                    np.zeros(len(POSITIONS), np.int64)))  # fmt: skip
        return _sum(rows, np.arange(n), ranks=1)

    name = CLASSES[2]
    part = paired_breakdown(CLASSES, sums(nats_a).classes, sums(nats_b).classes, seed=6)[name]
    per_document = bootstrap_delta(nats_a, nats_b, n_bytes, replicates=1000, seed=6)
    lo, hi = np.quantile(per_document, [0.025, 0.975])
    assert part.ci is not None
    assert 0.85 < (part.ci[1] - part.ci[0]) / (hi - lo) < 1.15
    assert part.delta == pytest.approx(
        (nats_a.sum() - nats_b.sum()) / (math.log(2) * n_bytes.sum())
    )
