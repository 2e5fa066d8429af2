"""compare's per-document Parquet, streamed: the same table as one built whole, atomic, bounded."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bpbeval import report
from bpbeval.attribution import CLASSES, POSITIONS, Attributions
from bpbeval.data import Document
from bpbeval.files import atomic_writer
from bpbeval.report import write_per_document_parquet
from bpbeval.results import DocumentScores, Scores

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 10


def _scores(rng: np.random.Generator, n_bytes: np.ndarray, *, attributed: bool) -> Scores:
    n = len(n_bytes)
    domains = np.array([None, "web", "code", "wiki"] * n + [None], dtype=object)[:n]
    nats = rng.random(n) * 100
    tokens = rng.integers(1, 50, size=n)
    per_document = None
    if attributed:
        per_document = Attributions(
            class_nats=rng.random((n, len(CLASSES))),
            class_bytes=rng.integers(0, 9, size=(n, len(CLASSES))),
            position_nats=rng.random((n, len(POSITIONS))),
            position_bytes=rng.integers(0, 9, size=(n, len(POSITIONS))),
        )
    documents = DocumentScores(domain=domains, nats=nats, bytes=n_bytes, tokens=tokens)
    return Scores(
        documents,
        float(nats.sum()),
        int(n_bytes.sum()),
        int(tokens.sum()),
        False,
        per_document_attribution=per_document,
    )


def _documents(n: int) -> list[Document]:
    return [Document(f"shard_ü.parquet:{i}", "x" * i) for i in range(n)]


def _expected(documents: list[Document], a: Scores, b: Scores) -> pa.Table:
    # Built whole, row by row, as the documented columns say: the reference.
    rows = []
    for i, document in enumerate(documents):
        row = {
            "id": document.id,
            "domain": a.documents.domain[i],
            "bytes": int(a.documents.bytes[i]),
            "nats_a": float(a.documents.nats[i]),
            "tokens_a": int(a.documents.tokens[i]),
            "nats_b": float(b.documents.nats[i]),
            "tokens_b": int(b.documents.tokens[i]),
        }
        parts_a, parts_b = a.per_document_attribution, b.per_document_attribution
        if parts_a is not None and parts_b is not None:
            for k, name in enumerate(CLASSES):
                row[f"bytes_{name}"] = int(parts_a.class_bytes[i, k])
                row[f"nats_a_{name}"] = float(parts_a.class_nats[i, k])
                row[f"nats_b_{name}"] = float(parts_b.class_nats[i, k])
        rows.append(row)
    types = {"id": pa.string(), "domain": pa.string()}
    fields = [
        (name, types.get(name, pa.float64() if "nats" in name else pa.int64())) for name in rows[0]
    ]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


@pytest.mark.parametrize("attributed", [False, True])
def test_the_streamed_file_is_the_table_built_whole(tmp_path, monkeypatch, attributed):
    monkeypatch.setattr(report, "PER_DOCUMENT_ROWS", 3)
    rng = np.random.default_rng(0)
    n_bytes = rng.integers(1, 1000, size=N_DOCS)
    a, b = (_scores(rng, n_bytes, attributed=attributed) for _ in "ab")
    documents = _documents(N_DOCS)
    path = tmp_path / "docs.parquet"
    with atomic_writer(path) as sink:
        write_per_document_parquet(sink, iter(documents), a, b)  # streamed once

    assert pq.ParquetFile(path).num_row_groups == 4  # 3 + 3 + 3 + 1 rows
    expected = _expected(documents, a, b)
    assert pq.read_table(path).equals(expected, check_metadata=True)
    # What the whole-table write made of the same columns reads back the same, metadata too.
    whole = io.BytesIO()
    pq.write_table(expected, whole)
    assert pq.read_table(path).equals(pq.read_table(whole), check_metadata=True)


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize("count", [4, N_DOCS + 1])
def test_documents_other_than_the_scored_fail_and_leave_the_old_file(tmp_path, monkeypatch, count):
    monkeypatch.setattr(report, "PER_DOCUMENT_ROWS", 3)
    rng = np.random.default_rng(1)
    n_bytes = rng.integers(1, 1000, size=N_DOCS)
    a, b = (_scores(rng, n_bytes, attributed=False) for _ in "ab")
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"an older run's file")
    before = _listing(tmp_path)
    # 4 fail at the second row group, once the first is written; 11 once all 10 rows are.
    with pytest.raises(ValueError), atomic_writer(path) as sink:
        write_per_document_parquet(sink, _documents(count), a, b)
    assert _listing(tmp_path) == before


_FULL_DISK = """
import resource, signal, sys
import numpy as np
from bpbeval.data import Document
from bpbeval.files import atomic_writer
from bpbeval.report import write_per_document_parquet
from bpbeval.results import DocumentScores, Scores

