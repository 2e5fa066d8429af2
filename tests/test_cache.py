"""The result cache: exact round trips, no stale hits, crash tolerance, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bpbeval.attribution import CLASSES, POSITIONS, Attribution
from bpbeval.cache import ResultCache
from bpbeval.data import Document
from bpbeval.errors import CacheError
from bpbeval.scoring import DocumentScore

SETTINGS = {"stride": 64, "context": 128, "dtype": None, "allow_inexact_bytes": False}


def _docs(n: int) -> list[Document]:
    return [Document(id=f"d{i}", text=f"document {i} — ünïcode", domain="web") for i in range(n)]


def _score(doc: Document, i: int) -> DocumentScore:
    # Floats with full mantissas, so a lossy round trip would show.
    n_bytes = len(doc.text.encode())
    return DocumentScore(domain=doc.domain, nats=n_bytes / 3 + i / 7, bytes=n_bytes, tokens=i + 1)


def _fill(root: Path, docs: list[Document], identity: str = "model-a", **settings) -> None:
    with ResultCache(root, identity=identity, settings={**SETTINGS, **settings}) as cache:
        for i, doc in enumerate(docs):
            cache.put(doc, _score(doc, i))


def test_scores_round_trip_exactly_across_processes(tmp_path):
    docs = _docs(5)
    _fill(tmp_path, docs)
    cache = ResultCache(tmp_path, identity="model-a", settings=dict(SETTINGS))
    assert len(cache) == 5
    assert [cache.get(d) for d in docs] == [_score(d, i) for i, d in enumerate(docs)]
    # The domain comes from the document asked about, not from the run that scored it.
    relabelled = Document(id="d0", text=docs[0].text, domain="code")
    assert cache.get(relabelled).domain == "code"
    assert (cache.hits, cache.written) == (6, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"identity": "model-b"},
        {"stride": 32},
        {"context": 64},
        {"dtype": "bfloat16"},
        {"allow_inexact_bytes": True},
    ],
)
def test_a_changed_checkpoint_or_setting_never_hits(tmp_path, change):
    docs = _docs(3)
    _fill(tmp_path, docs)
    identity = change.pop("identity", "model-a")
    cache = ResultCache(tmp_path, identity=identity, settings={**SETTINGS, **change})
    assert len(cache) == 0
    assert [cache.get(d) for d in docs] == [None, None, None]


def test_a_changed_document_never_hits(tmp_path):
    docs = _docs(2)
    _fill(tmp_path, docs)
    cache = ResultCache(tmp_path, identity="model-a", settings=dict(SETTINGS))
    assert cache.get(Document(id="d0", text=docs[0].text + " ", domain="web")) is None
    assert cache.get(Document(id="other", text=docs[0].text, domain="web")) is None
    assert cache.get(docs[1]) == _score(docs[1], 1)


def test_writers_of_any_world_size_are_all_read(tmp_path):
    docs = _docs(7)
    # Two ranks at once, each with its own share, then a third process reads the union.
    with (
        ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as rank0,
        ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as rank1,
    ):
        for i, doc in enumerate(docs):
            (rank0 if i % 2 == 0 else rank1).put(doc, _score(doc, i))
    cache = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    assert [cache.get(d) for d in docs] == [_score(d, i) for i, d in enumerate(docs)]
    assert len(list(cache.path.glob("*.jsonl"))) == 2


def test_a_torn_last_line_is_skipped_and_never_appended_to(tmp_path):
    docs = _docs(4)
    _fill(tmp_path, docs[:3])
    cache = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    (file,) = cache.path.glob("*.jsonl")
    with file.open("ab") as f:
        f.write(b'{"bytes":12,"id":"d3","na')  # a write cut short by a kill
    with ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as resumed:
        assert len(resumed) == 3
        resumed.put(docs[3], _score(docs[3], 3))
    final = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    assert [final.get(d) for d in docs] == [_score(d, i) for i, d in enumerate(docs)]


def test_lines_survive_a_sigkill(tmp_path):
    # A real crash: a writer is killed mid-stream; every complete line it wrote is kept.
    script = f"""
