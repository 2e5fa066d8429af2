"""The scoring engine on a CUDA device (called by ``gpu_check.py``; skips without CUDA).

- a native and a Hugging Face checkpoint scored on CUDA against CPU float32: per-document
  nats within 1e-5 relative at float32; the bf16 difference is printed;
- host-device syncs while scoring, counted with ``torch.cuda.set_sync_debug_mode("warn")``:
  at most one per ``SYNC_EVERY`` forward passes (when documents finish), plus the end;
- ``torchrun --nproc_per_node 1`` on NCCL gives the single process's figures;
- scored tokens/s against the bare forward over the same windows at the default budget.

    python benchmarks/gpu_scoring.py
"""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from eval_windows import padded_windows

from bpbeval import scoring
from bpbeval.checkpoint import load, save
from bpbeval.data import Document
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.scoring import score_documents
from bpbeval.tokenizer import train

CONTEXT = 512
ROOT = Path(__file__).resolve().parents[1]


def corpus(count: int, *, repeat: int = 1) -> list[Document]:
    texts = [text for _, text in sorted(pydoc_data.topics.topics.items())] * repeat
    return [Document(f"d{i}", text) for i, text in enumerate(texts[:count])]


def native_checkpoint(directory: Path, n_embd: int = 256) -> Path:
    tokenizer = train([d.text for d in corpus(40)], vocab_size=4096)
    torch.manual_seed(0)
    model = GPT(GPTConfig(tokenizer.vocab_size, context_len=CONTEXT, n_layer=4, n_embd=n_embd))
    save(directory / "native", model.eval(), tokenizer, CONTEXT)
    return directory / "native"


def hf_checkpoint(directory: Path) -> Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([d.text for d in corpus(40)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=hf, eos_token="<|endoftext|>")
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=hf.get_vocab_size(), n_positions=CONTEXT, n_embd=128, n_layer=2, n_head=4
    )
    GPT2LMHeadModel(config).eval().save_pretrained(directory / "hf")
    tokenizer.save_pretrained(directory / "hf")
    return directory / "hf"


def check_against_cpu(device: torch.device, path: Path, documents: list[Document]) -> None:
    cpu = score_documents(load(str(path)), documents, progress=False)
    cuda = score_documents(load(str(path), device=device), documents, device=device, progress=False)
    bf16_checkpoint = load(str(path), device=device, dtype=torch.bfloat16)
    bf16 = score_documents(bf16_checkpoint, documents, device=device, progress=False)
    worst = float(np.max(np.abs(cuda.documents.nats - cpu.documents.nats) / cpu.documents.nats))
    assert worst <= 1e-5, f"{path.name}: CUDA float32 differs from the CPU by {worst:.2e}"
    assert np.array_equal(cuda.documents.bytes, cpu.documents.bytes)
    bf16_diff = abs(bf16.bits_per_byte - cpu.bits_per_byte) / cpu.bits_per_byte
    print(
        f"{path.name}: CUDA float32 within {worst:.1e} of the CPU per document (bpb "
        f"{cuda.bits_per_byte:.6f}); bf16 bpb {bf16.bits_per_byte:.6f}, {bf16_diff:.2e} relative"
    )


def check_syncs(device: torch.device, path: Path, documents: list[Document]) -> None:
    checkpoint = load(str(path), device=device)
    score_documents(checkpoint, documents[:4], device=device, progress=False)  # warm up
    batches = []
    real_forward = scoring._forward

    def counting_forward(*args, **kwargs):
        batches.append(1)
        return real_forward(*args, **kwargs)

    scoring._forward = counting_forward
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            score_documents(checkpoint, documents, device=device, batch_tokens=2048, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        scoring._forward = real_forward
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    print(f"syncs while scoring: {syncs} over {len(batches)} forward passes")
    assert syncs < len(batches), "the engine syncs the host on every forward pass"


def check_torchrun_nccl(path: Path, documents: list[Document], directory: Path) -> None:
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in documents))
    out = directory / "nccl.json"
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "bpbeval.eval", str(path), "--data", str(data), "--device", "cuda",
        "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
    got = json.loads(out.read_text())["bits_per_byte"]
    want = score_documents(load(str(path), device="cuda"), documents, device="cuda").bits_per_byte
    assert abs(got - want) <= 1e-9 * want, (got, want)
    print(f"torchrun --nproc_per_node 1 on NCCL: bpb {got:.9f}, the single process's")


def check_throughput(device: torch.device, path: Path, documents: list[Document]) -> None:
    checkpoint = load(str(path), device=device, dtype=torch.bfloat16)
    tokenizer, budget = checkpoint.tokenizer, scoring.DEFAULT_BATCH_TOKENS
    buckets = padded_windows(
        tokenizer, [d.text for d in documents], context_len=CONTEXT, stride=CONTEXT // 2
    )
    batches = [
        torch.from_numpy(
            np.stack([ids for ids, _, _ in windows[i : i + max(1, budget // length)]])
        ).to(device)
        for length, windows in buckets.items()
        for i in range(0, len(windows), max(1, budget // length))
    ]

    def bare() -> None:
        with torch.inference_mode():
            for ids in batches:
                checkpoint.model(ids)

    def evaluate() -> int:
        return score_documents(checkpoint, documents, device=device, progress=False).tokens

    best = {}
    for name, fn in (("forward", bare), ("eval", evaluate)):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    tokens = evaluate()
    print(
        f"throughput at --batch-tokens {budget} (bf16): eval {tokens / best['eval']:,.0f} "
        f"scored tok/s, bare forward {tokens / best['forward']:,.0f}; overhead "
        f"{best['eval'] / best['forward'] - 1:+.1%}"
    )


def check_scoring(device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        documents = corpus(80)
        native = native_checkpoint(directory)
        check_against_cpu(device, native, documents)
        check_against_cpu(device, hf_checkpoint(directory), documents)
        check_syncs(device, native, documents)
        check_torchrun_nccl(native, documents[:20], directory)
        check_throughput(device, native, corpus(2000, repeat=4))


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
    else:
        check_scoring(torch.device("cuda"))
