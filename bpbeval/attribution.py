"""Where the nats go: a document's nats attributed to its bytes, by character class and position.

Two models with different tokenizers score the same text in different pieces, so their
per-token nats cannot be lined up; their nats per *byte* can. Each scored token's nats are
spread **uniformly** over the UTF-8 bytes it stands for: a 4-byte token of 2.0 nats gives
0.5 nat to each of its bytes. Uniform is the only rule that needs nothing beyond the token
itself (no model internals, no guess at which byte was "hard"), keeps every nat (the bytes'
nats add up to the token's exactly, up to rounding), and reduces to plain bits per byte on
any span that tokens cover whole. Its limit: within one token it cannot tell the bytes
apart, so a class that often shares tokens with another (a space glued to the word after
it) borrows some of that word's nats. Both models' figures are then nats over the same
bytes of the same text, whatever their tokenizers.

Every byte takes the **class** of the character it encodes (:data:`CLASSES`, in this order):

- ``newline``: the characters ``str.splitlines`` breaks at (LF, CR, VT, FF, FS, GS, RS,
  NEL, U+2028, U+2029);
- ``whitespace``: any other ``str.isspace`` character (space, tab, no-break space, ...);
- ``ascii_letters``: A–Z, a–z;
- ``digits``: decimal digits of any script (Unicode category Nd: 0–9, ٣, ３, ...);
- ``ascii_punctuation``: the other printable ASCII characters (``!`` to ``~``);
- a non-ASCII letter, mark or number takes its script, by the Unicode block it lies in
  (:data:`SCRIPT_RANGES`): ``latin`` (Latin-1 letters, Latin Extended, IPA, combining
  diacritics, fullwidth Latin), ``greek``, ``cyrillic``, ``arabic``, ``hebrew``,
  ``devanagari``, ``han`` (CJK ideographs, radicals, 々 〇), ``kana`` (Hiragana and
  Katakana), ``hangul``;
- ``symbols``: emoji and every other non-ASCII symbol or punctuation mark (categories S*
  and P*), with the characters that join and style emoji (ZWJ, variation selectors, the
  keycap mark, tag characters);
- ``other``: everything else (ASCII control characters, scripts not listed, private use).

Each byte's **position** is the number of bytes of the same document before it, bucketed on
a log scale (:data:`POSITION_EDGES`): 0–63, 64–255, 256–1023, ... up to an open last bucket
from 1 MiB. How it meets ``--stride``: within a document's first window (``context``
tokens) a token sees every token before it, so there the curve is how the model uses
context; every later token is predicted from between ``context - stride`` and
``context - 1`` tokens before it (the rolling windows), whatever its position. Past the
first window's bytes the curve therefore flattens: it compares how each model does at full
window, and a smaller stride lifts that floor of context (at more forward passes). With two
tokenizers the first window covers different numbers of bytes (``context`` × each model's
bytes per token), which the curve shows too.

Everything is reduced per document to a few sums (:class:`Attribution`: nats and bytes per
class and per bucket, float64 and int64), never kept per token or per byte across a corpus.
Per-class and per-bucket sums each add up to the document's totals. A corpus's are summed
into memory that does not grow with it (:class:`AttributionSums`): exact totals, and the same
sums over :data:`GROUPS` random groups of documents, which the breakdown's bootstrap resamples.
"""

from __future__ import annotations

import bisect
import functools
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

CLASSES: tuple[str, ...] = (
    "newline",
    "whitespace",
    "ascii_letters",
    "digits",
    "ascii_punctuation",
    "latin",
    "greek",
    "cyrillic",
    "arabic",
    "hebrew",
    "devanagari",
    "han",
    "kana",
    "hangul",
    "symbols",
    "other",
)
_INDEX = {name: i for i, name in enumerate(CLASSES)}

