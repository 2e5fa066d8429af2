"""Per-token losses in bounded memory equal F.cross_entropy(reduction="none")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpbeval.losses import token_nats, token_nats_from_hidden


def targets(shape, vocab, ignore_index, g):
    target = torch.randint(0, vocab, shape, generator=g)
    target.view(-1)[::5] = ignore_index  # every fifth position is ignored
    return target


@pytest.mark.parametrize(
    ("shape", "vocab", "dtype", "chunk_size", "ignore_index"),
    [
        ((2, 37), 65536, torch.bfloat16, 16, -100),
        ((70,), 65536, torch.float32, 1024, -100),
        ((3, 4, 9), 1000, torch.float16, 7, -1),
        ((0, 5), 300, torch.float32, 4, -100),
    ],
)
def test_token_nats_equals_cross_entropy(shape, vocab, dtype, chunk_size, ignore_index):
    g = torch.Generator().manual_seed(vocab + len(shape))
    logits = (torch.randn((*shape, vocab), generator=g) * 3).to(dtype)
    target = targets(shape, vocab, ignore_index, g)
    got = token_nats(logits, target, ignore_index=ignore_index, chunk_size=chunk_size)
    want = F.cross_entropy(
        logits.float().view(-1, vocab), target.view(-1), ignore_index=ignore_index, reduction="none"
    ).view(shape)
    assert got.dtype == torch.float32 and got.shape == target.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(got[target == ignore_index] == 0)


@pytest.mark.parametrize("fused", [True, False], ids=["linear_cross_entropy", "fallback"])
@pytest.mark.parametrize(
    ("shape", "vocab", "dim", "chunk_size", "dtype"),
    [
        ((4, 40), 65536, 32, 32, torch.float32),
        ((3, 11), 5000, 48, 5, torch.float32),
        # F.linear_cross_entropy would round bf16 nats to bf16 (errors ~0.05): not taken.
        ((2, 30), 5000, 64, 16, torch.bfloat16),
    ],
)
def test_token_nats_from_hidden_equals_cross_entropy(
    shape, vocab, dim, chunk_size, dtype, fused, monkeypatch
):
    if not fused:  # the path for a torch without F.linear_cross_entropy
        monkeypatch.delattr(F, "linear_cross_entropy")
    g = torch.Generator().manual_seed(vocab)
    hidden = torch.randn((*shape, dim), generator=g).to(dtype)
    weight = (torch.randn((vocab, dim), generator=g) * 0.3).to(dtype)
    target = targets(shape, vocab, -100, g)
    got = token_nats_from_hidden(hidden, weight, target, chunk_size=chunk_size)
    want = F.cross_entropy(
        (hidden @ weight.T).float().view(-1, vocab), target.view(-1), reduction="none"
    ).view(shape)
    assert got.dtype == torch.float32 and got.shape == target.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.all(got[target == -100] == 0)


def test_chunk_size_must_be_positive():
    logits, target = torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        token_nats(logits, target, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        token_nats_from_hidden(logits, torch.zeros(5, 4), target, chunk_size=0)


def test_every_negative_target_is_ignored_like_the_metric():
    # nanochat masks with -1, Hugging Face with -100: both give 0 nats, as BitsPerByte ignores both.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 11, generator=g)
    target = torch.tensor([3, -1, 7, -100, 0, -5])
    kept = target >= 0
    reference = F.cross_entropy(logits[kept], target[kept], reduction="none")
    for got in (
        token_nats(logits, target),
        token_nats_from_hidden(logits, torch.eye(11), target),
    ):
        assert torch.equal(got[~kept], torch.zeros(3))
        torch.testing.assert_close(got[kept], reference, rtol=1e-5, atol=1e-5)
