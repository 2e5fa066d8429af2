"""Adapters: exact token_bytes for tiktoken and Hugging Face tokenizers built in the test."""

from __future__ import annotations

import json
import pydoc_data.topics

import pytest
import tiktoken
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from bpbeval.errors import TokenizerError
from bpbeval.tokenizer import (
    TextTokenizer,
    audit,
    from_huggingface,
    from_tiktoken,
    load_tokenizer,
    train,
)
from bpbeval.tokenizer.adapters import _unicode_to_byte
from tests.conftest import byte_level_bpe as trained_bpe

TEXTS = list(pydoc_data.topics.topics.values())[:60]
UNSEEN = ["東京タワー 🙂👍🏽", "Ωμέγα — naïve café", "tab\there\n\n  spaces   x"]


def byte_level_bpe(*, normalizer=None, add_prefix_space: bool = False) -> HFTokenizer:
    """A GPT-2-style byte-level BPE, trained on the stdlib's pydoc topics."""
    options = {"normalizer": normalizer, "add_prefix_space": add_prefix_space}
    return trained_bpe(TEXTS, vocab_size=800, **options)


def sentencepiece_bpe(*, byte_fallback: bool, prepend_scheme: str = "never") -> HFTokenizer:
    """A SentencePiece-style BPE: ▁ for spaces, optionally ``<0xNN>`` byte-fallback tokens."""
    base = HFTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], show_progress=False
    )
    base.train_from_iterator(TEXTS, trainer)
    vocab = base.get_vocab()
    if byte_fallback:  # as SentencePiece lays them out: right after the special tokens
        vocab = {**vocab, **{f"<0x{b:02X}>": len(vocab) + b for b in range(256)}}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges(base)]
    tok = HFTokenizer(models.BPE(vocab, merges, byte_fallback=byte_fallback))
    tok.add_special_tokens(["<s>", "</s>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tok


def _merges(tok: HFTokenizer) -> list:
    return json.loads(tok.to_str())["model"]["merges"]


@pytest.fixture(scope="module")
def gpt2_like() -> HFTokenizer:
    return byte_level_bpe()


def test_byte_level_map_inverts_hugging_face_byte_level():
    # Every byte that occurs in UTF-8: ASCII, 2-, 3- and 4-byte sequences' lead and tail bytes.
    chars = [chr(c) for c in [*range(0x80), *range(0x80, 0x800, 7), 0xFFFF, 0x10000, 0x10FFFF]]
    to_byte = _unicode_to_byte()
    assert len(to_byte) == 256 and sorted(to_byte.values()) == list(range(256))
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for c in chars:
        ((mapped, _),) = level.pre_tokenize_str(c)
        assert bytes(to_byte[m] for m in mapped) == c.encode("utf-8")


def test_byte_level_bpe_is_exact(gpt2_like):
    tok = from_huggingface(gpt2_like)
    assert isinstance(tok, TextTokenizer)
    assert tok.vocab_size == gpt2_like.get_vocab_size() and tok.bos_id == 0
    assert tok.token_bytes()[0] == 0  # <|endoftext|>
    report = audit(tok, [*TEXTS, *UNSEEN])
    assert report.ok, str(report)
    assert report.expected_bytes == sum(len(t.encode()) for t in [*TEXTS, *UNSEEN])


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="<"), max_size=60))
def test_byte_level_conservation_property(gpt2_like, text):
    tok = from_huggingface(gpt2_like)
    (ids,) = tok.encode_batch([text])
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


def test_transformers_fast_tokenizer_and_hash(gpt2_like):
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=gpt2_like, eos_token="<|endoftext|>"
    )
    tok = from_huggingface(fast)
    assert tok.bos_id == fast.eos_token_id  # no bos: the eos token conditions documents
    # Padding is left to the caller: a padded batch would change the documents' ids.
    assert tok.encode_batch(UNSEEN) == [fast.encode(t, add_special_tokens=False) for t in UNSEEN]
    assert tok.hash == from_huggingface(gpt2_like).hash == from_huggingface(byte_level_bpe()).hash
    assert tok.hash != from_huggingface(byte_level_bpe(normalizer=normalizers.NFKC())).hash


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_sentencepiece_style(byte_fallback):
    tok = from_huggingface(sentencepiece_bpe(byte_fallback=byte_fallback), bos="<s>")
    assert tok.bos_id == 0
    assert audit(tok, TEXTS).ok  # every character of the training text is in the vocabulary
    report = audit(tok, UNSEEN)
    if byte_fallback:  # unseen characters become <0xNN> tokens of one byte each
        assert report.ok, str(report)
    else:  # unseen characters are dropped: counted bytes fall short, and the audit says why
        unseen = [
            "".join(c for c in t if c != " " and tok.tokenizer.token_to_id(c) is None)
            for t in UNSEEN
        ]
        assert [v.index for v in report.violations] == [i for i, u in enumerate(unseen) if u]
        for v in report.violations:
            assert v.expected_bytes - v.counted_bytes == len(unseen[v.index].encode())
            assert "".join(t.text for t in v.tokens) == unseen[v.index]
            assert v.cause == "characters not in the vocabulary were dropped (no byte fallback)"


