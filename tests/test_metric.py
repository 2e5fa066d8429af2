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


INTEGER_DTYPES = [
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
]


@pytest.mark.parametrize("validate_args", [True, False])
@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_targets_of_every_integer_dtype_score_as_int64(dtype, validate_args):
    token_bytes = make_token_bytes()
    loss, target = make_batch(0)
    if not dtype.is_signed:
        target = torch.where(target < 0, 7, target)  # no ids below 0: ignore_index instead
    metric = BitsPerByte(token_bytes, ignore_index=7, validate_args=validate_args)
    metric.update(loss, target.to(dtype))
    nats, nbytes, tokens = reference([(loss, target)], token_bytes, ignore_index=7)
    r = metric.compute_all()
    assert (r.bytes.item(), r.tokens.item()) == (nbytes, tokens)
    assert r.nats.item() == pytest.approx(nats, rel=1e-12)


@pytest.mark.parametrize("validate_args", [True, False])
def test_only_scored_losses_are_checked(validate_args):
    # A special token (0 bytes) or an ignored target is never scored, so its loss may be
    # anything, NaN included, whether or not the batch is validated.
    token_bytes = make_token_bytes()
    loss, target = make_batch(0)
    loss[0, 1:4] = torch.tensor([math.nan, -math.inf, -2.0])
    target[0, 1:4] = torch.tensor([0, 1, 2])  # the special tokens of make_token_bytes
    loss[1, 0] = math.nan  # target -100
    metric = BitsPerByte(token_bytes, validate_args=validate_args)
    metric.update(loss, target)
    nats, nbytes, _ = reference([(loss, target)], token_bytes)
    assert math.isfinite(nats)
    assert metric.compute().item() == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)
    scored_nan = loss.clone()
    scored_nan[0, 1] = math.nan
    target[0, 1] = 5
    if validate_args:
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric.update(scored_nan, target)


@pytest.mark.parametrize("validate_args", [True, False])
def test_shapes_and_dtypes_are_always_checked(validate_args):
    # These checks read only metadata, so they cost no sync and run even when values are not
    # checked: a loss of shape (1,) must not broadcast over three targets (3x the nats).
    metric = BitsPerByte(make_token_bytes(), validate_args=validate_args)
    three = torch.tensor([5, 6, 7])
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.tensor([2.0]), three)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.tensor([1.0, 2.0, 3.0]), three[:1])
    with pytest.raises(TypeError, match="loss must be a floating point"):
        metric.update(three, three)
    with pytest.raises(TypeError, match="target must be an integer"):
        metric.update(three.float(), three.float())
    with pytest.raises(TypeError, match="target must be an integer"):
        metric.update(three.float(), three > 5)
    assert (metric.bytes.item(), metric.tokens.item(), metric.nats.item()) == (0, 0, 0.0)


def test_merge_state_adds_counts_and_refuses_metrics_that_count_differently():
    token_bytes = make_token_bytes()
    a, b = make_batch(0), make_batch(1)
    first = BitsPerByte(token_bytes, ignore_index=7)
    second = first.clone()
    first.update(*a)
    second.update(*b)
    first.merge_state(second)
    nats, nbytes, tokens = reference([a, b], token_bytes, ignore_index=7)
    r = first.compute_all()
    assert (r.bytes.item(), r.tokens.item()) == (nbytes, tokens)
    assert r.nats.item() == pytest.approx(nats, rel=1e-12)

    # Byte counts from another tokenizer's table, or another rule for what is scored,
    # do not add up to anything: refused, and nothing changes.
    for other in (
        BitsPerByte(make_token_bytes(seed=1), ignore_index=7),
        BitsPerByte(token_bytes[:-1], ignore_index=7),
        BitsPerByte(token_bytes, ignore_index=None),
    ):
        other.update(*b)
        with pytest.raises(ValueError, match="cannot merge"):
            first.merge_state(other)
    assert (first.bytes.item(), first.tokens.item()) == (nbytes, tokens)
    # The same table in another integer dtype counts the same.
    same = BitsPerByte(token_bytes.long(), ignore_index=7)
    same.update(*a)
    first.merge_state(same)
    assert first.bytes.item() == nbytes + reference([a], token_bytes, ignore_index=7)[1]


