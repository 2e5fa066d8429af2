"""Scoring at corpus scale: peak memory and scored tokens/s as the corpus grows.

Prints, each figure from a fresh process running ``python -m bpbeval.eval`` in-process
(reading, encoding and scoring: what a user runs) on a native checkpoint of a tiny
byte-level GPT, so a corpus of N bytes is N tokens:

- peak RSS and scored tokens/s at about 1M, 4M and 16M tokens (``--sizes``), short
  documents of mixed lengths, in one Parquet file;
- short documents (about 100 tokens each) against full-context ones (every window
  full), 1M tokens each: the short/long throughput ratio should be at least 0.7;
- eval's overhead over the bare forward pass of the same model over the same
  windows, batched as eval batches them (``--overhead``), best of ``--repeats``;
- scored tokens/s of short and full-context documents at each token budget
  (``--budgets 1024 8192 ...``), in-process.

    python benchmarks/bench_scale.py [--sizes 1 4 16] [--threads 1] [--overhead] [--budgets N...]
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from eval_windows import padded_windows

from bpbeval import scoring
from bpbeval.checkpoint import load, save
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.scoring import score_documents
from bpbeval.tokenizer import SPECIAL_TOKENS, train

CONTEXT = 256
SHORT = 100  # bytes (= tokens) of a short document
LONG = CONTEXT  # a full-context one: one full window, every position scored


def corpus_text() -> str:
    return "\n".join(text for _, text in sorted(pydoc_data.topics.topics.items()))


def write_corpus(path: Path, tokens: int, doc_bytes: int | None) -> None:
    """About ``tokens`` bytes of ASCII-safe text in documents of ``doc_bytes`` (None: mixed)."""
    text = corpus_text().encode("utf-8").decode("ascii", "ignore")
    rng = np.random.default_rng(0)
    texts, total, offset = [], 0, 0
    while total < tokens:
        n = doc_bytes or int(rng.integers(20, 3 * CONTEXT))
        if offset + n > len(text):
            offset = 0
        texts.append(text[offset : offset + n])
        offset += n
        total += n
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4096)


def one_run(checkpoint: str, data: str, extra: list[str]) -> None:
    """Child process: run eval in-process, print tokens, seconds and peak RSS as JSON."""
    from bpbeval import eval as bpb_eval

    out = tempfile.mkdtemp() + "/out.json"
    start = time.perf_counter()
    bpb_eval.main([checkpoint, "--data", data, "--device", "cpu", "--json", out, *extra])
    seconds = time.perf_counter() - start
    result = json.loads(Path(out).read_text())
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"tokens": result["tokens"], "seconds": seconds, "peak_mib": peak_kib / 1024}))


def run_child(checkpoint: Path, data: Path, threads: int, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", str(checkpoint), str(data)]
    cmd += ["--threads", str(threads)]
    done = subprocess.run([*cmd, "--", *extra], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_checkpoint(directory: Path) -> Path:
    tokenizer = train([], vocab_size=256 + len(SPECIAL_TOKENS))
    torch.manual_seed(0)
    model = GPT(GPTConfig(tokenizer.vocab_size, context_len=CONTEXT, n_layer=2, n_embd=64))
    save(directory / "ckpt", model, tokenizer, CONTEXT)
    return directory / "ckpt"


def overhead(checkpoint_dir: Path, data: Path, repeats: int) -> None:
    """Eval against the bare forward of the same windows, batched the same way, in-process."""
    from bpbeval.data import read_documents

    checkpoint = load(str(checkpoint_dir))
    documents = list(read_documents(data))
    tokenizer = checkpoint.tokenizer
    # Today's engine batches by token budget; the one before it, 8 windows at a time.
    budget = getattr(scoring, "DEFAULT_BATCH_TOKENS", None)
    buckets = padded_windows(
        tokenizer, [d.text for d in documents], context_len=CONTEXT, stride=CONTEXT // 2
    )
    batches = []
    for length, windows in sorted(buckets.items(), reverse=True):
        rows = max(1, budget // length) if budget else 8
        for i in range(0, len(windows), rows):
            batches.append(torch.from_numpy(np.stack([ids for ids, _, _ in windows[i : i + rows]])))

    def bare() -> None:
        with torch.inference_mode():
            for ids in batches:
                checkpoint.model(ids)

    def evaluate() -> None:
        score_documents(checkpoint, documents, progress=False)

    variants = {"forward": bare, "eval": evaluate}
    best = dict.fromkeys(variants, float("inf"))
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    scored = sum(len(d.text.encode()) for d in documents)
    print(f"overhead, {len(documents)} documents, {scored} tokens, {len(batches)} batches:")
    for name, seconds in best.items():
        print(f"  {name:<8} {seconds:8.3f} CPU s  {scored / seconds:10.0f} scored tok/s")
    print(f"  eval overhead over the bare forward: {best['eval'] / best['forward'] - 1:+.1%}")


def budgets(checkpoint_dir: Path, sizes: list[int], repeats: int) -> None:
    """Scored tokens/s in-process (CPU time, best of ``repeats``) for each token budget."""
    from bpbeval.data import read_documents

    checkpoint = load(str(checkpoint_dir))
    work = Path(tempfile.mkdtemp())
    corpora = {}
    for name, doc_bytes in (("short", SHORT), ("long", LONG)):
        write_corpus(work / f"{name}.parquet", 200_000, doc_bytes)
        corpora[name] = list(read_documents(work / f"{name}.parquet"))
    print("token budget: scored tok/s (CPU time), short and full-context documents")
    for budget in sizes:
        rates = {}
        for name, documents in corpora.items():
            best = float("inf")
            for _ in range(repeats):
                start = time.process_time()
                scores = score_documents(checkpoint, documents, batch_tokens=budget, progress=False)
                best = min(best, time.process_time() - start)
            rates[name] = scores.tokens / best
        print(
            f"  {budget:>6}  short {rates['short']:9.0f}  long {rates['long']:9.0f}  "
            f"short/long {rates['short'] / rates['long']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="M tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead", action="store_true", help="only the overhead part")
    parser.add_argument("--budgets", type=int, nargs="+", help="only a token budget sweep")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more eval options, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        one_run(*args.child, args.extra)
        return
    work = Path(tempfile.mkdtemp())
    checkpoint = build_checkpoint(work)
    print(f"torch {torch.__version__}, {args.threads} thread(s), context {CONTEXT}")
    if args.budgets:
        budgets(checkpoint, args.budgets, args.repeats)
        return
    if args.overhead:
        write_corpus(work / "overhead.parquet", 200_000, None)
        overhead(checkpoint, work / "overhead.parquet", args.repeats)
        return
    print("corpus size (mixed lengths, 20-768 tokens per document):")
    for size in args.sizes:
        data = work / f"mixed-{size}.parquet"
        write_corpus(data, int(size * 1e6), None)
        r = run_child(checkpoint, data, args.threads, args.extra)
        print(
            f"  {r['tokens'] / 1e6:6.2f}M tokens  peak RSS {r['peak_mib']:7.1f} MiB  "
            f"{r['tokens'] / r['seconds']:9.0f} tok/s  ({r['seconds']:.1f} s)"
        )
    print("short against full-context documents (1M tokens each):")
    rates = {}
    for name, doc_bytes in (("short", SHORT), ("long", LONG)):
        data = work / f"{name}.parquet"
        write_corpus(data, 1_000_000, doc_bytes)
        r = run_child(checkpoint, data, args.threads, args.extra)
        rates[name] = r["tokens"] / r["seconds"]
        print(f"  {name:<5} ({doc_bytes} tokens/doc)  {rates[name]:9.0f} tok/s")
    print(f"  short / long: {rates['short'] / rates['long']:.2f}")


if __name__ == "__main__":
    main()
