"""Bits per byte from the Hugging Face ``Trainer``, with no logits gathered on the host.

``TrainerBitsPerByte`` turns each eval batch's logits into per-token nats in
``preprocess_logits_for_metrics``; with ``batch_eval_metrics=True`` its ``compute_metrics``
adds each batch to a ``BitsPerByte`` and nothing else is kept. ``Trainer.evaluate()`` then
reports ``eval_bits_per_byte``, ``eval_bits_per_token`` and ``eval_bytes_per_token``.

Everything is built in-process (a small GPT-2 and a byte-level BPE trained on Python's
reference docs), so nothing is downloaded:

    python examples/hf_trainer.py --out runs/hf_trainer
    python examples/hf_trainer.py --out /tmp/x --steps 10 --val-docs 10   # quick
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
from pathlib import Path

import torch
from compare_hf import byte_level_bpe  # this directory's Hugging Face compare example
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from bpbeval.demo.corpus import split_text
from bpbeval.files import atomic_write_text
from bpbeval.integrations.huggingface import TrainerBitsPerByte

CONTEXT = 128


def rows(tokenizer, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Documents packed into rows of CONTEXT tokens, each after an end-of-text token.

    Consecutive rows share one token, so every token after the first is predicted once.
    """
    ids = [i for text in texts for i in [tokenizer.eos_token_id, *tokenizer(text)["input_ids"]]]
    stream = torch.tensor(ids)
    n = (len(stream) - 1) // (CONTEXT - 1)
    windows = stream[: n * (CONTEXT - 1) + 1].unfold(0, CONTEXT, CONTEXT - 1)
    return [{"input_ids": row, "labels": row} for row in windows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model, tokenizer and metrics")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--val-docs", type=int, default=60, help="documents to evaluate on")
    args = parser.parse_args()
    torch.manual_seed(0)

    topics = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    docs = [doc for topic in topics for doc in split_text(topic, 800)]
    val, train = docs[: args.val_docs], docs[args.val_docs :]
    tokenizer = byte_level_bpe(train, 1024)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)

    bpb = TrainerBitsPerByte(tokenizer)  # exact token_bytes from the tokenizer's vocabulary
    training = TrainingArguments(
        output_dir=str(args.out / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        batch_eval_metrics=True,  # compute_metrics sees one batch at a time
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=rows(tokenizer, train),
        eval_dataset=rows(tokenizer, val),
        preprocess_logits_for_metrics=bpb.preprocess_logits_for_metrics,
        compute_metrics=bpb.compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    for name in ("eval_loss", "eval_bits_per_byte", "eval_bits_per_token", "eval_bytes_per_token"):
        print(f"{name:22s} {metrics[name]:.6f}")

    model.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    atomic_write_text(args.out / "metrics.json", json.dumps(metrics, indent=1))
    atomic_write_text(args.out / "val.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in val))


if __name__ == "__main__":
    main()
