"""Rank 0's memory per document in a compare: what a 10M-document compare needs.

Runs ``python -m bpbeval.compare`` in-process, in a fresh child per run: two native
checkpoints of a tiny byte-level GPT (so the model's own memory is small and fixed), on
short documents (8-40 bytes, three domains) in one Parquet file, writing ``--json`` (and
``--per-doc`` with ``--per-doc``). At two corpus sizes, with and without attribution, it
prints the peak RSS, its growth per document between the sizes, and that growth times 10M
documents.

``--phases N`` instead takes compare's statistics apart: on synthetic scores of ``N``
documents it prints, with ``tracemalloc``, the bytes a document that the columns held take
and each step's peak above them (a few seconds).

    python benchmarks/bench_documents.py [--docs 250000 1000000] [--bootstrap 1000]
        [--attribution on off] [--per-doc] [--phases N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bpbeval import compare, statistics
from bpbeval.checkpoint import save
from bpbeval.data import Document
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.results import DocumentScores, Scores
from bpbeval.tokenizer import SPECIAL_TOKENS, train

CONTEXT = 64
TEN_MILLION = 10_000_000


def write_corpus(path: Path, documents: int) -> None:
    words = ("the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by")
    texts = [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(2 + i % 8)) + f" {i}"
        for i in range(documents)
    ]
    domains = [("web", "code", "books")[i % 3] for i in range(documents)]
    pq.write_table(pa.table({"text": texts, "domain": domains}), path, row_group_size=1 << 16)


def build_checkpoints(directory: Path) -> list[Path]:
    tokenizer = train([], vocab_size=256 + len(SPECIAL_TOKENS))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(tokenizer.vocab_size, context_len=CONTEXT, n_layer=1, n_embd=16))
        save(directory / f"model{seed}", model, tokenizer, CONTEXT)
        paths.append(directory / f"model{seed}")
    return paths


def one_run(argv: list[str]) -> None:
    """Child process: compare in-process, then print seconds and peak RSS as JSON."""
    start = time.perf_counter()
    compare.main(argv)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))


def phases(documents: int, bootstrap: int) -> None:
    """Compare's statistics on synthetic scores: bytes a document held, and at each step's peak."""
    rng = np.random.default_rng(0)
    labels = np.array(["web", "code", "books"], dtype=object)
    tracemalloc.start()

    def scores(n_bytes: np.ndarray) -> Scores:
        nats = n_bytes * rng.uniform(5.0, 6.0, documents)
        columns = DocumentScores(labels[np.arange(documents) % 3], nats, n_bytes, n_bytes // 2 + 1)
        return Scores(columns, float(nats.sum()), int(n_bytes.sum()), 0, False)

    a = scores(rng.integers(8, 40, documents))
    b = scores(a.documents.bytes.copy())
    # As compare's main leaves them: B shares A's domain and byte columns.
    b = replace(
        b, documents=replace(b.documents, domain=a.documents.domain, bytes=a.documents.bytes)
    )
    held = tracemalloc.get_traced_memory()[0]
    print(f"{documents:,} documents: the columns held take {held / documents:.1f} B a document")
    arrays = (a.documents.nats, b.documents.nats, a.documents.bytes, a.documents.tokens,
              b.documents.tokens)  # fmt: skip

    def texts() -> Iterator[Document]:  # the highlights read the documents again, for ids
        return (Document(f"d{i}", "x") for i in range(documents))

    options = {"replicates": bootstrap, "seed": 0}
    for step, run in (
        ("bootstrap", lambda: statistics.bootstrap_delta(*arrays[:3], **options)),
        (
            "sign flips",
            lambda: statistics.sign_flip_p_value(*arrays[:2], permutations=bootstrap, seed=0),
        ),
        ("paired figures", lambda: statistics.paired_figures(*arrays, **options)),
        (
            "by domain",
            lambda: statistics.paired_figures_by_domain(a.documents.domain, *arrays, **options),
        ),
        ("highlights", lambda: compare._highlights(texts(), a, b)),
    ):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        run()
        above = (tracemalloc.get_traced_memory()[1] - before) / documents
        print(f"  {step:<15} peak {above:5.1f} B a document above them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs=2, default=[250_000, 1_000_000])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--attribution",
        nargs="+",
        choices=["on", "off"],
        default=["on", "off"],
        help="either or both",
    )
    parser.add_argument("--per-doc", action="store_true", help="also write --per-doc")
    parser.add_argument("--phases", type=int, metavar="N", help="take the statistics apart")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        one_run(args.argv)
        return
    if args.phases:
        phases(args.phases, args.bootstrap)
        return
    work = Path(tempfile.mkdtemp())
    a, b = build_checkpoints(work)
    outputs = ["--json", str(work / "out.json")]
    if args.per_doc:
        outputs += ["--per-doc", str(work / "out.parquet")]
    print(
        f"torch {torch.__version__}, 1 thread, context {CONTEXT}, --bootstrap {args.bootstrap}, "
        f"writing {' and '.join(outputs[::2])}"
    )
    for attribution in (
        "--attribution" if on == "on" else "--no-attribution" for on in args.attribution
    ):
        peaks = {}
        for documents in args.docs:
            data = work / f"docs-{documents}.parquet"
            if not data.exists():
                write_corpus(data, documents)
            argv = [str(a), str(b), "--data", str(data), "--device", "cpu", attribution]
            argv += ["--bootstrap", str(args.bootstrap), *outputs]
            cmd = [sys.executable, __file__, "--child", "--", *argv]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            peaks[documents] = r["peak_mib"]
            print(
                f"  {attribution:<16} {documents:>10,} documents  peak RSS "
                f"{r['peak_mib']:7.1f} MiB  ({r['seconds']:.0f} s)"
            )
        small, large = args.docs
        per_doc = (peaks[large] - peaks[small]) * 2**20 / (large - small)
        print(
            f"  {attribution:<16} {per_doc:6.0f} bytes a document: a 10M-document compare "
            f"needs {(peaks[small] * 2**20 + per_doc * (TEN_MILLION - small)) / 2**30:.2f} GiB"
        )


if __name__ == "__main__":
    main()
