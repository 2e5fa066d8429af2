"""Exact ``token_bytes`` for tokenizers made elsewhere: tiktoken and Hugging Face.

A tiktoken ``Encoding`` is byte-level BPE over raw bytes, so it becomes one of our
:class:`~bpbeval.tokenizer.Tokenizer` as it is. A Hugging Face fast tokenizer stores its
tokens as strings in one of two conventions, and each maps back to bytes exactly:

- byte-level BPE (GPT-2 and its heirs): every byte is one printable character through the
  GPT-2 ``bytes_to_unicode`` map, so a token's bytes are its characters mapped back;
- SentencePiece style: ``▁`` (the metaspace) stands for a space and ``<0xNN>`` tokens are
  single bytes (byte fallback); other pieces are their UTF-8.

Special tokens count 0 bytes. What the table cannot capture (a normaliser that rewrites the
text, a prefix space, dropped characters) :func:`bpbeval.tokenizer.audit` reports, with
:meth:`HuggingFaceTokenizer.explain` naming the tokens and the cause.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import json
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tiktoken
import torch

from bpbeval.errors import MissingDependencyError, TokenizerError
from bpbeval.tokenizer.audit import TokenMismatch
from bpbeval.tokenizer.core import Tokenizer, sha256_json

if TYPE_CHECKING:
    import tokenizers

# Tried in this order when no bos is given: the start-of-document token of common families.
_BOS_CANDIDATES = ("<|bos|>", "<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", "</s>", "<eos>")
_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def from_tiktoken(encoding: tiktoken.Encoding, *, bos: str = "<|endoftext|>") -> Tokenizer:
    """Wrap any ``tiktoken.Encoding``; ``bos`` names the token documents are conditioned on.

    Example:
        >>> enc = tiktoken.Encoding(
        ...     "bytes", pat_str=r"\\S+|\\s+",
        ...     mergeable_ranks={bytes([b]): b for b in range(256)},
        ...     special_tokens={"<|endoftext|>": 256},
        ... )
        >>> tok = from_tiktoken(enc)
        >>> tok.bos_id, tok.token_bytes()[tok.encode("é")].tolist()
        (256, [1, 1])
    """
    return Tokenizer(encoding, bos=bos)


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    # GPT-2's bytes_to_unicode, inverted: printable Latin-1 bytes map to themselves, the
    # other 68 bytes to U+0100 onwards, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + i): b for i, b in enumerate(others)})
    return mapping


def _components(node: Any) -> Iterator[dict[str, Any]]:
    """Every component of a normalizer/pre-tokenizer/decoder config, Sequences flattened."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from _components(value)
    elif isinstance(node, list):
        for value in node:
            yield from _components(value)


