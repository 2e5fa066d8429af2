"""Scoring: windows, exact bytes, brute-force equality, determinism, refusals."""

from __future__ import annotations

import math
import pydoc_data.topics
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bpbeval.checkpoint import Checkpoint, load
from bpbeval.data import Document
from bpbeval.errors import CheckpointError, DataError, ScoringError
from bpbeval.scoring import DocumentScore, rolling_windows, score_documents
from tests.test_bruteforce import brute_force_token_nats


@given(st.integers(0, 200), st.integers(2, 40), st.data())
def test_windows_score_every_token_once_with_all_the_context_that_fits(n, context_len, data):
    stride = data.draw(st.integers(1, context_len))
    windows = rolling_windows(n, context_len=context_len, stride=stride)
    scored = [i for w in windows for i in range(w.start, w.end)]
    assert scored == list(range(n))
    for w in windows:
        assert w.end - w.begin == min(context_len, w.end)  # as full as the document allows
        assert w.begin <= w.start < w.end
        assert w.end - w.start <= (context_len if w.start == 0 else stride)


def brute_force_nats(model, bos_id: int, ids: list[int], context_len: int) -> float:
    """Each token scored on its own input: the prefix and as many preceding tokens as fit.

    Inputs of one length are stacked into one forward pass, which changes nothing
    for a causal model but saves time.
    """
    seq = [bos_id, *ids]
    by_length: dict[int, list[int]] = {}
    for i in range(len(ids)):
        by_length.setdefault(len(seq[max(0, i + 1 - context_len) : i + 1]), []).append(i)
    total = 0.0
    with torch.no_grad():
        for length, positions in by_length.items():
            inputs = torch.tensor([seq[i + 1 - length : i + 1] for i in positions])
            logits = model(inputs)
            logprobs = F.log_softmax(getattr(logits, "logits", logits)[:, -1].double(), dim=-1)
            total += math.fsum(float(-logprobs[row, ids[i]]) for row, i in enumerate(positions))
    return total


@pytest.fixture(scope="module")
def native(native_checkpoint):
    path, model = native_checkpoint
    return load(str(path)), model


@pytest.fixture(scope="module")
def hf(hf_checkpoint):
    path, model = hf_checkpoint
    return load(str(path)), model


@pytest.fixture(scope="module")
def byte_level(byte_tokenizer, make_gpt, context_len):
    model = make_gpt(byte_tokenizer.vocab_size, seed=2)
    return Checkpoint(model, byte_tokenizer, context_len, "byte", "custom", "test"), model


@pytest.mark.parametrize("which", ["native", "hf", "byte_level"])
def test_bpb_equals_brute_force_and_every_byte_is_scored_once(
    which, request, documents, context_len
):
    checkpoint, model = request.getfixturevalue(which)
    tokenizer = checkpoint.tokenizer
    scores = score_documents(checkpoint, documents, stride=1, batch_size=5, progress=False)
    # Row i is document i: each row holds exactly its document's bytes.
    assert [s.bytes for s in scores.documents] == [len(d.text.encode()) for d in documents]
    token_bytes = tokenizer.token_bytes()
    for doc, score, ids in zip(
        documents,
        scores.documents,
        tokenizer.encode_batch([d.text for d in documents]),
        strict=True,
    ):
        assert score.bytes == len(doc.text.encode("utf-8")) == int(token_bytes[ids].sum())
        assert score.tokens == len(ids)
        assert score.domain == doc.domain
        reference = brute_force_nats(model, tokenizer.bos_id, ids, context_len)
        assert score.nats == pytest.approx(reference, rel=1e-6, abs=1e-9)
    assert scores.bytes == sum(len(d.text.encode("utf-8")) for d in documents)
    assert scores.nats == pytest.approx(math.fsum(s.nats for s in scores.documents), rel=1e-15)
    assert scores.bits_per_byte == pytest.approx(scores.nats / math.log(2) / scores.bytes)
    assert scores.bytes_from_text is False


def test_windows_give_each_token_the_context_they_promise(native, documents, context_len):
    """At the default stride, a document's nats are those of its windows' positions."""
    checkpoint, model = native
    tokenizer = checkpoint.tokenizer
    stride = context_len // 2
    scores = score_documents(checkpoint, documents, progress=False)
    for doc, score in zip(documents, scores.documents, strict=True):
        ids = tokenizer.encode_batch([doc.text])[0]
        seq = [tokenizer.bos_id, *ids]
        reference = 0.0
        with torch.no_grad():
            for w in rolling_windows(len(ids), context_len=context_len, stride=stride):
                logprobs = F.log_softmax(
                    model(torch.tensor([seq[w.begin : w.end]]))[0].double(), -1
                )
                reference += sum(
                    float(-logprobs[i - w.begin, ids[i]]) for i in range(w.start, w.end)
                )
        assert score.nats == pytest.approx(reference, rel=1e-6)


