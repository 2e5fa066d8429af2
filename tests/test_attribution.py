"""Byte attribution checked against plain per-byte loops and Unicode's own character data."""

from __future__ import annotations

import itertools
import math
import string
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpbeval.attribution import (
    CLASSES,
    POSITION_EDGES,
    POSITIONS,
    attribute,
    byte_classes,
    byte_values,
    character_class,
)
from tests.conftest import UNICODE_TEXTS, stdlib_texts

# A Unicode letter whose name says one of these words belongs to that script.
_SCRIPT_WORDS = {
    "LATIN": "latin",
    "GREEK": "greek",
    "CYRILLIC": "cyrillic",
    "ARABIC": "arabic",
    "HEBREW": "hebrew",
    "DEVANAGARI": "devanagari",
    "CJK": "han",
    "HIRAGANA": "kana",
    "KATAKANA": "kana",
    "HANGUL": "hangul",
}
# Phonetic alphabets borrow a few Greek and Cyrillic letters; they are counted as Latin.
_PHONETIC = [(0x1D00, 0x1DBF), (0xAB30, 0xAB6F)]


@pytest.mark.parametrize(
    ("chars", "expected"),
    [
        ("\n\r\u2028\x85", "newline"),
        (" \t\xa0\u3000\u2003", "whitespace"),
        ("azAZ", "ascii_letters"),
        ("09٣３०", "digits"),  # ASCII, Arabic-Indic, fullwidth, Devanagari
        ("!~{}#_", "ascii_punctuation"),
        ("éßğṃÅ", "latin"),
        ("λΩά", "greek"),
        ("Жё", "cyrillic"),
        ("بﻻ", "arabic"),
        ("שׁ", "hebrew"),
        ("कि", "devanagari"),
        ("中々𠀋", "han"),
        ("ひカｶー", "kana"),
        ("한ᄀㄱ", "hangul"),
        ("😀€©«—、。×\u200d\ufe0f", "symbols"),
        ("\x00\x7fก\ue000\u200b", "other"),  # controls, Thai, private use, zero-width space
    ],
)
def test_known_characters(chars, expected):
    assert [character_class(c) for c in chars] == [expected] * len(chars)


def test_letters_take_the_script_their_unicode_name_says():
    # Every letter in Unicode (this Python's version) whose name names exactly one listed
    # script: its class is that script. An independent source: the names, not the blocks.
    wrong = []
    for point in range(0x80, 0x110000):
        char = chr(point)
        if not unicodedata.category(char).startswith("L"):
            continue
        words = unicodedata.name(char, "").replace("-", " ").split()
        scripts = {_SCRIPT_WORDS[w] for w in words if w in _SCRIPT_WORDS}
        if len(scripts) != 1 or any(lo <= point <= hi for lo, hi in _PHONETIC):
            continue
        if character_class(char) != scripts.pop():
            wrong.append(f"U+{point:04X} {unicodedata.name(char)}")
    assert wrong == []


@settings(max_examples=500, deadline=None)
@given(st.characters(exclude_categories=["Cs"]))
def test_class_rules_hold_for_any_character(char):
    cls = character_class(char)
    assert cls in CLASSES
    assert (cls == "newline") == (len(f"a{char}b".splitlines()) == 2)
    assert (cls == "whitespace") == (char.isspace() and cls != "newline")
    assert (cls == "ascii_letters") == (char in string.ascii_letters)
    assert (cls == "digits") == (unicodedata.category(char) == "Nd")
    assert (cls == "ascii_punctuation") == (char in string.punctuation)
    if not char.isascii() and unicodedata.category(char)[0] in "SP" and not char.isspace():
        assert cls == "symbols"


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=60))
def test_every_byte_takes_its_characters_class(text):
    expected = [CLASSES.index(character_class(c)) for c in text for _ in c.encode("utf-8")]
    assert byte_classes(text).tolist() == expected


def _reference(text: str, nats: list[float], lengths: list[int]):
    # The definition, one byte at a time: each byte gets nats / length of its token, its
    # character's class and the bucket of its position.
    classes = [character_class(c) for c in text for _ in c.encode("utf-8")]
    class_nats = dict.fromkeys(CLASSES, 0.0)
    class_bytes = dict.fromkeys(CLASSES, 0)
    position_nats = [0.0] * len(POSITIONS)
    position_bytes = [0] * len(POSITIONS)
    position = 0
    for value, length in zip(nats, lengths, strict=True):
        for _ in range(length):
            bucket = 0
            while bucket < len(POSITION_EDGES) and position >= POSITION_EDGES[bucket]:
                bucket += 1
            class_nats[classes[position]] += value / length
            class_bytes[classes[position]] += 1
            position_nats[bucket] += value / length
            position_bytes[bucket] += 1
            position += 1
    assert position == len(classes)
    return list(class_nats.values()), list(class_bytes.values()), position_nats, position_bytes


