"""The engine's own cross-check: the metric's synced totals against the documents' sums.

``score_documents`` runs it on every call; it fires only on a bug, so no end-to-end test
reaches its refusals. Here it is given totals that agree, and ones that disagree by a known
amount, each computed in the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpbeval.scoring import _check_metric


def test_totals_that_agree_pass_and_any_token_count_that_differs_is_refused():
    doc_nats, doc_tokens = np.array([1e6, 2.5, 1e-6]), np.array([7, 1, 3])
    _check_metric(math.fsum(doc_nats), 11, doc_nats, doc_tokens)
    # The nats agree; one token too many is still a bug.
    with pytest.raises(RuntimeError, match=r"counted .* nats over 12 tokens .* over 11"):
        _check_metric(math.fsum(doc_nats), 12, doc_nats, doc_tokens)


@pytest.mark.parametrize("doc_sum", [0.0, 1.0, 1e6])
def test_nats_may_differ_by_one_part_in_a_billion_and_no_more(doc_sum):
    # The bound is 1e-9 of the sum, or 1e-9 itself below one nat: summation order, not a bug.
    doc_nats, doc_tokens = np.array([doc_sum]), np.array([4])
    bound = 1e-9 * max(1.0, doc_sum)
    _check_metric(doc_sum + bound / 2, 4, doc_nats, doc_tokens)
    if doc_sum == 0.0:
        _check_metric(bound, 4, doc_nats, doc_tokens)  # exactly at the bound: allowed
    for off in (2 * bound, 0.5, -0.5):
        with pytest.raises(RuntimeError, match="bpbeval bug"):
            _check_metric(doc_sum + off, 4, doc_nats, doc_tokens)