def test_batch_size_does_not_change_the_answer(byte_level, documents):
    checkpoint, _ = byte_level
    runs = [
        score_documents(checkpoint, documents, batch_size=b, stride=3, progress=False)
        for b in (1, 3, 8)
    ]
    for other in runs[1:]:
        assert other.bits_per_byte == pytest.approx(runs[0].bits_per_byte, rel=1e-9)
        for a, b in zip(runs[0].documents, other.documents, strict=True):
            assert b.nats == pytest.approx(a.nats, rel=1e-9)
            assert (a.bytes, a.tokens) == (b.bytes, b.tokens)


class Leaky(torch.nn.Module):
    """Logits at position t favour the token at t + 1: a model that sees the future."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids):
        following = torch.roll(ids, -1, dims=1)
        return 20.0 * F.one_hot(following, self.vocab_size).float()


class LeaksSometimes(torch.nn.Module):
    """Causal but for one thing: position ``i`` also sees ``ids[peek(i)]``, some later token."""

    def __init__(self, vocab_size: int, peek) -> None:
        super().__init__()
        self.vocab_size, self.peek = vocab_size, peek

    def forward(self, ids):
        seen = torch.tensor([self.peek(i) for i in range(ids.shape[1])])
        return 20.0 * F.one_hot(ids[:, seen.clamp(max=ids.shape[1] - 1)], self.vocab_size).float()


def test_a_model_that_sees_the_future_is_refused(byte_tokenizer, documents, context_len):
    leaky = Leaky(byte_tokenizer.vocab_size)
    checkpoint = Checkpoint(leaky, byte_tokenizer, context_len, "", "custom", "t")
    with pytest.raises(ScoringError, match="not causal"):
        score_documents(checkpoint, documents, progress=False)


@pytest.mark.parametrize(
    ("peek", "context_len", "cut"),
    [
        (lambda i: i // 8 * 8 + 7, 16, 1),  # blocks of 8 see each other; not across their edges
        (lambda i: i + 1 if i == 3 else i, 16, 4),  # one position sees the next
        (lambda i: i + 1 if i == 4 else i, 16, 5),
        (lambda i: i // 8 * 8 + 7, 256, 1),  # a long context: the probe samples its cuts
        (lambda i: i + 1 if i == 254 else i, 256, 255),
    ],
)
def test_a_model_that_sees_the_future_at_some_positions_only_is_refused(
    byte_tokenizer, documents, peek, context_len, cut
):
    # Brute force: the first cut at which changing the later tokens moves an earlier logit.
    model = LeaksSometimes(byte_tokenizer.vocab_size, peek)
    leaks = [c for c in range(1, context_len) if any(c <= peek(i) for i in range(c))]
    assert leaks[0] == cut
    checkpoint = Checkpoint(model, byte_tokenizer, context_len, "", "custom", "t")
    with pytest.raises(ScoringError, match=f"changing tokens {cut}\\.\\. changed"):
        score_documents(checkpoint, documents, progress=False)
    # The same model without its leak passes the probe and scores.
    causal = LeaksSometimes(byte_tokenizer.vocab_size, lambda i: i)
    checkpoint = Checkpoint(causal, byte_tokenizer, context_len, "", "custom", "t")
    assert score_documents(checkpoint, documents[:1], progress=False).tokens > 0


def test_a_model_vocabulary_smaller_than_the_tokenizer_is_refused(
    bpe_tokenizer, documents, make_gpt, context_len
):
    model = make_gpt(bpe_tokenizer.vocab_size - 10)
    checkpoint = Checkpoint(model, bpe_tokenizer, context_len, "", "custom", "t")
    with pytest.raises(CheckpointError, match="smaller than its tokenizer"):
        score_documents(checkpoint, documents, progress=False)


class DropsAccents:
    """A tokenizer that is not byte-conservative: it encodes 'é' as 'e'."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.vocab_size, self.bos_id, self.hash = inner.vocab_size, inner.bos_id, "drops"
        self.token_bytes = inner.token_bytes

    def encode_batch(self, texts):
        return self.inner.encode_batch([t.replace("é", "e") for t in texts])


