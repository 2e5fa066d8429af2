"""The windows eval feeds a model, rebuilt for benchmarks that time the bare forward beside it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from bpbeval.scoring import Window, padded_length, rolling_windows
from bpbeval.tokenizer import TextTokenizer


def padded_windows(
    tokenizer: TextTokenizer, texts: Sequence[str], *, context_len: int, stride: int
) -> dict[int, list[tuple[np.ndarray, Window, np.ndarray]]]:
    """Every window of ``texts`` padded as eval pads it, by padded length.

    Each entry is ``(ids, window, seq)``: the padded model input, the window, and the
    document's prefix + tokens (the targets of ``window`` are ``seq[start + 1 : end + 1]``).

    Example:
        >>> from bpbeval.tokenizer import train
        >>> tok = train([], vocab_size=265)
        >>> buckets = padded_windows(tok, ["abcdef"], context_len=4, stride=2)
        >>> [(n, [tuple(w) for _, w, _ in ws]) for n, ws in buckets.items()]
        [(4, [(0, 0, 4), (2, 4, 6)])]
    """
    buckets: dict[int, list[tuple[np.ndarray, Window, np.ndarray]]] = defaultdict(list)
    for ids in tokenizer.encode_batch(list(texts)):
        seq = np.array([tokenizer.bos_id, *ids], dtype=np.int64)
        for w in rolling_windows(len(ids), context_len=context_len, stride=stride):
            window = np.full(padded_length(w.end - w.begin, context_len), tokenizer.bos_id)
            window[: w.end - w.begin] = seq[w.begin : w.end]
            buckets[len(window)].append((window, w, seq))
    return dict(buckets)
