"""The engine's attribution: per-token nats spread over bytes, checked against a brute force."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from bpbeval.attribution import CLASSES, Attributions, attribute
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


@pytest.mark.parametrize("which", ["byte_level", "native"])
def test_attribution_is_the_brute_force_token_nats_spread_over_bytes(
    which, request, long_documents, context_len
):
    checkpoint, model = request.getfixturevalue(which)
    scores = score_documents(checkpoint, long_documents, progress=False)
    table = checkpoint.tokenizer.token_bytes().numpy()
    assert scores.attribution is not None and len(scores.attribution) == len(long_documents)
    for i, document in enumerate(long_documents):
        ids = checkpoint.tokenizer.encode_batch([document.text])[0]
        nats = brute_force_token_nats(
            model, checkpoint.tokenizer.bos_id, ids, context_len, context_len // 2
        )
        expected = attribute(document.text, nats, table[ids])
        got = scores.attribution[i]
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


def test_attribution_is_bit_identical_for_any_batching_and_order(byte_level, long_documents):
    checkpoint, _ = byte_level
    reference = score_documents(checkpoint, long_documents, stride=5, progress=False)
    shuffled = long_documents[::-1]
    for options, docs in [
        ({"batch_tokens": 1}, long_documents),
        ({"batch_tokens": 100_000, "batch_size": 3}, long_documents),
        ({"batch_tokens": 64, "lookahead_tokens": 0}, long_documents),
        ({"batch_tokens": 200}, shuffled),
    ]:
        scores = score_documents(checkpoint, docs, stride=5, progress=False, **options)
        rows = dict(zip([d.id for d in docs], _rows(scores.attribution), strict=True))
        expected = dict(
            zip([d.id for d in long_documents], _rows(reference.attribution), strict=True)
        )
        assert rows == expected, options  # exact, not approx


def test_a_resumed_run_carries_the_same_attribution(byte_level, long_documents, tmp_path):
    checkpoint, _ = byte_level
    fresh = score_documents(checkpoint, long_documents, progress=False)
    for make in (DictCache, lambda: ResultCache(tmp_path, identity="x", settings={})):
        cache = make()
        score_documents(checkpoint, long_documents[::2], cache=cache, progress=False)
        if isinstance(cache, ResultCache):  # read back from its files, as a new run would
            cache.close()
            cache = ResultCache(tmp_path, identity="x", settings={})
        resumed = score_documents(checkpoint, long_documents, cache=cache, progress=False)
        assert _rows(resumed.attribution) == _rows(fresh.attribution)


def test_no_attribution_when_off_or_when_tokens_miss_bytes(byte_level, long_documents):
    checkpoint, _ = byte_level
    assert (
        score_documents(checkpoint, long_documents, attribution=False, progress=False).attribution
        is None
    )
    inexact = replace(checkpoint, tokenizer=DropsAccents(checkpoint.tokenizer))
    scores = score_documents(inexact, long_documents, allow_inexact_bytes=True, progress=False)
    assert scores.bytes_from_text and scores.attribution is None


def test_a_cache_line_with_a_bad_attribution_is_corrupt(tmp_path):
    document = Document("d", "ab1")
    parts = attribute(document.text, [1.0, 2.0], [2, 1])
    with ResultCache(tmp_path, identity="x", settings={}) as cache:
        cache.put(document, DocumentScore(None, 3.0, 3, 2, parts))
    assert ResultCache(tmp_path, identity="x", settings={}).get(document).attribution == parts
    file = next(tmp_path.rglob("scores-*.jsonl"))
    line = json.loads(file.read_text())
    line["attribution"]["class_bytes"] = line["attribution"]["class_bytes"][:-1]
    file.write_text(json.dumps(line) + "\n")
    with pytest.raises(
        CacheError, match=f"expected {len(CLASSES)} values in attribution's class_bytes"
    ):
        ResultCache(tmp_path, identity="x", settings={})


PER_DOCUMENT = """
import json, sys
from bpbeval import distributed
from bpbeval.checkpoint import load
from bpbeval.data import read_documents
from bpbeval.scoring import score_documents

checkpoint, data, out = sys.argv[1:]
with distributed.process_group("cpu"):
    scores = score_documents(load(checkpoint), read_documents(data), stride=5, progress=False)
    if distributed.rank() == 0:
        parts = scores.attribution
        rows = [[v.hex() for v in parts.class_nats[i]] + [v.hex() for v in parts.position_nats[i]]
                for i in range(len(parts))]
        json.dump(rows, open(out, "w"))
"""


@pytest.mark.slow
def test_attribution_is_bit_identical_at_world_size_2(
    native_checkpoint, documents_jsonl, tmp_path, spawn
):
    checkpoint_path = str(native_checkpoint[0])
    script = tmp_path / "attribution.py"
    script.write_text(PER_DOCUMENT)
    argv = torchrun(
        2, str(script), checkpoint_path, str(documents_jsonl), str(tmp_path / "out.json")
    )
    process = spawn(argv, env=torchrun_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    documents = list(read_documents(documents_jsonl))
    parts = score_documents(load(checkpoint_path), documents, stride=5, progress=False).attribution
    expected = [
        [v.hex() for v in parts.class_nats[i]] + [v.hex() for v in parts.position_nats[i]]
        for i in range(len(parts))
    ]
    assert json.loads((tmp_path / "out.json").read_text()) == expected
