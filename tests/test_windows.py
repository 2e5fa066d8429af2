"""Window layout against lm-eval-harness's own rolling windows, and by hand at other strides.

The reference below follows lm-eval-harness's ``lm_eval/utils.py``
(``get_rolling_token_windows``, ``make_disjoint_window``) and the way
``HFLM._loglikelihood_tokens`` turns a (context, continuation) pair into the model's
input: ``(context + continuation)[-(max_length + 1):][:-1]``, scoring the logits of
the last ``len(continuation)`` positions. Its ``context_len`` argument (``1`` in
``loglikelihood_rolling``) sets how many tokens each later window predicts:
``max_seq_len - context_len + 1``, which is bpbeval's stride.
"""

from __future__ import annotations

import pytest

from bpbeval.scoring import rolling_windows

PREFIX = -1  # lm-eval's prefix token (EOS for most models); no document token equals it


def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-eval-harness's generator of (input_tokens, pred_tokens), as in its source."""
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1  # +1 offset, going from input to predictions
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))  # the first window predicts all it holds
    yield [prefix_token, *token_list[: first_seq_len - 1]], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair):
    """lm-eval-harness's: the context stops where the predicted tokens begin (but one)."""
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def lm_eval_model_calls(tokens, max_length, context_len):
    """What the model reads and which tokens it scores, per window, as lm-eval runs them."""
    calls = []
    for pair in get_rolling_token_windows(tokens, PREFIX, max_length, context_len):
        context, continuation = make_disjoint_window(pair)
        model_input = (context + continuation)[-(max_length + 1) :][:-1]
        calls.append((model_input, continuation))
    return calls


def bpbeval_model_calls(tokens, context_len, stride):
    seq = [PREFIX, *tokens]
    return [
        (seq[w.begin : w.end], tokens[w.start : w.end])
        for w in rolling_windows(len(tokens), context_len=context_len, stride=stride)
    ]


@pytest.mark.parametrize("max_length", [1, 2, 3, 4, 7, 16])
def test_every_stride_reads_and_scores_what_lm_eval_does(max_length):
    # lm-eval's context_len c predicts max_length - c + 1 tokens per later window: every
    # stride from 1 to the context is one of its settings (loglikelihood_rolling uses c = 1).
    for lm_eval_context in range(1, max_length + 1):
        stride = max_length - lm_eval_context + 1
        for n in range(4 * max_length + 3):
            tokens = list(range(100, 100 + n))
            expected = lm_eval_model_calls(tokens, max_length, lm_eval_context)
            assert bpbeval_model_calls(tokens, max_length, stride) == expected, (stride, n)


def test_the_reference_reproduces_lm_eval_s_own_expected_windows():
    # lm-eval's tests/test_utils.py, test_get_rolling_token_windows_v1: max_seq_len 10,
    # context_len 1, 34 tokens; the last window is backfilled to 10 inputs.
    gold = [
        ([-100, *range(9)], list(range(10))),
        (list(range(9, 19)), list(range(10, 20))),
        (list(range(19, 29)), list(range(20, 30))),
        (list(range(23, 33)), list(range(30, 34))),
    ]
    assert list(get_rolling_token_windows(list(range(34)), -100, 10, 1)) == gold
    assert make_disjoint_window(gold[3]) == (list(range(23, 30)), list(range(30, 34)))


@pytest.mark.parametrize(
    ("n_tokens", "context_len", "stride", "expected"),
    [
        (0, 4, 2, []),
        (3, 4, 2, [(0, 0, 3)]),  # shorter than the context: one window, all of it
        (4, 4, 2, [(0, 0, 4)]),
        (5, 4, 2, [(0, 0, 4), (1, 4, 5)]),  # the last window backfilled to 4 inputs
        (10, 4, 2, [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]),
        (9, 4, 3, [(0, 0, 4), (3, 4, 7), (5, 7, 9)]),
        (7, 4, 1, [(0, 0, 4), (1, 4, 5), (2, 5, 6), (3, 6, 7)]),
        (11, 5, 4, [(0, 0, 5), (4, 5, 9), (6, 9, 11)]),
        (6, 2, 1, [(0, 0, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 6)]),
        (8, 3, 2, [(0, 0, 3), (2, 3, 5), (4, 5, 7), (5, 7, 8)]),
    ],
)
def test_windows_by_hand(n_tokens, context_len, stride, expected):
    windows = rolling_windows(n_tokens, context_len=context_len, stride=stride)
    assert [tuple(w) for w in windows] == expected
