"""Paired statistics checked against independent numpy computations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpbeval import statistics
from bpbeval.statistics import bootstrap_delta, paired_figures, paired_figures_by_domain


def _documents(n: int, seed: int, ratio: float = 1.0) -> tuple[np.ndarray, ...]:
    """Per-document (nats_a, nats_b, bytes, tokens_a, tokens_b) with B ≈ ratio × A."""
    rng = np.random.default_rng(seed)
    nbytes = rng.integers(1, 4000, size=n)
    nats_a = nbytes * rng.uniform(0.5, 1.5, size=n)
    nats_b = nats_a * ratio * rng.uniform(0.9, 1.1, size=n)
    return nats_a, nats_b, nbytes, nbytes // 4 + 1, nbytes // 3 + 1


def _reference_ci(nats_a, nats_b, nbytes, replicates, seed):
    # The definition, one replicate at a time: resample documents, pool, take the percentiles.
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(replicates):
        idx = rng.integers(0, len(nbytes), size=len(nbytes))
        denominator = math.log(2) * nbytes[idx].sum()
        deltas.append(nats_a[idx].sum() / denominator - nats_b[idx].sum() / denominator)
    return tuple(np.quantile(np.array(deltas), [0.025, 0.975]))


@pytest.mark.parametrize("block_elements", [1 << 22, 1000])  # one block; blocks of 3 rows
def test_bootstrap_ci_equals_independent_resampling(monkeypatch, block_elements):
    monkeypatch.setattr(statistics, "_BLOCK_ELEMENTS", block_elements)
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(257, seed=1, ratio=1.02)
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=300, seed=7)
    assert figures.ci == _reference_ci(nats_a, nats_b, nbytes, 300, seed=7)
    assert figures.replicates == 300


def test_model_against_itself_gives_zero_and_zero_interval():
    nats, _, nbytes, tokens, _ = _documents(100, seed=2)
    figures = paired_figures(nats, nats, nbytes, tokens, tokens, replicates=200, seed=0)
    assert figures.delta == 0.0
    assert figures.ci == (0.0, 0.0)
    assert (figures.a_wins, figures.ties) == (0.0, 1.0)
    assert figures.correlation == pytest.approx(1.0, abs=1e-12)
    assert figures.verdict.startswith("no significant difference")


def test_clearly_better_model_gets_an_interval_excluding_zero():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(200, seed=3, ratio=0.8)
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=500)
    assert 0 < figures.ci[0] <= figures.delta <= figures.ci[1]
    assert figures.verdict.startswith(f"B is better by {figures.delta:.4f} bpb")
    swapped = paired_figures(nats_b, nats_a, nbytes, tokens_b, tokens_a, replicates=500)
    assert swapped.ci[1] < 0
    assert swapped.verdict.startswith(f"A is better by {figures.delta:.4f} bpb")


def test_pooled_figures_wins_and_correlation_match_brute_force():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(300, seed=4, ratio=0.97)
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=10)
    ln2 = math.log(2)
    bpb_a, bpb_b = nats_a / (ln2 * nbytes), nats_b / (ln2 * nbytes)
    assert figures.documents == 300
    assert figures.a.bits_per_byte == pytest.approx(math.fsum(nats_a) / (ln2 * nbytes.sum()))
    assert figures.b.bits_per_token == pytest.approx(math.fsum(nats_b) / (ln2 * tokens_b.sum()))
    assert figures.a.bytes_per_token == nbytes.sum() / tokens_a.sum()
    assert figures.delta == pytest.approx(figures.a.bits_per_byte - figures.b.bits_per_byte)
    assert figures.a_wins == sum(x < y for x, y in zip(bpb_a, bpb_b, strict=True)) / 300
    assert figures.correlation == pytest.approx(np.corrcoef(bpb_a, bpb_b)[0, 1], rel=1e-12)


def test_documents_without_bytes_are_left_out():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(50, seed=5)
    with_empty = [np.append(x, 0) for x in (nats_a, nats_b, nbytes, tokens_a, tokens_b)]
    assert paired_figures(*with_empty, replicates=50) == paired_figures(
        nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=50
    )


def test_correlation_is_none_when_undefined():
    single = paired_figures([3.0], [2.0], [4], [1], [1], replicates=5)
    constant = paired_figures([1.0, 2.0], [3.0, 6.0], [1, 2], [1, 1], [1, 1], replicates=5)
    assert (single.correlation, constant.correlation) == (None, None)


def test_domains_pool_to_the_overall_figures():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(120, seed=6, ratio=0.9)
    domains = [["web", "code", None][i % 3] for i in range(120)]
    arrays = (nats_a, nats_b, nbytes, tokens_a, tokens_b)
    overall = paired_figures(*arrays, replicates=100, seed=3)
    by_domain = paired_figures_by_domain(domains, *arrays, replicates=100, seed=3)
    assert list(by_domain) == ["", "code", "web"]
    parts = by_domain.values()
    assert sum(f.documents for f in parts) == overall.documents
    assert sum(f.a.bytes for f in parts) == overall.a.bytes == overall.b.bytes
    assert sum(f.b.tokens for f in parts) == overall.b.tokens
    nats_a_total, nats_b_total = (math.fsum(getattr(f, m).nats for f in parts) for m in "ab")
    assert nats_a_total == pytest.approx(overall.a.nats, rel=1e-12)
    pooled = (nats_a_total - nats_b_total) / (math.log(2) * overall.a.bytes)
    assert pooled == pytest.approx(overall.delta, rel=1e-12)
    # Each domain is exactly the comparison of its own documents, with the same seed.
    web = [i for i, d in enumerate(domains) if d == "web"]
    assert by_domain["web"] == paired_figures(*(x[web] for x in arrays), replicates=100, seed=3)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.floats(0, 10), st.floats(0, 10)),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**32),
)
def test_swapping_models_mirrors_every_figure(rows, seed):
    nbytes = np.array([r[0] for r in rows])
    nats_a, nats_b = (np.array([r[i] * r[0] for r in rows]) for i in (1, 2))
    ab = paired_figures(nats_a, nats_b, nbytes, nbytes, nbytes, replicates=40, seed=seed)
    ba = paired_figures(nats_b, nats_a, nbytes, nbytes, nbytes, replicates=40, seed=seed)
    assert ba.delta == -ab.delta
    np.testing.assert_array_equal(
        bootstrap_delta(nats_b, nats_a, nbytes, replicates=40, seed=seed),
        -bootstrap_delta(nats_a, nats_b, nbytes, replicates=40, seed=seed),
    )
    assert ab.ci[0] <= ab.ci[1]
    assert ab.a_wins + ba.a_wins + ab.ties == pytest.approx(1.0)
    assert ab.correlation == ba.correlation


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_delta([1.0], [1.0, 2.0], [1, 2], replicates=10, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_delta([1.0], [1.0], [1], replicates=0, seed=0)
