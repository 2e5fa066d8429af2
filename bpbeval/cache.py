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

Lines reach the kernel as soon as a document completes (a SIGKILL loses nothing
written) and the disk at most a second later (``fsync``), and on close.
"""

from __future__ import annotations

import hashlib
import json
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
        self._entries: dict[tuple[str, str], tuple[float, int, int]] = {}
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
                self._read(file)
        except (OSError, UnicodeDecodeError) as e:
            raise CacheError(f"cannot read the cache in {directory}: {e}") from e

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, document: Document) -> DocumentScore | None:
        """The cached score of ``document``, or ``None`` if it was never scored with this model."""
        entry = self._entries.get((document.id, _sha256(document.text)))
        if entry is None:
            return None
        self.hits += 1
        nats, n_bytes, tokens, parts = entry
        return DocumentScore(document.domain, nats, n_bytes, tokens, _attribution(parts))

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
        self._entries[line["id"], line["sha256"]] = _entry(line)
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

    def _read(self, file: Path) -> None:
        # The piece after the last newline is empty, or a line a kill cut short: skip it.
        for number, raw in enumerate(file.read_bytes().split(b"\n")[:-1], 1):
            try:
                line = json.loads(raw)
                _check(line)
            except ValueError as e:
                raise CacheError(
                    f"{file}:{number} is corrupt ({e}); delete {file} to rescore its documents"
                ) from e
            self._entries.setdefault((line["id"], line["sha256"]), _entry(line))


def _check(line: object) -> None:
    if (
        not isinstance(line, dict)
        or set(line) - {"attribution"} != set(_FIELDS)
        or not all(type(line[k]) is t for k, t in _FIELDS.items())
    ):
        raise ValueError(f"expected the fields {sorted(_FIELDS)} and maybe attribution")
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


def _entry(line: dict) -> tuple[float, int, int, np.ndarray | None]:
    # The attribution sums as one float64 array (byte counts are exact in float64): a few
    # hundred bytes a document, not fifty Python numbers.
    parts = line.get("attribution")
    packed = None if parts is None else np.concatenate([parts[k] for k in _PARTS], dtype=float)
    return line["nats"], line["bytes"], line["tokens"], packed


def _attribution(packed: np.ndarray | None) -> Attribution | None:
    if packed is None:
        return None
    pieces = np.split(packed, np.cumsum([length for length, _ in _PARTS.values()])[:-1])
    return Attribution(*(p.astype(t) for p, (_, t) in zip(pieces, _PARTS.values(), strict=True)))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
