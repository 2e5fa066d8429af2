"""``bits_per_byte``'s contract at its edges: ``ignore_index``, 1-byte tokens, messages.

Written to kill the mutants ``make mutate`` found surviving in bpbeval/functional.py
(see TESTING.md); each test checks behaviour against a reference computed here.
"""

from __future__ import annotations

import math

import pytest
import torch

from bpbeval import BitsPerByte
from bpbeval.functional import bits_per_byte


def reference_bpb(loss, target, token_bytes, ignore_index=None) -> float:
    """A plain loop: the tokens scored are those not ignored with at least one byte."""
    nats, nbytes = [], 0
    for value, t in zip(loss.tolist(), target.tolist(), strict=True):
        if t < 0 or t == ignore_index or token_bytes[t] == 0:
            continue
        nats.append(value)
        nbytes += int(token_bytes[t])
    return math.fsum(nats) / (math.log(2) * nbytes)


TOKEN_BYTES = torch.tensor([0, 1, 3, 2])  # id 0 a special token, id 1 one byte


def test_ignore_index_leaves_its_tokens_out_of_every_sum():
    loss = torch.tensor([0.5, 2.0, 1.25, 4.0, 3.0])
    target = torch.tensor([1, 2, 3, 2, -100])
    expected = reference_bpb(loss, target, TOKEN_BYTES, ignore_index=2)
    assert expected != reference_bpb(loss, target, TOKEN_BYTES)  # the premise
    assert bits_per_byte(loss, target, TOKEN_BYTES, ignore_index=2).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_an_ignored_id_may_be_anything_and_its_loss_is_not_checked():
    # An ignore_index outside token_bytes, and a NaN or negative loss where it is the target.
    target = torch.tensor([1, 50_000, 2, 50_000])
    for bad in (math.nan, -1.0, math.inf):
        loss = torch.tensor([0.5, bad, 1.5, bad])
        result = bits_per_byte(loss, target, TOKEN_BYTES, ignore_index=50_000)
        assert result.item() == pytest.approx(2.0 / (math.log(2) * 4), rel=1e-12)
        metric = BitsPerByte(TOKEN_BYTES, ignore_index=50_000)
        metric.update(loss, target)
        assert metric.compute().item() == pytest.approx(2.0 / (math.log(2) * 4), rel=1e-12)


def test_a_bad_loss_on_a_one_byte_token_is_refused():
    # Scored means at least one byte: a 1-byte token's loss is checked like any other.
    for bad, message in ((math.nan, "NaN or infinite"), (-0.5, "never negative")):
        with pytest.raises(ValueError, match=message):
            bits_per_byte(torch.tensor([0.5, bad]), torch.tensor([2, 1]), TOKEN_BYTES)


def test_all_targets_ignored_in_a_one_token_vocabulary():
    result = bits_per_byte(torch.tensor([1.0, 2.0]), torch.tensor([-1, -100]), torch.tensor([1]))
    assert math.isnan(result.item())  # 0 nats over 0 bytes
    assert bits_per_byte(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([1])).item() == (
        pytest.approx(1 / math.log(2))
    )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"token_bytes": [1, 2]},
            TypeError,
            r"torch\.Tensor of byte lengths .* got list; build it",
        ),
        (
            {"token_bytes": torch.tensor([True, False])},
            ValueError,
            "^token_bytes must hold byte lengths as integers, not booleans$",
        ),
        (
            {"token_bytes": torch.tensor([1, -2])},
            ValueError,
            "^token_bytes holds negative byte lengths; each must be 0 or more$",
        ),
        ({"ignore_index": 1.5}, TypeError, "^ignore_index must be an int or None, got float$"),
        (
            {"target": torch.tensor([1, 9, 7])},
            ValueError,
            r"^target id 9 is outside token_bytes, which covers ids 0\.\.3; the tokenizer's "
            r"token_bytes must match the model's vocabulary$",
        ),
        (
            {"loss": torch.tensor([0.5, math.inf, 1.0])},
            ValueError,
            "^loss holds NaN or infinite values; check the model's logits$",
        ),
        (
            {"loss": torch.tensor([0.5, -1.0, 1.0])},
            ValueError,
            r"^loss holds negative values, but a cross-entropy in nats is never negative; "
            r"pass -log p \(e\.g\. F\.cross_entropy\(\.\.\., reduction='none'\)\), not log p$",
        ),
    ],
)
def test_each_refusal_says_what_is_wrong_and_how_to_fix_it(arguments, error, message):
    call = {
        "loss": torch.tensor([0.5, 1.0, 2.0]),
        "target": torch.tensor([1, 2, 3]),
        "token_bytes": TOKEN_BYTES,
        **arguments,
    }
    with pytest.raises(error, match=message):
        bits_per_byte(**call)
