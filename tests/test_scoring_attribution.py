"""The engine's attribution: per-token nats spread over bytes, checked against a brute force."""

from __future__ import annotations

import functools
import json
import math
import subprocess
from dataclasses import fields, replace
from fractions import Fraction

import numpy as np
import pytest

from bpbeval import attribution
from bpbeval.attribution import (
    CLASSES,
    POSITIONS,
    Attributions,
    CorpusAttribution,
    PartSums,
    attribute,
    document_groups,
)
from bpbeval.cache import ResultCache
from bpbeval.checkpoint import Checkpoint, load
from bpbeval.data import Document, read_documents
from bpbeval.errors import CacheError
from bpbeval.results import DocumentScore
from bpbeval.scoring import score_documents
from tests.conftest import ROOT, stdlib_texts, torchrun, torchrun_env
from tests.test_bruteforce import brute_force_token_nats
from tests.test_scoring import DictCache, DropsAccents


@pytest.fixture(scope="module")
def byte_level(byte_tokenizer, make_gpt, context_len):
    model = make_gpt(byte_tokenizer.vocab_size, seed=4)
    return Checkpoint(model, byte_tokenizer, context_len, "byte", "custom", "test"), model


@pytest.fixture(scope="module")
def native(native_checkpoint):
    path, model = native_checkpoint
    return load(str(path)), model


@pytest.fixture(scope="module")
def long_documents(documents) -> list[Document]:
    """The shared documents and three of several windows, with digits and non-ASCII text."""
    extra = [f"{text[:400]} 2024 — ünïcode 中文" for text in stdlib_texts(3, offset=70)]
    return [*documents, *(Document(f"long{i}", t) for i, t in enumerate(extra))]


def _rows(attribution: Attributions) -> list[tuple[list, ...]]:
    return [
        tuple(getattr(attribution[i], f).tolist() for f in _FIELDS) for i in range(len(attribution))
    ]


_FIELDS = ("class_nats", "class_bytes", "position_nats", "position_bytes")
_TOTALS = ("nats", "bytes", "documents")
_PART_SUMS = tuple(f.name for f in fields(PartSums))  # the totals and the groups


def _hex(array: np.ndarray) -> list:
    """Floats by their bits (``float.hex``): lists equal only where the arrays are bit-identical."""
    if array.dtype.kind == "f":
        return np.vectorize(float.hex, otypes=[str])(array).tolist()
    return array.tolist()


def _sums(corpus: CorpusAttribution, names=_PART_SUMS) -> dict:
    return {
        f"{part}.{name}": _hex(getattr(getattr(corpus, part), name))
        for part in ("classes", "positions")
        for name in names
    }


def _check_corpus_sums(corpus: CorpusAttribution, per_document: Attributions) -> None:
    """The corpus's sums are those of its per-document rows, summed here: totals by
    ``math.fsum``, each group's documents (``document_groups``) in exact fractions."""
    groups = document_groups(np.arange(len(per_document)))
    for sums, nats, n_bytes in (
        (corpus.classes, per_document.class_nats, per_document.class_bytes),
        (corpus.positions, per_document.position_nats, per_document.position_bytes),
    ):
        assert sums.nats.tolist() == [math.fsum(column) for column in nats.T]
        assert sums.bytes.tolist() == n_bytes.sum(axis=0).tolist()
        assert sums.documents.tolist() == (n_bytes > 0).sum(axis=0).tolist()
        held = n_bytes.sum(axis=1) > 0  # a document without bytes is in no group
        rows = sorted(set(groups[held].tolist()))
        assert len(sums.group_nats) == len(sums.group_bytes) == len(rows)
        for got_nats, got_bytes, group in zip(sums.group_nats, sums.group_bytes, rows, strict=True):
            members = np.flatnonzero(held & (groups == group))
            assert got_bytes.tolist() == n_bytes[members].sum(axis=0).tolist()
            if len(members) == 1:
                assert _hex(got_nats) == _hex(nats[members[0]])
                continue
            # Summed in whole units of 2**-24 nat: each document's nats at most half a unit off.
            for got, column in zip(got_nats, nats[members].T, strict=True):
                exact = sum(map(Fraction, column.tolist()))
                assert abs(Fraction(float(got)) - exact) <= Fraction(len(members), 2**25)


