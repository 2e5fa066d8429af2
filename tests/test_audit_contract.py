"""The byte audit's contract: its report's text, its chunked reading, its refusals.

Counts are checked against the texts' own UTF-8 lengths and characters, computed here.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from bpbeval.tokenizer import Tokenizer, audit, from_huggingface
from bpbeval.tokenizer.audit import _CHUNK

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letters_only(prepend_scheme: str = "never"):
    """A Hugging Face BPE of single letters and no byte fallback: any other character is dropped."""
    vocab = {"<s>": 0, "▁": 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    hf = HFTokenizer(models.BPE(vocab, []))
    hf.add_special_tokens(["<s>"])
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    return from_huggingface(hf, bos="<s>")


class Lying:
    """A tokenizer that cannot explain itself, over ours, altered in one way per test."""

    def __init__(self, inner: Tokenizer, *, extra_bytes: int = 0, drop_last: bool = False):
        self.inner, self.extra_bytes, self.drop_last = inner, extra_bytes, drop_last
        self.vocab_size, self.bos_id, self.hash = inner.vocab_size, inner.bos_id, inner.hash

    def encode_batch(self, texts):
        ids = self.inner.encode_batch(texts)
        return ids[:-1] if self.drop_last else ids

    def token_bytes(self, device=None) -> torch.Tensor:
        return self.inner.token_bytes(device) + self.extra_bytes


def _dropped(text: str) -> int:
    return sum(c not in LETTERS for c in text)


@pytest.mark.parametrize("violations", [5, 6, 7])
def test_the_report_names_the_first_five_violations_and_counts_the_rest(violations):
    tok = letters_only()
    # The first violation drops four characters, so it has four mismatched tokens.
    texts = ["plain", "a#b#c#d#e", *(f"x{'%' * k}y" for k in range(1, violations))]
    report = audit(tok, texts)
    expected = sum(len(t.encode("utf-8")) for t in texts)
    counted = expected - sum(_dropped(t) for t in texts)
    assert (report.texts, report.expected_bytes, report.counted_bytes) == (
        len(texts),
        expected,
        counted,
    )
    lines = str(report).split("\n")
    assert lines[0] == (
        f"bytes NOT conserved on {violations} of {len(texts)} texts: counted {counted} for "
        f"{expected} ({(counted - expected) / expected:+.3%}); bpb would be off"
    )
    listed = [line for line in lines if line.startswith("  text ")]
    assert len(listed) == 5
    for line, index in zip(listed, range(1, 6), strict=True):
        n = len(texts[index])
        assert line.startswith(
            f"  text {index}: {n - _dropped(texts[index])} bytes counted for {n}: "
        )
    tokens = [line for line in lines if line.startswith("    token ")]
    # Three token lines for the text of four, one for each other text listed.
    assert len(tokens) == 3 + 4
    first = report.violations[0]
    assert len(first.tokens) == 4
    assert tokens[:3] == [
        f"    token {t.position} ids {list(t.ids)} over '#': 0 for 1" for t in first.tokens[:3]
    ]
    more = [] if violations == 5 else [f"  ... and {violations - 5} more"]
    assert lines[len(lines) - len(more) :] == more
    assert len(lines) == 1 + 5 + len(tokens) + len(more)


def test_the_error_is_relative_to_the_text_s_bytes():
    # A one-byte text given a prefix space: 2 bytes counted for 1, an error of +100%.
    report = audit(letters_only("always"), ["a"])
    assert (report.expected_bytes, report.counted_bytes) == (1, 2)
    assert str(report).split("\n")[0] == (
        "bytes NOT conserved on 1 of 1 texts: counted 2 for 1 (+100.000%); bpb would be off"
    )


def test_a_conserving_corpus_says_so_with_its_bytes(byte_tokenizer):
    texts = ["naïve", "東京", ""]
    report = audit(byte_tokenizer, texts)
    assert report.ok
    expected = sum(len(t.encode("utf-8")) for t in texts)
    assert str(report) == f"bytes conserved on all 3 texts ({expected} bytes)"


def test_a_tokenizer_that_cannot_explain_gets_a_violation_without_tokens(byte_tokenizer):
    texts = ["abc", "", "é"]
    report = audit(Lying(byte_tokenizer, extra_bytes=1), texts)
    # Every token counts one byte too many; the byte tokenizer has one token per byte.
    assert [(v.index, v.expected_bytes, v.counted_bytes) for v in report.violations] == [
        (0, 3, 6),
        (2, 2, 4),
    ]
    for v in report.violations:
        assert v.tokens == ()
        assert v.cause == (
            "the tokenizer cannot map its tokens to the text, so the tokens are not named"
        )


def test_a_tokenizer_that_loses_a_text_is_refused(byte_tokenizer):
    # Auditing fewer texts than given would report a corpus it did not see.
    with pytest.raises(ValueError, match="shorter"):
        audit(Lying(byte_tokenizer, drop_last=True), ["one", "two"])


def test_texts_are_read_and_encoded_a_bounded_chunk_at_a_time(byte_tokenizer):
    n = 2 * _CHUNK + 3
    drawn = []

    def texts():
        for i in range(n):
            drawn.append(i)
            yield "é" * (i % 5)

    encoded = []

    class Watched(Lying):
        def encode_batch(self, batch):
            # No more texts are drawn from the corpus than this batch and those before it.
            assert len(drawn) == sum(encoded) + len(batch) <= sum(encoded) + _CHUNK
            encoded.append(len(batch))
            return super().encode_batch(batch)

    tok = Watched(byte_tokenizer)
    report = audit(tok, texts())
    assert report.ok and report.texts == n == sum(encoded)
    assert report.expected_bytes == sum(2 * (i % 5) for i in range(n))
    assert report.tokens == report.expected_bytes  # one token per byte
