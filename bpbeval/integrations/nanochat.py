"""nanochat drop-ins: ``evaluate_bpb`` with exact totals, and an exact ``token_bytes.pt``.

nanochat's ``scripts/base_train.py`` scores its val set with ``nanochat.loss_eval.evaluate_bpb``
and the byte table in ``token_bytes.pt``. :func:`evaluate_bpb` takes the same arguments and
returns the same figure, with three differences: nats are summed in float64 (nanochat's float32
total drifts past ~10^7 tokens), nothing waits for the device between steps (nanochat's
``.any()`` on the targets syncs every step), and an empty evaluation gives NaN rather than a
``ZeroDivisionError``. :func:`save_token_bytes` writes the table nanochat loads from each
token's raw bytes; nanochat's own counts a token that is not valid UTF-8 by itself (a lone byte
0x80-0xFF, half a character) as the 3 bytes of U+FFFD.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bpbeval.files import atomic_write_bytes
from bpbeval.functional import _bits_per_byte_compute, _bits_per_byte_update, _nats_dtype
from bpbeval.tokenizer.core import TextTokenizer


@torch.no_grad()
def evaluate_bpb(
    model: Any, batches: Iterable[tuple[Tensor, Tensor]], steps: int, token_bytes: Tensor
) -> float:
    """Bits per byte of ``steps`` batches, a drop-in for nanochat's ``loss_eval.evaluate_bpb``.

    Each batch ``(x, y)`` is scored with ``model(x, y, loss_reduction="none")``. A target is
    scored when it is not below 0 (nanochat masks with -1) and its token has bytes (special
    tokens have 0). Under ``torch.distributed`` the totals are summed over ranks, once, after
    the last step.

    Args:
        model: a nanochat ``GPT`` (compiled or not), or anything called the same way that
            returns per-token nats, [B, T] or flattened.
        batches: yields ``(x, y)`` int64 [B, T] pairs, like nanochat's val loader.
        steps: how many batches to take.
        token_bytes: int [vocab_size], the UTF-8 bytes of each token id, 0 for specials,
            on the model's device (nanochat's ``get_token_bytes(device=device)``).

    Returns:
        Bits per byte as a Python float; NaN if no byte was scored.

    Example:
        >>> import math
        >>> class Uniform(torch.nn.Module):  # 4 ids, each equally likely: ln 4 nats per token
        ...     def forward(self, x, y, loss_reduction="mean"):
        ...         return torch.full(y.shape, math.log(4)).view(-1)
        >>> token_bytes = torch.tensor([0, 1, 2, 3])  # id 0 is a special token
        >>> batches = [(torch.tensor([[0, 1]]), torch.tensor([[1, 3]])),
        ...            (torch.tensor([[3, 2]]), torch.tensor([[2, -1]]))]
        >>> round(evaluate_bpb(Uniform(), batches, 2, token_bytes), 6)  # 6 bits / 6 bytes
        1.0
    """
    device = token_bytes.device
    nats = torch.zeros((), dtype=_nats_dtype(device), device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        x, y = next(batch_iter)
        # nanochat's GPT returns 'none' losses flattened: pair them with flat targets.
        loss = model(x, y, loss_reduction="none").reshape(-1)
        step_nats, step_bytes, _ = _bits_per_byte_update(loss, y.reshape(-1), token_bytes, None)
        nats += step_nats
        nbytes += step_bytes
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(nats)
        dist.all_reduce(nbytes)
    return float(_bits_per_byte_compute(nats, nbytes))


def save_token_bytes(tokenizer: TextTokenizer, path: str | os.PathLike[str]) -> Tensor:
    """Write ``tokenizer``'s exact byte table as nanochat's ``token_bytes.pt``; return it.

    The file is what nanochat's ``scripts/tok_train.py`` writes: ``torch.save`` of one int32
    CPU tensor [vocab_size], 0 for special tokens. It holds no Python objects, so
    ``torch.load(path, weights_only=True)`` reads it. Written atomically.

    Example:
        >>> import tempfile
        >>> from bpbeval.tokenizer import train
        >>> tokenizer = train(["héllo"], vocab_size=266)
        >>> path = tempfile.mkdtemp() + "/token_bytes.pt"
        >>> table = save_token_bytes(tokenizer, path)
        >>> torch.equal(torch.load(path, weights_only=True), tokenizer.token_bytes())
        True
    """
    table = tokenizer.token_bytes().to(device="cpu", dtype=torch.int32)
    buffer = io.BytesIO()
    torch.save(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return table
