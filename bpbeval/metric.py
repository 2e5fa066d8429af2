"""``BitsPerByte``: the torchmetrics metric, a thin class over :mod:`bpbeval.functional`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

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

    Every batch must have a float loss and an integer target (any integer dtype) of
    the same shape; those checks read only metadata. ``update`` never synchronises
    host and device when ``validate_args=False``. With ``validate_args=True`` (the
    default) ``token_bytes`` is checked once and each batch's values before it
    counts: target ids inside ``token_bytes``, scored losses finite and
    non-negative. Those checks read values, so they sync.

    bpb is differentiable in the loss: ``forward`` returns the batch's bpb with
    its graph (except on MPS, where nats are an integer count). The states never
    hold a graph. ``set_dtype`` leaves the states and ``token_bytes`` as they are:
    they are exact by design. :meth:`merge_state` refuses a metric that counts
    with another ``token_bytes`` or ``ignore_index``.

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

    is_differentiable = True
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
        """Add a batch of per-token losses (nats) and their integer target ids, of one shape."""
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

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's counts (or a dict of states) to this one's.

        Raises:
            ValueError: if the other metric counts bytes with another ``token_bytes``
                or leaves out another ``ignore_index``: the sums would mean nothing.
        """
        if isinstance(incoming_state, BitsPerByte):
            theirs = incoming_state.token_bytes.to(self.token_bytes.device)
            same_table = theirs.shape == self.token_bytes.shape and torch.equal(
                theirs, self.token_bytes
            )
            if not same_table or incoming_state.ignore_index != self.ignore_index:
                raise ValueError(
                    "cannot merge BitsPerByte metrics that count differently (another "
                    "token_bytes or ignore_index); merge only metrics built with the same "
                    "tokenizer's token_bytes and the same ignore_index"
                )
        super().merge_state(incoming_state)

    def plot(
        self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None
    ) -> _PLOT_OUT_TYPE:
        """Plot bits per byte, one value or a sequence of values over steps (needs matplotlib).

        Args:
            val: a result of ``forward`` or ``compute``, or a sequence of them;
                ``compute()`` when None.
            ax: the matplotlib axes to draw on; a new figure when None.

        Returns:
            The figure (None when ``ax`` is given) and the axes.

        Example:
            >>> metric = BitsPerByte(torch.tensor([0, 1, 2]))
            >>> steps = [metric(torch.tensor([x, 1.0]), torch.tensor([1, 2])) for x in (5.0, 2.0)]
            >>> fig, ax = metric.plot(steps)
            >>> [round(float(y), 4) for y in ax.lines[0].get_ydata()]
            [2.8854, 1.4427]
            >>> round(6.0 / (math.log(2) * 3), 4), round(3.0 / (math.log(2) * 3), 4)
            (2.8854, 1.4427)
        """
        return self._plot(val, ax)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> BitsPerByte:
        # fn may cast dtypes (set_dtype, .to(dtype)), but the states, the byte table and the
        # results cached from them are exact by design (80,000 bytes are inf in float16), so
        # they only change device. nats may also change representation: MPS has no float64
        # (see _nats_to). token_bytes, moved by torchmetrics, tells the device.
        states = {name: (getattr(self, name), self._defaults[name]) for name in self._defaults}
        kept = {
            name: getattr(self, name) for name in ("token_bytes", "_computed", "_forward_cache")
        }
        this = super()._apply(fn, exclude_state=(*exclude_state, *states))
        device = this.token_bytes.device
        for name, (value, default) in states.items():
            move = _nats_to if name == "nats" else Tensor.to
            setattr(this, name, move(value, device))
            this._defaults[name] = move(default, device)
        for name, value in kept.items():
            if value is not None:
                setattr(this, name, value.to(device))
        return this