@pytest.mark.parametrize("which", ["byte_level", "native"])
def test_attribution_is_the_brute_force_token_nats_spread_over_bytes(
    which, request, long_documents, context_len
):
    checkpoint, model = request.getfixturevalue(which)
    scores = score_documents(
        checkpoint, long_documents, per_document_attribution=True, progress=False
    )
    table = checkpoint.tokenizer.token_bytes().numpy()
    per_document = scores.per_document_attribution
    assert per_document is not None and len(per_document) == len(long_documents)
    for i, document in enumerate(long_documents):
        ids = checkpoint.tokenizer.encode_batch([document.text])[0]
        nats = brute_force_token_nats(
            model, checkpoint.tokenizer.bos_id, ids, context_len, context_len // 2
        )
        expected = attribute(document.text, nats, table[ids])
        got = per_document[i]
        assert got.class_bytes.tolist() == expected.class_bytes.tolist()
        assert got.position_bytes.tolist() == expected.position_bytes.tolist()
        # The engine's nats are float32 per token (as the metric's), the brute force's float64.
        np.testing.assert_allclose(got.class_nats, expected.class_nats, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.position_nats, expected.position_nats, rtol=1e-5, atol=1e-5)
        # Conservation against the engine's own per-document sums.
        doc = scores.documents[i]
        assert int(got.class_bytes.sum()) == int(got.position_bytes.sum()) == doc.bytes
        for part in (got.class_nats, got.position_nats):
            assert math.fsum(part) == pytest.approx(doc.nats, rel=1e-9, abs=1e-9)
    _check_corpus_sums(scores.attribution, per_document)


def test_attribution_is_bit_identical_for_any_batching_and_order(byte_level, long_documents):
    checkpoint, _ = byte_level
    reference = score_documents(
        checkpoint, long_documents, stride=5, per_document_attribution=True, progress=False
    )
    expected = dict(
        zip([d.id for d in long_documents], _rows(reference.per_document_attribution), strict=True)
    )
    shuffled = long_documents[::-1]
    for options, docs in [
        ({"batch_tokens": 1}, long_documents),
        ({"batch_tokens": 100_000, "batch_size": 3}, long_documents),
        ({"batch_tokens": 64, "lookahead_tokens": 0}, long_documents),
        ({"batch_tokens": 200}, shuffled),
    ]:
        scores = score_documents(
            checkpoint, docs, stride=5, per_document_attribution=True, progress=False, **options
        )
        per_document = scores.per_document_attribution
        rows = dict(zip([d.id for d in docs], _rows(per_document), strict=True))
        assert rows == expected, options  # exact, not approx
        _check_corpus_sums(scores.attribution, per_document)
        # Groups follow input positions, so a new order regroups; totals do not move.
        names = _TOTALS if docs is shuffled else _PART_SUMS
        assert _sums(scores.attribution, names) == _sums(reference.attribution, names), options


def test_a_resumed_run_carries_the_same_attribution(byte_level, long_documents, tmp_path):
    checkpoint, _ = byte_level
    fresh = score_documents(
        checkpoint, long_documents, per_document_attribution=True, progress=False
    )
    for make in (DictCache, lambda: ResultCache(tmp_path, identity="x", settings={})):
        cache = make()
        score_documents(checkpoint, long_documents[::2], cache=cache, progress=False)
        if isinstance(cache, ResultCache):  # read back from its files, as a new run would
            cache.close()
            cache = ResultCache(tmp_path, identity="x", settings={})
        resumed = score_documents(
            checkpoint, long_documents, cache=cache, per_document_attribution=True, progress=False
        )
        assert _rows(resumed.per_document_attribution) == _rows(fresh.per_document_attribution)
        assert _sums(resumed.attribution) == _sums(fresh.attribution)
        _check_corpus_sums(resumed.attribution, resumed.per_document_attribution)


def test_no_attribution_when_off_or_when_tokens_miss_bytes(byte_level, long_documents):
    checkpoint, _ = byte_level
    unasked = score_documents(checkpoint, long_documents, progress=False)
    assert unasked.attribution is not None and unasked.per_document_attribution is None
    off = score_documents(
        checkpoint, long_documents, attribution=False, per_document_attribution=True, progress=False
    )
    assert off.attribution is None and off.per_document_attribution is None
    inexact = replace(checkpoint, tokenizer=DropsAccents(checkpoint.tokenizer))
    scores = score_documents(
        inexact,
        long_documents,
        allow_inexact_bytes=True,
        per_document_attribution=True,
        progress=False,
    )
    assert scores.bytes_from_text
    assert scores.attribution is None and scores.per_document_attribution is None


