"""``BitsPerByte`` in a ``MetricCollection`` beside torchmetrics' ``Perplexity``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.text import Perplexity

from bpbeval import BitsPerByte


def test_collection_with_perplexity_on_the_same_batches():
    generator = torch.Generator().manual_seed(0)
    vocab = 30
    token_bytes = torch.randint(1, 5, (vocab,), generator=generator)
    token_bytes[0] = 0  # a special token: in perplexity, not in bpb
    metrics = MetricCollection(
        {"bpb": BitsPerByte(token_bytes), "ppl": Perplexity(ignore_index=-100)}
    )
    batches = []
    for _ in range(3):
        logits = torch.randn(2, 7, vocab, generator=generator)
        target = torch.randint(0, vocab, (2, 7), generator=generator)
        target[0, :2] = -100  # e.g. padding
        nats = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        nats = nats.view_as(target)
        # Each metric takes the keywords its update names: preds / loss, and target.
        step = metrics(preds=logits, loss=nats, target=target)
        assert set(step) == {"bpb", "ppl"}
        batches.append((logits, target))
    result = metrics.compute()

    counted, scored, nbytes = [], [], 0
    for logits, target in batches:
        log_probs = logits.double().log_softmax(-1)
        for row, position in (target != -100).nonzero().tolist():
            t = int(target[row, position])
            counted.append(-float(log_probs[row, position, t]))
            if token_bytes[t] > 0:
                scored.append(counted[-1])
                nbytes += int(token_bytes[t])
    assert result["ppl"] == pytest.approx(math.exp(math.fsum(counted) / len(counted)), rel=1e-5)
    assert result["bpb"] == pytest.approx(math.fsum(scored) / (math.log(2) * nbytes), rel=1e-6)
    assert len(scored) < len(counted)  # the special-token targets count in perplexity only
