"""Per-token losses in nats, in bounded memory, for :class:`~bpbeval.BitsPerByte`.

``F.cross_entropy(logits.float(), ...)`` over a whole evaluation batch makes a
float32 copy of the logits and a float32 log-softmax of the same size: at
16k tokens and a 65k vocabulary that is 8 GiB on top of the logits. These
helpers work on row chunks instead, so the extra memory is a few chunks' worth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bpbeval.functional import _ignored_targets

# Rows per chunk: at a 65536 vocabulary a float32 chunk of logits is 64 MiB.
DEFAULT_CHUNK_SIZE = 256


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")


def _chunked_nats(
    logits_of_rows: Callable[[slice], Tensor],
    target: Tensor,
    ignore_index: int | None,
    chunk_size: int,
) -> Tensor:
    """float32 nats of 1-D ``target``, upcasting the logits of ``chunk_size`` rows at a time."""
    _check_chunk_size(chunk_size)
    ignored = _ignored_targets(target, ignore_index)
    safe_target = target.masked_fill(ignored, 0)
    out = torch.empty(target.shape, dtype=torch.float32, device=target.device)
    for start in range(0, target.numel(), chunk_size):
        rows = slice(start, start + chunk_size)
        out[rows] = F.cross_entropy(
            logits_of_rows(rows).float(), safe_target[rows], reduction="none"
        )
    return out.masked_fill_(ignored, 0.0)


def token_nats(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Per-token cross-entropy in nats, float32, without a float32 copy of all the logits.

    Equal to ``F.cross_entropy(logits.float().flatten(0, -2), target.flatten(),
    reduction="none")`` reshaped like ``target``, computed ``chunk_size`` rows at a time.

    Args:
        logits: [..., V] in any float dtype (bf16 stays bf16 outside the current chunk).
        target: int64 [...], the ids predicted.
        ignore_index: one more target id whose loss is 0, besides all ids below 0.
        chunk_size: rows of logits upcast at once.

    Returns:
        float32 tensor shaped like ``target``.

    Example:
        >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]], dtype=torch.bfloat16)
        >>> token_nats(logits, torch.tensor([[1, -1]]))  # ids below 0 are ignored
        tensor([[0.6931, 0.0000]])
    """
    flat_logits = logits.flatten(0, -2)
    nats = _chunked_nats(lambda rows: flat_logits[rows], target.flatten(), ignore_index, chunk_size)
    return nats.view(target.shape)


def token_nats_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Per-token nats from final hidden states and the unembedding, never holding all logits.

    Equal to :func:`token_nats` of ``hidden @ weight.T``. For float32 and float64 inputs
    uses torch's chunked ``F.linear_cross_entropy`` where the installed torch has it;
    otherwise computes the logits ``chunk_size`` rows at a time. Half-precision inputs
    always take the chunked path: ``F.linear_cross_entropy`` computes and returns their
    losses in that precision (bf16 nats are off by up to ~0.05), where the chunked path
    upcasts each chunk of logits to float32 as :func:`token_nats` does.

    Args:
        hidden: [..., D] final hidden states (after the last norm).
        weight: [V, D] unembedding (``lm_head.weight``); no bias.
        target: int64 [...], the ids predicted.
        ignore_index: one more target id whose loss is 0, besides all ids below 0.
        chunk_size: rows whose logits exist at once.

    Returns:
        float32 tensor shaped like ``target``.

    Example:
        >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        >>> token_nats_from_hidden(hidden, weight, torch.tensor([0, 2]))
        tensor([0.5514, 1.0986])
    """
    flat_hidden, flat_target = hidden.flatten(0, -2), target.flatten()
    fused = hasattr(F, "linear_cross_entropy")  # torch 2.13 and later
    if not fused or hidden.dtype not in (torch.float32, torch.float64):
        nats = _chunked_nats(
            lambda rows: F.linear(flat_hidden[rows], weight), flat_target, ignore_index, chunk_size
        )
    else:
        _check_chunk_size(chunk_size)
        options = torch.nn.LinearCrossEntropyOptions(
            batch_chunk_size=chunk_size, chunking_method=None
        )
        ignored = _ignored_targets(flat_target, ignore_index)
        nats = F.linear_cross_entropy(
            flat_hidden,
            weight,
            flat_target.masked_fill(ignored, 0),
            reduction="none",
            options=options,
        ).float()
        nats = nats.masked_fill_(ignored, 0.0)
    return nats.view(target.shape)