@pytest.mark.parametrize("dtype", [torch.half, torch.bfloat16, torch.float32])
def test_set_dtype_leaves_the_exact_counts_and_the_byte_table_alone(dtype):
    # 80,000 bytes are inf in float16, and a 257-byte token is 256 in bfloat16.
    token_bytes = torch.full((VOCAB,), 8, dtype=torch.int32)
    token_bytes[0], token_bytes[1] = 0, 257
    target = torch.arange(10_000) % VOCAB
    loss = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 5
    metric = BitsPerByte(token_bytes)
    metric.update(loss, target)
    before = metric.compute()
    metric.set_dtype(dtype)
    assert metric.dtype == dtype  # torchmetrics records the request ...
    # ... but the counts, the sums and the table keep their exact dtypes and values.
    assert (metric.bytes.dtype, metric.tokens.dtype, metric.nats.dtype) == (
        torch.int64,
        torch.int64,
        torch.float64,
    )
    assert all(d.dtype in (torch.int64, torch.float64) for d in metric._defaults.values())
    assert metric.token_bytes.dtype == torch.int32 and torch.equal(metric.token_bytes, token_bytes)
    assert metric.compute().dtype == torch.float64 and metric.compute().item() == before.item()
    metric.update(loss, target)
    nats, nbytes, tokens = reference([(loss, target)] * 2, token_bytes)
    assert nbytes > 100_000
    r = metric.compute_all()
    assert (r.bytes.item(), r.tokens.item()) == (nbytes, tokens)
    assert r.bits_per_byte.item() == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)


def test_forward_is_differentiable_in_the_loss():
    # d bpb / d loss_i = 1 / (ln 2 * bytes) for a scored token, 0 for any other.
    token_bytes = make_token_bytes()
    metric = BitsPerByte(token_bytes, ignore_index=7)
    assert metric.is_differentiable
    loss, target = make_batch(0)
    loss = loss.double().requires_grad_()
    value = metric(loss, target)
    (grad,) = torch.autograd.grad(value, loss)
    _, nbytes, _ = reference([(loss.detach(), target)], token_bytes, ignore_index=7)
    tb = token_bytes.tolist()
    expected = [
        1 / (math.log(2) * nbytes) if t >= 0 and t != 7 and tb[t] > 0 else 0.0
        for t in target.flatten().tolist()
    ]
    assert grad.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=0)
    assert 0.0 in expected and any(expected)
    # The accumulated states hold no graph: the next batches do not keep this one alive.
    assert not any(s.requires_grad for s in (metric.nats, metric.bytes, metric.tokens))


def test_plot_draws_one_value_or_values_over_steps():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    token_bytes = make_token_bytes()
    metric = BitsPerByte(token_bytes)
    steps = [metric(*make_batch(s)) for s in range(4)]
    try:
        fig, ax = metric.plot()
        assert fig is ax.figure
        (line,) = ax.lines
        assert np.asarray(line.get_ydata(), dtype=float).tolist() == [metric.compute().item()]

        fig, ax = metric.plot(steps)
        (line,) = ax.lines
        expected = [bits_per_byte(*make_batch(s), token_bytes).item() for s in range(4)]
        assert np.asarray(line.get_ydata(), dtype=float).tolist() == pytest.approx(expected)
        assert ax.get_ylabel() == "BitsPerByte"

        _, own = plt.subplots()
        assert metric.plot(steps[0], ax=own) == (None, own)
        assert np.asarray(own.lines[0].get_ydata(), dtype=float).tolist() == [steps[0].item()]
    finally:
        plt.close("all")
