"""nanochat's val bpb with bpbeval's drop-ins: the exact ``token_bytes.pt`` and ``evaluate_bpb``.

What the README's three-line patch to nanochat's ``scripts/base_train.py`` does, end to end,
without nanochat installed: a tokenizer directory made as nanochat's ``tok_train.py`` makes
one (``token_bytes.pt`` from decoded strings), its table rewritten from each token's raw bytes
(``python -m bpbeval.tokenizer token-bytes DIR --out DIR/token_bytes.pt``), a GPT called the
way nanochat calls its model, and nanochat's val loop scored with both tables.

    python examples/nanochat_bpb.py --out runs/nanochat_tokenizer
    python examples/nanochat_bpb.py --out /tmp/tok --steps 20 --json out.json   # quick
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from nanochat_tokenizer import make_nanochat_tokenizer  # this directory's tokenizer example
from torch import Tensor

from bpbeval.demo.corpus import sources, split_text
from bpbeval.demo.train import token_stream
from bpbeval.files import atomic_write_text
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.integrations.nanochat import evaluate_bpb, save_token_bytes
from bpbeval.tokenizer import load_nanochat


class NanochatGPT(torch.nn.Module):
    """A GPT with nanochat's call: ``model(x, y, loss_reduction=...)`` returns the loss."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gpt = GPT(config)

    def forward(self, idx: Tensor, targets: Tensor, loss_reduction: str = "mean") -> Tensor:
        logits = self.gpt(idx).float()
        return F.cross_entropy(
            logits.flatten(0, 1),
            targets.reshape(-1),
            ignore_index=-1,
            reduction=loss_reduction,
        )


def batches(stream: Tensor, *, rows: int, context: int) -> Iterator[tuple[Tensor, Tensor]]:
    """nanochat's loader, simplified: rows of ``context + 1`` tokens cut from a packed stream."""
    size = rows * (context + 1)
    for start in range(0, len(stream) - size + 1, size):
        block = stream[start : start + size].view(rows, context + 1)
        yield block[:, :-1], block[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the nanochat tokenizer directory")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--docs", type=int, default=2000, help="documents to train/evaluate on")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)

    docs = [doc for _, text in sources() for doc in split_text(text, 800)]
    docs = docs[:: max(1, len(docs) // args.docs)][: args.docs]  # spread over both domains
    val_texts, train_texts = docs[::10], [d for i, d in enumerate(docs) if i % 10]
    make_nanochat_tokenizer(args.out, train_texts, args.vocab_size)
    table = args.out / "token_bytes.pt"
    decoded = torch.load(table, weights_only=True)
    # The one command: python -m bpbeval.tokenizer token-bytes DIR --out DIR/token_bytes.pt
    tokenizer = load_nanochat(args.out)
    save_token_bytes(tokenizer, table)
    exact = torch.load(table, weights_only=True)
    print(f"{table}: {int((decoded != exact).sum())} of {len(exact)} entries rewritten")

    config = GPTConfig(tokenizer.vocab_size, args.context, n_layer=2, n_head=2, n_embd=64)
    model = NanochatGPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_stream = token_stream(tokenizer, train_texts)
    for _ in range(args.steps):
        starts = torch.randint(len(train_stream) - args.context - 1, (8,)).tolist()
        rows = torch.stack([train_stream[i : i + args.context + 1] for i in starts])
        model(rows[:, :-1], rows[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()

    val_stream = token_stream(tokenizer, val_texts)
    steps = len(list(batches(val_stream, rows=4, context=args.context)))
    targets = torch.cat([y.flatten() for _, y in batches(val_stream, rows=4, context=args.context)])
    result = {}
    for name, token_bytes in (("decoded", decoded), ("exact", exact)):
        bpb = evaluate_bpb(
            model, batches(val_stream, rows=4, context=args.context), steps, token_bytes
        )
        result[name] = {"bits_per_byte": bpb, "bytes": int(token_bytes[targets].sum())}
        print(f"val bpb with the {name} table: {bpb:.6f} over {result[name]['bytes']:,} bytes")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