def test_bytes_must_be_conserved_unless_allowed(byte_level, documents):
    checkpoint, _ = byte_level
    checkpoint = replace(checkpoint, tokenizer=DropsAccents(checkpoint.tokenizer))
    bad = next(d for d in documents if "é" in d.text)
    missing = bad.text.count("é")
    with pytest.raises(ScoringError, match=f"document {bad.id}: .*difference -{missing}"):
        score_documents(checkpoint, documents, progress=False)
    scores = score_documents(checkpoint, documents, allow_inexact_bytes=True, progress=False)
    assert scores.bytes_from_text is True
    assert scores.bytes == sum(len(d.text.encode("utf-8")) for d in documents)
    # A resumed run that finds the inexact documents cached reports the same, and the same sums.
    cache = DictCache()
    inexact = [d for d in documents if "é" in d.text]
    score_documents(checkpoint, inexact, allow_inexact_bytes=True, cache=cache, progress=False)
    resumed = score_documents(
        checkpoint, documents, allow_inexact_bytes=True, cache=cache, progress=False
    )
    assert resumed == scores


def test_stride_and_context_are_checked(byte_level, documents, context_len):
    checkpoint, _ = byte_level
    for options, message in [
        ({"context_len": 1}, "too small"),
        ({"context_len": context_len + 1}, "larger than the model"),
        ({"stride": context_len + 1}, "stride"),
    ]:
        with pytest.raises(ScoringError, match=message):
            score_documents(checkpoint, documents, progress=False, **options)


class DictCache:
    def __init__(self) -> None:
        self.scores: dict[str, DocumentScore] = {}

    def get(self, document: Document) -> DocumentScore | None:
        return self.scores.get(document.id)

    def put(self, document: Document, score: DocumentScore) -> None:
        self.scores[document.id] = score


def test_a_cache_is_filled_then_reused(byte_level, documents):
    checkpoint, _ = byte_level
    cache = DictCache()
    first = score_documents(checkpoint, documents[:5], cache=cache, progress=False)
    assert sorted(cache.scores) == sorted(d.id for d in documents[:5])
    both = score_documents(checkpoint, documents, cache=cache, progress=False)
    fresh = score_documents(checkpoint, documents, progress=False)
    assert both.documents[:5] == first.documents
    assert both.bits_per_byte == pytest.approx(fresh.bits_per_byte, rel=1e-12)


@pytest.fixture(scope="module")
def mixed_documents(documents):
    """Short and long documents: windows of several padded lengths, documents of many windows."""
    topics = sorted(pydoc_data.topics.topics.values())[20:23]
    long = [Document(f"long{i}", text[:3000]) for i, text in enumerate(topics)]
    return [*documents, *long]


def per_document(scores, documents):
    return {
        d.id: (s.nats, s.bytes, s.tokens) for d, s in zip(documents, scores.documents, strict=True)
    }


def test_nats_are_bit_identical_for_any_token_budget_row_cap_lookahead_and_order(
    byte_level, mixed_documents
):
    checkpoint, _ = byte_level
    reference = score_documents(checkpoint, mixed_documents, stride=5, progress=False)
    shuffled = mixed_documents[::-1][1::2] + mixed_documents[::-1][0::2]
    for options, docs in [
        ({"batch_tokens": 1}, mixed_documents),  # one window per forward pass
        ({"batch_tokens": 40}, mixed_documents),
        ({"batch_tokens": 100_000}, mixed_documents),  # every window of a length at once
        ({"batch_tokens": 100_000, "batch_size": 3}, mixed_documents),
        ({"batch_tokens": 64, "lookahead_tokens": 0}, mixed_documents),  # no look-ahead
        ({"batch_tokens": 64, "lookahead_tokens": 10**9}, mixed_documents),  # the whole corpus
        ({"batch_tokens": 200}, shuffled),
    ]:
        scores = score_documents(checkpoint, docs, stride=5, progress=False, **options)
        assert per_document(scores, docs) == per_document(reference, mixed_documents), (
            options
        )  # exact, not approx
        assert [s.bytes for s in scores.documents] == [len(d.text.encode()) for d in docs]
        assert scores.nats == reference.nats  # fsum: exactly rounded, in any order


def test_documents_are_streamed_and_the_encoder_stays_ahead_by_a_bounded_amount(
    byte_level, mixed_documents, monkeypatch
):
    """A generator is read once, lazily: the encoder never runs more than its queue ahead."""
    import bpbeval.scoring as scoring

    checkpoint, _ = byte_level
    monkeypatch.setattr(scoring, "ENCODE_CHUNK_BYTES", 1)  # one document per chunk
    monkeypatch.setattr(scoring, "SYNC_EVERY", 1)
    read, lead = [], []
    done = 0

    class Counting:
        def get(self, document):
            return None

        def put(self, document, score):
            nonlocal done
            done += 1
            lead.append(len(read) - done)

    def stream():
        for document in mixed_documents:
            read.append(document.id)
            yield document

    scores = score_documents(
        checkpoint, stream(), stride=5, batch_tokens=16, lookahead_tokens=0, cache=Counting(),
        progress=False,
    )  # fmt: skip
    assert read == [d.id for d in mixed_documents]  # each once, in order
    assert len(scores.documents) == len(mixed_documents)
    # Read ahead of the scored: the queue, the chunk being encoded, the one being put, and
    # the documents whose windows are in flight; never the corpus.
    assert max(lead) <= scoring.ENCODE_AHEAD + 4 < len(mixed_documents)


