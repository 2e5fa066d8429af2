"""Long whitespace runs: tiktoken and rustbpe panic on a run of a million characters.

The fix encodes such a run as the one piece the split pattern makes of it. The property test
runs that split at small sizes (runs of 2+ characters), where the regex does not overflow, and
compares it with tiktoken's own encoding of the whole text, token for token.
"""

from __future__ import annotations

import json
import pydoc_data.topics
import re

import pytest
import rustbpe
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bpbeval.tokenizer.core as core
from bpbeval.checkpoint import Checkpoint
from bpbeval.cli import run
from bpbeval.data import Document
from bpbeval.errors import TokenizerError
from bpbeval.scoring import score_documents
from bpbeval.tokenizer import Tokenizer, from_tiktoken, train
from bpbeval.tokenizer.__main__ import main

PATTERNS = {
    "bpbeval": core.SPLIT_PATTERN,
    "r50k": core._R50K_PATTERN,
    "cl100k": core._CL100K_PATTERN,
    "o200k": core._O200K_PATTERN,
}
# A run longer than the regex engine takes (it panics past 999,998 spaces).
LONG = 1_200_000

# Words of every branch of the patterns; \x1c is whitespace to Python's str, not to the regex.
WORDS = ["a", "hello", "Hello", "don't", "I'LL", "été", "日本語", "42", "31415", "!!", "...",
         "'s", "x/y", "-", "\x1c", "\u0301"]  # fmt: skip
# Every kind of whitespace the patterns treat differently.
SPACES = [" ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000"]


def whitespace_rich_texts() -> list[str]:
    """Docs with indentation, lines of every kind of whitespace run, and texts that end in
    whitespace after a newline: the vocabulary has merges of all of them."""
    lines = [
        f"{word}{space * width}{word}{space * (width // 2)}\n" * 3
        for word in WORDS
        for space in SPACES
        for width in (1, 2, 3, 4, 8)
    ]
    ends = [f"a\n{space * width}" for space in SPACES for width in (1, 2, 3, 4, 8)]
    return [*list(pydoc_data.topics.topics.values())[:10], "".join(lines), *ends * 100]


@pytest.fixture(scope="module", params=list(PATTERNS))
def encoding(request) -> tiktoken.Encoding:
    """A BPE trained by rustbpe under each known pattern, with merges of whitespace runs."""
    return train(whitespace_rich_texts(), 256 + 9 + 400, pattern=PATTERNS[request.param]).encoding


def test_known_patterns_are_those_tiktoken_ships(monkeypatch):
    # The encodings' constructors download their ranks; only their patterns are wanted here.
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", lambda **kwargs: {})
    for name, constructor in openai_public.ENCODING_CONSTRUCTORS.items():
        assert constructor()["pat_str"] in core._ONE_PIECE_RUNS, name


def test_whitespace_is_the_regex_engines():
    # Under the pattern \s, tiktoken drops every character but whitespace.
    enc = tiktoken.Encoding(
        "ws", pat_str=r"\s", mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={}
    )
    chars = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    whitespace = enc.decode(enc.encode_ordinary(chars))
    ours = re.findall(f"[\r\n{core._HORIZONTAL_SPACE}]", chars)
    assert "".join(ours) == whitespace


fragments = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(SPACES),
    st.lists(st.sampled_from(SPACES), min_size=2, max_size=30).map("".join),  # mixed runs
    st.builds(lambda space, n: space * n, st.sampled_from(SPACES), st.integers(2, 40)),
)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(fragments, max_size=25).map("".join), min_run=st.integers(2, 6))
@example(text="a" + " " * 9 + "b", min_run=2)
@example(text="a.\n\n" + "\t" * 9 + "b", min_run=2)
@example(text="a\n" + " " * 9, min_run=2)
@example(text="a" + " " * 9 + "\n" + "b", min_run=2)
@example(text="\u3000" * 9 + "Ab", min_run=2)
def test_split_encoding_is_tiktokens_token_for_token(encoding, text, min_run):
    segments = core._split_long_runs(text, encoding._pat_str, min_run)
    assert "".join(segment for segment, _ in segments) == text
    assert core._encode_ordinary(encoding, text, min_run) == encoding.encode_ordinary(text)


