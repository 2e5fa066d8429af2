"""Score documents: every byte exactly once, the same answer for any batching or world size.

Each document is encoded without special tokens and scored after the prefix
token (BOS, else EOS), which is itself never scored. A document longer than the
context is scored in rolling windows (:func:`rolling_windows`): each window scores
the next ``stride`` tokens with as much preceding context as fits.

The engine streams, in stages, so memory does not grow with the corpus:

- **read**: this rank's documents (every ``world_size``-th), pulled lazily;
- **encode**: in a background thread, a bounded queue ahead of the model (tiktoken
  releases the GIL), one :class:`_Record` per document;
- **window**: each record's rolling windows;
- **batch**: windows of one padded length, up to ``batch_tokens`` positions per
  forward pass, formed from a look-ahead buffer of at most ``lookahead_tokens``;
- **forward**: the model and the per-token nats of the scored positions, on the device;
- **reduce**: per-window float64 sums stay on the device and come to the host in one
  copy when documents finish (batched: never a sync per forward pass), then each
  document's nats are summed in window order. The scored tokens' own nats come in the
  same copy (4 bytes a token): each document's are attributed to its bytes' character
  classes and positions (:mod:`bpbeval.attribution`), and only those sums are kept,
  added into the corpus's (:class:`~bpbeval.attribution.AttributionSums`, bounded).
  That runs on the host, because it needs each byte's class, which the encoding thread
  computes from the text there, and because per-class sums by ``bincount`` on a GPU add
  floats in no fixed order.

Determinism. Logits of the same window differ in the last float32 bits when the
padded length of its batch changes, so each window's padded length is a function
of its own length only (:func:`padded_length`) and batches hold windows of one
padded length. A window's nats are then the same for any token budget, row cap,
look-ahead and document order; a document's are summed over its windows in their
order, and the totals with ``math.fsum``, which is exactly rounded and so
independent of the order documents come back from the ranks.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from bpbeval import distributed
from bpbeval.attribution import (
    CLASSES,
    POSITIONS,
    Attribution,
    Attributions,
    AttributionSums,
    attribute,
    byte_classes,
)
from bpbeval.checkpoint import Checkpoint
from bpbeval.data import Corpus, Document
from bpbeval.errors import CheckpointError, DataError, ScoringError
from bpbeval.losses import DEFAULT_CHUNK_SIZE, token_nats
from bpbeval.metric import BitsPerByte
from bpbeval.results import DocumentScore, DocumentScores, Scores
from bpbeval.tokenizer import TextTokenizer

# Windows are right-padded to a multiple of this many positions (or the context).
PAD_MULTIPLE = 32
# Target id of positions that are not scored (context, padding, 0-byte tokens): any id
# below 0 is ignored by the loss helpers and the metric alike.
IGNORE = -100
# The causality probe checks at most this many cut points, this many sequences per forward pass.
PROBE_CUTS = 16
PROBE_BATCH = 4
# Positions per forward pass (see benchmarks/RESULTS.md, "Corpus scale", for the measurement).
DEFAULT_BATCH_TOKENS = 2048
# Windows waiting to be batched, in positions, as a multiple of the token budget: enough
# that most batches are full, bounded whatever the corpus.
LOOKAHEAD_BATCHES = 16
# The encoder works on chunks of about this many UTF-8 bytes, and runs this many ahead.
ENCODE_CHUNK_BYTES = 1 << 18
ENCODE_AHEAD = 2
# Finished documents' nats come to the host at most once per this many forward passes.
SYNC_EVERY = 32

T = TypeVar("T")


class ScoreCache(Protocol):
    """Per-document results kept across runs (see :mod:`bpbeval.cache`).

    ``get`` is called on the rank that owns the document, ``put`` on the rank that
    scored it, as soon as it is scored.
    """

    def get(self, document: Document) -> DocumentScore | None: ...

    def put(self, document: Document, score: DocumentScore) -> None: ...


class Window(NamedTuple):
    """The model reads ``seq[begin:end]`` and scores ``tokens[start:end]``.

    ``seq`` is the prefix token followed by the document's tokens, so position ``p``
    of the window predicts ``tokens[begin + p]``.
    """

    begin: int
    start: int
    end: int


def rolling_windows(n_tokens: int, *, context_len: int, stride: int) -> list[Window]:
    """The windows that score ``n_tokens`` tokens, each exactly once.

    The first window scores the first ``context_len`` tokens, each with all of its
    preceding context. Every later window scores the next ``stride`` tokens (fewer
    at the end) and is filled to ``context_len`` with the tokens before them. With
    ``stride == context_len`` these are lm-eval-harness's ``loglikelihood_rolling``
    windows, including the last, backfilled one.

    Example:
        >>> [tuple(w) for w in rolling_windows(10, context_len=4, stride=2)]
        [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
        >>> rolling_windows(6, context_len=4, stride=4)
        [Window(begin=0, start=0, end=4), Window(begin=2, start=4, end=6)]
    """
    windows = []
    start, end = 0, min(context_len, n_tokens)
    while start < n_tokens:
        windows.append(Window(max(0, end - context_len), start, end))
        start, end = end, min(end + stride, n_tokens)
    return windows


def check_causal(checkpoint: Checkpoint, *, context_len: int, device: str | torch.device) -> None:
    """Refuse a model whose logits at a position depend on later tokens.

    One random sequence is compared with variants that share its first ``cut``
    tokens and differ at every later one; the logits before ``cut`` must agree, to
    a tolerance that suits the logits' dtype. A leak from position ``j`` into an
    earlier ``i`` shows at every cut in ``i < cut <= j``, so probing every cut
    catches any leak; above ``PROBE_CUTS`` cuts, 1, ``context_len - 1`` and random
    ones in between are probed, so a leak confined to positions at a power-of-two
    spacing (blocks that see each other, a mask off by one at some offsets) still
    shows. Also refuses a model whose vocabulary is smaller than its tokenizer's.

    Logits of -inf (ids a model masks out) are fine where both agree; NaN logits are refused.

    Raises:
        ScoringError: the model sees the future, returns logits of the wrong shape, or NaN.
        CheckpointError: the model has fewer output ids than the tokenizer.
    """
    vocab = checkpoint.tokenizer.vocab_size
    with torch.inference_mode():  # id 0 first: any model takes it, whatever its vocabulary
        logits = checkpoint.model(torch.zeros(2, context_len, dtype=torch.long, device=device))
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (2, context_len):
        raise ScoringError(
            f"the model maps ids of shape (2, {context_len}) to {tuple(logits.shape)}; "
            "it must return logits [B, T, V]"
        )
    if logits.shape[-1] < vocab:
        raise CheckpointError(
            f"the model's vocabulary ({logits.shape[-1]} logits) is smaller than its tokenizer's "
            f"({vocab} ids); the checkpoint pairs the wrong tokenizer with the model"
        )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (1, context_len), generator=generator)
    # Every later token changes: a shift in [1, vocab) never maps an id to itself.
    changed = (ids + torch.randint(1, vocab, ids.shape, generator=generator)) % vocab
    cuts = list(range(1, context_len))
    if len(cuts) > PROBE_CUTS:
        inner = torch.randperm(context_len - 3, generator=generator)[: PROBE_CUTS - 2] + 2
        cuts = sorted({1, context_len - 1, *inner.tolist()})
    with torch.inference_mode():
        reference = checkpoint.model(ids.to(device)).double()
        if bool(reference.isnan().any()):
            raise ScoringError("the model returns NaN logits; check its weights and --dtype")
        # Relative to the logits' size: float32 kernels may differ in the last bits, 16-bit more.
        relative = 1e-4 if logits.dtype in (torch.float32, torch.float64) else 3e-2
        finite = reference[reference.isfinite()]
        tolerance = relative * max(1.0, float(finite.abs().max()) if finite.numel() else 0.0)
        for first in range(0, len(cuts), PROBE_BATCH):
            batch = cuts[first : first + PROBE_BATCH]
            variants = ids.repeat(len(batch), 1)
            for row, cut in enumerate(batch):
                variants[row, cut:] = changed[0, cut:]
            logits = checkpoint.model(variants.to(device)).double()
            for row, cut in enumerate(batch):
                before, expected = logits[row, :cut], reference[0, :cut]
                # Equal infinities are no change (inf - inf would be NaN); any NaN is.
                difference = torch.where(before == expected, 0.0, (before - expected).abs())
                change = float(difference.max())
                if not change <= tolerance:
                    raise ScoringError(
                        f"the model is not causal: changing tokens {cut}.. changed the logits at "
                        f"earlier positions by up to {change:.3g} (tolerance {tolerance:.3g}); "
                        "it would see the future"
                    )


def padded_length(length: int, context_len: int) -> int:
    """The length a window of ``length`` tokens is padded to: a function of it alone.

    Example:
        >>> padded_length(33, 256), padded_length(33, 40)
        (64, 40)
    """
    return min(context_len, -(-length // PAD_MULTIPLE) * PAD_MULTIPLE)


def _check_lengths(
    checkpoint: Checkpoint, context_len: int | None, stride: int | None
) -> tuple[int, int]:
    context_len = checkpoint.context_len if context_len is None else context_len
    if context_len < 2:
        raise ScoringError(
            f"context {context_len} is too small: it must hold the prefix and a token (>= 2)"
        )
    if context_len > checkpoint.context_len:
        raise ScoringError(
            f"context {context_len} is larger than the model's context ({checkpoint.context_len})"
        )
    stride = max(1, context_len // 2) if stride is None else stride
    if not 1 <= stride <= context_len:
        raise ScoringError(f"stride {stride} must be between 1 and the context ({context_len})")
    return context_len, stride


@dataclass(eq=False)
class _Record:
    """One document on its way through the engine."""

    index: int  # position in the input
    document: Document
    seq: np.ndarray | None  # int32: the prefix token, then the document's tokens
    bytes: int  # the denominator: its tokens' bytes (or its text's, when allowed and inexact)
    tokens: int  # tokens scored (those of more than 0 bytes)
    inexact: tuple[int, int] | None  # (bytes of its tokens, bytes of its text) when they differ
    cached: DocumentScore | None
    sizes: np.ndarray | None = None  # each token's bytes, when attributing
    classes: np.ndarray | None = None  # each byte's class, when attributing
    token_nats: np.ndarray | None = None  # float32 nats of each token, filled window by window
    windows_left: int = 0
    window_nats: list[float] = field(default_factory=list)


class _Row(NamedTuple):
    record: _Record
    number: int  # the window's place in its document
    window: Window


def score_documents(
    checkpoint: Checkpoint,
    documents: Iterable[Document],
    *,
    stride: int | None = None,
    context_len: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_size: int | None = None,
    lookahead_tokens: int | None = None,
    device: str | torch.device = "cpu",
    allow_inexact_bytes: bool = False,
    cache: ScoreCache | None = None,
    attribution: bool = True,
    per_document_attribution: bool = False,
    progress: bool = True,
    progress_bytes: int | None = None,
) -> Scores:
    """Score every byte of every document once, on this process or across ``torchrun`` ranks.

    Args:
        checkpoint: the model and its tokenizer (:func:`bpbeval.checkpoint.load`).
        documents: all documents, streamed once; under a process group each rank
            takes every ``world_size``-th one, and every rank must pass the same stream.
            From a :class:`~bpbeval.data.Corpus`, a rank decodes only its own, and the
            progress bar's total is the corpus's size.
        stride: tokens scored per window after the first; default half the context.
        context_len: tokens per window, at most the model's; default the model's.
        batch_tokens: padded positions per forward pass (a window longer than this
            still goes alone).
        batch_size: at most this many windows per forward pass; default no cap.
        lookahead_tokens: positions of windows waiting to be batched; default
            ``LOOKAHEAD_BATCHES`` token budgets. Changes speed, never a result.
        device: where inputs go (the model is already there).
        allow_inexact_bytes: when the tokens' bytes differ from a document's UTF-8
            bytes, divide by the text's bytes instead of stopping.
        cache: per-document results to reuse and fill.
        attribution: also attribute each document's nats to its bytes' character classes
            and positions, summed over the corpus (``Scores.attribution``; ``None`` if off,
            or if the tokens do not cover some document's bytes exactly).
        per_document_attribution: keep each document's attribution too
            (``Scores.per_document_attribution``): 400 bytes a document on rank 0.
        progress: show a progress bar on rank 0.
        progress_bytes: the corpus's UTF-8 bytes, if known up front (the bar's total);
            default a ``Corpus``'s estimate.

    Raises:
        ScoringError: bad lengths or batch sizes, a non-causal model, or a tokenizer
            that is not byte-conservative on a document (without ``allow_inexact_bytes``).
        DataError: no documents.

    Example:
        >>> from bpbeval.checkpoint import Checkpoint
        >>> from bpbeval.gpt import GPT, GPTConfig
        >>> from bpbeval.tokenizer import train
        >>> tok = train(["abc"], vocab_size=265)
        >>> model = GPT(GPTConfig(vocab_size=265, context_len=8, n_embd=16))
        >>> ckpt = Checkpoint(model, tok, 8, "", "custom", "doctest")
        >>> scores = score_documents(ckpt, [Document("a", "héllo wörld")], progress=False)
        >>> scores.bytes, scores.tokens, scores.bits_per_byte > 0
        (13, 13, True)
    """
    context_len, stride = _check_lengths(checkpoint, context_len, stride)
    for name, value in (("batch tokens", batch_tokens), ("batch size", batch_size)):
        if value is not None and value < 1:
            raise ScoringError(f"{name} must be at least 1, got {value}")
    lookahead = LOOKAHEAD_BATCHES * batch_tokens if lookahead_tokens is None else lookahead_tokens
    device = torch.device(device)
    check_causal(checkpoint, context_len=context_len, device=device)

    tokenizer = checkpoint.tokenizer
    token_bytes = tokenizer.token_bytes().numpy().astype(np.int64)
    metric = BitsPerByte(tokenizer.token_bytes(device), validate_args=False)
    world_size = distributed.world_size()
    results = _Results(
        world_size=world_size,
        attribution=attribution,
        per_document=attribution and per_document_attribution,
    )
    show = progress and distributed.rank() == 0
    if show and progress_bytes is None and isinstance(documents, Corpus):
        progress_bytes = documents.size_bytes()
    bar = _Progress(show, progress_bytes)
    inexact: tuple[int, str, int, int] | None = None  # this rank's first, by input position
    infinite: tuple[int, str, float] | None = None  # the same, for nats that are not finite

    def finished(record: _Record) -> None:
        nonlocal infinite
        score = record.cached
        if score is None:
            nats = 0.0
            for value in record.window_nats:  # in window order: the same sum for any batching
                nats += value
            if not math.isfinite(nats):  # neither kept nor cached: the run fails at the end
                found = (record.index, record.document.id, nats)
                infinite = found if infinite is None else min(infinite, found)
                return
            score = DocumentScore(
                record.document.domain,
                nats,
                record.bytes,
                record.tokens,
                _attribute(record) if attribution else None,
            )
            if cache is not None:
                cache.put(record.document, score)
        results.add(record.index, score, fresh=record.cached is None)
        bar.finished(record)

    def exact_so_far(records: Iterable[_Record]) -> Iterator[_Record]:
        nonlocal inexact
        for record in records:
            if record.inexact is not None:
                found = (record.index, record.document.id, *record.inexact)
                inexact = found if inexact is None else min(inexact, found)
                if not allow_inexact_bytes:
                    return  # stop reading; the run fails once every rank is done
            yield record

    encoded = _Ahead(
        _encode(
            documents.shard(distributed.rank(), distributed.world_size())
            if isinstance(documents, Corpus)
            else distributed.shard_stream(documents),
            tokenizer,
            token_bytes,
            cache,
            text_bytes=allow_inexact_bytes,
            attribution=attribution,
        ),
        ENCODE_AHEAD,
    )
    reducer = _Reducer(finished)
    try:
        batches = _batches(
            exact_so_far(record for chunk in encoded for record in chunk),
            context_len=context_len,
            stride=stride,
            budget=batch_tokens,
            max_rows=batch_size,
            lookahead=lookahead,
            on_windowless=finished,
        )
        for length, rows in batches:
            window_nats, token_nats, per_row = _forward(
                checkpoint.model,
                rows,
                length,
                bos=tokenizer.bos_id,
                token_bytes=token_bytes,
                device=device,
                metric=metric,
                per_token=attribution,
            )
            reducer.add(window_nats, token_nats, per_row, rows)
            bar.scored(sum(end - start for _, _, (_, start, end) in rows))
        reducer.flush()
        bar.done()
    finally:
        encoded.close()
        bar.close()
    broken = [problem for problem in distributed.all_gather(infinite) if problem is not None]
    if broken:
        _, doc_id, nats = min(broken)
        raise ScoringError(
            f"the model's loss on document {doc_id} is {nats} nats: it gives some token "
            "probability 0 (or NaN logits); check its weights and --dtype"
        )
    found = [problem for problem in distributed.all_gather(inexact) if problem is not None]
    if found and not allow_inexact_bytes:
        _, doc_id, from_tokens, from_text = min(found)
        raise ScoringError(
            f"the tokenizer is not byte-conservative on document {doc_id}: its tokens stand for "
            f"{from_tokens} bytes but its text has {from_text} UTF-8 bytes (difference "
            f"{from_tokens - from_text:+d}); pass --allow-inexact-bytes (allow_inexact_bytes=True) "
            "to divide by the text's bytes"
        )
    return _gather(results, metric, bytes_from_text=bool(found))


def _attribute(record: _Record) -> Attribution | None:
    """A freshly scored document's nats by byte class and position (None where its tokens do
    not cover its bytes exactly: attribution lines tokens up with the text)."""
    if record.sizes is None or record.inexact is not None:
        return None
    scored = record.sizes > 0
    token_nats = np.zeros(len(record.sizes)) if record.token_nats is None else record.token_nats
    return attribute(
        record.document.text, token_nats[scored], record.sizes[scored], classes=record.classes
    )


# ---- encode -------------------------------------------------------------------------------


def _chunks(documents: Iterable[tuple[int, Document]]) -> Iterator[list[tuple[int, Document]]]:
    chunk: list[tuple[int, Document]] = []
    size = 0
    for item in documents:
        chunk.append(item)
        size += len(item[1].text)
        if size >= ENCODE_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(
    documents: Iterable[tuple[int, Document]],
    tokenizer: TextTokenizer,
    token_bytes: np.ndarray,
    cache: ScoreCache | None,
    *,
    text_bytes: bool,
    attribution: bool,
) -> Iterator[list[_Record]]:
    """Records of documents, a chunk at a time. Cached documents are encoded too, so that
    the byte check (and so ``bytes_from_text``) is the same on a resumed run. With
    ``attribution``, the bytes' classes are found here too, off the model's thread."""
    for chunk in _chunks(documents):
        encoded = tokenizer.encode_batch([document.text for _, document in chunk])
        records = []
        for (index, document), ids in zip(chunk, encoded, strict=True):
            ids = np.asarray(ids, dtype=np.int64)
            sizes = token_bytes[ids]
            from_tokens, from_text = int(sizes.sum()), len(document.text.encode("utf-8"))
            cached = cache.get(document) if cache is not None else None
            seq = None
            if cached is None:
                seq = np.empty(len(ids) + 1, dtype=np.int32)
                seq[0], seq[1:] = tokenizer.bos_id, ids
            exact = from_tokens == from_text
            attributing = attribution and cached is None and exact
            records.append(
                _Record(
                    index,
                    document,
                    seq,
                    from_text if text_bytes else from_tokens,
                    int(np.count_nonzero(sizes)),
                    None if exact else (from_tokens, from_text),
                    cached,
                    sizes if attributing else None,
                    byte_classes(document.text) if attributing else None,
                )
            )
        yield records


class _Ahead(Generic[T]):
    """Runs an iterator in a background thread, at most ``depth`` items ahead of the caller.

    An exception in the thread is raised in the caller; ``close`` stops the thread.
    """

    _END = object()

    def __init__(self, items: Iterator[T], depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as e:  # re-raised in the caller
            self._put(_Failed(e))
            return
        self._put(self._END)

    def __iter__(self) -> _Ahead[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(self._END)  # a later next() ends too
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _Failed(NamedTuple):
    error: BaseException


# ---- window and batch ---------------------------------------------------------------------


def _batches(
    records: Iterable[_Record],
    *,
    context_len: int,
    stride: int,
    budget: int,
    max_rows: int | None,
    lookahead: int,
    on_windowless: Callable[[_Record], None],
) -> Iterator[tuple[int, list[_Row]]]:
    """``(padded length, rows)`` batches of at most ``budget`` positions (and ``max_rows``).

    Windows wait in one queue per padded length; a full batch leaves as soon as it is
    full, and when more than ``lookahead`` positions wait, the fullest queue leaves as a
    partial batch. What leaves together never changes a window's nats.
    """
    waiting: dict[int, deque[_Row]] = {}
    buffered = 0

    def rows_per_batch(length: int) -> int:
        rows = max(1, budget // length)
        return rows if max_rows is None else min(rows, max_rows)

    def take(length: int) -> tuple[int, list[_Row]]:
        nonlocal buffered
        rows = waiting[length]
        batch = [rows.popleft() for _ in range(min(len(rows), rows_per_batch(length)))]
        if not rows:
            del waiting[length]
        buffered -= length * len(batch)
        return length, batch

    for record in records:
        if record.seq is None:
            on_windowless(record)
            continue
        windows = rolling_windows(len(record.seq) - 1, context_len=context_len, stride=stride)
        if not windows:
            on_windowless(record)
            continue
        record.windows_left = len(windows)
        record.window_nats = [0.0] * len(windows)
        if record.sizes is not None:
            record.token_nats = np.zeros(len(record.sizes), dtype=np.float32)
        for number, window in enumerate(windows):
            length = padded_length(window.end - window.begin, context_len)
            waiting.setdefault(length, deque()).append(_Row(record, number, window))
            buffered += length
            if len(waiting[length]) >= rows_per_batch(length):
                yield take(length)
        while buffered > lookahead:
            yield take(max(waiting, key=lambda n: n * len(waiting[n])))
    for length in sorted(waiting, reverse=True):
        while length in waiting:
            yield take(length)


# ---- forward ------------------------------------------------------------------------------


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()  # so that the copy is asynchronous
    return tensor.to(device, non_blocking=True)


def _forward(
    model: Callable[[torch.Tensor], torch.Tensor],
    rows: list[_Row],
    length: int,
    *,
    bos: int,
    token_bytes: np.ndarray,
    device: torch.device,
    metric: BitsPerByte,
    per_token: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """Float64 nats of each row's scored tokens, on the device (no sync); with ``per_token``
    also each scored token's float32 nats, row after row, and how many each row has."""
    ids = np.full((len(rows), length), bos, dtype=np.int64)  # padding: never scored
    target = np.full((len(rows), length), IGNORE, dtype=np.int64)
    for row, (record, _, (begin, start, end)) in enumerate(rows):
        assert record.seq is not None
        ids[row, : end - begin] = record.seq[begin:end]
        target[row, start - begin : end - begin] = record.seq[start + 1 : end + 1]
    # Tokens of 0 bytes (specials) are not scored, as BitsPerByte does not score them.
    target[(target >= 0) & (token_bytes[np.maximum(target, 0)] == 0)] = IGNORE
    positions = np.flatnonzero(target >= 0)
    target_t = _to_device(target, device)
    positions_t = _to_device(positions, device)
    token = torch.zeros(target.size, dtype=torch.float32, device=device)
    with torch.inference_mode():
        logits = model(_to_device(ids, device))
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_target = target_t.view(-1)
        # Losses of the scored positions only: with the default stride that halves the
        # softmax work. Chunks bound the float32 upcast of the logits (token_nats's rule).
        for first in range(0, len(positions), DEFAULT_CHUNK_SIZE):
            chunk = positions_t[first : first + DEFAULT_CHUNK_SIZE]
            token[chunk] = token_nats(flat_logits[chunk], flat_target[chunk])
    per_row = np.count_nonzero(target >= 0, axis=1)
    scored = token[positions_t] if per_token else None
    token = token.view(target.shape)
    metric.update(token, target_t)
    return token.sum(dim=1, dtype=torch.float64), scored, per_row


