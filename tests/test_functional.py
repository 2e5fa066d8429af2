"""bits_per_byte and its update/compute steps against an independent float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bpbeval.functional import (
    _FIXED_POINT_BITS,
    _bits_per_byte_compute,
    _bits_per_byte_update,
    _nats_as_float64,
    _nats_to,
    _sum_nats,
    bits_per_byte,
)


def reference(loss: list[float], target: list[int], token_bytes: list[int], ignore_index):
    """Brute force over Python numbers: (bpb, nats, bytes, tokens)."""
    nats, nbytes, tokens = [], 0, 0
    for x, t in zip(loss, target, strict=True):
        if t < 0 or t == ignore_index or token_bytes[t] == 0:
            continue
        nats.append(x)
        nbytes += token_bytes[t]
        tokens += 1
    total = math.fsum(nats)
    bpb = total / (math.log(2) * nbytes) if nbytes else math.nan
    return bpb, total, nbytes, tokens


@st.composite
def batches(draw):
    vocab = draw(st.integers(1, 50))
    shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    n = math.prod(shape)
    # Special tokens (0 bytes) are common; ids below 0 and ignore_index are ignored.
    token_bytes = draw(
        st.lists(st.sampled_from([0, 1, 2, 3, 4, 7]), min_size=vocab, max_size=vocab)
    )
    ignore_index = draw(st.sampled_from([None, 0, vocab - 1, -5]))
    target = draw(st.lists(st.sampled_from([*range(vocab), -1, -100]), min_size=n, max_size=n))
    loss = draw(st.lists(st.floats(0, 30, width=32), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    return shape, token_bytes, ignore_index, target, loss, dtype


@settings(max_examples=150, deadline=None)
@given(batches())
def test_equals_float64_reference(batch):
    shape, token_bytes, ignore_index, target, loss, dtype = batch
    loss_t = torch.tensor(loss, dtype=dtype).view(shape)
    target_t = torch.tensor(target, dtype=torch.int64).view(shape)
    tb = torch.tensor(token_bytes, dtype=torch.int32)
    # The reference sees the loss values the metric sees, after rounding to dtype.
    bpb, nats, nbytes, tokens = reference(
        loss_t.double().flatten().tolist(), target, token_bytes, ignore_index
    )

    got_nats, got_bytes, got_tokens = _bits_per_byte_update(loss_t, target_t, tb, ignore_index)
    assert (got_nats.dtype, got_bytes.dtype, got_tokens.dtype) == (
        torch.float64,
        torch.int64,
        torch.int64,
    )
    assert got_nats.shape == got_bytes.shape == got_tokens.shape == ()
    assert got_nats.item() == pytest.approx(nats, rel=1e-12, abs=0)
    assert (got_bytes.item(), got_tokens.item()) == (nbytes, tokens)

    got = bits_per_byte(loss_t, target_t, tb, ignore_index=ignore_index)
    assert got.dtype == torch.float64 and got.shape == ()
    if math.isnan(bpb):
        assert torch.isnan(got)
    else:
        assert got.item() == pytest.approx(bpb, rel=1e-12, abs=0)


def test_nothing_scored_is_nan_not_zero():
    # Only ignored ids and a special token: 0 nats over 0 bytes is undefined.
    loss = torch.tensor([1.0, 2.0, 3.0])
    got = bits_per_byte(loss, torch.tensor([-1, -100, 0]), torch.tensor([0, 5]))
    assert torch.isnan(got)
    assert torch.isnan(
        _bits_per_byte_compute(
            torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
        )
    )


def test_unscored_positions_may_hold_garbage_losses():
    # Losses where the target is ignored or a 0-byte special token never enter the sum,
    # so the checks pass them too, even NaN or negative ones.
    loss = torch.tensor([math.nan, math.inf, math.nan, -3.0, 2.0])
    got = bits_per_byte(loss, torch.tensor([-1, -100, 0, 0, 1]), torch.tensor([0, 4]))
    assert got.item() == pytest.approx(2.0 / (math.log(2) * 4), rel=1e-15)


def test_fixed_point_nats_for_mps_sum_exactly_and_convert_back():
    # MPS has no float64, so there nats are int64 multiples of 2**-24 nat. Checked on the CPU:
    # each loss rounds by at most 2**-25, and integer sums do not depend on the batching.
    torch.manual_seed(0)
    loss = torch.rand(100_000) * 12
    whole = _sum_nats(loss, torch.int64)
    parts = sum(_sum_nats(chunk, torch.int64) for chunk in loss.split(777))
    assert whole.dtype == torch.int64 and whole == parts
    exact = math.fsum(loss.double().tolist())
    assert abs(_nats_as_float64(whole).item() - exact) <= loss.numel() * 2.0 ** -(
        _FIXED_POINT_BITS + 1
    )
    # Converting a float64 accumulator to fixed point and back (a metric moved to MPS and off).
    acc = torch.tensor(exact, dtype=torch.float64)
    fixed = torch.round(acc * 2.0**_FIXED_POINT_BITS).to(torch.int64)
    assert _nats_to(fixed, torch.device("cpu")).item() == pytest.approx(
        exact, abs=2.0**-_FIXED_POINT_BITS
    )
    assert torch.equal(_nats_to(acc, torch.device("cpu")), acc)


def test_update_compiles_without_graph_break():
    # One small compile on the inductor backend; fullgraph=True fails on any graph break,
    # which is what a host-device sync (.item(), .any(), masks, Python if) would cause.
    torch._dynamo.reset()
    update = torch.compile(_bits_per_byte_update, fullgraph=True, dynamic=False)
    torch.manual_seed(1)
    loss = torch.rand(4, 33) * 5
    target = torch.randint(-2, 20, (4, 33))
    tb = torch.randint(0, 4, (20,))
    got = update(loss, target, tb, 7)
    _, nats, nbytes, tokens = reference(
        loss.double().flatten().tolist(), target.flatten().tolist(), tb.tolist(), 7
    )
    assert got[0].item() == pytest.approx(nats, rel=1e-12)
    assert (got[1].item(), got[2].item()) == (nbytes, tokens)
