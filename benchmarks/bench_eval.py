"""What eval costs beside the model's forward pass, and what a fused loss would save.

Prints, from one run:
- tokens scored per second by ``score_documents`` on a native (exported) GPT
  checkpoint, against the bare forward pass of the same exported model over the
  same windows in the same batches (the floor), and against that forward plus the
  per-token losses of the scored positions (what any scorer must compute).
  Overhead = eval time / floor - 1; the target is at most 5%. The variants
  alternate and each keeps its best repeat, in CPU seconds (wall time too). Eval's
  one fixed cost, the causality probe, is timed alone too: a small corpus cannot
  amortise it, a real one (10^7 tokens and up) makes it vanish, so the overhead is
  also given without it.
- peak memory of one scoring step (forward + per-token losses) on the GPT
  itself: logits then ``token_nats`` (what eval does: models give it logits) vs
  ``hidden`` then ``token_nats_from_hidden`` (fused, never holding all logits).
  Each runs in a fresh process; its peak is the growth of peak RSS (Linux).

    python benchmarks/bench_eval.py [--repeats 3] [--docs 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from bench_metric import _peak_rss_kib
from eval_windows import padded_windows

from bpbeval.checkpoint import load, save
from bpbeval.data import Document
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.losses import token_nats, token_nats_from_hidden
from bpbeval.scoring import check_causal, score_documents
from bpbeval.tokenizer import train

# A model whose forward pass outweighs the softmax over its vocabulary, as real ones do
# (at n_embd=128 the per-token loss alone is a quarter of the forward pass).
CONTEXT, BATCH, VOCAB = 256, 8, 2048
MEMORY_B, MEMORY_VOCAB = 8, 32768


def corpus(count: int) -> list[Document]:
    topics = sorted(pydoc_data.topics.topics.items())
    return [Document(name, text) for name, text in topics[:count]]


def forward_batches(checkpoint, documents: list[Document]) -> list[tuple[torch.Tensor, list]]:
    """What eval feeds the model: the same windows, padding and batches, with each row's
    scored slice and targets."""
    tokenizer = checkpoint.tokenizer
    buckets = padded_windows(
        tokenizer, [d.text for d in documents], context_len=CONTEXT, stride=CONTEXT // 2
    )
    batches = []
    for length in sorted(buckets, reverse=True):
        windows = buckets[length]
        for i in range(0, len(windows), BATCH):
            batch = windows[i : i + BATCH]
            ids = torch.from_numpy(np.stack([window for window, _, _ in batch]))
            rows = [
                (
                    slice(w.start - w.begin, w.end - w.begin),
                    torch.from_numpy(seq[w.start + 1 : w.end + 1]),
                )
                for _, w, seq in batch
            ]
            batches.append((ids, rows))
    return batches


def throughput(repeats: int, docs: int) -> None:
    documents = corpus(docs)
    tokenizer = train([d.text for d in corpus(40)], vocab_size=VOCAB)
    torch.manual_seed(0)
    model = GPT(GPTConfig(VOCAB, context_len=CONTEXT, n_layer=4, n_head=4, n_embd=256))
    directory = tempfile.mkdtemp() + "/ckpt"
    save(directory, model, tokenizer, CONTEXT)
    checkpoint = load(directory)
    batches = forward_batches(checkpoint, documents)

    def bare() -> None:
        with torch.inference_mode():
            for ids, _ in batches:
                checkpoint.model(ids)

    def bare_and_loss() -> None:
        with torch.inference_mode():
            for ids, rows in batches:
                logits = checkpoint.model(ids)
                for row, (scored, target) in enumerate(rows):
                    token_nats(logits[row, scored], target)

    def evaluate() -> None:
        score_documents(checkpoint, documents, batch_size=BATCH, progress=False)

    def probe() -> None:  # eval's one fixed cost: the causality check, whatever the corpus
        check_causal(checkpoint, context_len=CONTEXT, device="cpu")

    variants = {
        "forward": bare,
        "forward + loss": bare_and_loss,
        "eval": evaluate,
        "causality probe": probe,
    }
    for fn in variants.values():  # warm-up
        fn()
    # CPU seconds of this process: on a shared machine, time the scheduler gives to other
    # jobs inflates wall time at random; with one torch thread CPU time is the work done.
    best = dict.fromkeys(variants, float("inf"))
    best_wall = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            start, start_wall = time.process_time(), time.perf_counter()
            fn()
            best[name] = min(best[name], time.process_time() - start)
            best_wall[name] = min(best_wall[name], time.perf_counter() - start_wall)
    tokens = sum(target.numel() for _, rows in batches for _, target in rows)
    positions = sum(ids.numel() for ids, _ in batches)
    print(
        f"{len(documents)} documents, {tokens} tokens scored in {len(batches)} batches of "
        f"<= {BATCH} windows ({positions} positions), context {CONTEXT}, stride {CONTEXT // 2}, "
        f"exported GPT {model.num_params() / 1e6:.2f}M params, vocab {VOCAB}"
    )
    for name, seconds in best.items():
        print(
            f"  {name:<15} {seconds:8.3f} CPU s  {tokens / seconds:10.0f} scored tok/s   "
            f"(wall {best_wall[name]:.3f} s)"
        )
    print(f"  eval overhead over the bare forward: {best['eval'] / best['forward'] - 1:+.1%}")
    print(
        f"  eval overhead over forward + loss:   {best['eval'] / best['forward + loss'] - 1:+.1%}"
    )
    # The probe's cost is the same for ten documents or ten million: per token, on a real
    # corpus, what is left is the rest.
    steady = (best["eval"] - best["causality probe"]) / best["forward"] - 1
    print(f"  eval overhead without the one-time probe: {steady:+.1%}")


def _memory_variant(fused: bool) -> None:
    """One scoring step in this (fresh) process; prints the growth of peak RSS in MiB."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(MEMORY_VOCAB, context_len=CONTEXT, n_layer=2, n_head=4, n_embd=128))
    ids = torch.randint(MEMORY_VOCAB, (MEMORY_B, CONTEXT))
    target = torch.roll(ids, -1, 1)
    with torch.inference_mode():
        # Linux: reset the peak RSS to the current RSS, so building the model does not count.
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _peak_rss_kib()
        if fused:
            nats = token_nats_from_hidden(model.hidden(ids), model.lm_head.weight, target)
        else:
            nats = token_nats(model(ids), target)
        peak_kib = _peak_rss_kib() - before
    print(json.dumps({"peak_mib": peak_kib / 1024, "nats": float(nats.double().sum())}))


def memory() -> None:
    logits_mib = MEMORY_B * CONTEXT * MEMORY_VOCAB * 4 / 2**20
    print(
        f"peak memory of one step, B={MEMORY_B} T={CONTEXT} V={MEMORY_VOCAB} "
        f"(float32 logits alone: {logits_mib:.0f} MiB)"
    )
    results = {}
    for name, flag in (("logits + token_nats", "--logits"), ("fused hidden", "--fused")):
        cmd = [sys.executable, __file__, flag]
        results[name] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        )
        print(f"  {name:<20} {results[name]['peak_mib']:8.1f} MiB")
    a, b = (r["nats"] for r in results.values())
    print(f"  same losses: relative difference {abs(a - b) / a:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", type=int, default=40)
    # One thread: on a shared 2-core machine torch's two threads wait on each other.
    parser.add_argument("--threads", type=int, default=1)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--logits", action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.logits or args.fused:
        _memory_variant(args.fused)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    throughput(args.repeats, args.docs)
    memory()


if __name__ == "__main__":
    main()