# Unicode blocks whose letters, marks and non-decimal numbers belong to one script: sorted,
# disjoint, inclusive. Symbols and punctuation inside them (×, ÷, 、, 。) are ``symbols``.
SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x00A0, 0x02FF, "latin"),  # Latin-1 letters, Extended-A/B, IPA, spacing modifiers
    (0x0300, 0x036F, "latin"),  # combining diacritics: decomposed text puts them on Latin
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),  # Arabic Supplement
    (0x0870, 0x08FF, "arabic"),  # Arabic Extended-B/A
    (0x0900, 0x097F, "devanagari"),
    (0x1100, 0x11FF, "hangul"),  # Jamo
    (0x1C80, 0x1C8F, "cyrillic"),  # Cyrillic Extended-C
    (0x1D00, 0x1DBF, "latin"),  # phonetic extensions (their Greek and Cyrillic letters too)
    (0x1E00, 0x1EFF, "latin"),  # Latin Extended Additional (Vietnamese)
    (0x1F00, 0x1FFF, "greek"),  # Greek Extended
    (0x2070, 0x209F, "latin"),  # superscripts and subscripts: ⁱ ⁿ ₐ
    (0x2100, 0x218F, "latin"),  # letterlike symbols and number forms: K Å ℓ Ⅻ
    (0x2C60, 0x2C7F, "latin"),  # Latin Extended-C
    (0x2DE0, 0x2DFF, "cyrillic"),  # Cyrillic Extended-A
    (0x2E80, 0x2FDF, "han"),  # CJK and Kangxi radicals
    (0x3000, 0x303F, "han"),  # CJK symbols: its letters are 々 〆 〇 〡–〩
    (0x3040, 0x30FF, "kana"),  # Hiragana, Katakana
    (0x3130, 0x318F, "hangul"),  # compatibility Jamo
    (0x31F0, 0x31FF, "kana"),  # Katakana phonetic extensions
    (0x3400, 0x4DBF, "han"),  # CJK Extension A
    (0x4E00, 0x9FFF, "han"),  # CJK Unified Ideographs
    (0xA640, 0xA69F, "cyrillic"),  # Cyrillic Extended-B
    (0xA720, 0xA7FF, "latin"),  # Latin Extended-D
    (0xA8E0, 0xA8FF, "devanagari"),  # Devanagari Extended
    (0xA960, 0xA97F, "hangul"),  # Jamo Extended-A
    (0xAB30, 0xAB6F, "latin"),  # Latin Extended-E (phonetic, with a few Greek letters)
    (0xAC00, 0xD7FF, "hangul"),  # syllables, Jamo Extended-B
    (0xF900, 0xFAFF, "han"),  # CJK compatibility ideographs
    (0xFB00, 0xFB06, "latin"),  # ligatures ﬀ ﬁ ﬂ
    (0xFB1D, 0xFB4F, "hebrew"),  # Hebrew presentation forms
    (0xFB50, 0xFDFF, "arabic"),  # Arabic presentation forms A
    (0xFE70, 0xFEFE, "arabic"),  # Arabic presentation forms B (not U+FEFF, the BOM)
    (0xFF21, 0xFF3A, "latin"),  # fullwidth A–Z
    (0xFF41, 0xFF5A, "latin"),  # fullwidth a–z
    (0xFF66, 0xFF9F, "kana"),  # halfwidth Katakana
    (0xFFA0, 0xFFDC, "hangul"),  # halfwidth Jamo
    (0x10780, 0x107BF, "latin"),  # Latin Extended-F
    (0x1AFF0, 0x1B16F, "kana"),  # Kana extensions and supplement
    (0x1DF00, 0x1DFFF, "latin"),  # Latin Extended-G
    (0x1EE00, 0x1EEFF, "arabic"),  # Arabic mathematical letters
    (0x20000, 0x3FFFF, "han"),  # CJK Extensions B–H, compatibility supplement
)
_RANGE_STARTS = [first for first, _, _ in SCRIPT_RANGES]
_NEWLINES = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Not symbols themselves, but only ever seen binding emoji together or styling them.
_EMOJI_PARTS = frozenset("\u200d\u20e3") | frozenset(map(chr, range(0xFE00, 0xFE10)))

# Bucket i holds positions [POSITION_EDGES[i-1], POSITION_EDGES[i]); the last is open.
POSITION_EDGES: tuple[int, ...] = tuple(64 * 4**k for k in range(8))
POSITIONS: tuple[str, ...] = (
    *(f"{lo}-{hi - 1}" for lo, hi in zip((0, *POSITION_EDGES[:-1]), POSITION_EDGES, strict=True)),
    f"{POSITION_EDGES[-1]}+",
)