@pytest.mark.parametrize("pattern", list(PATTERNS.values()), ids=list(PATTERNS))
def test_a_run_inside_the_text_is_split_out(pattern):
    # The property test above would also pass if nothing were ever split.
    text = "a" + " " * 9 + "b"
    assert core._split_long_runs(text, pattern, 4) == [("a", False), (" " * 8, True), (" b", False)]


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(st.lists(fragments, max_size=25).map("".join), min_size=1, max_size=4),
    min_run=st.integers(2, 6),
)
def test_rustbpe_trains_the_same_on_the_segments(encoding, texts, min_run):
    # rustbpe's regex on each segment alone gives the pieces it gives on the whole text.
    segments = [
        s for text in texts for s, _ in core._split_long_runs(text, encoding._pat_str, min_run)
    ]
    ranks = []
    for corpus in (texts, segments):
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(corpus), 256 + 30, pattern=encoding._pat_str)
        ranks.append(bpe.get_mergeable_ranks())
    assert ranks[0] == ranks[1]


def test_a_long_run_encodes_exactly(encoding):
    # The run of spaces, after a newline: a piece of its own in every pattern.
    text = "x.\n" + " " * LONG + "y"
    tok = from_tiktoken(encoding, bos="<|bos|>")
    (ids,) = tok.encode_batch([text])
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode())
    assert tok.decode(ids) == text


@pytest.fixture(scope="module")
def trained_on_a_long_run() -> Tokenizer:
    return train([*whitespace_rich_texts(), "x" + " " * LONG + "y"], 256 + 9 + 400)


def longest_run_of_spaces(tok: Tokenizer) -> int:
    return max(len(t) for t in tok.encoding.token_byte_values() if set(t) == {ord(" ")})


def test_training_on_a_long_run_does_not_crash(trained_on_a_long_run):
    # The run is trained on: it adds merges of longer runs of spaces than the rest has.
    without = train(whitespace_rich_texts(), 256 + 9 + 400)
    assert longest_run_of_spaces(trained_on_a_long_run) > longest_run_of_spaces(without)


def test_scoring_a_document_with_a_long_run(trained_on_a_long_run, make_gpt, context_len):
    tok = trained_on_a_long_run
    doc = Document("long", "x.\n" + " " * LONG + "y", None)
    checkpoint = Checkpoint(make_gpt(tok.vocab_size), tok, context_len, "", "custom", "t")
    scores = score_documents(checkpoint, [doc], batch_size=256, progress=False)
    assert scores.bytes == len(doc.text.encode()) and not scores.bytes_from_text
    assert scores.tokens == len(tok.encode(doc.text))


def test_an_unknown_pattern_gives_a_tokenizer_error_not_a_panic():
    pattern = r"\s+(?!\S)|\S+"
    text = "x" + " " * LONG + "y"
    assert core._split_long_runs(text, pattern, 2) == [(text, False)]
    tok = train(["a b"], 257, pattern=pattern, special_tokens=["<|bos|>"])
    with pytest.raises(TokenizerError, match="encoding a text of 1,200,002 characters failed"):
        tok.encode_batch(["short", text])
    with pytest.raises(TokenizerError, match="training failed"):
        train([text], 257, pattern=pattern, special_tokens=["<|bos|>"])


def test_cli_trains_and_audits_a_corpus_with_long_runs(tmp_path, capsys):
    long_runs = ["x" + " " * LONG + "y", "x\n\n" + "\u3000" * LONG]  # in the text, at its end
    texts = [*whitespace_rich_texts(), *long_runs]
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for args in (
        ["train", "--data", str(data), "--vocab-size", "600", "--out", str(tmp_path / "tok"),
         "--heldout-docs", "0"],
        ["audit", str(tmp_path / "tok"), "--data", str(data)],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            run(main, args)
        assert info.value.code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"bytes conserved on all {len(texts)} texts" in out
    assert Tokenizer.load(tmp_path / "tok").hash == train(texts, 600).hash