# ---- reduce -------------------------------------------------------------------------------


class _Reducer:
    """Per-window nats, kept on the device until documents finish; then one copy to the host.

    Not a sync per forward pass: finished documents wait for ``SYNC_EVERY`` passes.
    """

    def __init__(self, finished: Callable[[_Record], None]) -> None:
        self._finished = finished
        self._sums: list[torch.Tensor] = []
        self._tokens: list[torch.Tensor] = []
        self._per_row: list[np.ndarray] = []
        self._rows: list[_Row] = []
        self._done: list[_Record] = []

    def add(
        self,
        window_nats: torch.Tensor,
        token_nats: torch.Tensor | None,
        per_row: np.ndarray,
        rows: list[_Row],
    ) -> None:
        self._sums.append(window_nats)
        if token_nats is not None:
            self._tokens.append(token_nats)
            self._per_row.append(per_row)
        self._rows += rows
        for row in rows:
            row.record.windows_left -= 1
            if row.record.windows_left == 0:
                row.record.seq = None  # every window is batched: free the tokens now
                self._done.append(row.record)
        if self._done and len(self._sums) >= SYNC_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._sums:
            values = torch.cat(self._sums).tolist()  # the one host-device sync
            for (record, number, _), value in zip(self._rows, values, strict=True):
                record.window_nats[number] = value
        if self._tokens:
            tokens = torch.cat(self._tokens).cpu().numpy()  # computed by now: no wait
            ends = np.cumsum(np.concatenate(self._per_row))
            for (record, _, (_, start, end)), stop, count in zip(
                self._rows, ends, np.concatenate(self._per_row), strict=True
            ):
                if record.token_nats is not None and record.sizes is not None:
                    window = record.token_nats[start:end]  # a view: filled in place
                    window[record.sizes[start:end] > 0] = tokens[stop - count : stop]
        done = self._done
        self._sums, self._tokens, self._per_row, self._rows, self._done = [], [], [], [], []
        for record in done:
            self._finished(record)


