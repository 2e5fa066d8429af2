"""Score documents: every byte exactly once, the same answer for any batch or world size.

Each document is encoded without special tokens and scored after the prefix
token (BOS, else EOS), which is itself never scored. A document longer than the
context is scored in rolling windows (:func:`rolling_windows`): each window scores
the next ``stride`` tokens with as much preceding context as fits.

Determinism. Logits of the same window differ in the last float32 bits when the
padded length of its batch changes, so each window's padded length is a function
of its own length only (:func:`padded_length`) and
batches hold windows of one padded length. Per-token nats are then the same for
any batch size and bucket order; each document's nats are summed in float64 and
the totals with ``math.fsum``, which is exactly rounded and so independent of the
order documents come back from the ranks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from bpbeval import distributed
from bpbeval.checkpoint import Checkpoint
from bpbeval.data import Document
from bpbeval.errors import CheckpointError, DataError, ScoringError
from bpbeval.losses import token_nats
from bpbeval.metric import BitsPerByte

# Windows are right-padded to a multiple of this many positions (or the context).
PAD_MULTIPLE = 32
# Target id of positions that are not scored (context, padding, 0-byte tokens): any id
# below 0 is ignored by the loss helpers and the metric alike.
IGNORE = -100
# The causality probe checks at most this many cut points, this many sequences per forward pass.
PROBE_CUTS = 16
PROBE_BATCH = 4


@dataclass(frozen=True)
class DocumentScore:
    """One document's sums: nats over its scored tokens, its UTF-8 bytes, its tokens."""

    id: str
    domain: str | None
    nats: float
    bytes: int
    tokens: int


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Scores:
    """The result of :func:`score_documents`.

    Rank 0 holds every document in input order; other ranks hold an empty list
    and the same totals.

    Attributes:
        documents: per-document sums, in input order.
        nats: total nats (``math.fsum`` of the documents').
        bytes: total UTF-8 bytes scored.
        tokens: total tokens scored.
        bytes_from_text: True when the tokenizer was not byte-conservative on some
            document and ``allow_inexact_bytes`` made its text's bytes the denominator.
    """

    documents: list[DocumentScore]
    nats: float
    bytes: int
    tokens: int
    bytes_from_text: bool

    @property
    def bits_per_byte(self) -> float:
        return _ratio(self.nats, math.log(2) * self.bytes)

    @property
    def bits_per_token(self) -> float:
        return _ratio(self.nats, math.log(2) * self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return _ratio(self.bytes, self.tokens)


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

    Raises:
        ScoringError: the model sees the future, or returns logits of the wrong shape.
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
        # Relative to the logits' size: float32 kernels may differ in the last bits, 16-bit more.
        relative = 1e-4 if logits.dtype in (torch.float32, torch.float64) else 3e-2
        tolerance = relative * max(1.0, float(reference.abs().max()))
        for first in range(0, len(cuts), PROBE_BATCH):
            batch = cuts[first : first + PROBE_BATCH]
            variants = ids.repeat(len(batch), 1)
            for row, cut in enumerate(batch):
                variants[row, cut:] = changed[0, cut:]
            logits = checkpoint.model(variants.to(device)).double()
            for row, cut in enumerate(batch):
                change = float((logits[row, :cut] - reference[0, :cut]).abs().max())
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


def score_documents(
    checkpoint: Checkpoint,
    documents: Sequence[Document],
    *,
    stride: int | None = None,
    context_len: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    allow_inexact_bytes: bool = False,
    cache: ScoreCache | None = None,
    progress: bool = True,
) -> Scores:
    """Score every byte of every document once, on this process or across ``torchrun`` ranks.

    Args:
        checkpoint: the model and its tokenizer (:func:`bpbeval.checkpoint.load`).
        documents: all documents; under a process group each rank takes every
            ``world_size``-th one, and every rank must pass the same list.
        stride: tokens scored per window after the first; default half the context.
        context_len: tokens per window, at most the model's; default the model's.
        batch_size: windows per forward pass.
        device: where inputs go (the model is already there).
        allow_inexact_bytes: when the tokens' bytes differ from a document's UTF-8
            bytes, divide by the text's bytes instead of stopping.
        cache: per-document results to reuse and fill.
        progress: show a progress bar on rank 0.

    Raises:
        ScoringError: bad lengths, a non-causal model, or a tokenizer that is not
            byte-conservative on a document (without ``allow_inexact_bytes``).

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
    if batch_size < 1:
        raise ScoringError(f"batch size must be at least 1, got {batch_size}")
    if not documents:
        raise DataError("no documents to score")
    device = torch.device(device)
    check_causal(checkpoint, context_len=context_len, device=device)

    tokenizer = checkpoint.tokenizer
    token_bytes = tokenizer.token_bytes().numpy().astype(np.int64)
    mine = distributed.shard(documents)
    results: dict[int, DocumentScore] = {}
    for index, document in mine:
        hit = cache.get(document) if cache is not None else None
        if hit is not None:
            results[index] = hit

    # Cached documents are encoded too, so that the byte check (and so ``bytes_from_text``)
    # is the same on a resumed run as on an uninterrupted one.
    all_encoded = tokenizer.encode_batch([document.text for _, document in mine])
    all_doc_bytes = [int(token_bytes[ids].sum()) for ids in all_encoded]
    all_text_bytes = [len(document.text.encode("utf-8")) for _, document in mine]
    inexact = next(
        (
            (index, document.id, all_doc_bytes[i], all_text_bytes[i])
            for i, (index, document) in enumerate(mine)
            if all_doc_bytes[i] != all_text_bytes[i]
        ),
        None,
    )
    unscored = [i for i, (index, _) in enumerate(mine) if index not in results]
    todo = [mine[i] for i in unscored]
    encoded = [np.asarray(all_encoded[i], dtype=np.int64) for i in unscored]
    # Targets are the tokens with 0-byte ids (specials) ignored, as BitsPerByte ignores them.
    targets = [np.where(token_bytes[ids] > 0, ids, IGNORE) for ids in encoded]
    doc_bytes = [all_doc_bytes[i] for i in unscored]
    text_bytes = [all_text_bytes[i] for i in unscored]
    found = [problem for problem in distributed.all_gather(inexact) if problem is not None]
    if found and not allow_inexact_bytes:
        _, doc_id, from_tokens, from_text = min(found)
        raise ScoringError(
            f"the tokenizer is not byte-conservative on document {doc_id}: its tokens stand for "
            f"{from_tokens} bytes but its text has {from_text} UTF-8 bytes (difference "
            f"{from_tokens - from_text:+d}); pass --allow-inexact-bytes (allow_inexact_bytes=True) "
            "to divide by the text's bytes"
        )

    metric = BitsPerByte(tokenizer.token_bytes(device), validate_args=False)
    show = progress and distributed.rank() == 0

    def finished(position: int, nats: float) -> None:
        index, document = todo[position]
        score = DocumentScore(
            document.id,
            document.domain,
            nats,
            text_bytes[position] if allow_inexact_bytes else doc_bytes[position],
            int((targets[position] >= 0).sum()),
        )
        results[index] = score
        if cache is not None:
            cache.put(document, score)

    nats = _score(
        checkpoint,
        encoded,
        targets,
        context_len=context_len,
        stride=stride,
        batch_size=batch_size,
        device=device,
        metric=metric,
        on_finished=finished if cache is not None else None,
        show=show,
    )
    for position, value in enumerate(nats.tolist()):
        if todo[position][0] not in results:
            finished(position, value)
    checked = metric.compute_all()  # synchronises the freshly scored totals across ranks
    fresh = {index for index, _ in todo}
    gathered = distributed.gather_to_rank0([(i, s, i in fresh) for i, s in results.items()])
    totals = None
    if gathered is not None:
        ordered = sorted(item for part in gathered for item in part)
        fresh_scores = [score for _, score, new in ordered if new]
        _check_metric(checked.nats.item(), checked.tokens.item(), fresh_scores)
        docs = [score for _, score, _ in ordered]
        totals = (
            math.fsum(s.nats for s in docs),
            sum(s.bytes for s in docs),
            sum(s.tokens for s in docs),
        )
    nats_total, bytes_total, tokens_total = distributed.broadcast_from_rank0(totals)
    return Scores(
        docs if gathered is not None else [],
        nats_total,
        bytes_total,
        tokens_total,
        bytes_from_text=bool(found),
    )


def _check_metric(nats: float, tokens: int, fresh: list[DocumentScore]) -> None:
    """The metric's synced totals must agree with the per-document sums of the same tokens."""
    doc_nats, doc_tokens = math.fsum(s.nats for s in fresh), sum(s.tokens for s in fresh)
    if tokens != doc_tokens or abs(nats - doc_nats) > 1e-9 * max(1.0, doc_nats):
        raise RuntimeError(
            f"bpbeval bug: BitsPerByte counted {nats} nats over {tokens} tokens but the documents "
            f"add up to {doc_nats} over {doc_tokens}"
        )


def _score(
    checkpoint: Checkpoint,
    encoded: list[np.ndarray],
    targets: list[np.ndarray],
    *,
    context_len: int,
    stride: int,
    batch_size: int,
    device: torch.device,
    metric: BitsPerByte,
    on_finished: Callable[[int, float], None] | None,
    show: bool,
) -> torch.Tensor:
    """Float64 nats per document, from windows batched by padded length (longest first)."""
    bos = checkpoint.tokenizer.bos_id
    buckets: dict[int, list[tuple[int, Window]]] = defaultdict(list)
    remaining = [0] * len(targets)
    for position, ids in enumerate(encoded):
        for window in rolling_windows(len(ids), context_len=context_len, stride=stride):
            buckets[padded_length(window.end - window.begin, context_len)].append(
                (position, window)
            )
            remaining[position] += 1
    inputs = [np.concatenate(([bos], ids)) for ids in encoded]
    nats = torch.zeros(len(targets), dtype=torch.float64, device=device)
    bar = tqdm(
        total=sum(int((ids >= 0).sum()) for ids in targets),
        unit="tok",
        unit_scale=True,
        disable=not show or not targets,  # nothing to score: every document came from a cache
        desc="scoring",
        dynamic_ncols=True,
    )
    done = sum(count == 0 for count in remaining)
    for length in sorted(buckets, reverse=True):
        windows = buckets[length]
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            ids = np.full((len(batch), length), bos, dtype=np.int64)
            target = np.full((len(batch), length), IGNORE, dtype=np.int64)
            for row, (position, (begin, start, end)) in enumerate(batch):
                ids[row, : end - begin] = inputs[position][begin:end]
                target[row, start - begin : end - begin] = targets[position][start:end]
            target_t = torch.from_numpy(target).to(device, non_blocking=True)
            token = torch.zeros(target_t.shape, dtype=torch.float32, device=device)
            with torch.inference_mode():
                logits = checkpoint.model(torch.from_numpy(ids).to(device, non_blocking=True))
                # Losses of the scored positions only: a contiguous slice of each row. With
                # the default stride that halves the softmax work, and changes no value.
                for row, (_, (begin, start, end)) in enumerate(batch):
                    scored = slice(start - begin, end - begin)
                    token[row, scored] = token_nats(logits[row, scored], target_t[row, scored])
            metric.update(token, target_t)
            rows = torch.tensor([position for position, _ in batch], device=device)
            nats.index_add_(0, rows, token.sum(dim=1, dtype=torch.float64))
            finished = []
            for position, _ in batch:
                remaining[position] -= 1
                if remaining[position] == 0:
                    finished.append(position)
            done += len(finished)
            if on_finished is not None and finished:
                for position, value in zip(finished, nats[finished].tolist(), strict=True):
                    on_finished(position, value)
            bar.update(int((target >= 0).sum()))
            bar.set_postfix_str(f"docs {done}/{len(targets)}", refresh=False)
    bar.close()
    return nats