def test_a_cache_line_with_a_bad_attribution_is_corrupt(tmp_path):
    document = Document("d", "ab1")
    parts = attribute(document.text, [1.0, 2.0], [2, 1])
    with ResultCache(tmp_path, identity="x", settings={}) as cache:
        cache.put(document, DocumentScore(None, 3.0, 3, 2, parts))
    assert ResultCache(tmp_path, identity="x", settings={}).get(document).attribution == parts
    file = next(tmp_path.rglob("scores-*.jsonl"))
    good = json.loads(file.read_text())
    for key, value, message in [
        ("class_bytes", good["attribution"]["class_bytes"][:-1], f"expected {len(CLASSES)} values"),
        ("class_bytes", [-1] * len(CLASSES), "expected finite values"),
        ("position_nats", [math.nan] * len(POSITIONS), "expected finite values"),
        ("position_bytes", [0] * len(POSITIONS), "expected .* position sums to add up"),
        ("class_nats", [1.0] * len(CLASSES), "expected .* class sums to add up"),
    ]:
        line = json.loads(json.dumps(good))
        line["attribution"][key] = value
        file.write_text(json.dumps(line) + "\n")
        with pytest.raises(CacheError, match=f"{message}.* in attribution's {key}|{message}"):
            ResultCache(tmp_path, identity="x", settings={})


PER_DOCUMENT = """
import dataclasses, sys
import numpy as np
from bpbeval import attribution, distributed
from bpbeval.checkpoint import load
from bpbeval.data import read_documents
from bpbeval.scoring import score_documents

checkpoint, data, out = sys.argv[1:]
attribution.GROUPS = 4  # later documents join groups of several, some of both ranks' documents


def flat(prefix, value):
    if not dataclasses.is_dataclass(value):
        return {prefix: value}
    return {key: array for field in dataclasses.fields(value)
            for key, array in flat(f"{prefix}.{field.name}", getattr(value, field.name)).items()}


with distributed.process_group("cpu"):
    scores = score_documents(
        load(checkpoint), read_documents(data), stride=5, per_document_attribution=True,
        progress=False,
    )
    if distributed.rank() == 0:
        np.savez(out, **flat("attribution", scores.attribution),
                 **flat("per_document_attribution", scores.per_document_attribution))
"""


@pytest.mark.slow
def test_attribution_is_bit_identical_at_world_size_2(
    native_checkpoint, documents_jsonl, tmp_path, spawn, monkeypatch
):
    checkpoint_path = str(native_checkpoint[0])
    script = tmp_path / "attribution.py"
    script.write_text(PER_DOCUMENT)
    out = tmp_path / "out.npz"
    argv = torchrun(2, str(script), checkpoint_path, str(documents_jsonl), str(out))
    process = spawn(argv, env=torchrun_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr

    monkeypatch.setattr(attribution, "GROUPS", 4)
    documents = list(read_documents(documents_jsonl))
    reference = score_documents(
        load(checkpoint_path), documents, stride=5, per_document_attribution=True, progress=False
    )
    keys = [
        f"attribution.{part}.{name}" for part in ("classes", "positions") for name in _PART_SUMS
    ] + [f"per_document_attribution.{f.name}" for f in fields(Attributions)]
    with np.load(out) as saved:
        assert sorted(saved.files) == sorted(keys)
        for key in keys:
            expected = functools.reduce(getattr, key.split("."), reference)
            assert _hex(saved[key]) == _hex(expected), key

    per_document = reference.per_document_attribution
    _check_corpus_sums(reference.attribution, per_document)
    # What the grouping is for: a group of one document, and one of documents of both ranks
    # (round-robin: a document's rank is its position's parity).
    groups = document_groups(np.arange(len(documents)))
    held = per_document.class_bytes.sum(axis=1) > 0
    members = [np.flatnonzero(held & (groups == group)) for group in range(4)]
    assert any(len(m) == 1 for m in members)
    assert any(len(set((m % 2).tolist())) == 2 for m in members)
