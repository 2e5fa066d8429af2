"""Bits per byte as pure functions, the update and compute steps of :class:`~bpbeval.BitsPerByte`.

bpb = (sum of per-token losses in nats) / (ln 2 * UTF-8 bytes of the tokens scored).

A token is *scored* when its target is not ignored (``target >= 0`` and
``target != ignore_index``) and it stands for at least one byte
(``token_bytes[target] > 0``). Special tokens have 0 bytes, so they add to
neither sum: they are not text.

Exactness: nats are summed in float64 and bytes and tokens in int64, so totals of
10^9 tokens and more stay exact. MPS has no float64; there the nats are kept as an
int64 count of 2**-24 nat (see :func:`_nats_dtype`).

Speed: the update never synchronises host and device. It uses ``torch.where`` and
an integer gather instead of boolean-mask indexing, ``.item()`` or a Python ``if``
on a tensor, all of which wait for the device. Shapes and dtypes are metadata, so
they are always checked; the checks that must look at values live in
:func:`_bits_per_byte_validate_inputs` and run only when asked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# On MPS (no float64) each token's loss becomes an int64 count of 2**-24 nat. Every
# float32 loss of 0.5 or more is already such a multiple, so only smaller ones round
# (by at most 2**-25 nat); the counts then add exactly: no drift, the same total for
# any batching and world size, for up to 2**39 (5e11) nats in all.
_FIXED_POINT_BITS = 24


def _nats_dtype(device: torch.device) -> torch.dtype:
    """The dtype nats are accumulated in on ``device``: float64, or int64 fixed point on MPS."""
    return torch.int64 if device.type == "mps" else torch.float64


def _sum_nats(loss: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum losses into a 0-dim accumulator of ``dtype`` (see :func:`_nats_dtype`)."""
    if dtype == torch.int64:
        return torch.round(loss.float() * 2.0**_FIXED_POINT_BITS).to(torch.int64).sum()
    return loss.sum(dtype=torch.float64)


def _nats_as_float64(nats: Tensor) -> Tensor:
    """An accumulator from :func:`_sum_nats` as float64 nats (on the CPU for fixed point)."""
    if nats.dtype == torch.int64:
        return nats.cpu().to(torch.float64) / 2.0**_FIXED_POINT_BITS
    return nats


def _nats_to(nats: Tensor, device: torch.device) -> Tensor:
    """Move an accumulator to ``device``, converting it if that device keeps nats differently."""
    dtype = _nats_dtype(device)
    if nats.dtype == dtype:
        return nats.to(device)
    if dtype == torch.int64:
        return torch.round(nats * 2.0**_FIXED_POINT_BITS).to(torch.int64).to(device)
    return _nats_as_float64(nats).to(device)


def _ignored_targets(target: Tensor, ignore_index: int | None) -> Tensor:
    """Where a target is ignored: ids below 0 (nanochat's -1, HF's -100) and ``ignore_index``.

    One rule for the metric and the loss helpers, so one target tensor serves both.
    """
    ignored = target < 0
    if ignore_index is not None:
        ignored |= target == ignore_index
    return ignored


def _bits_per_byte_validate_args(token_bytes: Tensor, ignore_index: int | None) -> None:
    """Check the arguments a metric is built with (reads token_bytes once, so it syncs)."""
    if not isinstance(token_bytes, Tensor):
        raise TypeError(
            f"token_bytes must be a torch.Tensor of byte lengths per token id, got "
            f"{type(token_bytes).__name__}; build it with tokenizer.token_bytes()"
        )
    if token_bytes.ndim != 1 or token_bytes.is_floating_point() or token_bytes.is_complex():
        raise ValueError(
            f"token_bytes must be a 1-D integer tensor (one byte length per token id), got "
            f"shape {tuple(token_bytes.shape)} and dtype {token_bytes.dtype}"
        )
    if token_bytes.dtype == torch.bool:
        raise ValueError("token_bytes must hold byte lengths as integers, not booleans")
    if bool((token_bytes < 0).any()):
        raise ValueError("token_bytes holds negative byte lengths; each must be 0 or more")
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")


def _bits_per_byte_check_inputs(loss: Tensor, target: Tensor) -> None:
    """Check shapes and dtypes: metadata only, so no sync, and always run.

    Without it a loss of shape (1,) would broadcast over every target.
    """
    if loss.shape != target.shape:
        raise ValueError(
            f"loss and target must have the same shape (one loss per target token), got "
            f"{tuple(loss.shape)} and {tuple(target.shape)}; "
            f"use F.cross_entropy(..., reduction='none') for per-token losses"
        )
    if not loss.is_floating_point():
        raise TypeError(f"loss must be a floating point tensor of nats, got dtype {loss.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must be an integer tensor of token ids, got dtype {target.dtype}")


