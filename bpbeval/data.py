"""Documents from Parquet shards, JSONL files and plain text files, streamed.

One reader serves tokenizer training, scoring and the demo. Paths may be files or
directories; the format is chosen by suffix: ``.parquet`` (read one row group at a
time, so nanochat's shards work as they are), ``.jsonl`` (one JSON object per line),
anything else is one plain-text document per file. A directory is expanded
recursively and sorted to its data files only (``.parquet``, ``.jsonl``, ``.txt``;
hidden ones skipped): a README beside the shards would otherwise be scored as one
more document. A file named directly is read whatever its suffix. Every input must
be valid UTF-8: bpb divides by the text's bytes, so a silently replaced byte would
change the answer. A domain label is a string or null (no domain); a column or key
named ``domain`` is read as one unless another is named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bpbeval.errors import DataError

PathLike = str | os.PathLike[str]

# What a directory is expanded to; any other file in it is skipped and reported.
DATA_SUFFIXES = (".parquet", ".jsonl", ".txt")
# Skipped files named in the notice; the rest are counted.
_NAMED_SKIPPED = 5
# Read as the domain where a file has it, unless another column is named: data labelled
# this way gets per-domain figures without anyone finding the option.
DOMAIN_COLUMN = "domain"


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
        id: stable and unique within the stream: ``"<file>:<row>"``, where ``<file>``
            is the file name (or its path below a directory argument).
        text: the document's text.
        domain: an optional label (from ``domain_column``) for per-domain results.
    """

    id: str
    text: str
    domain: str | None = None


def _key(name: str) -> str:
    """A file's name as text for document ids: a name that is not UTF-8 (Linux allows any
    bytes) keeps its odd bytes as ``\\xNN``, as an id must be writable as UTF-8 (JSON, cache).

    Example:
        >>> _key(os.fsdecode(b"caf\\xe9.jsonl")), _key("日本.jsonl")
        ('caf\\\\xe9.jsonl', '日本.jsonl')
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _expand(paths: PathLike | Sequence[PathLike]) -> tuple[list[tuple[str, Path]], list[Path]]:
    """``(key, file)`` pairs in a deterministic order (keys name files in document ids), and
    the files directories held that are not data files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[tuple[str, Path]] = []
    skipped: list[Path] = []
    for arg in map(Path, paths):
        if arg.is_dir():
            found = sorted(p.relative_to(arg) for p in arg.rglob("*") if p.is_file())
            for rel in found:
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if rel.suffix.lower() in DATA_SUFFIXES:
                    files.append((_key(rel.as_posix()), arg / rel))
                else:
                    skipped.append(arg / rel)
        elif arg.is_file():
            files.append((_key(arg.name), arg))
        else:
            raise DataError(f"{arg}: no such file or directory")
    keys = [key for key, _ in files]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(
            f"two inputs are both named {dup!r}, so their document ids would collide; "
            "pass their common parent directory instead"
        )
    return files, skipped


def _skipped_notice(skipped: list[Path]) -> str:
    names = ", ".join(str(p) for p in skipped[:_NAMED_SKIPPED])
    more = len(skipped) - _NAMED_SKIPPED
    if more > 0:
        names += f" and {more} more"
    kinds = ", ".join(DATA_SUFFIXES)
    files = "file that is" if len(skipped) == 1 else "files that are"
    return f"skipped {len(skipped)} {files} not data ({kinds}): {names}"


