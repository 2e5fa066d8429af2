"""Tokenizer throughput, side by side in one run: training and encoding.

Corpus: the Python sources on this machine (the standard library, then site-packages), one
document per file, in sorted order, until ``--mb`` MB of UTF-8 (files that are not UTF-8
are skipped). No text is repeated.

Training, all at the same vocabulary size (specials included):
    bpbeval.tokenizer.train  vs  bare rustbpe (our overhead)  vs  Hugging Face BpeTrainer
    (configured as nanochat does: the same split regex, byte-level, the same specials).
Encoding, MB/s of UTF-8 on 1 and 2 threads: our Tokenizer (tiktoken) vs the Hugging Face
tokenizer trained above (``encode_batch_fast``; TOKENIZERS_PARALLELISM switches it between
serial and a 2-thread rayon pool).

    python benchmarks/bench_tokenizer.py [--mb 50] [--vocab-size 8192] [--repeat 2]
"""

from __future__ import annotations

import os

# Fixed before tokenizers starts its thread pool: the 2-thread runs use exactly 2 threads.
os.environ["RAYON_NUM_THREADS"] = "2"

import argparse
import platform
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import rustbpe
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from bpbeval.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, train


def python_sources(limit: int) -> list[str]:
    texts, total = [], 0
    for key in ("stdlib", "purelib"):
        for path in sorted(Path(sysconfig.get_paths()[key]).rglob("*.py")):
            try:
                text = path.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            texts.append(text)
            total += len(text.encode())
            if total >= limit:
                return texts
    return texts


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def train_bare(texts: list[str], vocab_size: int) -> object:
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    return bpe


def train_hf(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        min_frequency=0,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB of UTF-8")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=2, help="runs of ours and bare rustbpe")
    args = parser.parse_args()

    texts = python_sources(int(args.mb * 1e6))
    n_bytes = sum(len(t.encode()) for t in texts)
    n_chars = sum(map(len, texts))
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, tokenizers {tokenizers.__version__}")
    print(f"corpus: {len(texts):,} Python files, {n_bytes / 1e6:.1f} MB, {n_chars:,} chars")
    print(f"vocab_size {args.vocab_size}\n")

    # Ours and bare rustbpe alternate, best of --repeat each: on a shared machine the spread
    # between runs of one trainer shows the noise, which is larger than our overhead.
    bare_runs, our_runs = [], []
    for _ in range(args.repeat):
        bare_runs.append(timed(lambda: train_bare(texts, args.vocab_size))[0])
        t, ours = timed(lambda: train(texts, args.vocab_size))
        our_runs.append(t)
    t_hf, hf = timed(lambda: train_hf(texts, args.vocab_size))
    t_bare, t_ours = min(bare_runs), min(our_runs)
    print("training (best)   seconds   MB/s   vs bare rustbpe")
    for name, t in [
        ("bare rustbpe", t_bare),
        ("bpbeval train", t_ours),
        ("HF BpeTrainer", t_hf),
    ]:
        print(f"{name:<16} {t:8.1f} {n_bytes / 1e6 / t:6.2f}   {t / t_bare:6.3f}x")
    runs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(bare_runs, our_runs, strict=True))
    print(f"(runs, bare/ours, in seconds: {runs})")
    assert hf.get_vocab_size() == ours.vocab_size == args.vocab_size

    print("\nencoding          threads   MB/s   bytes/token   ours / HF")
    for threads in (1, 2):
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        t_enc, ids = timed(lambda n=threads: ours.encode_batch(texts, num_threads=n))
        t_hf_enc, encs = timed(lambda: hf.encode_batch_fast(texts, add_special_tokens=False))
        ours_bpt = n_bytes / sum(map(len, ids))
        hf_bpt = n_bytes / sum(len(e.ids) for e in encs)
        ours_mbs, hf_mbs = n_bytes / 1e6 / t_enc, n_bytes / 1e6 / t_hf_enc
        ratio = ours_mbs / hf_mbs
        print(f"bpbeval          {threads:7d} {ours_mbs:6.2f}   {ours_bpt:11.3f}   {ratio:.2f}x")
        print(f"HF tokenizers    {threads:7d} {hf_mbs:6.2f}   {hf_bpt:11.3f}")


if __name__ == "__main__":
    main()