class HuggingFaceTokenizer:
    """A Hugging Face fast tokenizer seen as a :class:`~bpbeval.tokenizer.TextTokenizer`.

    Build one with :func:`from_huggingface`.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos: str) -> None:
        # A copy without padding or truncation: either would change the ids of a document.
        self.tokenizer = type(tokenizer).from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        tokenizer = self.tokenizer
        self.config = json.loads(tokenizer.to_str())
        model = self.config["model"]
        if (
            model["type"] == "WordPiece"
            or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")
        ):
            raise TokenizerError(
                "cannot count bytes exactly for a tokenizer whose pieces carry a subword "
                "prefix or suffix (WordPiece, '</w>' BPE): its pieces do not say where spaces were"
            )
        bos_id = tokenizer.token_to_id(bos)
        if bos_id is None:
            raise TokenizerError(f"{bos!r} is not in the tokenizer's vocabulary; pass bos=")
        self.bos_id = bos_id
        added = tokenizer.get_added_tokens_decoder()
        self._special_names = {t.content for t in added.values() if t.special}
        # BPE names its unknown token; Unigram gives its id.
        unk = model.get("unk_token")
        self._unk_id = model.get("unk_id", None if unk is None else tokenizer.token_to_id(unk))
        self._pieces = self._token_pieces(added)
        self._lengths = np.array([len(p) for p in self._pieces], dtype=np.int32)

    @property
    def vocab_size(self) -> int:
        return len(self._lengths)

    @functools.cached_property
    def hash(self) -> str:
        """SHA-256 of what decides the ids (vocabulary, merges, normaliser, ...) and the bos id.

        The post-processor is left out: it only adds special tokens, which are never added.
        """
        parts = ("normalizer", "pre_tokenizer", "model", "added_tokens", "decoder")
        return sha256_json({**{k: self.config[k] for k in parts}, "bos_id": self.bos_id})

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, encoded in parallel (rayon)."""
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def token_bytes(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int32 tensor ``[vocab_size]`` of the bytes each token stands for (0 for specials)."""
        return torch.from_numpy(self._lengths).to(device=device, copy=True)

    def _token_pieces(self, added: dict[int, Any]) -> list[bytes]:
        """The bytes of the text each id stands for (b"" for special and unknown tokens)."""
        components = [
            *_components(self.config["pre_tokenizer"]),
            *_components(self.config["decoder"]),
        ]
        byte_level = any(c["type"] == "ByteLevel" for c in components)
        metaspaces = [c["replacement"] for c in components if c["type"] == "Metaspace"]
        metaspaces += [
            c["pattern"]["String"]
            for c in components
            if c["type"] == "Replace" and c["content"] == " " and "String" in c["pattern"]
        ]
        byte_fallback = bool(self.config["model"].get("byte_fallback"))
        to_byte = _unicode_to_byte()
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        pieces = [b""] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            if i in added:
                # Added tokens match their content in the raw text; special ones are not text.
                text = "" if added[i].special else added[i].content
            elif i == self._unk_id:
                text = ""
            elif byte_level:
                pieces[i] = b"".join(
                    bytes([to_byte[c]]) if c in to_byte else c.encode("utf-8") for c in piece
                )
                continue
            elif byte_fallback and _BYTE_FALLBACK.fullmatch(piece):
                pieces[i] = bytes([int(piece[3:5], 16)])
                continue
            else:
                text = piece
                for metaspace in metaspaces:
                    text = text.replace(metaspace, " ")
            pieces[i] = text.encode("utf-8")
        return pieces

    @functools.cached_property
    def _normalizers(self) -> list[str]:
        return [
            t["type"] for t in _components(self.config["normalizer"]) if t["type"] != "Sequence"
        ]

    @functools.cached_property
    def _adds_prefix_space(self) -> bool:
        components = [
            *_components(self.config["normalizer"]),
            *_components(self.config["pre_tokenizer"]),
        ]
        return any(
            (c["type"] == "Metaspace" and c.get("prepend_scheme", "always") != "never")
            or (c["type"] == "ByteLevel" and c.get("add_prefix_space"))
            or c["type"] == "Prepend"
            for c in components
        )

    def explain(self, text: str) -> tuple[list[TokenMismatch], str]:
        """The tokens of ``text`` whose bytes disagree with the text, and why.

        The bytes the tokens stand for are aligned with the text's bytes (a diff); each
        stretch where they differ names the tokens over it and gets a cause.
        """
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        ends = np.cumsum([len(self._pieces[i]) for i in ids]).tolist()
        starts = [0, *ends[:-1]]
        target = text.encode("utf-8")
        stream = b"".join(self._pieces[i] for i in ids)
        matcher = difflib.SequenceMatcher(None, target, stream, autojunk=False)
        mismatches: list[TokenMismatch] = []
        causes: dict[str, None] = {}  # ordered and unique
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            # Tokens overlapping the stretch, and empty (special, unknown) tokens inside it;
            # both bounds are sorted, so only the candidates between two bisections are tried.
            candidates = range(bisect.bisect_left(ends, j1), bisect.bisect_right(starts, j2))
            over = [
                k
                for k in candidates
                if (starts[k] < j2 and ends[k] > j1) or (starts[k] == ends[k] and j1 <= starts[k])
            ]
            over_ids = tuple(ids[k] for k in over)
            position = over[0] if over else bisect.bisect_right(starts, j1)
            span = target[i1:i2].decode("utf-8", errors="replace")
            mismatches.append(TokenMismatch(position, over_ids, span, i2 - i1, j2 - j1))
            causes[self._cause(tag, over_ids, stream[j1:j2])] = None
        return mismatches, "; ".join(causes)

    def _cause(self, tag: str, ids: tuple[int, ...], extra: bytes) -> str:
        """Why one stretch of tokens disagrees with the text (``extra``: their surplus bytes)."""
        if self._unk_id in ids:
            return "unknown characters became the unknown token, which counts 0 bytes"
        specials = sorted({self.tokenizer.id_to_token(i) for i in ids} & self._special_names)
        if specials:
            return f"special tokens {specials} in the text count 0 bytes"
        if tag == "insert" and extra == b" " and self._adds_prefix_space:
            return "a prefix space is added before the first word"
        if self._normalizers:
            return f"the normalizer ({', '.join(self._normalizers)}) rewrites the text"
        if tag == "delete":
            return "characters not in the vocabulary were dropped (no byte fallback)"
        return "token bytes disagree with the text they cover"


def from_huggingface(tokenizer: Any, *, bos: str | None = None) -> HuggingFaceTokenizer:
    """Adapt a ``tokenizers.Tokenizer`` or a transformers fast tokenizer.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``, or a transformers tokenizer backed by one.
        bos: the token documents are conditioned on; by default the transformers tokenizer's
            ``bos_token`` (else ``eos_token``), or the first special token of the usual names.

    Raises:
        TokenizerError: not a fast tokenizer, no bos found, or a piece convention whose bytes
            cannot be known (WordPiece).

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers, decoders
        >>> byte = pre_tokenizers.ByteLevel.alphabet()
        >>> hf = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(byte))}, []))
        >>> hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> _ = hf.add_special_tokens(["<|endoftext|>"])
        >>> tok = from_huggingface(hf)
        >>> tok.vocab_size, tok.bos_id, tok.token_bytes()[tok.encode_batch(["é!"])[0]].tolist()
        (257, 256, [1, 1, 1])
    """
    try:
        import tokenizers
    except ImportError:
        raise MissingDependencyError(
            "adapting a Hugging Face tokenizer needs the tokenizers package: "
            "pip install 'bpbeval[hf]'"
        ) from None

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TokenizerError(
            f"{type(tokenizer).__name__} is not a Hugging Face fast tokenizer; "
            "load it with use_fast=True or pass a tokenizers.Tokenizer"
        )
    if bos is None:
        bos = getattr(tokenizer, "bos_token", None) or getattr(tokenizer, "eos_token", None)
    if bos is None:
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        bos = next((c for c in _BOS_CANDIDATES if c in specials), None)
        if bos is None:
            raise TokenizerError(
                f"cannot tell which token starts a document among {sorted(specials)}; pass bos="
            )
    return HuggingFaceTokenizer(backend, bos=bos)