# ---- results ------------------------------------------------------------------------------


_PARTS = len(CLASSES) + len(POSITIONS)
# Rows per block of a result column: columns grow a block at a time, never by copying.
RESULT_BLOCK = 1 << 16


class _Column:
    """A column filled by row, in any order (documents finish out of order), in blocks."""

    def __init__(self, dtype: type, width: int | None = None) -> None:
        self._dtype = dtype
        self._shape = (RESULT_BLOCK,) if width is None else (RESULT_BLOCK, width)
        self._blocks: list[np.ndarray] = []

    def __setitem__(self, row: int, value: object) -> None:
        block, offset = divmod(row, RESULT_BLOCK)
        while len(self._blocks) <= block:
            self._blocks.append(np.zeros(self._shape, dtype=self._dtype))
        self._blocks[block][offset] = value

    def take(self, rows: int) -> np.ndarray:
        """The first ``rows`` rows as one array; the column is left empty."""
        blocks, self._blocks = self._blocks, []
        empty = np.zeros((0, *self._shape[1:]), dtype=self._dtype)
        return np.concatenate([empty, *blocks])[:rows]


class _Results:
    """This rank's per-document results as columns, row ``k`` its ``k``-th document.

    About 33 bytes a document, no ids (rows are positions) and no Python object per
    document; attribution adds the corpus's sums (~40 MB, whatever the corpus), and its
    per-document sums only where asked for.
    """

    def __init__(self, *, world_size: int, attribution: bool, per_document: bool) -> None:
        self.world_size = world_size
        self.rows = 0
        self.nats = _Column(np.float64)
        self.bytes = _Column(np.int64)
        self.tokens = _Column(np.int64)
        self.fresh = _Column(np.int8)  # scored now, not served by the cache
        self.domain = _Column(np.int32)  # into labels; -1: no domain
        self.labels: dict[str, int] = {}
        self.attributed = attribution  # every document so far has its attribution
        self.attribution = AttributionSums() if attribution else None
        self.part_nats = _Column(np.float64, _PARTS) if per_document else None
        self.part_bytes = _Column(np.int64, _PARTS) if per_document else None

    def add(self, index: int, score: DocumentScore, *, fresh: bool) -> None:
        """Keep the document at input position ``index``, one of this rank's."""
        row = index // self.world_size  # this rank's k-th document: sharding is round-robin
        self.rows = max(self.rows, row + 1)
        self.nats[row], self.bytes[row], self.tokens[row] = score.nats, score.bytes, score.tokens
        self.fresh[row] = fresh
        domain = score.domain
        self.domain[row] = (
            -1 if domain is None else self.labels.setdefault(domain, len(self.labels))
        )
        parts = score.attribution
        self.attributed &= parts is not None
        if self.attribution is not None and parts is not None:
            self.attribution.add(index, parts)
        if self.part_nats is not None and self.part_bytes is not None and parts is not None:
            self.part_nats[row], self.part_bytes[row] = parts.parts()