def test_prefix_space_is_reported():
    tok = from_huggingface(
        sentencepiece_bpe(byte_fallback=True, prepend_scheme="always"), bos="<s>"
    )
    report = audit(tok, ["hello world", "x"])
    assert [v.index for v in report.violations] == [0, 1]
    for v in report.violations:
        assert v.counted_bytes == v.expected_bytes + 1
        assert v.cause == "a prefix space is added before the first word"
        ((mismatch,),) = [v.tokens]
        assert (mismatch.position, mismatch.text, mismatch.counted_bytes) == (0, "", 1)
    gpt2_prefix = from_huggingface(byte_level_bpe(add_prefix_space=True))
    assert not audit(gpt2_prefix, ["hello"]).ok


@pytest.mark.parametrize(
    ("normalizer", "name", "text"),
    [
        (normalizers.NFKC(), "NFKC", "the ﬁle is ＡＢＣ"),  # ligature and full-width: fewer bytes
        (normalizers.Lowercase(), "Lowercase", "İstanbul"),  # İ lowercases to i + U+0307
    ],
)
def test_normaliser_breaks_conservation_and_audit_says_so(normalizer, name, text):
    tok = from_huggingface(byte_level_bpe(normalizer=normalizer))
    report = audit(tok, ["plain ascii text stays exact", text])
    assert [v.index for v in report.violations] == [1]
    (v,) = report.violations
    assert v.expected_bytes == len(text.encode())
    assert f"the normalizer ({name}) rewrites the text" in v.cause
    assert v.tokens and all(t.expected_bytes != t.counted_bytes for t in v.tokens)


def test_special_token_in_text_is_reported(gpt2_like):
    report = audit(from_huggingface(gpt2_like), ["end <|endoftext|> here"])
    (v,) = report.violations
    assert v.expected_bytes - v.counted_bytes == len("<|endoftext|>")
    assert "special tokens ['<|endoftext|>']" in v.cause


def test_unknown_bos_and_unsupported_models():
    with pytest.raises(TokenizerError, match="pass bos="):
        from_huggingface(sentencepiece_bpe(byte_fallback=False), bos="<nope>")
    wordpiece = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    with pytest.raises(TokenizerError, match="WordPiece"):
        from_huggingface(wordpiece, bos="[UNK]")
    with pytest.raises(TokenizerError, match="not a Hugging Face fast tokenizer"):
        from_huggingface(object())


def test_from_tiktoken_is_exact():
    ours = train(TEXTS, 700, special_tokens=["<|endoftext|>"])
    enc = tiktoken.Encoding(
        "other",
        pat_str=r"\S+|\s+",  # a different split: tiktoken still works on raw bytes
        mergeable_ranks={
            t: ours.encoding.encode_single_token(t) for t in ours.encoding.token_byte_values()
        },
        special_tokens={"<|endoftext|>": 699},
    )
    tok = from_tiktoken(enc)
    assert tok.bos_id == 699 and tok.vocab_size == 700
    assert tok.token_bytes().tolist() == [
        len(enc.decode_single_token_bytes(i)) for i in range(699)
    ] + [0]
    assert audit(tok, [*TEXTS, *UNSEEN]).ok
    with pytest.raises(TokenizerError, match="not a special token"):
        from_tiktoken(enc, bos="<|bos|>")


def test_load_tokenizer_opens_every_kind(gpt2_like, tmp_path):
    gpt2_like.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).hash == from_huggingface(gpt2_like).hash
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=gpt2_like, bos_token="<|endoftext|>"
    )
    fast.save_pretrained(tmp_path / "hf")
    assert load_tokenizer(str(tmp_path / "hf")).hash == from_huggingface(fast).hash
    ours = train(TEXTS, 300)
    ours.save(tmp_path / "ours")
    assert load_tokenizer(str(tmp_path / "ours")).hash == ours.hash
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"not a Hugging Face tokenizer\.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
    (tmp_path / "hf" / "tokenizer.json").write_text("{not json")  # transformers: a ValueError
    with pytest.raises(TokenizerError, match=r"hf is not a loadable Hugging Face tokenizer"):
        load_tokenizer(str(tmp_path / "hf"))


def test_unigram_with_unknown_token():
    hf = HFTokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.UnigramTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>"], unk_token="<unk>", show_progress=False
    )
    hf.train_from_iterator(TEXTS, trainer)
    tok = from_huggingface(hf, bos="<s>")
    assert audit(tok, TEXTS).ok
    report = audit(tok, UNSEEN)
    for v in report.violations:
        assert v.cause == "unknown characters became the unknown token, which counts 0 bytes"
        assert all(t.ids == (0,) and t.counted_bytes == 0 for t in v.tokens)
        lost = sum(t.expected_bytes for t in v.tokens)
        assert v.expected_bytes - v.counted_bytes == lost > 0
    known = set("".join(hf.get_vocab())) | {" "}
    assert [v.index for v in report.violations] == [
        i for i, t in enumerate(UNSEEN) if set(t) - known
    ]
