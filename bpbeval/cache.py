"""Resumable per-document results: a killed run picks up where it stopped.

A cache directory holds one subdirectory per *model key*, the hash of the
checkpoint's identity, the settings that change scores (stride, context, dtype,
``allow_inexact_bytes``) and this file format. A changed checkpoint or setting
therefore lands in a fresh subdirectory and never meets stale results. Inside,
each process appends JSON lines (one per document, keyed by document id and the
SHA-256 of its text) to a file of its own, created by that process, so:

- a kill can tear at most the last line of a file, which is ignored on reading;
- a process never appends after someone else's torn line;
- any number of ranks write at once, and a run with another world size reads them all.

A document found on several lines (the files read in name order) is served from the first.

Lines reach the kernel as soon as a document completes (a SIGKILL loses nothing
written) and the disk at most a second later (``fsync``), and on close.

Opening a cache reads every file but keeps about 56 bytes a document, whatever its
line holds: a 16-byte digest of its key, its nats, bytes and tokens, and where its
line lies, so that its attribution sums are read again when asked for (``get``).
What a process writes is not kept: a run scores a document once, after asking for it.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

import bpbeval
from bpbeval.attribution import CLASSES, POSITIONS, Attribution
from bpbeval.errors import CacheError
from bpbeval.files import atomic_write_text
from bpbeval.results import DocumentScore

if TYPE_CHECKING:
    from bpbeval.data import Document

_FORMAT = 2  # 2: a document's attribution sums, where computed
_FSYNC_INTERVAL_S = 1.0
# A digest of 16 bytes per key: two keys collide (and one document would be served
# another's score) with probability about n^2 / 2^129, under 1e-20 at 10^9 documents;
# 8 bytes would make that 1 in 40 at 10^9.
_DIGEST_BYTES = 16
_SHA256_BYTES = hashlib.sha256().digest_size
# What an index keeps per entry besides its digest (array typecodes): 40 bytes.
_COLUMNS = {
    "nats": "d",
    "bytes": "q",
    "tokens": "q",
    "file": "i",  # the entry's file, an index in the order read
    "offset": "q",  # where its line starts, or -1 if it has no attribution sums
    "length": "I",  # its line's length, newline included
}
_FIELDS = {"id": str, "sha256": str, "nats": float, "bytes": int, "tokens": int}
# The optional "attribution" field: each list's length and element type.
_PARTS = {
    "class_nats": (len(CLASSES), float),
    "class_bytes": (len(CLASSES), int),
    "position_nats": (len(POSITIONS), float),
    "position_bytes": (len(POSITIONS), int),
}


def model_key(identity: str, settings: Mapping[str, object]) -> str:
    """The hex key under which a checkpoint's scores with these settings are cached.

    Example:
        >>> key = model_key("abc", {"stride": 64, "dtype": None})
        >>> key == model_key("abc", {"dtype": None, "stride": 64})
        True
        >>> key == model_key("abc", {"stride": 32, "dtype": None})
        False
    """
    material = {
        "checkpoint": identity,
        "settings": dict(settings),
        "format": _FORMAT,
        "bpbeval": bpbeval.__version__,
    }
    return hashlib.sha256(_dumps(material).encode()).hexdigest()


class ResultCache:
    """Per-document scores of one checkpoint under one set of settings, kept across runs.

    Implements the scoring engine's ``ScoreCache`` protocol (``get``/``put``). Use it
    as a context manager so that the last lines are synced to disk on exit.

    Args:
        directory: the cache directory (created if missing); shared by all models and ranks.
        identity: the checkpoint's identity hash.
        settings: every setting that changes a document's score, JSON-serialisable.

    Raises:
        CacheError: the directory or a cache file in it cannot be read, or is corrupt.

    Example:
        >>> import tempfile
        >>> from bpbeval.data import Document
        >>> doc = Document(id="d1", text="héllo", domain=None)
        >>> root = tempfile.mkdtemp()
        >>> with ResultCache(root, identity="abc", settings={"stride": 8}) as cache:
        ...     cache.put(doc, DocumentScore(domain=None, nats=4.5, bytes=6, tokens=3))
        >>> ResultCache(root, identity="abc", settings={"stride": 8}).get(doc)
        DocumentScore(domain=None, nats=4.5, bytes=6, tokens=3)
        >>> print(ResultCache(root, identity="abc", settings={"stride": 4}).get(doc))
        None
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, identity: str, settings: Mapping[str, object]
    ) -> None:
        self.path = Path(directory) / model_key(identity, settings)
        self._index = _Index()
        self._fd: int | None = None
        self._last_sync = 0.0
        self.hits = 0  # documents served by get
        self.written = 0  # documents recorded by put
        key = _dumps({"checkpoint": identity, "settings": dict(settings)})
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            key_file = self.path / "key.json"
            if not key_file.exists():
                atomic_write_text(key_file, key)
            elif key_file.read_text(encoding="utf-8") != key:
                raise CacheError(f"{key_file} belongs to another model; delete {self.path}")
            for file in sorted(self.path.glob("*.jsonl")):
                self._index.read(file)
        except (OSError, UnicodeDecodeError) as e:
            raise CacheError(f"cannot read the cache in {directory}: {e}") from e
        self._index.seal()

    def __len__(self) -> int:
        """Documents found on opening plus those recorded since by ``put``."""
        return len(self._index) + self.written

    def get(self, document: Document) -> DocumentScore | None:
        """The cached score of ``document``, or ``None`` if it was never scored with this model.

        Only documents found on opening are served, not those recorded since by ``put``.
        """
        score = self._index.get(document)
        if score is not None:
            self.hits += 1
        return score

    def put(self, document: Document, score: DocumentScore) -> None:
        """Record ``score`` for ``document``: in the kernel at once, on disk within a second."""
        line: dict[str, object] = {"id": document.id, "sha256": _sha256(document.text)}
        line.update(nats=float(score.nats), bytes=int(score.bytes), tokens=int(score.tokens))
        if score.attribution is not None:
            line["attribution"] = {k: getattr(score.attribution, k).tolist() for k in _PARTS}
        try:
            if self._fd is None:
                self._fd = self._create()
            os.write(self._fd, (_dumps(line) + "\n").encode())
            if time.monotonic() - self._last_sync > _FSYNC_INTERVAL_S:
                self._sync()
        except OSError as e:
            raise CacheError(f"cannot write to the cache in {self.path}: {e}") from e
        self.written += 1

    def close(self) -> None:
        """Sync and close this process's cache file."""
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> int:
        fd, _ = tempfile.mkstemp(dir=self.path, prefix="scores-", suffix=".jsonl")
        # The new file's name must survive a power cut too, not only its lines.
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return fd

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self._last_sync = time.monotonic()