def _gather(results: _Results, metric: BitsPerByte, *, bytes_from_text: bool) -> Scores:
    """Every rank's results on rank 0 in input order, the totals on every rank.

    A column at a time, so rank 0 never holds more than one column twice.
    """
    checked = metric.compute_all()  # synchronises the freshly scored totals across ranks
    # One label table for every rank, so that codes mean the same wherever they come from.
    labels = sorted(set().union(*distributed.all_gather(list(results.labels))))
    code = {label: i for i, label in enumerate(labels)}
    recode = np.array([code[label] for label in results.labels] + [-1], dtype=np.int32)
    rows = results.rows
    domain_codes = distributed.gather_shards(recode[results.domain.take(rows)])
    nats, n_bytes, tokens, fresh = (
        distributed.gather_shards(column.take(rows))
        for column in (results.nats, results.bytes, results.tokens, results.fresh)
    )
    corpus = per_document = None
    if results.attribution is not None and all(distributed.all_gather(results.attributed)):
        sums = results.attribution
        arrays = [distributed.sum_to_rank0(array) for array in sums.arrays()]
        partials = distributed.gather_to_rank0(sums.partials())
        if partials is not None:
            corpus = AttributionSums.combine(arrays, partials)  # type: ignore[arg-type]
        if results.part_nats is not None and results.part_bytes is not None:
            part_nats = distributed.gather_shards(results.part_nats.take(rows))
            part_bytes = distributed.gather_shards(results.part_bytes.take(rows))
            if part_nats is not None and part_bytes is not None:
                per_document = Attributions.from_parts(part_nats, part_bytes)
    totals = None
    documents = DocumentScores.from_rows([])
    if nats is not None and n_bytes is not None and tokens is not None and fresh is not None:
        assert domain_codes is not None
        # One string object per label, shared by its documents; code -1 picks the None.
        domains = np.array([*labels, None], dtype=object)[domain_codes]
        documents = DocumentScores(domains, nats, n_bytes, tokens)
        scored = slice(None) if fresh.all() else fresh.astype(bool)  # no copies without a cache
        _check_metric(checked.nats.item(), checked.tokens.item(), nats[scored], tokens[scored])
        totals = (math.fsum(nats), int(n_bytes.sum()), int(tokens.sum()), len(nats))
    nats_total, bytes_total, tokens_total, count = distributed.broadcast_from_rank0(totals)
    if count == 0:
        raise DataError("no documents to score")
    return Scores(
        documents,
        nats_total,
        bytes_total,
        tokens_total,
        bytes_from_text=bytes_from_text,
        attribution=corpus,
        per_document_attribution=per_document,
    )


