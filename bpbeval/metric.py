"""``BitsPerByte``: the torchmetrics metric, a thin class over :mod:`bpbeval.functional`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from bpbeval.functional import (
    _bits_per_byte_compute,
    _bits_per_byte_update,
    _bits_per_byte_validate_args,
    _bits_per_byte_validate_inputs,
    _nats_as_float64,
    _nats_to,
)


class BitsPerByteResult(NamedTuple):
    """Everything :meth:`BitsPerByte.compute_all` derives from the metric's states.

    The ratios are 0-dim float64 tensors, NaN when their denominator is 0; the
    totals are the states themselves (``nats`` as float64).
    """

    bits_per_byte: Tensor
    bits_per_token: Tensor
    bytes_per_token: Tensor
    nats: Tensor
    bytes: Tensor
    tokens: Tensor


class BitsPerByte(Metric):
    """Bits per byte of a language model: summed nats / (ln 2 * UTF-8 bytes scored).

    Feed it what a training or evaluation loop already has: per-token losses in
    nats and the target ids. ``token_bytes[id]`` is the UTF-8 byte length of each
    token, 0 for special tokens. Unlike mean cross-entropy, bpb compares models
    across tokenizers.

    A token is scored when its target is not below 0 (nanochat's -1, Hugging
    Face's -100), not ``ignore_index`` and not a 0-byte special token.

    States, all reduced by sum across processes: ``nats`` (float64), ``bytes``
    and ``tokens`` (int64, the number of scored tokens). Totals are therefore
    exact far past 2**24 tokens, and the result does not depend on batch size or
    world size. MPS has no float64: there ``nats`` is an int64 count of 2**-24
    nat, which rounds each loss below float32's own resolution and then sums
    exactly; ``compute`` returns float64 on the CPU.

    ``update`` never synchronises host and device when ``validate_args=False``.
    With ``validate_args=True`` (the default) ``token_bytes`` is checked once and
    each batch before it counts: the shapes match, the loss is float, finite and
    non-negative, the target is an integer with ids inside ``token_bytes``. Those
    checks read values, so they sync.

    Args:
        token_bytes: 1-D integer tensor [vocab_size], UTF-8 bytes per token id.
            Kept as a non-persistent buffer: it moves with ``.to(device)`` and is
            not in ``state_dict()``. The metric starts on its device.
        ignore_index: one more target id to leave out, besides all ids below 0.
        validate_args: check every batch (see above).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> token_bytes = torch.tensor([0, 1, 2, 4])  # id 0 is a special token
        >>> metric = BitsPerByte(token_bytes)
        >>> metric.update(torch.tensor([[1.0, 2.0], [3.0, 7.0]]), torch.tensor([[1, 3], [2, -1]]))
        >>> metric.compute()
        tensor(1.2366, dtype=torch.float64)
        >>> round(6.0 / (math.log(2) * 7), 4)
        1.2366
        >>> metric.compute_all().bytes_per_token
        tensor(2.3333, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    nats: Tensor
    bytes: Tensor
    tokens: Tensor
    token_bytes: Tensor

    def __init__(
        self,
        token_bytes: Tensor,
        *,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if validate_args:
            _bits_per_byte_validate_args(token_bytes, ignore_index)
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.register_buffer("token_bytes", token_bytes, persistent=False)
        self.add_state("nats", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.to(token_bytes.device)

    def update(self, loss: Tensor, target: Tensor) -> None:
        """Add a batch of per-token losses (nats) and their target ids, of one shape."""
        if self.validate_args:
            _bits_per_byte_validate_inputs(loss, target, self.token_bytes, self.ignore_index)
        nats, nbytes, tokens = _bits_per_byte_update(
            loss, target, self.token_bytes, self.ignore_index
        )
        # add_ rather than +=: no nn.Module.__setattr__ per state on this hot path
        self.nats.add_(nats)
        self.bytes.add_(nbytes)
        self.tokens.add_(tokens)

    def compute(self) -> Tensor:
        """Bits per byte, a 0-dim float64 tensor; NaN (0/0) when no byte was scored."""
        return _bits_per_byte_compute(self.nats, self.bytes)

    def compute_all(self) -> BitsPerByteResult:
        """Bits per byte, bits per token and bytes per token, with the totals they come from.

        Synchronised across processes like :meth:`compute`. Bytes per token is the
        tokenizer's compression of the text scored.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            nats = _nats_as_float64(self.nats).clone()
            nbytes, tokens = self.bytes.clone().to(nats.device), self.tokens.clone().to(nats.device)
        return BitsPerByteResult(
            bits_per_byte=_bits_per_byte_compute(nats, nbytes),
            bits_per_token=nats / (tokens.to(torch.float64) * math.log(2)),
            bytes_per_token=nbytes / tokens.to(torch.float64),
            nats=nats,
            bytes=nbytes,
            tokens=tokens,
        )

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> BitsPerByte:
        # torchmetrics moves states with ``fn``; nats is moved by hand because on MPS,
        # which has no float64, it must change representation (see _nats_to).
        nats, default = self.nats, self._defaults["nats"]
        this = super()._apply(fn, exclude_state=(*exclude_state, "nats"))
        device = this.token_bytes.device
        this.nats, this._defaults["nats"] = _nats_to(nats, device), _nats_to(default, device)
        return this
