"""The demo's corpus: text that ships with Python, as Parquet shards in nanochat's layout.

Two domains, so that the comparison can be read per domain:

- ``docs``: the language reference's topics (``pydoc_data.topics``, what ``help()`` prints);
- ``code``: the standard library's top-level modules (``Lib/*.py``).

nanochat's layout is a directory of ``shard_00000.parquet``, ``shard_00001.parquet``, ...
with a ``text`` column, row groups of 1024 documents and zstd; the last shard is the
validation split, the others are training. We add a ``domain`` column, which nanochat
ignores and ``bpbeval.compare --domain-column domain`` reads.
"""

from __future__ import annotations

import io
import os
import pydoc_data.topics
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bpbeval.errors import DataError
from bpbeval.files import atomic_directory

ROW_GROUP_SIZE = 1024  # nanochat's: a power of two, so row groups split evenly across ranks


@dataclass(frozen=True)
class Splits:
    """The shards of a corpus directory: every shard but the last is train, the last is val."""

    train: list[Path]
    val: Path


def splits(directory: str | os.PathLike[str]) -> Splits:
    """Read the train/val split of a directory of ``shard_*.parquet`` files, as nanochat does.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     _ = (d / f"shard_{i:05d}.parquet").write_bytes(b"")
        >>> s = splits(d)
        >>> [p.name for p in s.train], s.val.name
        (['shard_00000.parquet', 'shard_00001.parquet'], 'shard_00002.parquet')
    """
    shards = sorted(Path(directory).glob("shard_*.parquet"))
    if len(shards) < 2:
        raise FileNotFoundError(f"{directory}: needs at least two shard_*.parquet files")
    return Splits(train=shards[:-1], val=shards[-1])


def split_text(text: str, target_chars: int) -> list[str]:
    """Cut ``text`` into documents of whole paragraphs, each about ``target_chars`` long.

    Paragraphs (separated by a blank line) are gathered until a document reaches
    ``target_chars``; a paragraph is never cut, so a document can be longer. Whole files
    would make a few huge documents; paragraphs keep documents many and comparable.

    Example:
        >>> split_text("aaa\\n\\nbbb\\n\\nccc", target_chars=6)
        ['aaa\\n\\nbbb', 'ccc']
    """
    docs, current = [], ""
    for paragraph in text.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= target_chars:
            docs.append(current)
            current = ""
    if current.strip():
        docs.append(current)
    return [doc for doc in docs if doc.strip()]


def sources() -> Iterator[tuple[str, str]]:
    """Yield ``(domain, text)`` for every source text, in a fixed order.

    Example:
        >>> domain, text = next(sources())
        >>> domain, text.startswith('The "assert" statement')
        ('docs', True)
    """
    for name in sorted(pydoc_data.topics.topics):
        yield "docs", pydoc_data.topics.topics[name]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        yield "code", path.read_text("utf-8")


def _write_shard(path: Path, docs: list[tuple[str, str]]) -> None:
    table = pa.table({"text": [text for _, text in docs], "domain": [d for d, _ in docs]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    path.write_bytes(buffer.getvalue())


def build(
    directory: str | os.PathLike[str],
    *,
    train_chars: int,
    val_docs: int,
    doc_chars: int = 1200,
    shard_chars: int = 1_000_000,
    seed: int = 0,
) -> Splits:
    """Write the corpus: train shards of about ``shard_chars`` each, then one val shard.

    The documents of each domain are shuffled with ``seed``; the first ``val_docs`` of
    each domain form the val shard, and the rest (both domains, shuffled together) fill
    the train shards up to ``train_chars``. The directory is replaced atomically.

    Args:
        directory: where the shards go (replaced as a whole).
        train_chars: characters of training text, at most (whole documents).
        val_docs: validation documents per domain.
        doc_chars: the target length of a document (see :func:`split_text`).
        shard_chars: characters per train shard, at most.
        seed: the shuffle's seed.

    Raises:
        DataError: no training document is left within ``train_chars``.

    Example:
        >>> import tempfile
        >>> s = build(Path(tempfile.mkdtemp()) / "data", train_chars=20_000, val_docs=3)
        >>> len(s.train), pq.read_table(s.val).column("domain").to_pylist()
        (1, ['docs', 'code', 'docs', 'code', 'docs', 'code'])
    """
    rng = random.Random(seed)
    by_domain: dict[str, list[tuple[str, str]]] = {}
    for domain, text in sources():
        by_domain.setdefault(domain, []).extend(
            (domain, doc) for doc in split_text(text, doc_chars)
        )
    val_by_domain, rest = [], []
    for docs in by_domain.values():
        rng.shuffle(docs)
        val_by_domain.append(docs[:val_docs])
        rest += docs[val_docs:]
    rng.shuffle(rest)
    # Val alternates domains, so that its first documents are a fair sample of both.
    val = [doc for group in zip_longest(*val_by_domain) for doc in group if doc is not None]

    shards: list[list[tuple[str, str]]] = [[]]
    total = shard_total = 0
    for domain, text in rest:
        if total + len(text) > train_chars:
            break
        if shard_total + len(text) > shard_chars and shards[-1]:
            shards.append([])
            shard_total = 0
        shards[-1].append((domain, text))
        total += len(text)
        shard_total += len(text)
    if not shards[0]:
        raise DataError(
            f"no training document fits in train_chars={train_chars} after {val_docs} val "
            f"documents per domain: raise train_chars or lower val_docs"
        )
    shards.append(val)

    with atomic_directory(directory, owns=["shard_*.parquet"]) as tmp:
        for i, docs in enumerate(shards):
            _write_shard(tmp / f"shard_{i:05d}.parquet", docs)
    return splits(directory)