import itertools
from bpbeval.cache import ResultCache
from bpbeval.data import Document
from bpbeval.scoring import DocumentScore
with ResultCache({str(tmp_path)!r}, identity="model-a", settings={SETTINGS!r}) as cache:
    for i in itertools.count():
        doc = Document(id=f"d{{i}}", text="x" * (i % 50), domain=None)
        cache.put(doc, DocumentScore(domain=None, nats=i / 3, bytes=i % 50, tokens=i))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while sum(f.stat().st_size for f in tmp_path.rglob("*.jsonl")) < 20_000:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (file,) = tmp_path.rglob("*.jsonl")
    complete = file.read_bytes().count(b"\n")
    cache = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    assert len(cache) == complete > 0
    for i in range(complete):
        doc = Document(id=f"d{i}", text="x" * (i % 50), domain=None)
        assert cache.get(doc) == DocumentScore(domain=None, nats=i / 3, bytes=i % 50, tokens=i)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"id": "d9"}',
        b'{"bytes":"12","id":"d9","nats":1.0,"sha256":"' + b"0" * 64 + b'","tokens":1}',
        b'{"bytes":12,"id":"d9","nats":1.0,"sha256":"0","tokens":1}',
        b'{"bytes":12,"id":"d9","nats":1.0,"sha256":"' + b"g" * 64 + b'","tokens":1}',
        # Figures no scoring gives: they would reach every report as NaN or a negative count.
        b'{"bytes":12,"id":"d9","nats":NaN,"sha256":"' + b"0" * 64 + b'","tokens":1}',
        b'{"bytes":12,"id":"d9","nats":Infinity,"sha256":"' + b"0" * 64 + b'","tokens":1}',
        b'{"bytes":-12,"id":"d9","nats":1.0,"sha256":"' + b"0" * 64 + b'","tokens":1}',
        b'{"bytes":12,"id":"d9","nats":1.0,"sha256":"' + b"0" * 64 + b'","tokens":-1}',
    ],
)
def test_a_corrupt_line_is_a_cache_error_naming_it(tmp_path, line):
    _fill(tmp_path, _docs(2))
    (file,) = tmp_path.rglob("*.jsonl")
    with file.open("ab") as f:
        f.write(line + b"\n")
    with pytest.raises(CacheError, match=rf"{file.name}:3 is corrupt .*delete"):
        ResultCache(tmp_path, identity="model-a", settings=SETTINGS)


def test_an_unreadable_cache_is_a_cache_error(tmp_path):
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("x")
    with pytest.raises(CacheError, match="cannot read the cache in"):
        ResultCache(not_a_directory, identity="model-a", settings=SETTINGS)


def _with_parts(rng: np.random.Generator, score: DocumentScore) -> DocumentScore:
    """``score`` with random class and position sums that add up to its totals, as scoring's."""

    def split(parts: int) -> tuple[np.ndarray, np.ndarray]:
        weights = rng.random(parts)
        cuts = np.sort(rng.integers(0, score.bytes + 1, parts - 1))
        return score.nats * weights / weights.sum(), np.diff([0, *cuts, score.bytes])

    (class_nats, class_bytes), (position_nats, position_bytes) = (
        split(len(CLASSES)),
        split(len(POSITIONS)),
    )
    return replace(score, attribution=Attribution(class_nats, class_bytes, position_nats,
                                                  position_bytes))  # fmt: skip


def test_many_entries_read_back_exactly_and_the_first_line_wins(tmp_path):
    # 50k keys: about 200 of their 16-byte digests end in a zero byte, which numpy drops
    # from an S16 item turned into bytes; each must still be found.
    rng = np.random.default_rng(0)
    docs = [Document(f"d{i}", f"doc {i} {'é' * (i % 5)}", "web") for i in range(50_000)]
    scores = {
        writer: [
            _with_parts(rng, _score(doc, i + writer)) if i % 10 == 0 else _score(doc, i + writer)
            for i, doc in enumerate(docs)
        ]
        for writer in (0, 1)
    }
    # Writer 0 puts documents 0..29999, writer 1 20000..49999: the overlap is in both files.
    shares = {0: range(0, 30_000), 1: range(20_000, 50_000)}
    with (
        ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as first,
        ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as second,
    ):
        for writer, cache in ((0, first), (1, second)):
            for i in shares[writer]:
                cache.put(docs[i], scores[writer][i])
        first.put(docs[0], scores[1][0])  # a later line of the same file loses too
        assert (len(first), len(second)) == (30_001, 30_000)
        # What a run puts, the same run never gets: it asked before scoring.
        assert first.get(docs[0]) is None
    # Files are read in name order, so the file that sorts first wins the overlap.
    files = sorted(first.path.glob("scores-*.jsonl"))
    winner = 0 if "d0" in {json.loads(line)["id"] for line in files[0].open()} else 1
    cache = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    assert len(cache) == len(docs)
    for i, doc in enumerate(docs):
        expected = scores[winner if i in shares[winner] else 1 - winner][i]
        assert cache.get(doc) == expected, i
    assert cache.hits == len(docs)
    served = cache.get(docs[10]).attribution
    assert served is not None and served.class_bytes.dtype == np.int64
    assert cache.get(docs[1]).attribution is None
    unknown = Document("d50000", "doc 50000 ", "web")
    changed = Document("d7", docs[7].text + ".", "web")
    moved = Document("d8", docs[7].text, "web")
    assert [cache.get(d) for d in (unknown, changed, moved)] == [None, None, None]
    assert cache.hits == len(docs) + 2


