"""BitsPerByte as a torchmetrics Metric: exact accumulation, metric behaviour, input checks."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from bpbeval import BitsPerByte
from bpbeval.functional import bits_per_byte

VOCAB = 50


def make_batch(seed: int, shape=(3, 17)):
    g = torch.Generator().manual_seed(seed)
    loss = torch.rand(shape, generator=g) * 8
    target = torch.randint(-1, VOCAB, shape, generator=g)
    target[..., 0] = -100
    return loss, target


def make_token_bytes(seed: int = 0) -> torch.Tensor:
    tb = torch.randint(1, 9, (VOCAB,), generator=torch.Generator().manual_seed(seed))
    tb[:3] = 0  # special tokens
    return tb.to(torch.int32)


def reference(batches, token_bytes, ignore_index=None):
    """float64 sums over Python numbers: (nats, bytes, tokens)."""
    tb = token_bytes.tolist()
    nats, nbytes, tokens = [], 0, 0
    for loss, target in batches:
        for x, t in zip(loss.double().flatten().tolist(), target.flatten().tolist(), strict=True):
            if t >= 0 and t != ignore_index and tb[t] > 0:
                nats.append(x)
                nbytes += tb[t]
                tokens += 1
    return math.fsum(nats), nbytes, tokens


def test_accumulates_1e8_tokens_exactly_where_float32_drifts():
    # 100 updates of 10^6 tokens. The float64 reference sums each batch with numpy
    # and the batch sums with math.fsum. A float32 running total of the (float64-exact)
    # batch sums, as nanochat's evaluate_bpb keeps, misses the 1e-12 bound by far.
    token_bytes = make_token_bytes()
    tb = token_bytes.numpy().astype(np.int64)
    metric = BitsPerByte(token_bytes, validate_args=False)
    g = torch.Generator().manual_seed(0)
    sums, nbytes, tokens = [], 0, 0
    total32 = np.float32(0)
    for _ in range(100):
        loss = torch.rand(1_000_000, generator=g) * 10
        target = torch.randint(-1, VOCAB, (1_000_000,), generator=g)
        metric.update(loss, target)
        t = target.numpy()
        nb = np.where(t >= 0, tb[np.maximum(t, 0)], 0)
        scored = nb > 0
        sums.append(float(loss.numpy().astype(np.float64)[scored].sum()))
        nbytes += int(nb.sum())
        tokens += int(scored.sum())
        total32 += np.float32(sums[-1])
    nats = math.fsum(sums)
    result = metric.compute_all()
    assert (result.bytes.item(), result.tokens.item()) == (nbytes, tokens)
    assert tokens > 9e7
    assert result.nats.item() == pytest.approx(nats, rel=1e-12, abs=0)
    bpb = nats / (math.log(2) * nbytes)
    assert metric.compute().item() == pytest.approx(bpb, rel=1e-12, abs=0)
    assert abs(float(total32) - nats) / nats > 1e-9


def test_compute_all_matches_reference():
    token_bytes = make_token_bytes()
    batches = [make_batch(s) for s in range(4)]
    metric = BitsPerByte(token_bytes, ignore_index=7)
    for loss, target in batches:
        metric.update(loss, target)
    nats, nbytes, tokens = reference(batches, token_bytes, ignore_index=7)
    r = metric.compute_all()
    assert r.nats.item() == pytest.approx(nats, rel=1e-12)
    assert (r.bytes.item(), r.tokens.item()) == (nbytes, tokens)
    assert r.bits_per_byte.item() == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)
    assert r.bits_per_token.item() == pytest.approx(nats / math.log(2) / tokens, rel=1e-12)
    assert r.bytes_per_token.item() == pytest.approx(nbytes / tokens, rel=1e-15)
    assert all(x.dtype == torch.float64 for x in r[:4])
    assert metric.compute().dtype == torch.float64 and metric.compute().shape == ()


def test_nothing_scored_gives_nan():
    metric = BitsPerByte(make_token_bytes())
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([-1, 0]))  # ignored, special
    assert torch.isnan(metric.compute())
    r = metric.compute_all()
    assert torch.isnan(r.bits_per_token) and torch.isnan(r.bytes_per_token)
    assert (r.bytes.item(), r.tokens.item(), r.nats.item()) == (0, 0, 0.0)


def test_forward_equals_update_and_returns_the_batch_value():
    token_bytes = make_token_bytes()
    batches = [make_batch(s) for s in range(5)]
    by_forward, by_update = BitsPerByte(token_bytes), BitsPerByte(token_bytes)
    for loss, target in batches:
        batch_value = by_forward(loss, target)
        assert batch_value.item() == pytest.approx(
            bits_per_byte(loss, target, token_bytes).item(), rel=1e-12
        )
        by_update.update(loss, target)
    assert by_forward.compute().item() == pytest.approx(by_update.compute().item(), rel=1e-12)
    nats, nbytes, _ = reference(batches, token_bytes)
    assert by_update.compute().item() == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)


def test_reset_pickle_and_clone_keep_accumulating_correctly():
    token_bytes = make_token_bytes()
    a, b, c = make_batch(0), make_batch(1), make_batch(2)
    metric = BitsPerByte(token_bytes)
    metric.update(*a)
    metric.reset()
    metric.update(*b)
    restored = pickle.loads(pickle.dumps(metric))
    cloned = metric.clone()
    nats, nbytes, _ = reference([b, c], token_bytes)
    for m in (metric, restored, cloned):
        m.update(*c)
        assert m.compute().item() == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)
    assert torch.equal(restored.token_bytes, token_bytes)
    assert cloned.token_bytes is not metric.token_bytes


def test_token_bytes_is_a_non_persistent_buffer_that_moves_with_the_metric():
    token_bytes = make_token_bytes()
    metric = BitsPerByte(token_bytes)
    assert "token_bytes" in dict(metric.named_buffers())
    assert "token_bytes" not in metric.state_dict()
    metric.persistent(True)
    assert set(metric.state_dict()) == {"nats", "bytes", "tokens"}

    metric.update(*make_batch(0))
    metric.to(torch.device("cpu"))
    metric.double()  # dtype casts leave the integer table and the exact states alone
    assert metric.token_bytes.dtype == torch.int32 and metric.nats.dtype == torch.float64
    on_meta = metric.to("meta")
    assert on_meta.token_bytes.device.type == "meta"
    assert {on_meta.nats.device.type, on_meta.bytes.device.type, on_meta.tokens.device.type} == {
        "meta"
    }
    assert on_meta.nats.dtype == torch.float64 and on_meta.device.type == "meta"
    assert on_meta._defaults["nats"].device.type == "meta"
    # A metric built on a device's table starts on that device.
    # (validate_args reads the table's values, which the meta device does not have.)
    assert BitsPerByte(token_bytes.to("meta"), validate_args=False).tokens.device.type == "meta"


def test_bad_inputs_get_clear_errors():
    token_bytes = make_token_bytes()
    metric = BitsPerByte(token_bytes)
    loss, target = make_batch(0)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(loss, target[:, :-1])
    with pytest.raises(TypeError, match="loss must be a floating point"):
        metric.update(torch.ones_like(target), target)
    with pytest.raises(TypeError, match="target must be an integer"):
        metric.update(loss, target.float())
    with pytest.raises(ValueError, match=f"target id {VOCAB} is outside token_bytes"):
        metric.update(loss, torch.full_like(target, VOCAB))
    for bad in (math.nan, math.inf, -0.5):
        broken = loss.clone()
        broken[1, 3] = bad
        target_kept = target.clone()
        target_kept[1, 3] = 5
        message = "negative" if bad < 0 else "NaN or infinite"
        with pytest.raises(ValueError, match=message):
            metric.update(broken, target_kept)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        BitsPerByte(token_bytes.float())
    with pytest.raises(ValueError, match="1-D integer tensor"):
        BitsPerByte(token_bytes.view(5, 10))
    with pytest.raises(ValueError, match="negative byte lengths"):
        BitsPerByte(token_bytes - 1)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        BitsPerByte(token_bytes.tolist())
    # Nothing bad reached the states, and the fast path skips the checks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compute before any successful update
        assert torch.isnan(metric.compute())
    unchecked = BitsPerByte(token_bytes, validate_args=False)
    unchecked.update(torch.full_like(loss, -1.0), target)
    assert unchecked.compute() < 0
