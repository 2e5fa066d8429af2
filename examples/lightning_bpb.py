"""Bits per byte as a Lightning validation metric: ``self.log("val/bpb", self.val_bpb)``.

``self.log`` is given the ``BitsPerByte`` object, not a value: Lightning then calls its
``compute()`` at the end of the validation epoch, which sums the float64/int64 states over
ranks, logs the result and resets the metric. ``update`` has ``validate_args=False``, so no
validation step waits for the device.

    python examples/lightning_bpb.py                          # CPU, a few seconds
    python examples/lightning_bpb.py --devices 2 --json out.json   # DDP, 2 CPU processes (gloo)
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from bpbeval import BitsPerByte
from bpbeval.demo.train import token_stream
from bpbeval.files import atomic_write_text
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train


class Data(NamedTuple):
    """Rows of ``context + 1`` tokens: inputs and their next-token targets."""

    train: Tensor
    val: Tensor
    token_bytes: Tensor
    vocab_size: int


def make_data(*, vocab_size: int, context: int) -> Data:
    """The reference's topics (what help() prints); every tenth one is held out."""
    topics = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    val_texts = topics[::10]
    train_texts = [t for i, t in enumerate(topics) if i % 10]
    tokenizer = train(train_texts, vocab_size)

    def rows(texts: list[str]) -> Tensor:
        stream = token_stream(tokenizer, texts)
        n = (len(stream) - 1) // context
        # Rows overlap by one token, so every token after the first is a target once.
        return stream[: n * context + 1].unfold(0, context + 1, context)

    return Data(rows(train_texts), rows(val_texts), tokenizer.token_bytes(), tokenizer.vocab_size)


class LitGPT(L.LightningModule):
    """A small GPT trained on next-token loss, validated in bits per byte."""

    def __init__(self, config: GPTConfig, token_bytes: Tensor, data: Data, batch_size: int):
        super().__init__()
        self.model = GPT(config)
        self.val_bpb = BitsPerByte(token_bytes, validate_args=False)
        self.data = data
        self.batch_size = batch_size

    def nats(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token nats [B, T] of rows [B, T + 1], and the targets they are for."""
        x, y = rows[:, :-1], rows[:, 1:]
        logits = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y), y

    def training_step(self, rows: Tensor, batch_idx: int) -> Tensor:
        nats, _ = self.nats(rows)
        loss = nats.mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, rows: Tensor, batch_idx: int) -> None:
        nats, y = self.nats(rows)
        self.val_bpb.update(nats, y)
        self.log("val/bpb", self.val_bpb)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)

    # Each rank takes every world_size-th row. Lightning's DistributedSampler would instead
    # pad every rank to the same length by repeating rows, which counts their bytes twice.
    def train_dataloader(self) -> DataLoader:
        rows = self.data.train[self.global_rank :: self.trainer.world_size]
        return DataLoader(rows, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        rows = self.data.val[self.global_rank :: self.trainer.world_size]
        return DataLoader(rows, batch_size=self.batch_size)


def build(args: argparse.Namespace) -> tuple[LitGPT, L.Trainer]:
    """The module and a CPU trainer for ``args`` (the test drives these too)."""
    torch.manual_seed(args.seed)
    data = make_data(vocab_size=args.vocab_size, context=args.context)
    config = GPTConfig(data.vocab_size, args.context, n_layer=1, n_head=2, n_embd=args.n_embd)
    module = LitGPT(config, data.token_bytes, data, args.batch_size)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        use_distributed_sampler=False,  # the dataloaders shard the rows themselves
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return module, trainer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="training steps (0: validate only)")
    p.add_argument("--devices", type=int, default=1, help="CPU processes (DDP above 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--n-embd", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the validation bpb here")
    return p


def main() -> None:
    args = parser().parse_args()
    module, trainer = build(args)
    if args.steps:
        trainer.fit(module)
    (result,) = trainer.validate(module, verbose=False)
    if trainer.is_global_zero:
        print(f"val/bpb {result['val/bpb']:.6f} after {args.steps} steps")
        if args.json:
            atomic_write_text(args.json, json.dumps({"val_bpb": result["val/bpb"]}))


if __name__ == "__main__":
    main()