def _shown(value: object) -> str:
    """A value in a message: its type and its repr, cut to 40 characters."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{type(value).__name__} {shown}"


def _domain(value: object, where: str, column: str) -> str | None:
    # A label is text; null is no domain. str() of anything else would invent one: 1, 1.0
    # and True would become three domains or one depending on the writer, a list its repr.
    if value is None or isinstance(value, str):
        return value
    raise DataError(
        f"{where}: domain {column!r} holds {_shown(value)}, not a string; "
        "write domain labels as strings (or null for none)"
    )


def _decode(data: bytes, where: str, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 at byte offset {offset + e.start}; "
            "convert the file to UTF-8 (bytes cannot be counted exactly otherwise)"
        ) from None


# A format's reader yields, for every row of a file in order, ``(where, nbytes, values)``:
# the row's place for messages, its UTF-8 bytes when known without decoding it (else None),
# and a function that reads its text and domain as stored (str, or UTF-8 bytes; None where
# there is no domain). Only :func:`_rows` calls it, and only for a wanted row.
_Stored = Iterator[tuple[str, int | None, Callable[[], tuple[object, object]]]]

# What :func:`_rows` makes of them: ``(nbytes, decoded)``, with ``(text, domain)`` when the
# row is wanted (else None). Rows another rank scores are never turned into Python strings.
_Rows = Iterator[tuple[int | None, tuple[str, str | None] | None]]


def _rows(
    stored: _Stored, wanted: Callable[[int], bool], text_field: str, domain_column: str
) -> _Rows:
    """The per-row rule every format shares.

    Another rank's row is passed over unread. A wanted row's text must be text (bytes are
    decoded as UTF-8) that has UTF-8 bytes, counted unless the reader knows them; its
    domain a string or None. ``text_field`` names where the text is stored, for messages
    ("column 'text'", "key 'text'").
    """
    for row, (where, nbytes, values) in enumerate(stored):
        if not wanted(row):
            yield nbytes, None
            continue
        text, domain = values()
        if isinstance(text, bytes):
            text = _decode(text, where)
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_field} holds {_shown(text)}, not text")
        if nbytes is None:
            try:  # a JSON escape like "\ud800" gives a lone surrogate, which has no UTF-8
                nbytes = len(text.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise DataError(
                    f"{where}: {text_field} holds a lone surrogate {text[e.start]!r}, "
                    "which is not text and has no UTF-8 bytes"
                ) from None
        if isinstance(domain, bytes):
            domain = _decode(domain, where)
        yield nbytes, (text, _domain(domain, where, domain_column))


def _cells(
    texts: pa.ChunkedArray, domains: pa.ChunkedArray | None, i: int
) -> tuple[object, object]:
    return texts[i].as_py(), None if domains is None else domains[i].as_py()


def _read_parquet(
    path: Path, text_column: str, domain_column: str, *, domain_required: bool
) -> _Stored:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    read_domain = domain_required or domain_column in names
    columns = [text_column, domain_column] if read_domain else [text_column]
    for column in columns:
        if column not in names:
            raise DataError(
                f"{path}: no column {column!r}; the columns are {names}; "
                "choose one with --text-column/--domain-column"
            )
    row = 0
    for group in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=columns)
            texts = table.column(text_column)
            lengths = (
                pc.binary_length(texts).to_pylist()
                if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
                else [None] * len(texts)
            )
            domains = table.column(domain_column) if read_domain else None
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: row group {group} is corrupt ({e})") from None
        for i, nbytes in enumerate(lengths):
            yield f"{path}: row {row}", nbytes, partial(_cells, texts, domains, i)
            row += 1


def _read_jsonl(
    path: Path, text_column: str, domain_column: str, *, domain_required: bool
) -> _Stored:
    def values(raw: bytes, where: str, start: int) -> tuple[object, object]:
        try:
            obj = json.loads(_decode(raw, where, start))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for column in (text_column, domain_column if domain_required else None):
            if column is not None and column not in obj:
                raise DataError(
                    f"{where}: no key {column!r}; the keys are {sorted(obj)}; "
                    "choose one with --text-column/--domain-column"
                )
        return obj[text_column], obj.get(domain_column)

    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}: line {lineno}"
            start, offset = offset, offset + len(raw)
            if raw.strip():  # JSON's whitespace is ASCII; a line of other space is malformed
                yield where, None, partial(values, raw, where, start)


def _read_text(path: Path) -> _Stored:
    yield str(path), path.stat().st_size, lambda: (path.read_bytes(), None)


def _size_bytes(key_paths: list[tuple[str, Path]], text_column: str) -> int:
    """About how many UTF-8 bytes of text the files hold, from their sizes and metadata."""
    total = 0
    for _, path in key_paths:
        if path.suffix.lower() != ".parquet":
            total += path.stat().st_size
            continue
        try:
            metadata = pq.ParquetFile(path).metadata
            names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
            column = names.index(text_column)
            for group in range(metadata.num_row_groups):
                chunk = metadata.row_group(group).column(column)
                # Plain-encoded strings: 4 bytes of length, then the bytes.
                total += chunk.total_uncompressed_size - 4 * metadata.row_group(group).num_rows
        except (pa.ArrowException, OSError, ValueError):
            continue  # reading it reports what is wrong; a bar's total is only an estimate
    return max(total, 0)


@dataclass(frozen=True)
class Corpus:
    """Documents of Parquet, JSONL and plain-text files, re-readable and shardable.

    Attributes:
        paths: files (read whatever their suffix) or directories (expanded recursively,
            sorted, to their ``DATA_SUFFIXES`` files).
        text_column: the Parquet column or JSON key holding the text.
        domain_column: an optional Parquet column or JSON key holding a domain label
            (a string, or null for none).
        max_docs: stop after this many documents.
        max_bytes: stop before the first document that would bring the total of UTF-8
            bytes above this.
        on_skipped: called with a one-line notice before the first document if a
            directory held files that are not data files (named, up to five).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.jsonl").write_text('{"text": "a"}\\n{"text": "b"}\\n{"text": "c"}\\n')
        >>> [(i, doc.id) for i, doc in Corpus(d).shard(1, 2)]
        [(1, 'a.jsonl:1')]
    """

    paths: PathLike | Sequence[PathLike]
    text_column: str = "text"
    domain_column: str | None = None
    max_docs: int | None = None
    max_bytes: int | None = None
    on_skipped: Callable[[str], object] | None = None

    def __iter__(self) -> Iterator[Document]:
        return (document for _, document in self.shard(0, 1))

    def size_bytes(self) -> int:
        """About how many UTF-8 bytes the documents hold, known before reading them."""
        files, _ = _expand(self.paths)
        total = _size_bytes(files, self.text_column)
        return total if self.max_bytes is None else min(total, self.max_bytes)

    def shard(self, rank: int, world_size: int) -> Iterator[tuple[int, Document]]:
        """Every ``world_size``-th document from the ``rank``-th, with its position.

        Other ranks' documents are counted, never decoded (but with ``max_bytes``, a
        JSONL row is decoded to learn its bytes).

        Raises:
            DataError: a path is missing, a column is missing, input is not UTF-8, a
                JSONL line is malformed, a domain is neither a string nor null, or there
                are no documents at all.
        """
        count = total = 0
        files, skipped = _expand(self.paths)
        if skipped and self.on_skipped is not None:
            self.on_skipped(_skipped_notice(skipped))
        measure = self.max_bytes is not None
        domain_column = self.domain_column or DOMAIN_COLUMN
        required = self.domain_column is not None
        for key, path in files:
            first = count

            def wanted(row: int, first: int = first) -> bool:
                return measure or (first + row) % world_size == rank

            suffix = path.suffix.lower()
            if suffix == ".parquet":
                field = f"column {self.text_column!r}"
                stored = _read_parquet(
                    path, self.text_column, domain_column, domain_required=required
                )
            elif suffix == ".jsonl":
                field = f"key {self.text_column!r}"
                stored = _read_jsonl(
                    path, self.text_column, domain_column, domain_required=required
                )
            else:
                # Its text is its bytes, UTF-8 or refused as such: no message names a field.
                field, stored = "text", _read_text(path)
            rows = _rows(stored, wanted, field, domain_column)
            for row, (nbytes, decoded) in enumerate(rows):
                if self.max_bytes is not None:
                    assert nbytes is not None  # measure: every row is read
                    total += nbytes
                    if total > self.max_bytes:
                        if count == 0:
                            raise DataError(
                                f"max_bytes={self.max_bytes} is smaller than the first "
                                f"document ({total} bytes); raise it"
                            )
                        return
                if count % world_size == rank:
                    assert decoded is not None
                    yield count, Document(f"{key}:{row}", *decoded)
                count += 1
                if count == self.max_docs:
                    return  # before reading another row: what lies past the cap is never read
        if count == 0:
            found = f"; {_skipped_notice(skipped)}" if skipped else ""
            raise DataError(
                f"no documents found in {self.paths}{found}; point at .parquet, .jsonl or "
                ".txt files (or name a file directly, read as text whatever its suffix)"
            )


def read_documents(
    paths: PathLike | Sequence[PathLike],
    *,
    text_column: str = "text",
    domain_column: str | None = None,
    max_docs: int | None = None,
    max_bytes: int | None = None,
    on_skipped: Callable[[str], object] | None = None,
) -> Iterator[Document]:
    """Stream the documents of Parquet, JSONL and plain-text files, in a fixed order.

    The arguments are :class:`Corpus`'s; Parquet is read a row group at a time, JSONL a
    line at a time.

    Raises:
        DataError: see :meth:`Corpus.shard`.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.jsonl").write_text('{"text": "héllo"}\\n{"text": "world"}\\n')
        >>> [(doc.id, doc.text) for doc in read_documents(d, max_bytes=6)]
        [('a.jsonl:0', 'héllo')]
        >>> _ = (d / "notes.md").write_text("not a document")
        >>> [doc.id for doc in read_documents(d, on_skipped=print)]  # doctest: +ELLIPSIS
        skipped 1 file that is not data (.parquet, .jsonl, .txt): ...notes.md
        ['a.jsonl:0', 'a.jsonl:1']
    """
    return iter(Corpus(paths, text_column, domain_column, max_docs, max_bytes, on_skipped))


def cap_texts(
    texts: Iterable[str], *, max_chars: int | None = None, doc_cap: int | None = None
) -> Iterator[str]:
    """Cut each text to ``doc_cap`` characters and stop at ``max_chars`` in total.

    As in nanochat's ``tok_train``: ``doc_cap`` keeps a few huge documents from dominating
    the merges; the last text is cut so that the total is exactly ``max_chars``.

    Example:
        >>> list(cap_texts(["abcdef", "ghijkl", "mn"], doc_cap=4, max_chars=6))
        ['abcd', 'gh']
    """
    total = 0
    for text in texts:
        if doc_cap is not None:
            text = text[:doc_cap]
        if max_chars is not None:
            text = text[: max_chars - total]
        total += len(text)
        yield text
        if max_chars is not None and total >= max_chars:
            return


def read_texts(
    paths: PathLike | Sequence[PathLike],
    *,
    text_column: str = "text",
    max_chars: int | None = None,
    doc_cap: int | None = None,
) -> Iterator[str]:
    """Stream document texts for tokenizer training, capped as by :func:`cap_texts`.

    Args:
        paths: as in :func:`read_documents`.
        text_column: as in :func:`read_documents`.
        max_chars: stop once this many characters have been yielded in total.
        doc_cap: cut each document to its first ``doc_cap`` characters.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.jsonl").write_text('{"text": "abcdef"}\\n{"text": "ghijkl"}\\n')
        >>> list(read_texts(d, doc_cap=4, max_chars=6))
        ['abcd', 'gh']
    """
    docs = read_documents(paths, text_column=text_column)
    return cap_texts((doc.text for doc in docs), max_chars=max_chars, doc_cap=doc_cap)
