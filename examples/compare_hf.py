"""Compare two local Hugging Face checkpoints with different tokenizers, in bits per byte.

Builds both in-process, so nothing is downloaded: a GPT-2 with a byte-level BPE
tokenizer and a Llama with a SentencePiece-style BPE (``▁`` for spaces, ``<0xNN>``
byte fallback), each trained briefly on Python's reference docs and saved with
``save_pretrained``. Then the command a user would run on their own checkpoints:

    python -m bpbeval.compare OUT/gpt2 OUT/llama --data OUT/val.jsonl --json OUT/compare.json

bpbeval builds an exact ``token_bytes`` for each tokenizer from its vocabulary, so both
models are scored on the same UTF-8 bytes although their tokens differ.

    python examples/compare_hf.py --out runs/compare_hf
    python examples/compare_hf.py --out /tmp/x --steps 10 --val-docs 10   # quick
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from bpbeval import compare
from bpbeval.demo.corpus import split_text

CONTEXT = 128


def byte_level_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """GPT-2's kind: bytes mapped to printable characters, then BPE."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def sentencepiece_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Llama's kind: ``▁`` for spaces, and characters outside the vocabulary as ``<0xNN>`` bytes."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, special_tokens=["<s>", "</s>"], show_progress=False
    )
    base.train_from_iterator(texts, trainer)
    # SentencePiece keeps the 256 byte tokens in the vocabulary itself, not as added tokens.
    learned = json.loads(base.to_str())["model"]
    vocab = {**learned["vocab"], **{f"<0x{b:02X}>": len(learned["vocab"]) + b for b in range(256)}}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=True))
    tok.add_special_tokens(["<s>", "</s>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def train_briefly(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, texts: list[str], steps: int
) -> None:
    """A few AdamW steps on random windows, so that the models are not just noise."""
    ids = torch.tensor([i for t in texts for i in tokenizer(t)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(len(ids) - CONTEXT, (8,)).tolist()
        batch = torch.stack([ids[i : i + CONTEXT] for i in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoints and results go here")
    parser.add_argument("--steps", type=int, default=200, help="training steps per model")
    parser.add_argument("--val-docs", type=int, default=60, help="documents to compare on")
    args = parser.parse_args()
    torch.manual_seed(0)

    topics = [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]
    docs = [doc for topic in topics for doc in split_text(topic, 800)]
    val, train = docs[: args.val_docs], docs[args.val_docs :]
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in val), encoding="utf-8")

    gpt2_tok = byte_level_bpe(train, 1024)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(gpt2_tok),
            n_positions=CONTEXT,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=gpt2_tok.eos_token_id,
            eos_token_id=gpt2_tok.eos_token_id,
        )
    )
    llama_tok = sentencepiece_bpe(train, 1024)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(llama_tok),
            max_position_embeddings=CONTEXT,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            bos_token_id=llama_tok.bos_token_id,
            eos_token_id=llama_tok.eos_token_id,
        )
    )
    for name, model, tokenizer in (("gpt2", gpt2, gpt2_tok), ("llama", llama, llama_tok)):
        train_briefly(model, tokenizer, train, args.steps)
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
        print(f"saved {args.out / name}: {model.num_parameters():,} parameters")

    argv = [str(args.out / "gpt2"), str(args.out / "llama"), "--data", str(data)]
    argv += ["--json", str(args.out / "compare.json")]
    print("$ python -m bpbeval.compare " + " ".join(argv))
    compare.main(argv)


if __name__ == "__main__":
    main()