n = 400_000
rng = np.random.default_rng(0)
columns = DocumentScores(
    domain=np.full(n, None, dtype=object), nats=rng.random(n),
    bytes=rng.integers(1, 1000, size=n), tokens=rng.integers(1, 50, size=n),
)
scores = Scores(columns, 0.0, 0, 0, False)
documents = (Document(f"shard_000.parquet:{i}", "") for i in range(n))
# Past 4 MiB, some row groups in, a write fails with EFBIG as on a full disk (not a signal).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, resource.RLIM_INFINITY))
try:
    with atomic_writer(sys.argv[1]) as sink:
        write_per_document_parquet(sink, documents, scores, scores)
except OSError as e:
    print(e.errno)
"""


def test_a_full_disk_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"an older run's file")
    before = _listing(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stdout.split()) == (0, [str(errno.EFBIG)]), done.stderr
    assert _listing(tmp_path) == before


_PEAK = """
import io, json, sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bpbeval.data import Document
from bpbeval.files import atomic_write_bytes, atomic_writer
from bpbeval.report import write_per_document_parquet
from bpbeval.results import DocumentScores, Scores

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

n = 2_000_000
rng = np.random.default_rng(0)
columns = DocumentScores(
    domain=np.where(np.arange(n) % 3 == 0, "web", None), nats=rng.random(n) * 1000,
    bytes=rng.integers(1, 10_000, size=n), tokens=rng.integers(1, 3_000, size=n),
)
scores = Scores(columns, 0.0, 0, 0, False)
documents = (Document(f"shard_000.parquet:{i}", "") for i in range(n))
pq.write_table(pa.table({"x": [1]}), io.BytesIO())  # pyarrow's one-off start-up, not counted
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS: the peak from here on
start = status("VmRSS")
if sys.argv[1] == "whole":  # the former way: every column converted, the file in memory
    d = columns
    table = pa.table({
        "id": pa.array([doc.id for doc in documents], pa.string()),
        "domain": pa.array(d.domain.tolist(), pa.string()),
        "bytes": pa.array(d.bytes, pa.int64()), "nats_a": pa.array(d.nats, pa.float64()),
        "tokens_a": pa.array(d.tokens, pa.int64()), "nats_b": pa.array(d.nats, pa.float64()),
        "tokens_b": pa.array(d.tokens, pa.int64()),
    })
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write_bytes(sys.argv[2], sink.getvalue())
else:
    with atomic_writer(sys.argv[2]) as sink:
        write_per_document_parquet(sink, documents, scores, scores)
rows = pq.ParquetFile(sys.argv[2]).metadata.num_rows
print(json.dumps({"growth": status("VmHWM") - start, "rows": rows}))
"""


def test_peak_memory_is_one_row_group_not_the_corpus(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    growth = {}
    for way in ("whole", "streamed"):
        path = tmp_path / f"{way}.parquet"
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, way, str(path)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        figures = json.loads(done.stdout)
        assert figures["rows"] == 2_000_000
        growth[way] = figures["growth"]
    mib = {way: round(bytes_ / 2**20) for way, bytes_ in growth.items()}
    print(f"peak RSS growth, MiB: {mib}")
    assert pq.read_table(tmp_path / "streamed.parquet").equals(
        pq.read_table(tmp_path / "whole.parquet")
    )
    assert growth["streamed"] < growth["whole"] / 4, mib