class _Index:
    """The entries of a cache's files as columns, found by the digest of their key.

    Entries are appended as the files are read; ``seal`` sorts them by digest and keeps
    each key's first. An entry with attribution sums keeps where its line lies instead
    of its 50 numbers, and ``get`` reads that line again.
    """

    def __init__(self) -> None:
        self._files: list[Path] = []
        # While reading: 8 bytes a number (array), not a Python object each.
        self._digests = bytearray()
        self._growing = {name: array.array(code) for name, code in _COLUMNS.items()}
        self._sorted = np.empty(0, dtype=f"S{_DIGEST_BYTES}")
        self._columns: dict[str, np.ndarray] = {}

    def read(self, file: Path) -> None:
        index = len(self._files)
        self._files.append(file)
        c = self._growing
        offset = 0
        with file.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # a line a kill cut short: the last, and skipped
                try:
                    line = json.loads(raw.decode())  # UTF-8 as written: loads(bytes) would sniff
                    _check(line)
                    self._digests += _digest(line["id"], line["sha256"])
                    c["nats"].append(line["nats"])
                    c["bytes"].append(line["bytes"])
                    c["tokens"].append(line["tokens"])
                    c["length"].append(len(raw))
                except (ValueError, OverflowError) as e:
                    raise CacheError(
                        f"{file}:{number} is corrupt ({e}); delete {file} to rescore its documents"
                    ) from e
                c["file"].append(index)
                c["offset"].append(offset if "attribution" in line else -1)
                offset += len(raw)

    def seal(self) -> None:
        """Sort the entries by digest, keeping the first line of each key."""
        # return_index: each digest's first occurrence, in the order the lines were read.
        self._sorted, first = np.unique(
            np.frombuffer(self._digests, dtype=f"S{_DIGEST_BYTES}"), return_index=True
        )
        self._digests = bytearray()
        for name in _COLUMNS:  # one at a time: the copies never all sit beside the originals
            column = self._growing.pop(name)
            self._columns[name] = np.frombuffer(column, dtype=column.typecode)[first]

    def __len__(self) -> int:
        return len(self._sorted)

    def get(self, document: Document) -> DocumentScore | None:
        digest = _digest(document.id, _sha256(document.text))
        i = int(np.searchsorted(self._sorted, digest))
        # Compared as raw bytes: numpy drops trailing zero bytes from an S16 item turned
        # into Python bytes, and one digest in 256 ends in one.
        if self._sorted[i : i + 1].tobytes() != digest:
            return None
        c = self._columns
        return DocumentScore(
            document.domain,
            float(c["nats"][i]),
            int(c["bytes"][i]),
            int(c["tokens"][i]),
            None if c["offset"][i] < 0 else self._attribution(i, digest),
        )

    def _attribution(self, i: int, digest: bytes) -> Attribution:
        file, offset = self._files[self._columns["file"][i]], int(self._columns["offset"][i])
        # Opened per call, not kept open: a cache may hold thousands of files (one per rank
        # per run), and an open costs microseconds beside scoring a document.
        try:
            fd = os.open(file, os.O_RDONLY)
            try:
                line = json.loads(os.pread(fd, int(self._columns["length"][i]), offset).decode())
            finally:
                os.close(fd)
            _check(line)
            if _digest(line["id"], line["sha256"]) != digest or "attribution" not in line:
                raise ValueError("another line is there")
        except (OSError, ValueError) as e:
            raise CacheError(
                f"{file} changed since the cache was opened (byte {offset}: {e}); "
                "do not edit or delete cache files while a run uses them"
            ) from e
        parts = line["attribution"]
        return Attribution(*(np.array(parts[k], dtype=t) for k, (_, t) in _PARTS.items()))