def character_class(char: str) -> str:
    """The class (a name in :data:`CLASSES`) of one character; see the module docstring.

    Example:
        >>> [character_class(c) for c in "\\n a7."]
        ['newline', 'whitespace', 'ascii_letters', 'digits', 'ascii_punctuation']
        >>> [character_class(c) for c in "éλЖ中カ한"]
        ['latin', 'greek', 'cyrillic', 'han', 'kana', 'hangul']
        >>> [character_class(c) for c in "😀、\\x00"]
        ['symbols', 'symbols', 'other']
    """
    if char in _NEWLINES:
        return "newline"
    if char.isspace():
        return "whitespace"
    if char.isascii():
        if char.isalpha():
            return "ascii_letters"
        if char.isdigit():
            return "digits"
        return "ascii_punctuation" if char.isprintable() else "other"
    category = unicodedata.category(char)
    if category == "Nd":
        return "digits"
    if category[0] in "SP" or char in _EMOJI_PARTS or 0xE0020 <= ord(char) <= 0xE007F:
        return "symbols"
    i = bisect.bisect_right(_RANGE_STARTS, ord(char)) - 1
    if i >= 0 and ord(char) <= SCRIPT_RANGES[i][1]:
        return SCRIPT_RANGES[i][2]
    return "other"


@functools.cache
def _bmp_table() -> NDArray[np.uint8]:
    # The class of every code point below U+10000, built once (~0.1 s): most text is all BMP,
    # and a table lookup classifies megabytes in milliseconds.
    return np.array([_INDEX[character_class(chr(c))] for c in range(0x10000)], dtype=np.uint8)


