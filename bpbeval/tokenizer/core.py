"""Our tokenizer: trained by rustbpe, run by tiktoken, saved and loaded without pickle.

A saved tokenizer is a directory of three plain files:

- ``tokenizer.tiktoken``: the mergeable ranks in tiktoken's BPE format (``base64(token) rank``);
- ``bpbeval_tokenizer.json``: pattern, special tokens and their ids, bos, format version and hashes;
- ``token_bytes.npy``: the int32 byte length of every id (0 for special tokens), so other
  tools can read it without tiktoken (``numpy.load(..., allow_pickle=False)``).

The tokenizer's identity is ``hash``: a SHA-256 over the pattern, the special tokens, the
bos id and the SHA-256 of the ranks file. Checkpoints record it; ``load`` verifies it.

Whitespace runs of a million characters overflow the regex engine of tiktoken and rustbpe
(fancy_regex). Under the patterns this module knows, such a run is encoded whole, as the one
piece the pattern makes of it, and the rest of the text around it (see ``_split_long_runs``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import rustbpe
import tiktoken
import torch

from bpbeval.errors import TokenizerError, is_rust_panic
from bpbeval.files import atomic_directory

# GPT-4's split pattern with \p{N}{1,2} instead of \p{N}{1,3}, as nanochat uses: fewer number
# tokens leaves more of a small vocabulary for words.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# tiktoken's patterns (tiktoken_ext/openai_public.py); gpt2, r50k_base and p50k_base share one.
_R50K_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# The first one is the bos token; the rest are nanochat's chat tokens, kept so that token ids
# line up with nanochat's.
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)

FORMAT_VERSION = 1
RANKS_FILE = "tokenizer.tiktoken"
CONFIG_FILE = "bpbeval_tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
SAVED_FILES = (CONFIG_FILE, RANKS_FILE, TOKEN_BYTES_FILE)  # all that a saved directory holds
# What the hash covers: everything that decides the ids and their bytes, not the name.
_IDENTITY_KEYS = ("pattern", "special_tokens", "bos_id", "ranks_sha256")


@runtime_checkable
class TextTokenizer(Protocol):
    """What scoring needs from a tokenizer: ours, or one adapted from tiktoken or Hugging Face."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids (one more than the largest id)."""
        ...

    @property
    def bos_id(self) -> int:
        """The token the model is conditioned on before a document (BOS, else EOS)."""
        ...

    @property
    def hash(self) -> str:
        """Hex identity of the tokenizer's content; checkpoints record it."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        ...

    def token_bytes(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int32 tensor ``[vocab_size]``: the UTF-8 bytes each token stands for, 0 if special."""
        ...


