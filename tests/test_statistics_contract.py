"""The statistics' contract at its edges: verdict wording and boundaries, defaults, input
dtypes, refusals, documents and parts without bytes.

References are written here: the verdict's sentences by hand, the bootstrap as a plain loop,
correlations by ``np.corrcoef``, sums in float64 of the inputs converted first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import fields

import numpy as np
import pytest

from bpbeval.attribution import CLASSES, POSITIONS, Attribution, AttributionSums, PartSums
from bpbeval.statistics import (
    CONFIDENCE,
    MIN_DOCUMENTS,
    bootstrap_delta,
    enumerates_all_flips,
    paired_breakdown,
    paired_figures,
    paired_figures_by_domain,
    sign_flip_p_value,
    verdict,
)

ALPHA = 1 - CONFIDENCE  # the test's level: p must be below it


def _reference_deltas(nats_a, nats_b, nbytes, replicates, seed):
    # The definition in float64, one replicate at a time; a column no resampled document has: NaN.
    a, b, n = (np.asarray(x, dtype=np.float64) for x in (nats_a, nats_b, nbytes))
    if a.ndim == 1:
        a, b, n = a[:, None], b[:, None], n[:, None]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        idx = rng.integers(0, len(n), size=len(n))
        row = []
        for j in range(n.shape[1]):
            denominator = math.log(2) * math.fsum(n[idx, j])
            diff = math.fsum(a[idx, j]) - math.fsum(b[idx, j])
            row.append(diff / denominator if denominator else math.nan)
        out.append(row)
    return np.array(out)


def part_sums(nats, nbytes) -> PartSums:
    """Per-document sums [documents, parts] as a corpus's first classes, summed by the real
    AttributionSums (fewer documents than GROUPS: one group a document)."""
    nats, nbytes = np.asarray(nats), np.asarray(nbytes)
    pad = ((0, len(CLASSES) - nbytes.shape[1]),)
    no_positions = (np.zeros(len(POSITIONS)), np.zeros(len(POSITIONS), dtype=np.int64))
    sums = AttributionSums()
    for i in range(len(nbytes)):
        sums.add(i, Attribution(np.pad(nats[i], pad), np.pad(nbytes[i], pad), *no_positions))
    classes = AttributionSums.combine(sums.arrays(), [sums.partials()]).classes
    return PartSums(*(getattr(classes, f.name)[..., : nbytes.shape[1]] for f in fields(PartSums)))


def _reference_ci(deltas):
    return tuple(np.quantile(deltas, [ALPHA / 2, 1 - ALPHA / 2]))


def _documents(n, seed, ratio=0.97):
    rng = np.random.default_rng(seed)
    nbytes = rng.integers(1, 4000, size=n)
    nats_a = nbytes * rng.uniform(0.5, 1.5, size=n)
    nats_b = nats_a * ratio * rng.uniform(0.9, 1.1, size=n)
    return nats_a, nats_b, nbytes, nbytes // 4 + 1, nbytes // 3 + 1


# --- verdict: every branch and every boundary, against sentences written by hand ----------


@pytest.mark.parametrize(
    ("delta", "ci", "p", "expected"),
    [
        (-0.1234, (-0.15, -0.1), 0.001,
         "A is better by 0.1234 bpb (95% CI 0.1000 to 0.1500, sign-flip p = 0.001)"),
        (0.2, (0.1, 0.3), 0.01,
         "B is better by 0.2000 bpb (95% CI 0.1000 to 0.3000, sign-flip p = 0.01)"),
        # An interval that ends at 0 does not exclude it: no call, whatever the test says.
        (-0.1, (-0.2, 0.0), 0.001,
         "borderline: A − B = -0.1000 bpb (95% CI -0.2000 to 0.0000, sign-flip p = 0.001); "
         "the sign-flip test rejects, the interval includes 0"),
        (0.1, (0.0, 0.2), 0.001,
         "borderline: A − B = 0.1000 bpb (95% CI 0.0000 to 0.2000, sign-flip p = 0.001); "
         "the sign-flip test rejects, the interval includes 0"),
        (0.5, (0.2, 0.8), 0.001,
         "B is better by 0.5000 bpb (95% CI 0.2000 to 0.8000, sign-flip p = 0.001)"),
        # p exactly at the level does not reject.
        (0.2, (0.1, 0.3), ALPHA,
         "borderline: A − B = 0.2000 bpb (95% CI 0.1000 to 0.3000, sign-flip p = 0.05); "
         "the interval excludes 0, the sign-flip test does not reject"),
        (-0.2, (-0.3, -0.1), 0.2,
         "borderline: A − B = -0.2000 bpb (95% CI -0.3000 to -0.1000, sign-flip p = 0.2); "
         "the interval excludes 0, the sign-flip test does not reject"),
        (0.01, (-0.002, 0.02), 0.3,
         "no significant difference: A − B = 0.0100 bpb (95% CI -0.0020 to 0.0200, sign-flip "
         "p = 0.3); at this many documents a true difference of 0.0150 bpb is detected 80% of "
         "the time"),
    ],
)  # fmt: skip
def test_verdict_sentences(delta, ci, p, expected):
    assert verdict(delta, ci, p_value=p, mde=0.015) == expected


# --- defaults: 1000 replicates, seed 0 -------------------------------------------------------


def test_defaults_are_1000_replicates_with_seed_0():
    nats_a, nats_b, nbytes, tokens_a, tokens_b = _documents(45, seed=1)
    expected_ci = _reference_ci(_reference_deltas(nats_a, nats_b, nbytes, 1000, 0)[:, 0])
    figures = paired_figures(nats_a, nats_b, nbytes, tokens_a, tokens_b)
    assert figures.replicates == 1000
    assert figures.ci == pytest.approx(expected_ci, rel=1e-12)
    by_domain = paired_figures_by_domain(["x"] * 45, nats_a, nats_b, nbytes, tokens_a, tokens_b)
    assert by_domain["x"].replicates == 1000
    assert by_domain["x"].ci == pytest.approx(expected_ci, rel=1e-12)
    a, b = (part_sums(x[:, None], nbytes[:, None]) for x in (nats_a, nats_b))
    assert paired_breakdown(["all"], a, b)["all"].ci == pytest.approx(expected_ci, rel=1e-12)


# --- dtypes: whatever the inputs' dtype, sums are float64 / int64 ---------------------------


def _float32_documents(n):
    # Every value is exact in float32, but their sums are not: float32 inputs must be summed in
    # float64 (nats) or int64 (bytes, tokens) to give the same answer as float64 / int64 inputs.
    rng = np.random.default_rng(2)
    nbytes = rng.integers(2**23, 2**24, size=n)
    nats_a = (nbytes * rng.uniform(0.5, 1.5, size=n)).astype(np.float32)
    nats_b = (nbytes * rng.uniform(0.5, 1.5, size=n)).astype(np.float32)
    tokens = nbytes // 3 + 1
    assert (nbytes.astype(np.float32).sum() != nbytes.sum()) and (
        tokens.astype(np.float32).sum() != tokens.sum()
    )
    return nats_a, nats_b, nbytes, tokens


def test_float32_inputs_are_summed_in_float64_and_int64():
    n = MIN_DOCUMENTS + 9
    nats_a, nats_b, nbytes, tokens = _float32_documents(n)
    wide = [x.astype(np.float64) for x in (nats_a, nats_b)]
    f32 = np.float32
    deltas = bootstrap_delta(nats_a, nats_b, nbytes.astype(f32), replicates=50, seed=3)
    reference = _reference_deltas(*wide, nbytes, 50, 3)[:, 0]
    np.testing.assert_allclose(deltas, reference, rtol=1e-12, atol=0)

    narrow = paired_figures(nats_a, nats_b, nbytes.astype(f32), tokens.astype(f32), tokens,
                            replicates=500)  # fmt: skip
    figures = paired_figures(*wide, nbytes, tokens, tokens, replicates=500)
    assert (narrow.a.bytes, narrow.a.tokens) == (int(nbytes.sum()), int(tokens.sum()))
    assert narrow == figures

    both = np.stack([nbytes, nbytes], 1)
    narrow_parts = paired_breakdown(
        ["p", "q"], *(part_sums(np.stack([x, x], 1), both) for x in (nats_a, nats_b)),
        replicates=500,
    )  # fmt: skip
    parts = paired_breakdown(
        ["p", "q"], *(part_sums(np.stack([x, x], 1), both) for x in wide), replicates=500
    )
    assert narrow_parts["p"].bytes == int(nbytes.sum())
    assert narrow_parts == parts


def test_a_part_absent_from_a_resample_is_nan_without_a_warning():
    nats = np.array([[1.0, 0.0], [2.0, 3.0]])
    nbytes = np.array([[1, 0], [2, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deltas = bootstrap_delta(nats, nats / 2, nbytes, replicates=40, seed=0)
    reference = _reference_deltas(nats, nats / 2, nbytes, 40, 0)
    np.testing.assert_allclose(deltas, reference, rtol=1e-12, atol=0)
    assert np.isnan(deltas[:, 1]).any()  # some resample drew the first document only


def test_one_replicate_is_enough_for_the_bootstrap():
    nats_a, nats_b, nbytes, _, _ = _documents(7, seed=4)
    deltas = bootstrap_delta(nats_a, nats_b, nbytes, replicates=1, seed=5)
    np.testing.assert_allclose(deltas, _reference_deltas(nats_a, nats_b, nbytes, 1, 5)[:, 0],
                               rtol=1e-12, atol=0)  # fmt: skip


# --- refusals name what was wrong -----------------------------------------------------------


def test_refusals_say_what_was_wrong():
    with pytest.raises(ValueError, match=r"^no document has any bytes: nothing to compare$"):
        paired_figures([1.0, 2.0], [1.0, 2.0], [0, 0], [1, 1], [1, 1])
    # [2] against [1]: numpy would broadcast them; the test refuses instead.
    with pytest.raises(ValueError, match=r"need equal, non-empty lengths; got 2 and 1"):
        sign_flip_p_value([1.0, 2.0], [1.0], permutations=10, seed=0)
    with pytest.raises(ValueError, match=r"need equal, non-empty lengths; got 0 and 0"):
        sign_flip_p_value([], [], permutations=10, seed=0)
    with pytest.raises(ValueError, match="permutations must be at least 1, got 0"):
        sign_flip_p_value([1.0], [2.0], permutations=0, seed=0)
    two = part_sums(np.ones((3, 2)), np.ones((3, 2), dtype=int))
    with pytest.raises(ValueError, match=r"need sums of the same 3 parts .* got 2 and 2 parts"):
        paired_breakdown(["x", "y", "z"], two, two)
    other = part_sums(np.ones((3, 2)), 2 * np.ones((3, 2), dtype=int))
    with pytest.raises(ValueError, match=r"over the same bytes; .* over 6 and 12 bytes"):
        paired_breakdown(["x", "y"], two, other)


def test_all_flips_are_enumerated_only_where_2_to_the_n_fits_in_int64():
    # np.arange(2**n) and its shifts are int64: 2**63 does not fit.
    assert enumerates_all_flips(62, 2**62)
    assert not enumerates_all_flips(63, 2**63)
    assert not enumerates_all_flips(64, 2**64)


# --- correlation: defined from two documents, at any scale ---------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_correlation_is_pearson_from_two_documents_on_and_at_any_scale(scale):
    rng = np.random.default_rng(6)
    for n in (2, 3, 50):
        nbytes = rng.integers(1, 100, size=n)
        bpb_a, bpb_b = 1 + scale * rng.uniform(size=n), 1 + scale * rng.uniform(size=n)
        ln2 = math.log(2)
        figures = paired_figures(bpb_a * nbytes * ln2, bpb_b * nbytes * ln2, nbytes, nbytes,
                                 nbytes, replicates=5)  # fmt: skip
        expected = np.corrcoef(bpb_a, bpb_b)[0, 1]
        assert figures.correlation == pytest.approx(expected, abs=1e-6)
        if n == 2:
            assert abs(figures.correlation) == pytest.approx(1.0)


# --- documents, domains and parts without bytes ---------------------------------------------


def test_domains_without_bytes_are_left_out_and_one_byte_is_enough():
    domains = ["empty", "one", "empty"]
    by_domain = paired_figures_by_domain(
        domains, [3.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0, 1, 0], [5, 5, 5], [5, 5, 5], replicates=5
    )
    assert list(by_domain) == ["one"]
    assert (by_domain["one"].documents, by_domain["one"].a.nats) == (1, 2.0)


def test_parts_are_counted_from_one_byte_and_a_part_without_bytes_skips_only_itself():
    rng = np.random.default_rng(7)
    n = MIN_DOCUMENTS + 4
    # Columns: absent everywhere, one byte in every document, a few bytes in some.
    nbytes = np.stack([np.zeros(n, int), np.ones(n, int), rng.integers(0, 3, size=n)], axis=1)
    nats_a = nbytes * rng.uniform(0.5, 2.0, size=nbytes.shape)
    nats_b = nbytes * rng.uniform(0.5, 2.0, size=nbytes.shape)
    empty = np.zeros((3, 3))  # documents with no bytes at all: left out before resampling
    with_empty = np.concatenate([nbytes, empty.astype(int)])
    parts = paired_breakdown(
        ["absent", "single", "some"],
        *(part_sums(np.concatenate([x, empty]), with_empty) for x in (nats_a, nats_b)),
        replicates=500,
        seed=8,
    )
    assert list(parts) == ["single", "some"]
    deltas = _reference_deltas(nats_a, nats_b, nbytes, 500, 8)
    for j, name in ((1, "single"), (2, "some")):
        part = parts[name]
        assert (part.documents, part.bytes) == (np.count_nonzero(nbytes[:, j]), nbytes[:, j].sum())
        assert part.share == nbytes[:, j].sum() / nbytes.sum()
    assert parts["single"].ci == pytest.approx(_reference_ci(deltas[:, 1]), rel=1e-12)
    assert (parts["some"].ci is None) == (np.count_nonzero(nbytes[:, 2]) < MIN_DOCUMENTS)