def byte_classes(text: str) -> NDArray[np.uint8]:
    """The class index (into :data:`CLASSES`) of every UTF-8 byte of ``text``.

    Each byte takes the class of the character it is part of, so a character of ``k``
    bytes contributes ``k`` equal entries.

    Example:
        >>> [CLASSES[i] for i in byte_classes("a é\\n")]
        ['ascii_letters', 'whitespace', 'latin', 'latin', 'newline']
    """
    if text.isascii():  # one byte per character: skip the UTF-32 round trip
        return _bmp_table()[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    bmp = points < 0x10000
    classes = np.empty(len(points), dtype=np.uint8)
    classes[bmp] = _bmp_table()[points[bmp]]
    if not bmp.all():
        astral, inverse = np.unique(points[~bmp], return_inverse=True)
        lookup = np.array([_INDEX[character_class(chr(c))] for c in astral], dtype=np.uint8)
        classes[~bmp] = lookup[inverse]
    lengths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.repeat(classes, lengths)


def byte_values(values: ArrayLike, token_lengths: ArrayLike) -> NDArray[np.float64]:
    """Per-token values spread uniformly over each token's bytes: one float64 per byte.

    Args:
        values: one value per token, in text order.
        token_lengths: each token's UTF-8 bytes, all positive, in the same order.

    Example:
        >>> byte_values([2.0, 3.0], [2, 3]).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    lengths = np.asarray(token_lengths, dtype=np.int64)
    return np.repeat(np.asarray(values, dtype=np.float64) / lengths, lengths)


@dataclass(frozen=True, eq=False)
class Attribution:
    """One document's nats and bytes by character class and by position bucket.

    Attributes:
        class_nats: float64 [len(CLASSES)].
        class_bytes: int64 [len(CLASSES)].
        position_nats: float64 [len(POSITIONS)].
        position_bytes: int64 [len(POSITIONS)].
    """

    class_nats: NDArray[np.float64]
    class_bytes: NDArray[np.int64]
    position_nats: NDArray[np.float64]
    position_bytes: NDArray[np.int64]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attribution):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("class_nats", "class_bytes", "position_nats", "position_bytes")
        )

    __hash__ = None  # type: ignore[assignment]  # arrays inside

    def parts(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Nats and bytes of every part in one row each: the classes, then the buckets."""
        return (
            np.concatenate([self.class_nats, self.position_nats]),
            np.concatenate([self.class_bytes, self.position_bytes]),
        )


def attribute(
    text: str,
    nats: ArrayLike,
    token_lengths: ArrayLike,
    *,
    classes: NDArray[np.uint8] | None = None,
) -> Attribution:
    """Attribute a document's per-token nats to its bytes' classes and positions.

    Args:
        text: the document.
        nats: float64 nats of each scored token, in text order.
        token_lengths: each scored token's UTF-8 bytes (all positive); together they must
            cover ``text`` exactly.
        classes: ``byte_classes(text)``, if already computed (the scoring engine does it
            ahead of the model, in its encoding thread).

    Raises:
        ValueError: the lengths do not match, a token has no bytes, or the tokens' bytes do
            not add up to the text's.

    Example:
        >>> a = attribute("hi 42", [3.0, 1.0, 4.0], [2, 1, 2])
        >>> dict(zip(CLASSES, a.class_nats.tolist())) == {
        ...     **dict.fromkeys(CLASSES, 0.0), "ascii_letters": 3.0, "whitespace": 1.0,
        ...     "digits": 4.0}
        True
        >>> a.position_nats[0], a.position_bytes[0]
        (np.float64(8.0), np.int64(5))
    """
    nats = np.asarray(nats, dtype=np.float64)
    lengths = np.asarray(token_lengths, dtype=np.int64)
    classes = byte_classes(text) if classes is None else classes
    if len(nats) != len(lengths):
        raise ValueError(f"{len(nats)} nats for {len(lengths)} token lengths")
    if (lengths <= 0).any():
        raise ValueError("every token must have at least one byte (0-byte tokens are not scored)")
    if int(lengths.sum()) != len(classes):
        raise ValueError(f"tokens cover {int(lengths.sum())} bytes, the text has {len(classes)}")
    per_byte = byte_values(nats, lengths)
    # Buckets are contiguous runs of bytes: sum each run, and count it by its bounds.
    starts = np.array((0, *POSITION_EDGES), dtype=np.int64)
    ends = np.minimum(np.array((*POSITION_EDGES, len(classes)), dtype=np.int64), len(classes))
    position_nats = np.zeros(len(POSITIONS), dtype=np.float64)
    used = starts < len(classes)
    if used.any():
        position_nats[used] = np.add.reduceat(per_byte, starts[used])
    return Attribution(
        class_nats=np.bincount(classes, weights=per_byte, minlength=len(CLASSES)),
        class_bytes=np.bincount(classes, minlength=len(CLASSES)).astype(np.int64),
        position_nats=position_nats,
        position_bytes=np.maximum(ends - starts, 0),
    )


@dataclass(frozen=True)
class Attributions:
    """Many documents' :class:`Attribution` as columns, one row per document, in input order.

    Attributes:
        class_nats: float64 [documents, len(CLASSES)].
        class_bytes: int64 [documents, len(CLASSES)].
        position_nats: float64 [documents, len(POSITIONS)].
        position_bytes: int64 [documents, len(POSITIONS)].

    Example:
        >>> rows = [attribute("ab", [1.0, 2.0], [1, 1]), attribute("7", [4.0], [1])]
        >>> columns = Attributions.from_rows(rows)
        >>> len(columns), columns.class_bytes[:, CLASSES.index("digits")].tolist()
        (2, [0, 1])
        >>> columns[1] == rows[1]
        True
    """

    class_nats: NDArray[np.float64]
    class_bytes: NDArray[np.int64]
    position_nats: NDArray[np.float64]
    position_bytes: NDArray[np.int64]

    @classmethod
    def from_parts(cls, nats: NDArray[np.float64], n_bytes: NDArray[np.int64]) -> Attributions:
        """Columns from [documents, parts] rows of :meth:`Attribution.parts`."""
        k = len(CLASSES)
        return cls(nats[:, :k], n_bytes[:, :k], nats[:, k:], n_bytes[:, k:])

    @classmethod
    def from_rows(cls, rows: Sequence[Attribution]) -> Attributions:
        """Columns from per-document rows."""
        return cls(
            np.array([r.class_nats for r in rows], dtype=np.float64).reshape(-1, len(CLASSES)),
            np.array([r.class_bytes for r in rows], dtype=np.int64).reshape(-1, len(CLASSES)),
            np.array([r.position_nats for r in rows], dtype=np.float64).reshape(-1, len(POSITIONS)),
            np.array([r.position_bytes for r in rows], dtype=np.int64).reshape(-1, len(POSITIONS)),
        )

    def __len__(self) -> int:
        return len(self.class_nats)

    def __getitem__(self, index: int) -> Attribution:
        return Attribution(
            self.class_nats[index],
            self.class_bytes[index],
            self.position_nats[index],
            self.position_bytes[index],
        )


# ---- a corpus's sums ----------------------------------------------------------------------

# The breakdown's bootstrap resamples groups of documents, not documents, so that its memory is
# bounded whatever the corpus: ~40 MB a model. Up to GROUPS documents each group holds one
# document, and the bootstrap is the per-document one.
GROUPS = 1 << 16
# A group of several documents sums their nats in integers of 2**-24 nat: exact, so the same for
# any order of arrival and any world size. Its headroom, 2**39 nats in one part of one group, is
# hundreds of terabytes of text.
_UNITS_PER_NAT = 1 << 24
# Documents summed at once: numpy's scatter-adds cost a few microseconds a document, not per call.
_PENDING = 4096


def document_groups(indices: ArrayLike) -> NDArray[np.int64]:
    """The group of each document (by its position in the input) in a corpus's :class:`PartSums`.

    The first :data:`GROUPS` documents start one group each; every later one joins the group a
    hash of its position picks (splitmix64), so that each group is a random sample of the
    corpus, whatever its order (sorted by source, by length, ...).

    Example:
        >>> document_groups([0, 1, GROUPS - 1]).tolist()
        [0, 1, 65535]
        >>> later = document_groups(np.arange(GROUPS, 9 * GROUPS))
        >>> bool(later.min() >= 0 and later.max() < GROUPS), len(np.unique(later)) > 0.99 * GROUPS
        (True, True)
    """
    i = np.asarray(indices, dtype=np.uint64).reshape(-1)
    z = i + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.where(i < GROUPS, i, z % np.uint64(GROUPS)).astype(np.int64)


def exact_partials(values: Iterable[float]) -> list[float]:
    """A few floats whose sum, done exactly, is the exact sum of ``values``.

    ``math.fsum`` rounds the exact sum once; what that rounding left out is summed the same
    way, until nothing is. So partials merge: ``math.fsum`` of the partials of several sets
    is ``math.fsum`` of all their values together, in any grouping and order.

    Example:
        >>> exact_partials([1e16, 1.0, -1e16 + 2.0]) == exact_partials([3.0])
        True
        >>> math.fsum(exact_partials([0.1] * 10) + exact_partials([0.2] * 5)) == math.fsum(
        ...     [0.1] * 10 + [0.2] * 5)
        True
    """
    values = list(values)
    out: list[float] = []
    while (total := math.fsum(values)) != 0:
        out.append(total)
        if not math.isfinite(total):
            break
        values.append(-total)
    return out


@dataclass(frozen=True)
class PartSums:
    """Nats and bytes of each part (a character class, a position bucket) over a corpus.

    Exact totals, and the same sums by group of documents (:func:`document_groups`), for
    the bootstrap to resample.

    Attributes:
        nats: float64 [parts]: every document's nats in the part, summed exactly
            (``math.fsum``).
        bytes: int64 [parts].
        documents: int64 [parts]: documents with bytes in the part.
        group_nats: float64 [groups, parts], for each group holding a document with bytes,
            in group order: exact where the group holds one document, else to 2**-24 nat.
        group_bytes: int64 [groups, parts], the same groups.
    """

    nats: NDArray[np.float64]
    bytes: NDArray[np.int64]
    documents: NDArray[np.int64]
    group_nats: NDArray[np.float64]
    group_bytes: NDArray[np.int64]


@dataclass(frozen=True)
class CorpusAttribution:
    """A corpus's nats and bytes by character class and by position bucket (:class:`PartSums`
    over :data:`CLASSES` and :data:`POSITIONS`), summed by :class:`AttributionSums`."""

    classes: PartSums
    positions: PartSums


class AttributionSums:
    """Documents' :class:`Attribution` summed into a :class:`CorpusAttribution`, in memory that
    does not grow with the corpus.

    Documents may arrive in any order, and be split between ranks: every sum kept is
    either exact in integers or (a group's nats while it holds one document) has a single
    term, so adding the ranks' :meth:`arrays` element by element and concatenating their
    :meth:`partials` gives the same result, bit for bit, however the documents were dealt.

    Example:
        >>> sums = AttributionSums()
        >>> sums.add(1, attribute("7", [4.0], [1]))
        >>> sums.add(0, attribute("ab", [1.0, 2.0], [1, 1]))
        >>> corpus = AttributionSums.combine(sums.arrays(), [sums.partials()])
        >>> corpus.classes.nats[CLASSES.index("ascii_letters")], corpus.classes.documents[3]
        (np.float64(3.0), np.int64(1))
        >>> corpus.classes.group_nats[:, CLASSES.index("digits")].tolist()  # groups 0 and 1
        [0.0, 4.0]
    """

    def __init__(self) -> None:
        parts = len(CLASSES) + len(POSITIONS)
        # Zeroed lazily by the OS: a small corpus touches a few pages of each.
        self._count = np.zeros(GROUPS, dtype=np.int64)  # documents with bytes, by group
        self._nats = np.zeros((GROUPS, parts), dtype=np.float64)  # read where count is 1
        self._units = np.zeros((GROUPS, parts), dtype=np.int64)  # nats in 2**-24 nat
        self._bytes = np.zeros((GROUPS, parts), dtype=np.int64)
        self._documents = np.zeros(parts, dtype=np.int64)
        self._partials: list[list[float]] = [[] for _ in range(parts)]
        self._pending: list[tuple[int, Attribution]] = []

    def add(self, index: int, attribution: Attribution) -> None:
        """Add the document at input position ``index``."""
        self._pending.append((index, attribution))
        if len(self._pending) >= _PENDING:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        pairs = [r.parts() for _, r in rows]
        nats, n_bytes = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        has_bytes = n_bytes.sum(axis=1) > 0  # a document without bytes is in no part
        nats, n_bytes = nats[has_bytes], n_bytes[has_bytes]
        groups = document_groups(np.array([i for i, _ in rows], dtype=np.int64)[has_bytes])
        np.add.at(self._count, groups, 1)
        np.add.at(self._nats, groups, nats)
        np.add.at(self._units, groups, np.rint(nats * _UNITS_PER_NAT).astype(np.int64))
        np.add.at(self._bytes, groups, n_bytes)
        self._documents += (n_bytes > 0).sum(axis=0)
        for j, partials in enumerate(self._partials):
            self._partials[j] = exact_partials([*partials, *nats[:, j].tolist()])

    def arrays(self) -> list[np.ndarray]:
        """The sums to add up, element by element, across ranks."""
        self._flush()
        return [self._count, self._nats, self._units, self._bytes, self._documents]

    def partials(self) -> list[list[float]]:
        """Each part's exact nats (:func:`exact_partials`), to concatenate across ranks."""
        self._flush()
        return self._partials

    @staticmethod
    def combine(
        arrays: Sequence[np.ndarray], partials: Sequence[list[list[float]]]
    ) -> CorpusAttribution:
        """The corpus's sums from every rank's :meth:`arrays` (added up) and :meth:`partials`."""
        count, nats, units, n_bytes, documents = arrays
        group_nats = units / _UNITS_PER_NAT
        np.copyto(group_nats, nats, where=(count == 1)[:, None])
        held = count > 0
        group_nats, group_bytes = group_nats[held], n_bytes[held]
        totals = np.array([math.fsum(p for rank in partials for p in rank[j])
                           for j in range(len(documents))])  # fmt: skip

        def part(columns: slice) -> PartSums:
            return PartSums(
                totals[columns],
                group_bytes[:, columns].sum(axis=0),
                documents[columns],
                group_nats[:, columns],
                group_bytes[:, columns],
            )

        k = len(CLASSES)
        return CorpusAttribution(part(slice(0, k)), part(slice(k, None)))
