"""Bits per byte inside a training loop, with the model under ``torch.compile``.

One ``F.cross_entropy(..., reduction="none")`` gives the per-token nats: their mean is
the loss to minimise, and the same tensor, detached, feeds ``BitsPerByte``. With
``validate_args=False`` the metric's update never waits for the device, so it can sit
in the hot loop; ``compute()`` is the only sync, once per log line.

    python examples/train_loop.py                      # a minute or two on 2 CPU cores
    python examples/train_loop.py --steps 20 --backend aot_eager --json out.json
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
import time

import torch
import torch.nn.functional as F

from bpbeval import BitsPerByte
from bpbeval.demo.train import evaluate_bpb, token_stream
from bpbeval.files import atomic_write_text
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--json", help="write the validation figures here")
    args = parser.parse_args()
    torch.manual_seed(0)

    # The reference's topics (what help() prints): every tenth one is held out.
    topics = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    val_texts = topics[::10]
    train_texts = [t for i, t in enumerate(topics) if i % 10]
    tokenizer = train(train_texts, args.vocab_size)
    train_ids = token_stream(tokenizer, train_texts)
    val_ids = token_stream(tokenizer, val_texts)
    token_bytes = tokenizer.token_bytes()

    config = GPTConfig(tokenizer.vocab_size, args.context, n_layer=2, n_head=2, n_embd=args.n_embd)
    model = GPT(config)
    compiled = torch.compile(model, backend=args.backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Training bpb, accumulated between log lines: no sync in update.
    train_bpb = BitsPerByte(token_bytes, validate_args=False)

    history = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(len(train_ids) - args.context, (args.batch_size,)).tolist()
        x = torch.stack([train_ids[i : i + args.context] for i in starts])
        y = torch.stack([train_ids[i + 1 : i + args.context + 1] for i in starts])
        logits = compiled(x)
        nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        nats.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_bpb.update(nats.detach(), y)

        if step % args.eval_every == 0 or step == args.steps:
            model.eval()  # the compiled module shares the weights: score them as they are now
            val = evaluate_bpb(compiled, val_ids, token_bytes, batch_size=args.batch_size)
            model.train()
            entry = {
                "step": step,
                "train_bpb": train_bpb.compute().item(),
                "val_bpb": val.bits_per_byte.item(),
                "val_bits_per_token": val.bits_per_token.item(),
                "val_bytes_per_token": val.bytes_per_token.item(),
                "val_nats": val.nats.item(),
                "val_bytes": int(val.bytes),
                "val_tokens": int(val.tokens),
            }
            history.append(entry)
            train_bpb.reset()
            print(
                f"step {step:4d} | train {entry['train_bpb']:.3f} bpb"
                f" | val {entry['val_bpb']:.3f} bpb"
                f" = {entry['val_bits_per_token']:.3f} bits/token"
                f" / {entry['val_bytes_per_token']:.2f} bytes/token"
                f" | {time.perf_counter() - start:.0f}s"
            )
    if args.json:
        result = {"vocab_size": tokenizer.vocab_size, "history": history}
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
