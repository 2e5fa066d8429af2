"""Sharded reads: each rank decodes its own documents only, and together they read every one."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bpbeval.data
from bpbeval.data import Corpus, read_documents
from bpbeval.errors import DataError

WORLD = 3
BAD = {4, 8, 11}  # positions of rows that cannot be decoded; rank 1 owns 4, rank 2 owns 8 and 11


@pytest.fixture
def corpus_dir(tmp_path):
    """Parquet then JSONL, 14 rows in all, across row groups; the rows at BAD are broken."""
    texts = [f"parquet row {i}".encode() for i in range(9)]
    for position in BAD & set(range(9)):
        texts[position] = b"\xff not UTF-8"
    table = pa.table({"text": pa.array(texts, pa.binary()), "domain": ["d"] * 9})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    lines = []
    for position in range(9, 14):
        row = json.dumps({"text": f"jsonl row {position}"})
        lines.append("{not json" if position in BAD else row)
    (tmp_path / "b.jsonl").write_text("\n\n".join(lines) + "\n")  # blank lines are no rows
    return tmp_path


def test_ranks_decode_only_their_own_rows_and_together_every_row(corpus_dir, monkeypatch):
    parsed = []
    real_loads = json.loads

    def counting_loads(line, *args, **kwargs):  # a spy: counts, then parses as ever
        parsed.append(line)
        return real_loads(line, *args, **kwargs)

    monkeypatch.setattr(bpbeval.data.json, "loads", counting_loads)
    corpus = Corpus(corpus_dir)
    shards = {}
    for rank in range(WORLD):
        parsed.clear()
        if rank in {position % WORLD for position in BAD}:
            with pytest.raises(DataError):
                list(corpus.shard(rank, WORLD))
            continue
        shards[rank] = list(corpus.shard(rank, WORLD))
        # JSONL rows parsed: exactly this rank's (positions 9..13 that are its own).
        assert len(parsed) == sum(1 for p in range(9, 14) if p % WORLD == rank)
    # Rank 0 owns no broken row: it read past the others' without decoding them.
    assert [index for index, _ in shards[0]] == [0, 3, 6, 9, 12]
    assert [doc.id for _, doc in shards[0]] == [
        "a.parquet:0", "a.parquet:3", "a.parquet:6", "b.jsonl:0", "b.jsonl:3",
    ]  # fmt: skip
    assert [doc.text for _, doc in shards[0]][:2] == ["parquet row 0", "parquet row 3"]


def test_shards_partition_the_documents(tmp_path):
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)]}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "j{i}"}}\n' for i in range(7)))
    for options in ({}, {"max_docs": 12}, {"max_bytes": 30}):
        everything = list(read_documents(tmp_path, **options))
        corpus = Corpus(tmp_path, **options)
        for world in (1, 2, 3, 5):
            merged = sorted(pair for rank in range(world) for pair in corpus.shard(rank, world))
            assert [doc for _, doc in merged] == everything
            assert [index for index, _ in merged] == list(range(len(everything)))


def test_the_size_is_known_before_reading(tmp_path):
    texts = [f"document {i} " * (i + 1) for i in range(50)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", row_group_size=8)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text_bytes = sum(len(t.encode()) for t in texts)
    size = Corpus(tmp_path).size_bytes()
    # An estimate: Parquet's metadata gives the text column's size before compression (its
    # bytes plus page overheads); a JSONL file's size is its text and its syntax.
    jsonl = (tmp_path / "b.jsonl").stat().st_size
    assert text_bytes + jsonl <= size <= 1.25 * (text_bytes + jsonl)
    assert Corpus(tmp_path, max_bytes=100).size_bytes() == 100