def _check(line: object) -> None:
    if (
        not isinstance(line, dict)
        or set(line) - {"attribution"} != set(_FIELDS)
        or not all(type(line[k]) is t for k, t in _FIELDS.items())
    ):
        raise ValueError(f"expected the fields {sorted(_FIELDS)} and maybe attribution")
    if not math.isfinite(line["nats"]) or line["bytes"] < 0 or line["tokens"] < 0:
        raise ValueError("expected finite nats, and bytes and tokens of at least 0")
    parts = line.get("attribution")
    if parts is None:
        return
    if not isinstance(parts, dict) or set(parts) != set(_PARTS):
        raise ValueError(f"expected attribution to hold {sorted(_PARTS)}")
    for key, (length, kind) in _PARTS.items():
        values = parts[key]
        if not (isinstance(values, list) and len(values) == length):
            raise ValueError(f"expected {length} values in attribution's {key}")
        if not all(type(v) is kind for v in values):
            raise ValueError(f"expected {kind.__name__}s in attribution's {key}")
        if not all(math.isfinite(v) and (kind is float or v >= 0) for v in values):
            raise ValueError(f"expected finite values (counts at least 0) in attribution's {key}")
    # A document's parts add up to its totals, as scoring makes them: sums that do not
    # would make a breakdown that disagrees with the bpb above it.
    for part in ("class", "position"):
        nats = math.fsum(parts[f"{part}_nats"])
        if sum(parts[f"{part}_bytes"]) != line["bytes"] or not math.isclose(
            nats, line["nats"], rel_tol=1e-6, abs_tol=1e-6
        ):
            raise ValueError(f"expected attribution's {part} sums to add up to the line's")


def _digest(document_id: str, sha256: str) -> bytes:
    # The text's SHA-256 first, at its fixed length, so that no other pair of id and text
    # hashes the same bytes.
    text_hash = bytes.fromhex(sha256)
    if len(text_hash) != _SHA256_BYTES:
        raise ValueError(f"expected a sha256 of {2 * _SHA256_BYTES} hex digits")
    return hashlib.blake2b(text_hash + document_id.encode(), digest_size=_DIGEST_BYTES).digest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