def _check_metric(nats: float, tokens: int, doc_nats: np.ndarray, doc_tokens: np.ndarray) -> None:
    """The metric's synced totals must agree with the per-document sums of the same tokens."""
    doc_sum, token_sum = math.fsum(doc_nats), int(doc_tokens.sum())
    if tokens != token_sum or abs(nats - doc_sum) > 1e-9 * max(1.0, doc_sum):
        raise RuntimeError(
            f"bpbeval bug: BitsPerByte counted {nats} nats over {tokens} tokens but the documents "
            f"add up to {doc_sum} over {token_sum}"
        )


# ---- progress -----------------------------------------------------------------------------


class _Progress:
    """One bar over the UTF-8 bytes of finished documents, with tokens/s and documents done.

    The bar appears with the first finished document: an error in reading the corpus
    leaves no empty bar above it. Under ``torchrun`` rank 0 shows its own share: the
    total is divided by the world size.
    """

    def __init__(self, show: bool, total_bytes: int | None) -> None:
        self._show = show
        self._total = None if total_bytes is None else -(-total_bytes // distributed.world_size())
        self._bar: tqdm | None = None
        self._documents = self._tokens = 0
        self._start = time.monotonic()

    def scored(self, tokens: int) -> None:
        self._tokens += tokens

    def finished(self, record: _Record) -> None:
        if not self._show:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=self._total, unit="B", unit_scale=True, desc="scoring", dynamic_ncols=True
            )
        self._documents += 1
        rate = self._tokens / max(1e-9, time.monotonic() - self._start)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s, docs {self._documents:,}", refresh=False)
        self._bar.update(len(record.document.text.encode("utf-8")))

    def done(self) -> None:
        if self._bar is not None:
            self._bar.total = self._bar.n  # the total was an estimate; every document is in

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