def _target_ids(target: Tensor) -> Tensor:
    """Target ids of any integer dtype as int64.

    ``take`` wants int64 indices, and torch cannot compare uint16..uint64 tensors. A
    uint64 id of 2**63 or more reads as negative, so ignored: it can only be a negative
    id cast to uint64.
    """
    return target.long()


def _scored_bytes(ids: Tensor, token_bytes: Tensor, ignore_index: int | None) -> Tensor:
    """The bytes each int64 target id stands for, 0 where it is not scored.

    Ids must lie inside ``token_bytes`` unless ignored.
    """
    ignored = _ignored_targets(ids, ignore_index)
    # Look up a safe id where ignored, then zero those: no boolean indexing, no sync.
    return token_bytes.take(torch.where(ignored, 0, ids)).masked_fill_(ignored, 0)


def _bits_per_byte_validate_inputs(
    loss: Tensor, target: Tensor, token_bytes: Tensor, ignore_index: int | None
) -> None:
    """Check the values of one batch: this reads them and so synchronises with the device.

    Only scored losses are checked: an ignored or 0-byte target's loss never counts.
    """
    _bits_per_byte_check_inputs(loss, target)  # the checks below assume it
    ids = _target_ids(target)
    outside = ~_ignored_targets(ids, ignore_index) & (ids >= token_bytes.numel())
    if bool(outside.any()):
        raise ValueError(
            f"target id {int(ids[outside][0])} is outside token_bytes, which covers ids "
            f"0..{token_bytes.numel() - 1}; the tokenizer's token_bytes must match the model's "
            f"vocabulary"
        )
    scored_loss = loss[_scored_bytes(ids, token_bytes, ignore_index) > 0]
    if not bool(torch.isfinite(scored_loss).all()):
        raise ValueError("loss holds NaN or infinite values; check the model's logits")
    if bool((scored_loss < 0).any()):
        raise ValueError(
            "loss holds negative values, but a cross-entropy in nats is never negative; "
            "pass -log p (e.g. F.cross_entropy(..., reduction='none')), not log p"
        )


def _bits_per_byte_update(
    loss: Tensor, target: Tensor, token_bytes: Tensor, ignore_index: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sums for one batch: (nats, bytes, tokens) as 0-dim tensors, without a device sync.

    nats is float64 (int64 fixed point on MPS, see :func:`_nats_dtype`); bytes and
    tokens are int64. Targets below 0, equal to ``ignore_index`` or of 0 bytes count
    in none of the three.
    """
    _bits_per_byte_check_inputs(loss, target)
    nbytes = _scored_bytes(_target_ids(target), token_bytes, ignore_index)
    scored = nbytes > 0
    nats = _sum_nats(torch.where(scored, loss, 0), _nats_dtype(loss.device))
    return nats, nbytes.sum(dtype=torch.int64), scored.sum(dtype=torch.int64)


def _bits_per_byte_compute(nats: Tensor, bytes: Tensor) -> Tensor:
    """Bits per byte as a 0-dim float64 tensor from the summed nats and bytes.

    With no byte counted, bpb is 0/0 and the result is NaN: an undefined ratio
    that poisons any average it enters, where a 0 would pass for a perfect model.
    """
    nats = _nats_as_float64(nats)
    return nats / (bytes.to(nats.device).double() * math.log(2))


def bits_per_byte(
    loss: Tensor, target: Tensor, token_bytes: Tensor, *, ignore_index: int | None = None
) -> Tensor:
    """Bits per byte of one batch of per-token losses.

    Args:
        loss: per-token losses in nats, e.g. ``F.cross_entropy(..., reduction="none")``,
            any float dtype and shape.
        target: the token ids the losses are for, a tensor of any integer dtype and the
            same shape. Ids below 0 (nanochat's -1, Hugging Face's -100) are ignored.
        token_bytes: int tensor [vocab_size], the UTF-8 byte length of each token id,
            0 for special tokens (which are then not scored).
        ignore_index: one more target id to ignore.

    Returns:
        A 0-dim float64 tensor; NaN if no byte was scored.

    Raises:
        ValueError: on mismatched shapes, ids outside ``token_bytes`` or a NaN,
            infinite or negative loss at a scored token.
        TypeError: on a non-float loss or a non-integer target.

    Example:
        >>> token_bytes = torch.tensor([0, 1, 3])  # id 0 is a special token
        >>> loss = torch.tensor([0.5, 2.0, 1.0, 9.0])
        >>> target = torch.tensor([1, 2, 0, -100])  # the last two are not scored
        >>> bits_per_byte(loss, target, token_bytes)
        tensor(0.9017, dtype=torch.float64)
        >>> round(2.5 / (math.log(2) * 4), 4)
        0.9017
    """
    _bits_per_byte_validate_args(token_bytes, ignore_index)
    _bits_per_byte_validate_inputs(loss, target, token_bytes, ignore_index)
    nats, nbytes, _ = _bits_per_byte_update(loss, target, token_bytes, ignore_index)
    return _bits_per_byte_compute(nats, nbytes)
