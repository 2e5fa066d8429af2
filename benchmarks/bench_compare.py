"""What compare adds beside scoring: the paired bootstrap and the result cache.

Prints, from one run:
- seconds for the paired bootstrap of pooled Δbpb (``--docs`` documents x ``--replicates``)
  in blocks (``bpbeval.statistics.bootstrap_delta``) and as a plain loop over replicates;
  both give the same replicates, bit for bit;
- seconds to record ``--docs`` documents in a ``ResultCache`` (fsync at most once a second)
  and with an fsync after every document, and to read the cache back.

    python benchmarks/bench_compare.py [--docs 10000] [--replicates 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable

import numpy as np

from bpbeval import cache as cache_module
from bpbeval.cache import ResultCache
from bpbeval.data import Document
from bpbeval.scoring import DocumentScore
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


def fill(root: str, docs: list[Document], scores: list[DocumentScore]) -> None:
    with ResultCache(root, identity="bench", settings={"stride": None}) as cache:
        for doc, score in zip(docs, scores, strict=True):
            cache.put(doc, score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
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

    docs = [Document(f"doc:{i}", f"text of document {i} " * 20) for i in range(args.docs)]
    scores = [
        DocumentScore(None, float(a[i]), int(nbytes[i]), int(nbytes[i]) // 4)
        for i in range(len(docs))
    ]
    t_put = best_of(args.repeats, lambda: fill(tempfile.mkdtemp(), docs, scores))
    interval, cache_module._FSYNC_INTERVAL_S = cache_module._FSYNC_INTERVAL_S, -1.0
    t_put_sync = best_of(args.repeats, lambda: fill(tempfile.mkdtemp(), docs, scores))
    cache_module._FSYNC_INTERVAL_S = interval
    root = tempfile.mkdtemp()
    fill(root, docs, scores)
    t_read = best_of(
        args.repeats, lambda: ResultCache(root, identity="bench", settings={"stride": None})
    )
    print(f"cache, {args.docs:,} documents:")
    print(f"  put, fsync at most 1/s     {t_put:8.3f} s   ({t_put / args.docs * 1e6:.0f} us/doc)")
    print(f"  put, fsync every document  {t_put_sync:8.3f} s   ({t_put_sync / t_put:.1f}x)")
    print(f"  read back                  {t_read:8.3f} s")


if __name__ == "__main__":
    main()
