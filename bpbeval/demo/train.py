"""A small, readable training loop for :class:`bpbeval.gpt.GPT`, in nanochat's style.

Documents are packed into one token stream, each preceded by the bos token, and the
model trains on random windows of it. Every ``eval_every`` steps it is scored on the
validation stream with :class:`bpbeval.BitsPerByte`, the metric this library is about:
the loss per token says little across tokenizers, bits per byte says how well the model
predicts the text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bpbeval import BitsPerByte
from bpbeval.errors import DataError
from bpbeval.gpt import GPT
from bpbeval.metric import BitsPerByteResult
from bpbeval.tokenizer import Tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast to train.

    Attributes:
        steps: optimizer steps; the model sees ``steps * batch_size * context_len`` tokens.
        batch_size: windows per step.
        lr: AdamW's peak learning rate (small models like it high).
        eval_every: steps between two validation scores (the last step is always scored).
        seed: for the windows drawn.
    """

    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    eval_every: int = 50
    seed: int = 0


def token_stream(tokenizer: Tokenizer, texts: Sequence[str]) -> Tensor:
    """Pack documents into one int64 stream, each document preceded by bos (nanochat's way).

    Example:
        >>> from bpbeval.tokenizer import train
        >>> tok = train(["ab"], vocab_size=257, special_tokens=["<|bos|>"])
        >>> token_stream(tok, ["ab", "c"]).tolist()
        [256, 97, 98, 256, 99]
    """
    ids: list[int] = []
    for doc in tokenizer.encode_batch(texts):
        ids.append(tokenizer.bos_id)
        ids.extend(doc)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate_bpb(
    model: GPT, stream: Tensor, token_bytes: Tensor, *, batch_size: int
) -> BitsPerByteResult:
    """Score every token of ``stream`` but the first, once, and return the metric's figures.

    The stream is cut into rows of ``context_len`` inputs; the targets are the same
    stream shifted by one, padded with -1 (which the metric ignores). A target that is
    bos has 0 bytes, so it is not scored either: the bytes counted are exactly the
    UTF-8 bytes of the documents.

    Example:
        >>> from bpbeval.gpt import GPTConfig
        >>> model = GPT(GPTConfig(vocab_size=260, context_len=4, n_layer=1, n_embd=8))
        >>> token_bytes = torch.tensor([1] * 256 + [0] * 4)
        >>> stream = torch.tensor([256, 104, 105, 33, 256, 111, 107])
        >>> result = evaluate_bpb(model, stream, token_bytes, batch_size=2)
        >>> int(result.bytes), int(result.tokens)
        (5, 5)
    """
    T = model.config.context_len
    inputs, targets = stream[:-1], stream[1:]
    pad = -len(inputs) % T
    inputs = F.pad(inputs, (0, pad), value=0).view(-1, T)
    targets = F.pad(targets, (0, pad), value=-1).view(-1, T)
    metric = BitsPerByte(token_bytes)
    for x, y in zip(inputs.split(batch_size), targets.split(batch_size), strict=True):
        logits = model(x)
        # -1 targets give a 0 loss here and are left out by the metric.
        nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
        metric.update(nats.view_as(y), y)
    return metric.compute_all()


def train(
    model: GPT,
    train_stream: Tensor,
    val_stream: Tensor,
    token_bytes: Tensor,
    config: TrainConfig,
    *,
    log: Callable[[str], None] = print,
) -> list[dict[str, float | None]]:
    """Train ``model`` in place with AdamW; return the validation figures along the way.

    Each entry of the returned list has ``step``, ``train_loss`` (nats per token, mean of
    the steps since the last entry; None at step 0), ``val_bpb``, ``val_bits_per_token``
    and ``tokens`` (training tokens seen so far).

    Raises:
        DataError: the training stream is not longer than the model's context.

    Example:
        >>> from bpbeval.gpt import GPTConfig
        >>> _ = torch.manual_seed(0)
        >>> model = GPT(GPTConfig(vocab_size=260, context_len=8, n_layer=1, n_embd=16))
        >>> stream = torch.tensor([256, 1, 2, 3] * 50)
        >>> token_bytes = torch.tensor([1] * 256 + [0] * 4)
        >>> config = TrainConfig(steps=30, batch_size=4, lr=1e-2, eval_every=30)
        >>> history = train(model, stream, stream, token_bytes, config, log=lambda line: None)
        >>> round(history[0]["val_bpb"], 1), history[-1]["val_bpb"] < 2  # 8 bits: a uniform guess
        (8.0, True)
    """
    T, B = model.config.context_len, config.batch_size
    if len(train_stream) <= T:
        raise DataError(
            f"the training stream ({len(train_stream)} tokens) is not longer than the context "
            f"({T}); train on more text or use a shorter context"
        )
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0
    )
    warmup = max(1, config.steps // 10)
    history: list[dict[str, float | None]] = []
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps + 1):
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            val = evaluate_bpb(model, val_stream, token_bytes, batch_size=B)
            model.train()
            entry = {
                "step": step,
                "tokens": step * B * T,
                "train_loss": sum(losses) / len(losses) if losses else None,
                "val_bpb": val.bits_per_byte.item(),
                "val_bits_per_token": val.bits_per_token.item(),
            }
            history.append(entry)
            losses.clear()
            rate = entry["tokens"] / (time.perf_counter() - start)
            train_loss = "  -  " if entry["train_loss"] is None else f"{entry['train_loss']:.3f}"
            val_loss = entry["val_bits_per_token"] * math.log(2)
            log(
                f"  step {step:4d}/{config.steps} | train loss {train_loss} | val loss "
                f"{val_loss:.3f} nats/token, {entry['val_bpb']:.3f} bits/byte | {rate:,.0f} tok/s"
            )
        if step == config.steps:
            break

        # Linear warmup over the first tenth of the steps, then linear decay to a tenth.
        if step < warmup:
            frac = (step + 1) / warmup
        else:
            frac = 1.0 - 0.9 * (step - warmup) / max(1, config.steps - warmup)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * frac

        starts = torch.randint(len(train_stream) - T, (B,), generator=generator)
        x = torch.stack([train_stream[i : i + T] for i in starts.tolist()])
        y = torch.stack([train_stream[i + 1 : i + T + 1] for i in starts.tolist()])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return history
