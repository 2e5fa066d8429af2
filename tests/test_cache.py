"""The result cache: exact round trips, no stale hits, crash tolerance, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    [b"not json", b'{"id": "d9"}', b'{"bytes":"12","id":"d9","nats":1.0,"sha256":"0","tokens":1}'],
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