def test_attribution_is_read_again_and_a_changed_file_is_a_cache_error(tmp_path):
    rng = np.random.default_rng(1)
    docs = _docs(3)
    scores = [_with_parts(rng, _score(d, i)) for i, d in enumerate(docs)]
    with ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as cache:
        for doc, score in zip(docs, scores, strict=True):
            cache.put(doc, score)
    cache = ResultCache(tmp_path, identity="model-a", settings=SETTINGS)
    assert cache.get(docs[1]) == scores[1]
    (file,) = cache.path.glob("*.jsonl")
    lines = file.read_bytes().splitlines(keepends=True)
    file.write_bytes(b"".join(reversed(lines)))  # every line still valid, each elsewhere
    with pytest.raises(CacheError, match=rf"{file.name} changed since the cache was opened"):
        cache.get(docs[0])
    file.unlink()
    with pytest.raises(CacheError, match=rf"{file.name} changed since the cache was opened"):
        cache.get(docs[1])


MEMORY = """
import json, sys
from bpbeval.cache import ResultCache
from bpbeval.data import Document
from bpbeval.results import DocumentScore

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

root, settings = sys.argv[1], json.loads(sys.argv[2])
ResultCache(root, identity="empty", settings=settings)  # one-time costs (imports) before measuring
before = rss()
cache = ResultCache(root, identity="model-a", settings=settings)
opened = rss()
# The reference: what the cache kept before, a dict from (id, SHA-256) to the numbers
# (and a 400-byte array besides for each entry with attribution, left out here).
old = {}
for file in sorted(cache.path.glob("*.jsonl")):
    for raw in file.open("rb"):
        line = json.loads(raw)
        old.setdefault((line["id"], line["sha256"]), (line["nats"], line["bytes"], line["tokens"]))
dictionary = rss()
with ResultCache(root, identity="model-b", settings=settings) as writer:
    for i in range(50_000):
        writer.put(Document(f"new{i}", f"new {i}"), DocumentScore(None, i / 7, 6, 2))
written = rss()
print(json.dumps({
    "entries": len(cache),
    "kept": opened["VmRSS"] - before["VmRSS"],
    "peak": opened["VmHWM"] - max(before["VmHWM"], before["VmRSS"]),
    "old": dictionary["VmRSS"] - opened["VmRSS"],
    "put": written["VmRSS"] - dictionary["VmRSS"],
}))
"""


def test_an_open_cache_keeps_tens_of_bytes_a_document(tmp_path):
    rng = np.random.default_rng(0)
    with ResultCache(tmp_path, identity="model-a", settings=SETTINGS) as cache:
        for i in range(300_000):
            doc = Document(f"d{i}", f"document {i}", None)
            cache.put(doc, _with_parts(rng, _score(doc, i)) if i % 10 == 0 else _score(doc, i))
    # A fresh process: nothing freed by the writes above lingers to be reused.
    result = subprocess.run(
        [sys.executable, "-c", MEMORY, str(tmp_path), json.dumps(SETTINGS)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(result.stdout)
    per_entry = {k: v / 300_000 for k, v in figures.items() if k != "entries"}
    assert figures["entries"] == 300_000
    assert per_entry["kept"] < 100, per_entry
    assert per_entry["kept"] < per_entry["old"] / 4, per_entry
    assert per_entry["peak"] < 200, per_entry
    # 50k documents put: nothing kept per document (the file is written, not held).
    assert figures["put"] < 50_000 * 10, figures
