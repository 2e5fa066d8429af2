"""Paired statistics checked against independent numpy computations written here."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpbeval import statistics
from bpbeval.statistics import (
    CONFIDENCE,
    MIN_DOCUMENTS,
    MIN_REPLICATES,
    bootstrap_delta,
    paired_breakdown,
    paired_figures,
    paired_figures_by_domain,
    sign_flip_p_value,
)
from tests.test_statistics_contract import _reference_deltas, part_sums


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
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=500, seed=7)
    assert figures.ci == _reference_ci(nats_a, nats_b, nbytes, 500, seed=7)
    assert figures.replicates == 500


def test_model_against_itself_gives_zero_and_zero_interval():
    nats, _, nbytes, tokens, _ = _documents(100, seed=2)
    figures = paired_figures(nats, nats, nbytes, tokens, tokens, replicates=500, seed=0)
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
    figures = paired_figures(*with_empty, replicates=500)
    assert figures.ci is not None
    assert figures == paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=500)


def test_correlation_is_none_when_undefined():
    single = paired_figures([3.0], [2.0], [4], [1], [1], replicates=5)
    constant = paired_figures([1.0, 2.0], [3.0, 6.0], [1, 2], [1, 1], [1, 1], replicates=5)
    assert (single.correlation, constant.correlation) == (None, None)


def test_domains_pool_to_the_overall_figures():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(129, seed=6, ratio=0.9)
    domains = [["web", "code", None][i % 3] for i in range(129)]  # 43 documents each
    arrays = (nats_a, nats_b, nbytes, tokens_a, tokens_b)
    overall = paired_figures(*arrays, replicates=500, seed=3)
    by_domain = paired_figures_by_domain(domains, *arrays, replicates=500, seed=3)
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
    assert by_domain["web"].ci is not None
    assert by_domain["web"] == paired_figures(*(x[web] for x in arrays), replicates=500, seed=3)


def test_no_domain_and_the_empty_domain_are_one_and_a_single_domain_is_the_whole():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(90, seed=7, ratio=0.95)
    arrays = (nats_a, nats_b, nbytes, tokens_a, tokens_b)
    domains = [[None, "", "web"][i % 3] for i in range(90)]
    by_domain = paired_figures_by_domain(domains, *arrays, replicates=500, seed=4)
    unlabelled = [i for i, d in enumerate(domains) if not d]
    assert list(by_domain) == ["", "web"]
    assert by_domain[""] == paired_figures(*(x[unlabelled] for x in arrays), replicates=500, seed=4)
    alone = paired_figures_by_domain(["web"] * 90, *arrays, replicates=500, seed=4)
    assert alone == {"web": paired_figures(*arrays, replicates=500, seed=4)}


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.floats(0, 10), st.floats(0, 10)),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 2**32),
)
def test_swapping_models_mirrors_every_figure(rows, seed):
    nbytes = np.array([r[0] for r in rows])
    nats_a, nats_b = (np.array([r[i] * r[0] for r in rows]) for i in (1, 2))
    replicates = MIN_REPLICATES
    ab = paired_figures(nats_a, nats_b, nbytes, nbytes, nbytes, replicates=replicates, seed=seed)
    ba = paired_figures(nats_b, nats_a, nbytes, nbytes, nbytes, replicates=replicates, seed=seed)
    assert ba.delta == -ab.delta
    np.testing.assert_array_equal(
        bootstrap_delta(nats_b, nats_a, nbytes, replicates=replicates, seed=seed),
        -bootstrap_delta(nats_a, nats_b, nbytes, replicates=replicates, seed=seed),
    )
    assert (ab.ci is None) == (ba.ci is None) == (len(rows) < MIN_DOCUMENTS)
    if ab.ci is not None:
        assert ab.ci[0] <= ab.ci[1]
        assert ba.ci == pytest.approx((-ab.ci[1], -ab.ci[0]), abs=1e-12)
    assert ab.a_wins + ba.a_wins + ab.ties == pytest.approx(1.0)
    assert ab.correlation == ba.correlation


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_delta([1.0], [1.0, 2.0], [1, 2], replicates=10, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_delta([1.0], [1.0], [1], replicates=0, seed=0)


def _significant(verdict: str) -> bool:
    return "better by" in verdict or "significant" in verdict


@pytest.mark.parametrize(
    ("documents", "replicates"),
    [(1, 1), (1, 1000), (MIN_DOCUMENTS - 1, 1000), (200, 1), (200, MIN_REPLICATES - 1)],
)
def test_too_few_documents_or_replicates_give_no_interval_and_no_verdict(documents, replicates):
    # B is far better on every document: with an interval this would be "B is better by ...".
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(documents, seed=8, ratio=0.5)
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=replicates)
    assert figures.ci is None
    what = "documents" if documents < MIN_DOCUMENTS else "bootstrap replicates"
    count, minimum = (
        (documents, MIN_DOCUMENTS) if what == "documents" else (replicates, MIN_REPLICATES)
    )
    assert figures.too_few == f"too few {what} for a 95% interval ({count}; at least {minimum})"
    assert figures.verdict.startswith(f"no verdict, {figures.too_few}: ")
    assert not _significant(figures.verdict)
    # Every other figure is still there, as with an interval.
    assert figures.delta == pytest.approx(
        (math.fsum(nats_a) - math.fsum(nats_b)) / (math.log(2) * nbytes.sum()), rel=1e-12
    )
    assert (figures.a_wins, figures.documents, figures.replicates) == (0.0, documents, replicates)


def test_at_the_minimums_the_interval_is_the_bootstrap_one():
    arrays = _documents(MIN_DOCUMENTS, seed=9, ratio=0.5)
    figures = paired_figures(*arrays, replicates=MIN_REPLICATES, seed=1)
    assert figures.ci == _reference_ci(*arrays[:3], MIN_REPLICATES, seed=1)
    assert figures.too_few is None
    assert figures.verdict.startswith("B is better by")


def test_domains_below_the_minimum_get_no_interval():
    n = MIN_DOCUMENTS + (MIN_DOCUMENTS - 1)
    arrays = _documents(n, seed=10, ratio=0.5)
    domains = ["big"] * MIN_DOCUMENTS + ["small"] * (MIN_DOCUMENTS - 1)
    by_domain = paired_figures_by_domain(domains, *arrays, replicates=MIN_REPLICATES)
    big, small = by_domain["big"], by_domain["small"]
    assert big.ci == _reference_ci(*(x[:MIN_DOCUMENTS] for x in arrays[:3]), MIN_REPLICATES, 0)
    assert small.ci is None and not _significant(small.verdict)
    assert (
        small.too_few == f"too few documents for a 95% interval ({MIN_DOCUMENTS - 1}; at least 41)"
    )


def _student_t_cdf(x: float, nu: int) -> float:
    # Student's t by integrating its density (no scipy): P(T <= x) = 1/2 + ∫_0^x density.
    log_norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    t = np.linspace(0.0, x, 200_001)
    density = np.exp(log_norm - (nu + 1) / 2 * np.log1p(t * t / nu))
    return 0.5 + float(np.sum((density[1:] + density[:-1]) / 2) * (t[1] - t[0]))


def test_the_minimums_follow_from_their_documented_reasons():
    # An interval called 95% must cover 95% to within one point (statistics.py says why).
    tolerance = 0.01
    z = NormalDist().inv_cdf((1 + CONFIDENCE) / 2)

    def coverage(n: int) -> float:  # percentile bootstrap of a normal mean, R -> infinity
        return 2 * _student_t_cdf(z * math.sqrt((n - 1) / n), n - 1) - 1

    assert coverage(MIN_DOCUMENTS - 1) < CONFIDENCE - tolerance <= coverage(MIN_DOCUMENTS)
    # Monte Carlo sd of the bootstrap mass outside the interval: sqrt(a(1-a)/R) with a = 5%.
    alpha = 1 - CONFIDENCE
    sd = [math.sqrt(alpha * (1 - alpha) / r) for r in (MIN_REPLICATES - 1, MIN_REPLICATES)]
    assert sd[0] > tolerance >= sd[1] - 1e-15


def _exact_sign_flip_p(d: list[float]) -> float:
    # Every sign vector, in exact rational arithmetic: no rounding, so no tolerance.
    exact = [Fraction(x) for x in d]
    observed = abs(sum(exact))
    signs = itertools.product((1, -1), repeat=len(d))
    extreme = sum(
        abs(sum(s * x for s, x in zip(flip, exact, strict=True))) >= observed for flip in signs
    )
    return extreme / 2 ** len(d)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10])
def test_sign_flip_p_value_enumerates_every_flip_on_a_handful_of_documents(n):
    rng = np.random.default_rng(n)
    nats_a, nats_b = rng.uniform(0, 100, size=n), rng.uniform(0, 100, size=n) + 5
    nats_b[0] = nats_a[0]  # a tie: its flips change nothing
    p = sign_flip_p_value(nats_a, nats_b, permutations=2**n, seed=0)
    assert p == _exact_sign_flip_p((nats_a - nats_b).tolist())


def test_sign_flip_p_value_samples_the_same_flips_as_a_plain_loop(monkeypatch):
    n, permutations, seed = 14, 3000, 5
    rng = np.random.default_rng(11)
    nats_a, nats_b = rng.uniform(0, 10, size=n), rng.uniform(0, 10, size=n)
    d = nats_a - nats_b
    loop = np.random.default_rng(seed)
    extreme = 0
    for _ in range(permutations):
        signs = 1 - 2 * loop.integers(0, 2, size=n)
        extreme += abs(math.fsum(signs * d)) >= abs(math.fsum(d)) - 1e-9 * np.abs(d).sum()
    expected = (1 + extreme) / (1 + permutations)
    for block_elements in (1 << 17, 50):  # one block; blocks of 3 flips
        monkeypatch.setattr(statistics, "_BLOCK_ELEMENTS", block_elements)
        assert sign_flip_p_value(nats_a, nats_b, permutations=permutations, seed=seed) == expected
    # And it estimates the exact p-value, within Monte Carlo error.
    exact = _exact_sign_flip_p(d.tolist())
    assert 0.05 < exact < 0.95
    assert abs(expected - exact) < 4 * math.sqrt(exact * (1 - exact) / permutations)


def test_identical_models_have_p_one_and_a_clear_winner_the_smallest_p():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(60, seed=12, ratio=0.8)
    same = paired_figures(nats_a, nats_a, nbytes, tokens_a, tokens_a, replicates=500)
    assert same.p_value == 1.0
    better = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=500)
    assert better.p_value == 1 / 501  # no flip comes near B winning on all 60 documents


def test_mde_is_the_documented_multiple_of_the_bootstrap_standard_error():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(150, seed=13, ratio=1.01)
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=600, seed=4)
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    deltas = _reference_deltas(*(x[:, None] for x in (nats_a, nats_b, nbytes)), 600, 4)[:, 0]
    assert figures.mde == pytest.approx(z * np.std(deltas, ddof=1), rel=1e-12)
    assert 2.80 < z < 2.81


def test_a_true_difference_of_one_mde_is_detected_80_percent_of_the_time():
    # The MDE's meaning, simulated: samples of 200 documents whose true pooled Δbpb is the
    # MDE (averaged over null samples: one sample's estimate varies by ~8%); the verdict
    # should call B better on about 80% of them, and the MDE be 2.8 × Δ̂'s actual spread.
    n, ln2 = 200, math.log(2)
    rng = np.random.default_rng(14)

    def figures(delta: float, seed: int) -> statistics.PairedFigures:
        nbytes = rng.integers(100, 2000, size=n)
        nats_b = nbytes * ln2 * rng.uniform(1.0, 3.0, size=n)
        nats_a = nats_b + nbytes * ln2 * (delta + rng.normal(0, 0.5, size=n))
        return paired_figures(nats_a, nats_b, nbytes, nbytes, nbytes, replicates=500, seed=seed)

    mde = float(np.mean([figures(0.0, seed).mde for seed in range(40)]))
    trials = [figures(mde, seed) for seed in range(200)]
    called = np.mean([f.verdict.startswith("B is better") for f in trials])
    assert 0.72 <= called <= 0.88
    spread = np.std([f.delta for f in trials], ddof=1)
    assert 0.9 <= mde / (statistics.MDE_STANDARD_ERRORS * spread) <= 1.1


def test_per_class_bootstrap_matches_a_plain_loop_with_the_same_seed(monkeypatch):
    rng = np.random.default_rng(15)
    n, names = 80, ["letters", "digits", "rare", "absent"]
    nbytes = rng.integers(0, 300, size=(n, 4))
    nbytes[:, 2] = 0
    nbytes[:5, 2] = 7  # in 5 documents only: too few for an interval
    nbytes[:, 3] = 0
    nats_a = nbytes * rng.uniform(0.5, 2.0, size=(n, 4))
    nats_b = nbytes * rng.uniform(0.5, 2.0, size=(n, 4))
    for block_elements in (1 << 17, 100):
        monkeypatch.setattr(statistics, "_BLOCK_ELEMENTS", block_elements)
        a, b = part_sums(nats_a, nbytes), part_sums(nats_b, nbytes)
        parts = paired_breakdown(names, a, b, replicates=500, seed=6)
        assert list(parts) == ["letters", "digits", "rare"]  # no bytes, no row
        deltas = _reference_deltas(nats_a, nats_b, nbytes, 500, seed=6)
        for j, name in enumerate(names[:2]):
            expected = np.quantile(deltas[:, j], [0.025, 0.975])
            assert parts[name].ci == pytest.approx(expected, rel=1e-12)  # sums' order differs
        assert parts["rare"].ci is None and parts["rare"].documents == 5
    total = nbytes.sum()
    for j, name in enumerate(names[:3]):
        part = parts[name]
        assert (part.bytes, part.share) == (nbytes[:, j].sum(), nbytes[:, j].sum() / total)
        assert part.nats_a == math.fsum(nats_a[:, j])
        expected = (math.fsum(nats_a[:, j]) - math.fsum(nats_b[:, j])) / (math.log(2) * part.bytes)
        assert part.delta == pytest.approx(expected, rel=1e-12)


def test_a_part_present_in_every_document_has_the_interval_of_its_own_comparison():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(60, seed=16, ratio=0.95)
    a, b = (part_sums(np.stack([x, 2 * x], 1), np.stack([nbytes, 2 * nbytes], 1))
            for x in (nats_a, nats_b))  # fmt: skip
    parts = paired_breakdown(["all", "twice"], a, b, replicates=500, seed=2)
    alone = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b, replicates=500, seed=2)
    assert parts["all"].ci == pytest.approx(alone.ci, rel=1e-12)  # the same resamples
    assert parts["all"].delta == pytest.approx(alone.delta, rel=1e-12)