def test_an_error_in_the_reader_is_raised_and_stops_the_encoder(byte_level, documents):
    checkpoint, _ = byte_level

    def broken():
        yield documents[0]
        raise DataError("row 1 is corrupt")

    with pytest.raises(DataError, match="row 1 is corrupt"):
        score_documents(checkpoint, broken(), progress=False)
    with pytest.raises(DataError, match="no documents"):
        score_documents(checkpoint, [], progress=False)


def test_batch_options_are_checked(byte_level, documents):
    checkpoint, _ = byte_level
    for options in ({"batch_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(ScoringError, match="at least 1"):
            score_documents(checkpoint, documents, progress=False, **options)


def test_a_bfloat16_model_is_scored_with_a_float32_log_softmax(byte_tokenizer, make_gpt):
    model = make_gpt(byte_tokenizer.vocab_size, seed=3).to(torch.bfloat16)
    checkpoint = Checkpoint(model, byte_tokenizer, 16, "", "custom", "t")
    document = Document("d", "naïve café, 12")  # one window: 15 tokens after the prefix
    ids = byte_tokenizer.encode_batch([document.text])[0]
    with torch.no_grad():
        logits = model(torch.tensor([[byte_tokenizer.bos_id, *ids[:-1]]]))[0]
    target = torch.tensor(ids)

    def nats(log_probs: torch.Tensor) -> float:
        return -math.fsum(log_probs[range(len(ids)), target].double().tolist())

    in_float32 = nats(F.log_softmax(logits.float(), dim=-1))
    in_bfloat16 = nats(F.log_softmax(logits, dim=-1))
    scored = score_documents(checkpoint, [document], progress=False).documents[0].nats
    assert scored == pytest.approx(in_float32, rel=1e-6)
    assert abs(in_bfloat16 - in_float32) > 1e-4 * in_float32  # the check can tell them apart


class Masked(torch.nn.Module):
    """A model that gives some ids logits of ``value`` (-inf: never predicted; NaN: broken)."""

    def __init__(self, inner: torch.nn.Module, ids: list[int], value: float) -> None:
        super().__init__()
        self.inner, self.ids, self.value = inner, ids, value

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.inner(ids).clone()
        logits[..., self.ids] = self.value
        return logits


def test_ids_masked_out_with_minus_infinity_are_scored_as_the_model_says(byte_level, documents):
    # Models mask ids they never predict (padding of the vocabulary) with -inf: the causality
    # probe must not read inf - inf as a change, nor take an infinite tolerance.
    checkpoint, model = byte_level
    tokenizer = checkpoint.tokenizer
    used = {i for ids in tokenizer.encode_batch([d.text for d in documents]) for i in ids}
    unused = sorted(set(range(256)) - used)[:8]
    masked = Masked(model, unused, -math.inf)
    scores = score_documents(replace(checkpoint, model=masked), documents, stride=4, progress=False)
    for doc, score in zip(documents, scores.documents, strict=True):
        ids = tokenizer.encode_batch([doc.text])[0]
        nats = brute_force_token_nats(masked, tokenizer.bos_id, ids, checkpoint.context_len, 4)
        assert score.nats == pytest.approx(math.fsum(nats), rel=1e-6, abs=1e-9)
    # The probe still sees a leak behind the mask.
    leaky = Masked(Leaky(tokenizer.vocab_size), unused, -math.inf)
    with pytest.raises(ScoringError, match="not causal"):
        score_documents(replace(checkpoint, model=leaky), documents, progress=False)


def test_a_model_that_gives_a_token_probability_0_or_nan_is_refused(byte_level, documents):
    checkpoint, model = byte_level
    tokenizer = checkpoint.tokenizer
    # Every document's bytes with an "e" in them: the first such document is named.
    e = tokenizer.encode_batch(["e"])[0]
    first = next(d.id for d in documents if "e" in d.text)
    never_e = replace(checkpoint, model=Masked(model, e, -math.inf))
    with pytest.raises(ScoringError, match=f"loss on document {first} is inf nats"):
        score_documents(never_e, documents, progress=False)
    cache = DictCache()
    with pytest.raises(ScoringError):
        score_documents(never_e, documents, cache=cache, progress=False)
    assert all(math.isfinite(score.nats) for score in cache.scores.values())  # none cached
    nan = replace(checkpoint, model=Masked(model, e, math.nan))
    with pytest.raises(ScoringError, match="the model returns NaN logits"):
        score_documents(nan, documents, progress=False)