@st.composite
def _tokenized(draw, max_chars=400):
    """A text, a random cut of its bytes into tokens (through characters too), and nats."""
    text = draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=max_chars))
    n = len(text.encode("utf-8"))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=n)) if n > 1 else [])
    bounds = [0, *cuts, n] if n else [0]
    lengths = [b - a for a, b in itertools.pairwise(bounds) if b > a]
    nats = draw(st.lists(st.floats(0, 50), min_size=len(lengths), max_size=len(lengths)))
    return text, nats, lengths


@settings(max_examples=200, deadline=None)
@given(_tokenized())
def test_attribution_equals_a_per_byte_loop(case):
    text, nats, lengths = case
    got = attribute(text, nats, lengths)
    class_nats, class_bytes, position_nats, position_bytes = _reference(text, nats, lengths)
    assert got.class_nats.tolist() == pytest.approx(class_nats, rel=1e-12, abs=1e-12)
    assert got.class_bytes.tolist() == class_bytes
    assert got.position_nats.tolist() == pytest.approx(position_nats, rel=1e-12, abs=1e-12)
    assert got.position_bytes.tolist() == position_bytes


def test_attribution_reaches_the_later_buckets_as_a_per_byte_loop_does():
    # 300 kB of mixed text in tokens of 1 to 7 bytes (cut through characters): the loop
    # reference is slow, so it runs once, here, on a document that spans six buckets.
    text = "".join(stdlib_texts(40)) + "".join(UNICODE_TEXTS) * 2000
    n = len(text.encode("utf-8"))
    lengths = np.random.default_rng(0).integers(1, 8, size=n)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n)]
    lengths = [*lengths.tolist(), n - int(lengths.sum())]
    nats = np.random.default_rng(1).uniform(0, 20, size=len(lengths)).tolist()
    got = attribute(text, nats, lengths)
    class_nats, class_bytes, position_nats, position_bytes = _reference(text, nats, lengths)
    assert n > POSITION_EDGES[4]
    assert got.class_nats.tolist() == pytest.approx(class_nats, rel=1e-9)
    assert got.class_bytes.tolist() == class_bytes
    assert got.position_nats.tolist() == pytest.approx(position_nats, rel=1e-9)
    assert got.position_bytes.tolist() == position_bytes


def test_a_document_past_the_last_edge_fills_every_bucket():
    # One nat per byte, so nats equal bytes; a bucket [lo, hi) holds hi - lo bytes.
    n = POSITION_EDGES[-1] + 1000
    got = attribute("x" * n, np.ones(n), np.ones(n, dtype=np.int64))
    bounds = [0, *POSITION_EDGES, n]
    expected = [hi - lo for lo, hi in itertools.pairwise(bounds)]
    assert got.position_bytes.tolist() == expected
    assert got.position_nats.tolist() == [float(b) for b in expected]
    assert got.class_bytes[CLASSES.index("ascii_letters")] == n


@settings(max_examples=200, deadline=None)
@given(_tokenized(max_chars=2000))
def test_classes_and_buckets_each_add_up_to_the_document(case):
    text, nats, lengths = case
    got = attribute(text, nats, lengths)
    n, total = len(text.encode("utf-8")), math.fsum(nats)
    assert int(got.class_bytes.sum()) == n
    assert int(got.position_bytes.sum()) == n
    assert math.fsum(got.class_nats) == pytest.approx(total, rel=1e-9, abs=1e-9)
    assert math.fsum(got.position_nats) == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_conservation_with_a_real_tokenizer(bpe_tokenizer, byte_tokenizer):
    # Real token boundaries: BPE merges across classes, byte tokens split characters.
    text = "".join(stdlib_texts(30)) + "".join(UNICODE_TEXTS) * 50
    n = len(text.encode("utf-8"))
    expected_bytes = [0] * len(CLASSES)
    for char in text:
        expected_bytes[CLASSES.index(character_class(char))] += len(char.encode("utf-8"))
    for tokenizer in (bpe_tokenizer, byte_tokenizer):
        ids = tokenizer.encode_batch([text])[0]
        lengths = tokenizer.token_bytes().numpy()[ids]
        nats = np.random.default_rng(2).uniform(0, 15, size=len(ids))
        got = attribute(text, nats, lengths)
        assert got.class_bytes.tolist() == expected_bytes
        assert int(got.position_bytes.sum()) == n
        assert math.fsum(got.class_nats) == pytest.approx(math.fsum(nats), rel=1e-9)
        assert math.fsum(got.position_nats) == pytest.approx(math.fsum(nats), rel=1e-9)


def test_uniform_spreading():
    # A token's value is shared equally by its bytes, and nothing is lost.
    lengths = [3, 1, 4]
    per_byte = byte_values([3.0, 5.0, 2.0], lengths)
    assert per_byte.tolist() == [1.0, 1.0, 1.0, 5.0, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("nats", "lengths", "message"),
    [
        ([1.0], [1, 2], "1 nats for 2 token lengths"),
        ([1.0, 2.0], [3, 0], "at least one byte"),
        ([1.0, 2.0], [1, 1], "tokens cover 2 bytes, the text has 3"),
    ],
)
def test_tokens_that_do_not_cover_the_text_are_refused(nats, lengths, message):
    with pytest.raises(ValueError, match=message):
        attribute("abc", nats, lengths)