def sha256_json(obj: object) -> str:
    """The hex SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dump_ranks(ranks: dict[bytes, int]) -> bytes:
    return b"".join(
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


def _parse_ranks(data: bytes, path: Path) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{path} is corrupt: line {lineno} is not 'base64(token) rank'"
            ) from None
    return ranks


def _encoding(
    name: str,
    pat_str: str,
    mergeable_ranks: dict[bytes, int],
    special_tokens: dict[str, int],
    *,
    where: str,
) -> tiktoken.Encoding:
    """``tiktoken.Encoding(...)`` of values read from a file, checked first.

    tiktoken trusts its arguments: an id shared by two tokens makes its Rust core panic (or
    gives a special token that id's bytes), an id beyond 32 bits overflows, and a byte with
    no token of its own panics at encode time. ``where`` names the file in the error.
    """
    ids = [*mergeable_ranks.values(), *special_tokens.values()]
    if len(set(ids)) != len(ids) or not all(0 <= i < 2**31 for i in ids):
        raise TokenizerError(f"{where} is corrupt: token ids must be distinct and in 0..2**31-1")
    if not all(bytes([b]) in mergeable_ranks for b in range(256)):
        raise TokenizerError(f"{where} is corrupt: not every single byte has a token")
    try:
        return tiktoken.Encoding(
            name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens
        )
    except ValueError as e:  # the pattern does not compile
        raise TokenizerError(f"{where} is corrupt: {e}") from None


# Long whitespace runs. fancy_regex, the regex engine of tiktoken and rustbpe, keeps one
# backtracking entry per character that \s+(?!\S) takes and fails at 1,000,000 entries, which
# tiktoken and rustbpe turn into a panic: a run of a million spaces crashes the encoder. Such a
# run is one piece of the pre-tokenization, so it is encoded as one piece (BPE without the
# regex), and the text on either side by the regex.
#
# Why the cuts are exact, for the patterns below. Let H be a maximal run of whitespace (for the
# GPT-4 family, of whitespace other than \r and \n), N >= 2 characters long, followed by a
# non-whitespace character or the end of the text; H starts at s and ends at e.
# - s is a piece boundary. Before s comes a non-whitespace character, the start of the text,
#   or (GPT-4 family) \r or \n. No branch carries a non-whitespace character into whitespace
#   after it, except punctuation into [\r\n]* (H has no \r\n). A newline just before s ends a
#   \s*[\r\n] piece there (greedy \s* backtracks to the last newline of the run), or the
#   [\r\n]* of a punctuation piece; the branches tried before it need a letter, digit or
#   punctuation mark within the run. And the regex carries nothing across s: the patterns
#   have no lookbehind and no anchor but $, so matching from s does not depend on the text
#   before it, and what ends at s ends in a non-whitespace character or a newline, so neither
#   (?!\S) nor $ at the cut changes a piece (where \s++$ now fires at a newline, it takes the
#   same piece \s*[\r\n] took).
# - From s, every branch before the whitespace ones needs a non-whitespace character within the
#   first two, \s++$ and \s*[\r\n] fail (a non-whitespace character follows H, not a newline),
#   and greedy \s+(?!\S) backtracks one character: the piece is H without its last character,
#   which joins what follows (a word, for the GPT-4 family's [^\r\n\p{L}\p{N}]?+\p{L}+). At the
#   end of the text the piece is all of H; patterns with \s++$ take that without overflowing,
#   and there s may not be a boundary (cl100k's \s++$ joins a newline before H to it), so those
#   runs are left alone.
# - A run of the GPT-4 family's H followed by \r or \n is taken by \s*[\r\n], which fancy_regex
#   hands to the regex crate (no backtracking stack; measured to 2,000,000 characters): not cut.
#   (r50k's runs hold \r and \n, so they are never followed by one.)
@dataclass(frozen=True)
class _OnePieceRuns:
    chars: str  # the characters of a run H, as a regex class
    at_end: bool  # whether a run that ends the text is cut too


# The regex crate's \s (Unicode White_Space); Python's \s also takes \x1c-\x1f.
_HORIZONTAL_SPACE = r"\t\x0b\x0c \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_GPT4_RUNS = _OnePieceRuns(f"[{_HORIZONTAL_SPACE}]", at_end=True)
_ONE_PIECE_RUNS = {
    SPLIT_PATTERN: _GPT4_RUNS,
    _O200K_PATTERN: _GPT4_RUNS,
    _CL100K_PATTERN: _OnePieceRuns(f"[{_HORIZONTAL_SPACE}]", at_end=False),
    _R50K_PATTERN: _OnePieceRuns(rf"[\r\n{_HORIZONTAL_SPACE}]", at_end=False),
}
# Runs this long are cut out: a quarter of the engine's limit. Any length from 2 up is exact.
_LONG_RUN = 1 << 18


def _split_long_runs(text: str, pattern: str, min_run: int = _LONG_RUN) -> list[tuple[str, bool]]:
    """``text`` as ``(segment, is_one_piece)`` pairs, cut around whitespace runs of ``min_run``
    (at least 2) or more characters where ``pattern`` is one whose pieces are known (see above).

    The segments concatenate to ``text``. A one-piece segment is a single piece of the
    pre-tokenization; each other one pre-tokenizes, on its own, as it does inside ``text``.
    """
    runs = _ONE_PIECE_RUNS.get(pattern)
    if runs is None or len(text) < min_run:
        return [(text, False)]
    # A run of min_run characters holds min_run // 2 of them from a multiple of min_run // 2:
    # probing there skips the scan of a whole long text (a tenth of its encoding time).
    step = min_run // 2
    probe = re.compile(f"{runs.chars}{{{step}}}")
    if not any(probe.match(text, i) for i in range(0, len(text), step)):
        return [(text, False)]
    segments, start = [], 0
    for run in re.finditer(f"{runs.chars}{{{min_run},}}", text):
        s, e = run.span()
        if e < len(text):
            if text[e] in "\r\n":
                continue
            e -= 1
        elif not runs.at_end:
            continue
        segments += [(text[start:s], False), (text[s:e], True)]
        start = e
    segments.append((text[start:], False))
    return [segment for segment in segments if segment[0]]


def _encode_ordinary(encoding: tiktoken.Encoding, text: str, min_run: int = _LONG_RUN) -> list[int]:
    """``encoding.encode_ordinary(text)``, with long whitespace runs encoded as one piece."""
    with _rust_panics_as_errors(f"encoding a text of {len(text):,} characters"):
        ids = [
            encoding._encode_single_piece(segment)  # BPE of one piece, without the regex
            if one_piece
            else encoding.encode_ordinary(segment)
            for segment, one_piece in _split_long_runs(text, encoding._pat_str, min_run)
        ]
    return ids[0] if len(ids) == 1 else list(itertools.chain.from_iterable(ids))


@contextlib.contextmanager
def _rust_panics_as_errors(what: str) -> Iterator[None]:
    """Turn a panic in tiktoken or rustbpe into a ``TokenizerError`` saying ``what`` failed."""
    try:
        yield
    except BaseException as e:
        if not is_rust_panic(e):
            raise
        raise TokenizerError(
            f"{what} failed in the tokenizer's Rust code ({e}); a whitespace run of about a "
            "million characters overflows its regex, and bpbeval encodes such runs whole "
            "only under the split patterns it knows (its own; tiktoken's r50k/p50k, cl100k, "
            "o200k): shorten the run, or use one of those"
        ) from None


class Tokenizer:
    """A byte-level BPE tokenizer run by ``tiktoken``, with exact ``token_bytes``.

    Build one with :func:`train`, :meth:`load`, :func:`bpbeval.tokenizer.from_tiktoken` or
    :func:`bpbeval.tokenizer.load_nanochat`.

    Args:
        encoding: the ``tiktoken.Encoding`` to run.
        bos: the name of the special token that starts every document.

    Example:
        >>> tok = train(["the cat sat on the mat"] * 10, vocab_size=256 + 9 + 4)
        >>> ids = tok.encode("the mat")
        >>> tok.decode(ids), tok.vocab_size, tok.bos_id
        ('the mat', 269, 260)
        >>> int(tok.token_bytes()[ids].sum()) == len("the mat".encode())
        True
    """

    def __init__(self, encoding: tiktoken.Encoding, *, bos: str) -> None:
        if bos not in encoding.special_tokens_set:
            raise TokenizerError(
                f"{bos!r} is not a special token of encoding {encoding.name!r}; "
                f"its special tokens are {sorted(encoding.special_tokens_set)}"
            )
        self.encoding = encoding
        self.bos = bos
        self.bos_id = encoding.encode_single_token(bos)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos!r}, hash={self.hash[:12]})"

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @functools.cached_property
    def special_tokens(self) -> dict[str, int]:
        """Special token names and their ids, in id order."""
        ids = {s: self.encoding.encode_single_token(s) for s in self.encoding.special_tokens_set}
        return dict(sorted(ids.items(), key=lambda item: item[1]))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it are encoded as plain text.

        Raises:
            TokenizerError: tiktoken panicked (a whitespace run of a million characters,
                under a split pattern bpbeval does not know).
        """
        return _encode_ordinary(self.encoding, text)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """Token ids of each text, encoded on ``num_threads`` threads (tiktoken drops the GIL)."""
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(self.encode, texts))

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.encoding.decode(list(ids))

    @functools.cached_property
    def _ranks(self) -> dict[bytes, int]:
        enc = self.encoding
        return {token: enc.encode_single_token(token) for token in enc.token_byte_values()}

    @functools.cached_property
    def _lengths(self) -> np.ndarray:
        # From each token's raw bytes, not from decode(): a token that is not valid UTF-8 on
        # its own would decode to U+FFFD and count 3 bytes.
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for token, rank in self._ranks.items():
            lengths[rank] = len(token)
        return lengths

    def token_bytes(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int32 tensor ``[vocab_size]`` of the bytes each token stands for (0 for specials)."""
        return torch.from_numpy(self._lengths).to(device=device, copy=True)

    @functools.cached_property
    def _ranks_file(self) -> bytes:
        return _dump_ranks(self._ranks)

    @functools.cached_property
    def _identity(self) -> dict[str, object]:
        # tiktoken keeps the pattern only in a private attribute.
        pattern = self.encoding._pat_str
        ranks_sha256 = hashlib.sha256(self._ranks_file).hexdigest()
        values = (pattern, self.special_tokens, self.bos_id, ranks_sha256)
        return dict(zip(_IDENTITY_KEYS, values, strict=True))

    @functools.cached_property
    def hash(self) -> str:
        """Hex SHA-256 identity of the tokenizer's content (not of its name)."""
        return sha256_json(self._identity)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer to ``directory`` atomically, replacing a tokenizer saved there.

        Raises:
            FileExistsError: ``directory`` holds something else (the swap would delete it).
        """
        config = {
            "format_version": FORMAT_VERSION,
            "name": self.encoding.name,
            **self._identity,
            "hash": self.hash,
        }
        with atomic_directory(directory, owns=SAVED_FILES) as tmp:
            (tmp / RANKS_FILE).write_bytes(self._ranks_file)
            np.save(tmp / TOKEN_BYTES_FILE, self._lengths, allow_pickle=False)
            config_text = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
            (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`, verifying every file against its hash.

        Raises:
            TokenizerError: the directory or one of its files is missing or corrupt.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"{directory}: no such tokenizer directory")
        for name in (CONFIG_FILE, RANKS_FILE, TOKEN_BYTES_FILE):
            if not (directory / name).is_file():
                raise TokenizerError(f"{directory / name} is missing; save the tokenizer again")

        config_path = directory / CONFIG_FILE
        try:
            config = json.loads(config_path.read_text("utf-8"))
            version = config["format_version"]
            if version != FORMAT_VERSION:
                raise TokenizerError(
                    f"{config_path} has format version {version}; "
                    f"this bpbeval reads version {FORMAT_VERSION}"
                )
            identity = {key: config[key] for key in _IDENTITY_KEYS}
            name, expected_hash = config["name"], config["hash"]
            bos = {i: s for s, i in identity["special_tokens"].items()}[identity["bos_id"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TokenizerError(f"{config_path} is corrupt ({type(e).__name__}: {e})") from None
        if sha256_json(identity) != expected_hash:
            raise TokenizerError(f"{config_path} is corrupt: its content does not match its hash")

        ranks_path = directory / RANKS_FILE
        data = ranks_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != identity["ranks_sha256"]:
            raise TokenizerError(f"{ranks_path} is corrupt: its SHA-256 is not the recorded one")
        ranks = _parse_ranks(data, ranks_path)
        try:
            encoding = _encoding(
                name, identity["pattern"], ranks, identity["special_tokens"], where=str(config_path)
            )
        except TypeError as e:  # a field of the wrong JSON type
            raise TokenizerError(f"{config_path} is corrupt: {e}") from None
        tokenizer = cls(encoding, bos=bos)

        bytes_path = directory / TOKEN_BYTES_FILE
        try:
            stored = np.load(bytes_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise TokenizerError(f"{bytes_path} is corrupt ({e})") from None
        if stored.dtype != np.int32 or not np.array_equal(stored, tokenizer._lengths):
            raise TokenizerError(f"{bytes_path} is corrupt: it disagrees with {RANKS_FILE}")
        return tokenizer


def _training_texts(texts: Iterable[str], pattern: str) -> Iterator[str]:
    """``texts`` for rustbpe, cut where the pattern splits anyway, long runs in short parts.

    rustbpe takes text, not pieces, and its regex overflows on a whitespace run of a million
    characters. A run cut out by :func:`_split_long_runs` is given in parts of at most
    ``_LONG_RUN`` characters, each of which is one piece on its own: training counts one
    pair fewer per cut, one in 262,144 of that run's. Encoding stays exact.
    """
    for text in texts:
        for segment, one_piece in _split_long_runs(text, pattern):
            if one_piece:
                yield from (segment[i : i + _LONG_RUN] for i in range(0, len(segment), _LONG_RUN))
            else:
                yield segment


def train(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pattern: str = SPLIT_PATTERN,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with rustbpe; run it with tiktoken.

    Args:
        texts: the training documents, streamed once.
        vocab_size: the total number of ids: 256 byte tokens, the merges, then the special
            tokens. ``256 + len(special_tokens)`` gives a byte-level tokenizer (no merges).
        pattern: the pre-tokenisation regex; merges never cross its pieces.
        special_tokens: their names; the first one is the bos token.

    Raises:
        TokenizerError: ``vocab_size`` is too small, the pattern is invalid, or the text
            yields fewer merges than asked (the special ids would shift).

    Example:
        >>> tok = train(["ab ab ab"], vocab_size=256 + 1, special_tokens=["<|bos|>"])
        >>> tok.encode("ab"), tok.bos_id
        ([97, 98], 256)
    """
    specials = list(special_tokens)
    if not specials or len(set(specials)) != len(specials):
        raise TokenizerError(f"special_tokens must be distinct and at least one: {specials}")
    n_ranks = vocab_size - len(specials)
    if n_ranks < 256:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: 256 byte tokens and {len(specials)} special "
            f"tokens need at least {256 + len(specials)}"
        )
    bpe = rustbpe.Tokenizer()
    try:
        with _rust_panics_as_errors("training"):
            bpe.train_from_iterator(_training_texts(texts, pattern), n_ranks, pattern=pattern)
    except ValueError as e:
        raise TokenizerError(f"cannot train: {e}") from None
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    if len(ranks) < n_ranks:
        raise TokenizerError(
            f"the training text yields only {len(ranks) - 256} merges, not the "
            f"{n_ranks - 256} that vocab_size={vocab_size} needs; ask for "
            f"vocab_size={len(ranks) + len(specials)} or less, or train on more text"
        )
    encoding = tiktoken.Encoding(
        "bpbeval",
        pat_str=bpe.get_pattern(),
        mergeable_ranks=ranks,
        special_tokens={name: len(ranks) + i for i, name in enumerate(specials)},
    )
    return Tokenizer(encoding, bos=specials[0])
