"""What attribution (nats by character class and context position) adds to a comparison.

Prints, from one run, the CPU seconds of compare's work on two native (exported) GPT
checkpoints, a byte-level one and a BPE one, on the same documents: scoring both and
pairing them (``compare_scores``), with the engine's attribution and the breakdown's
bootstrap, and without (``attribution=False``). The variants alternate and each keeps its
best repeat; the target is at most 10% more with attribution. Also: seconds per MB of
:func:`bpbeval.attribution.attribute` alone (classes, spreading and sums) on mixed text.

    python benchmarks/bench_attribution.py [--repeats 3] [--docs 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import pydoc_data.topics
import tempfile
import time

import numpy as np
import torch

from bpbeval.attribution import attribute
from bpbeval.checkpoint import load, save
from bpbeval.compare import compare_scores
from bpbeval.data import Document
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.scoring import score_documents
from bpbeval.tokenizer import SPECIAL_TOKENS, train

CONTEXT = 256


def checkpoints(root: str, texts: list[str]) -> list[str]:
    # The demo's pair at a size where the forward pass is most of the work, as in real runs.
    paths = []
    for name, vocab in (("byte-level", 256 + len(SPECIAL_TOKENS)), ("bpe-2048", 2048)):
        tokenizer = train(texts if vocab > 265 else [], vocab_size=vocab)
        torch.manual_seed(0)
        config = GPTConfig(vocab, context_len=CONTEXT, n_layer=4, n_head=4, n_embd=256)
        save(f"{root}/{name}", GPT(config).eval(), tokenizer, CONTEXT)
        paths.append(f"{root}/{name}")
    return paths


def run(paths: list[str], documents: list[Document], *, attribution: bool) -> float:
    models = [load(path) for path in paths]
    start = time.process_time()
    a, b = (score_documents(m, documents, attribution=attribution, progress=False) for m in models)
    comparison = compare_scores(documents, a, b)
    seconds = time.process_time() - start
    assert bool(comparison.classes) == attribution
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    topics = [text for _, text in sorted(pydoc_data.topics.topics.items())]
    documents = [Document(f"t{i}", text) for i, text in enumerate(topics[: args.docs])]
    n_bytes = sum(len(d.text.encode()) for d in documents)

    with tempfile.TemporaryDirectory() as root:
        paths = checkpoints(root, topics[args.docs :])
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeats):
            for attribution in (False, True):
                best[attribution] = min(
                    best[attribution], run(paths, documents, attribution=attribution)
                )
    print(
        f"{len(documents)} documents, {n_bytes:,} bytes, two models, {args.threads} torch thread(s)"
    )
    print(f"  compare without attribution  {best[False]:8.3f} CPU s")
    print(f"  compare with attribution     {best[True]:8.3f} CPU s")
    print(f"  attribution adds             {best[True] / best[False] - 1:+8.1%}")

    text = "".join(topics) + "日本語のテキスト 🙂 и кириллица 2024\n" * 20_000
    size = len(text.encode())
    lengths = np.random.default_rng(0).integers(1, 8, size=size // 4)
    lengths = np.append(lengths[: np.searchsorted(np.cumsum(lengths), size)], 0)
    lengths[-1] = size - lengths[:-1].sum()
    nats = np.ones(len(lengths))
    start = time.perf_counter()
    attribute(text, nats, lengths)
    seconds = time.perf_counter() - start
    print(f"  attribute() alone            {seconds / size * 1e6:8.3f} s per MB ({size:,} bytes)")


if __name__ == "__main__":
    main()
