"""What compare adds beside scoring: the paired bootstrap and the result cache.

Prints, from one run:
- seconds for the paired bootstrap of pooled Δbpb (``--docs`` documents x ``--replicates``)
  in blocks (``bpbeval.statistics.bootstrap_delta``) and as a plain loop over replicates;
  both give the same replicates, bit for bit;
- seconds to record ``--docs`` documents in a ``ResultCache`` (fsync at most once a second)
  and with an fsync after every document;
- for a cache of ``--cache-docs`` documents, without and with attribution sums, opened in a
  fresh process: CPU seconds to open it, its memory (VmRSS growth and VmHWM growth, per
  document), and CPU microseconds per ``get``.

    python benchmarks/bench_compare.py [--docs 10000] [--cache-docs 200000] [--replicates 1000]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bpbeval import cache as cache_module
from bpbeval.attribution import CLASSES, POSITIONS, Attribution
from bpbeval.cache import ResultCache
from bpbeval.data import Document
from bpbeval.results import DocumentScore
from bpbeval.statistics import bootstrap_delta


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def loop_bootstrap(a: np.ndarray, b: np.ndarray, nbytes: np.ndarray, replicates: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.empty(replicates)
    for r in range(replicates):
        idx = rng.integers(0, len(nbytes), size=len(nbytes))
        denominator = math.log(2) * nbytes[idx].sum()
        out[r] = a[idx].sum() / denominator - b[idx].sum() / denominator
    return out


def documents(n: int) -> list[Document]:
    return [Document(f"doc:{i}", f"text of document {i} " * 20) for i in range(n)]


def open_cache(root: str, identity: str = "bench") -> ResultCache:
    return ResultCache(root, identity=identity, settings={"stride": None})


def fill(root: str, docs: list[Document], scores: list[DocumentScore]) -> None:
    with open_cache(root) as cache:
        for doc, score in zip(docs, scores, strict=True):
            cache.put(doc, score)


def cached_scores(n: int, rng: np.random.Generator, *, attributed: bool) -> list[DocumentScore]:
    # With attribution, 1000 sets of sums with full-mantissa floats, reused: lines as long
    # as real ones without drawing 50 numbers a document.
    parts = [
        Attribution(
            rng.random(len(CLASSES)),
            rng.integers(0, 10**4, len(CLASSES)),
            rng.random(len(POSITIONS)),
            rng.integers(0, 10**4, len(POSITIONS)),
        )
        for _ in range(1000 if attributed else 0)
    ]
    return [
        DocumentScore(None, i / 7, 400 + i % 97, 100 + i % 31, parts[i % 1000] if parts else None)
        for i in range(n)
    ]


def memory() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def read_back(root: str, n: int) -> None:
    """Run in a fresh process, where nothing freed earlier is reused: print as JSON the CPU
    seconds to open the cache, its memory per document, and CPU seconds per ``get``."""
    with tempfile.TemporaryDirectory() as empty:
        open_cache(empty, identity="empty")  # one-time costs (imports) before measuring
    before = memory()
    start = time.process_time()
    cache = open_cache(root)
    seconds = time.process_time() - start
    after = memory()
    docs = documents(n)
    start = time.process_time()
    assert all(cache.get(doc) is not None for doc in docs)
    per_get = (time.process_time() - start) / n
    rss = (after["VmRSS"] - before["VmRSS"]) / n
    peak = (after["VmHWM"] - max(before["VmHWM"], before["VmRSS"])) / n
    print(json.dumps({"open": seconds, "rss": rss, "peak": peak, "get": per_get}))


def read_back_fresh(root: str, n: int, repeats: int) -> dict[str, float]:
    """The best of ``repeats`` fresh processes, figure by figure."""
    runs = []
    for _ in range(repeats):
        code = f"import bench_compare; bench_compare.read_back({root!r}, {n})"
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
    return {k: min(run[k] for run in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--cache-docs", type=int, default=200_000)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    nbytes = rng.integers(100, 20_000, size=args.docs)
    a = nbytes * rng.uniform(0.5, 1.0, size=args.docs)
    b = a * rng.uniform(0.95, 1.05, size=args.docs)
    blocked = bootstrap_delta(a, b, nbytes, replicates=args.replicates, seed=0)
    assert np.array_equal(blocked, loop_bootstrap(a, b, nbytes, args.replicates))
    t_blocked = best_of(
        args.repeats, lambda: bootstrap_delta(a, b, nbytes, replicates=args.replicates, seed=0)
    )
    t_loop = best_of(args.repeats, lambda: loop_bootstrap(a, b, nbytes, args.replicates))
    print(f"bootstrap, {args.docs:,} documents x {args.replicates:,} replicates:")
    print(f"  blocked (bootstrap_delta)  {t_blocked:8.3f} s")
    print(f"  loop over replicates       {t_loop:8.3f} s   ({t_loop / t_blocked:.2f}x blocked)")

    docs = documents(args.docs)
    scores = [
        DocumentScore(None, float(a[i]), int(nbytes[i]), int(nbytes[i]) // 4)
        for i in range(len(docs))
    ]
    t_put = best_of(args.repeats, lambda: fill(tempfile.mkdtemp(), docs, scores))
    interval, cache_module._FSYNC_INTERVAL_S = cache_module._FSYNC_INTERVAL_S, -1.0
    t_put_sync = best_of(args.repeats, lambda: fill(tempfile.mkdtemp(), docs, scores))
    cache_module._FSYNC_INTERVAL_S = interval
    print(f"cache, {args.docs:,} documents:")
    print(f"  put, fsync at most 1/s     {t_put:8.3f} s   ({t_put / args.docs * 1e6:.0f} us/doc)")
    print(f"  put, fsync every document  {t_put_sync:8.3f} s   ({t_put_sync / t_put:.1f}x)")

    docs = documents(args.cache_docs)
    print(f"cache of {len(docs):,} documents, opened in a fresh process (memory per document):")
    for attributed in (False, True):
        with tempfile.TemporaryDirectory() as root:
            fill(root, docs, cached_scores(len(docs), rng, attributed=attributed))
            r = read_back_fresh(root, len(docs), args.repeats)
        label = "with attribution" if attributed else "without attribution"
        print(
            f"  {label:<20} open {r['open']:6.2f} s CPU   RSS +{r['rss']:4.0f} B   "
            f"peak +{r['peak']:4.0f} B   get {r['get'] * 1e6:5.1f} us CPU"
        )


if __name__ == "__main__":
    main()
