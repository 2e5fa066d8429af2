"""Our tokenizer: training, exact token_bytes, save/load, audit, nanochat interop, CLI."""

from __future__ import annotations

import json
import os
import pickle
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rustbpe
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

import bpbeval.tokenizer.core as core
from bpbeval.cli import run
from bpbeval.errors import TokenizerError
from bpbeval.tokenizer import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    TextTokenizer,
    Tokenizer,
    audit,
    load_nanochat,
    train,
)
from bpbeval.tokenizer.__main__ import main

# Chinese, Japanese, Korean, emoji (with ZWJ sequences and modifiers), combining marks, RTL.
MULTILINGUAL = (
    "北京是中华人民共和国的首都。东京是日本的首都，人口众多。서울은 대한민국의 수도입니다. "
    "家族👨‍👩‍👧‍👦 と 👍🏽 ✨🚀. Café, naïve, e\u0301, n\u0303, Å. مرحبا بالعالم. שלום עולם. "
    "Ελληνικά και Русский текст. 1234567890 3.14159 1e-10\n\n\t  \r\n"
) * 20


def corpus() -> list[str]:
    stdlib = Path(json.__file__).parent
    sources = [p.read_text("utf-8") for p in sorted(stdlib.glob("*.py"))]
    return [*pydoc_data.topics.topics.values(), *sources, MULTILINGUAL]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module")
def tok(texts) -> Tokenizer:
    return train(texts, 1024)


def test_train_matches_bare_rustbpe(texts, tok):
    bare = rustbpe.Tokenizer()
    bare.train_from_iterator(iter(texts), 1024 - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in bare.get_mergeable_ranks()}
    assert {t: tok.encoding.encode_single_token(t) for t in ranks} == ranks
    for text in [*texts[:20], MULTILINGUAL]:
        assert tok.encode(text) == bare.encode(text)
    assert tok.vocab_size == 1024
    assert tok.special_tokens == {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert tok.bos_id == tok.special_tokens["<|bos|>"]
    assert isinstance(tok, TextTokenizer)


def test_token_bytes_are_raw_bytes_not_decoded_text(tok):
    table = tok.token_bytes()
    assert table.dtype.is_signed and table.dtype.itemsize == 4
    specials = set(tok.special_tokens.values())
    for i in range(tok.vocab_size):
        expected = 0 if i in specials else len(tok.encoding.decode_single_token_bytes(i))
        assert table[i] == expected
    # The usual recipe counts U+FFFD (3 bytes) for tokens that are partial UTF-8: it is wrong
    # for some tokens of a tokenizer trained on CJK text.
    naive = [len(tok.decode([i]).encode()) for i in range(tok.vocab_size) if i not in specials]
    assert sum(a != b for a, b in zip(naive, table.tolist(), strict=False)) > 0


# ASCII, CJK, emoji, combining marks, mixed scripts, runs of whitespace and long numbers.
_alphabets = st.sampled_from(
    [
        st.characters(min_codepoint=0, max_codepoint=127),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
        st.characters(min_codepoint=0x300, max_codepoint=0x36F),
        st.characters(codec="utf-8"),
    ]
)
_pieces = st.one_of(
    _alphabets.flatmap(lambda chars: st.text(chars, max_size=30)),
    st.text(" \t\n\r\u3000\u00a0", min_size=1, max_size=40),
    st.integers(min_value=0, max_value=10**40).map(str),
)
texts_strategy = st.lists(_pieces, max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts_strategy)
def test_bytes_conserved_and_round_trip(tok, text):
    ids = tok.encode(text)
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok, texts):
    sample = texts[:50]
    assert tok.encode_batch(sample, num_threads=2) == [tok.encode(t) for t in sample]


def test_byte_level_tokenizer_has_no_merges():
    tok = train([MULTILINGUAL], 256 + len(SPECIAL_TOKENS))
    assert tok.encode(MULTILINGUAL) == list(MULTILINGUAL.encode())
    assert tok.token_bytes().tolist() == [1] * 256 + [0] * len(SPECIAL_TOKENS)


def test_too_few_merges_says_what_to_ask_for():
    small = ["hello world, hello there"] * 3
    with pytest.raises(TokenizerError, match=r"yields only (\d+) merges") as info:
        train(small, 1000)
    suggested = int(str(info.value).split("vocab_size=")[-1].split()[0])
    assert train(small, suggested).vocab_size == suggested
    with pytest.raises(TokenizerError, match="only"):
        train(small, suggested + 1)


def test_bad_arguments():
    with pytest.raises(TokenizerError, match="at least 265"):
        train(["abc"], 264)
    with pytest.raises(TokenizerError, match="cannot train"):
        train(["abc"], 300, pattern="(")
    with pytest.raises(TokenizerError, match="distinct"):
        train(["abc"], 300, special_tokens=["<a>", "<a>"])


def test_save_load_round_trip(tok, tmp_path, monkeypatch):
    tok.save(tmp_path / "tok")
    assert sorted(os.listdir(tmp_path / "tok")) == sorted(
        [core.CONFIG_FILE, core.RANKS_FILE, core.TOKEN_BYTES_FILE]
    )
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.hash == tok.hash
    assert loaded.special_tokens == tok.special_tokens and loaded.bos_id == tok.bos_id
    assert loaded.token_bytes().equal(tok.token_bytes())
    assert loaded.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    # The files are readable by other tools: tiktoken's own reader, numpy without pickle.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ranks = tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tok" / core.RANKS_FILE))
    assert {t: tok.encoding.encode_single_token(t) for t in ranks} == ranks
    assert len(ranks) + len(SPECIAL_TOKENS) == tok.vocab_size
    stored = np.load(tmp_path / "tok" / core.TOKEN_BYTES_FILE, allow_pickle=False)
    assert stored.tolist() == tok.token_bytes().tolist()


def test_hash_is_content_identity(texts, tok):
    assert train(texts, 1024).hash == tok.hash
    assert train(texts, 1025).hash != tok.hash
    assert train(texts, 1024, special_tokens=["<|bos|>"]).hash != tok.hash


def _corrupt_rank(d: Path) -> None:
    p = d / core.RANKS_FILE
    lines = p.read_bytes().splitlines(keepends=True)
    lines[300] = lines[301]
    p.write_bytes(b"".join(lines))


def _corrupt_config(d: Path) -> None:
    p = d / core.CONFIG_FILE
    config = json.loads(p.read_text())
    config["special_tokens"]["<|bos|>"] += 1
    p.write_text(json.dumps(config))


def _corrupt_table(d: Path) -> None:
    p = d / core.TOKEN_BYTES_FILE
    table = np.load(p)
    table[300] += 1
    np.save(p, table)


def _truncate_table(d: Path) -> None:
    p = d / core.TOKEN_BYTES_FILE
    p.write_bytes(p.read_bytes()[:50])


@pytest.mark.parametrize(
    ("corrupt", "culprit"),
    [
        (_corrupt_rank, core.RANKS_FILE),
        (_corrupt_config, core.CONFIG_FILE),
        (_corrupt_table, core.TOKEN_BYTES_FILE),
        (_truncate_table, core.TOKEN_BYTES_FILE),
        (lambda d: (d / core.CONFIG_FILE).write_text("{"), core.CONFIG_FILE),
    ],
)
def test_load_names_the_corrupt_file(tok, tmp_path, corrupt, culprit):
    tok.save(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(TokenizerError, match=rf"{culprit} is corrupt"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("missing", [core.CONFIG_FILE, core.RANKS_FILE, core.TOKEN_BYTES_FILE])
def test_load_names_the_missing_file(tok, tmp_path, missing):
    tok.save(tmp_path / "tok")
    (tmp_path / "tok" / missing).unlink()
    with pytest.raises(TokenizerError, match=rf"{missing} is missing"):
        Tokenizer.load(tmp_path / "tok")


def test_save_is_atomic_under_a_failure(tok, tmp_path, monkeypatch):
    other = train([MULTILINGUAL], 300)
    other.save(tmp_path / "tok")

    def failing_save(path, *args, **kwargs):
        Path(path).write_bytes(b"\x93NUMPY half")  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(core.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path / "tok")
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path / "new")
    assert Tokenizer.load(tmp_path / "tok").hash == other.hash  # the old one, whole
    assert sorted(os.listdir(tmp_path)) == ["tok"]  # no new one, no temporary left over


def test_save_refuses_to_replace_what_is_not_a_tokenizer(tok, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    for target in (tmp_path / "data", tmp_path / "file"):
        with pytest.raises(FileExistsError, match=r"exists and (holds 'corpus\.txt'|is a file)"):
            tok.save(target)
    assert (tmp_path / "data" / "corpus.txt").read_text() == (tmp_path / "file").read_text()
    (tmp_path / "empty").mkdir()
    tok.save(tmp_path / "empty")
    (tmp_path / "empty" / core.CONFIG_FILE).unlink()  # damaged: still ours to replace
    tok.save(tmp_path / "empty")
    assert Tokenizer.load(tmp_path / "empty").hash == tok.hash


def test_audit_of_our_tokenizer(tok, texts):
    report = audit(tok, texts)
    assert report.ok and not report.violations
    assert report.texts == len(texts)
    assert report.expected_bytes == report.counted_bytes == sum(len(t.encode()) for t in texts)
    assert report.tokens == sum(len(tok.encode(t)) for t in texts)


class _LossyTokenizer:
    """A TextTokenizer whose table undercounts one byte: the audit must catch it."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner, self.vocab_size, self.bos_id, self.hash = inner, inner.vocab_size, 0, "x"

    def encode_batch(self, texts):
        return self.inner.encode_batch(texts)

    def token_bytes(self, device=None):
        table = self.inner.token_bytes(device)
        table[ord("e")] = 0
        return table


def test_audit_reports_each_violation(tok):
    texts = ["abc", "eel", "xyz", "e"]
    report = audit(_LossyTokenizer(tok), texts)
    expected_bad = [i for i, t in enumerate(texts) if ord("e") in tok.encode(t)]
    assert [v.index for v in report.violations] == expected_bad
    for v in report.violations:
        assert v.expected_bytes == len(texts[v.index].encode())
        assert v.counted_bytes == v.expected_bytes - tok.encode(texts[v.index]).count(ord("e"))
        assert "cannot map its tokens" in v.cause
    assert not report.ok and "NOT conserved on" in str(report)


# nanochat interop --------------------------------------------------------------------------


def nanochat_pickle(tok: Tokenizer) -> bytes:
    """What nanochat's RustBPETokenizer.save writes: a pickled tiktoken.Encoding."""
    enc = tok.encoding
    nanochat = tiktoken.Encoding(
        "rustbpe",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks={t: enc.encode_single_token(t) for t in enc.token_byte_values()},
        special_tokens=tok.special_tokens,
    )
    return pickle.dumps(nanochat)


def test_nanochat_tokenizer_is_read_and_converted(tok, tmp_path):
    (tmp_path / "nanochat").mkdir()
    (tmp_path / "nanochat" / "tokenizer.pkl").write_bytes(nanochat_pickle(tok))
    read = load_nanochat(tmp_path / "nanochat")
    assert read.hash == tok.hash
    assert read.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    read.save(tmp_path / "converted")
    assert Tokenizer.load(tmp_path / "converted").hash == tok.hash


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def encoding_pickle(state: object) -> bytes:
    """A pickle that builds a tiktoken.Encoding and calls its ``__setstate__(state)``."""
    body = pickle.dumps(state, protocol=3)[2:-1]  # without the PROTO header and STOP
    return b"\x80\x03ctiktoken.core\nEncoding\n)\x81" + body + b"b."


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda d: pickle.dumps(_RunsCode(d / "pwned")), "refers to posix.system"),
        (lambda d: encoding_pickle({"name": _Eval()}), "refers to builtins.eval"),
        (lambda d: pickle.dumps({"name": "x"}), "holds a dict"),
        (lambda d: encoding_pickle({"name": "x"})[:-1], "not a readable"),
        # tiktoken pickles a registered encoding by name: unpickling would download it.
        (lambda d: encoding_pickle("gpt2"), "pickled by name"),
    ],
)
def test_nanochat_pickle_that_runs_code_is_refused(tmp_path, payload, message):
    (tmp_path / "tokenizer.pkl").write_bytes(payload(tmp_path))
    with pytest.raises(TokenizerError, match=message):
        load_nanochat(tmp_path)
    assert not (tmp_path / "pwned").exists()


def _byte_ranks() -> dict[bytes, int]:
    return {bytes([b]): b for b in range(256)}


@pytest.mark.parametrize(
    ("ranks", "specials", "message"),
    [
        # tiktoken itself would give <|bos|> the bytes of "a", or panic in Rust, or overflow.
        (_byte_ranks(), {"<|bos|>": ord("a")}, "distinct"),
        ({**_byte_ranks(), b"ab": 7}, {"<|bos|>": 256}, "distinct"),
        ({**_byte_ranks(), b"ab": 2**40}, {"<|bos|>": 256}, "distinct"),
        (_byte_ranks(), {"<|bos|>": -1}, "distinct"),
        ({b: r for b, r in _byte_ranks().items() if b != b"\xff"}, {"<|bos|>": 256}, "byte"),
    ],
)
def test_nanochat_pickle_with_inconsistent_ids_is_refused(tmp_path, ranks, specials, message):
    state = {"name": "x", "pat_str": SPLIT_PATTERN, "mergeable_ranks": ranks}
    (tmp_path / "tokenizer.pkl").write_bytes(encoding_pickle({**state, "special_tokens": specials}))
    with pytest.raises(TokenizerError, match=f"tokenizer.pkl is corrupt: .*{message}"):
        load_nanochat(tmp_path)


def test_load_refuses_a_special_id_shared_with_a_token_even_with_a_matching_hash(tok, tmp_path):
    tok.save(tmp_path)
    p = tmp_path / core.CONFIG_FILE
    config = json.loads(p.read_text())
    config["special_tokens"]["<|bos|>"] = config["bos_id"] = ord("a")  # edited by hand
    config["hash"] = core.sha256_json({k: config[k] for k in core._IDENTITY_KEYS})
    p.write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=f"{core.CONFIG_FILE} is corrupt: .*distinct"):
        Tokenizer.load(tmp_path)


# CLI ---------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bpbeval.tokenizer", *args], capture_output=True, text=True
    )


def cli_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The same entry point as ``python -m``, without paying an interpreter start."""
    with pytest.raises(SystemExit) as info:
        run(main, list(args))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_end_to_end(tmp_path, texts, capsys):
    rows = [{"text": t} for t in texts]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout = texts[:10]
    out = cli(
        "train", "--data", str(tmp_path / "c.jsonl"), "--vocab-size", "700",
        "--out", str(tmp_path / "tok"), "--heldout-docs", "10", "--doc-cap", "20000",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    tok = Tokenizer.load(tmp_path / "tok")
    reference = train((t[:20000] for t in texts[10:]), 700)  # held-out documents not trained on
    assert tok.hash == reference.hash
    bpt = sum(len(t.encode()) for t in heldout) / sum(len(tok.encode(t)) for t in heldout)
    assert f"held-out: {bpt:.3f} bytes/token on 10 documents" in out.stdout
    assert "chars/s" in out.stdout and "vocab_size 700 (9 special)" in out.stdout

    code, out, _ = cli_in_process(
        capsys, "audit", str(tmp_path / "tok"), "--data", str(tmp_path / "c.jsonl")
    )
    assert code == 0 and f"bytes conserved on all {len(texts)} texts" in out

    train([], 256 + 9).save(tmp_path / "bytes")
    code, out, err = cli_in_process(
        capsys, "compare", str(tmp_path / "tok"), str(tmp_path / "bytes"),
        "--data", str(tmp_path / "c.jsonl"), "--max-docs", "5",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    tokens = sum(len(tok.encode(t)) for t in texts[:5])
    n_bytes = sum(len(t.encode()) for t in texts[:5])
    assert lines[2].split()[1:4] == ["700", f"{tokens:,}", f"{n_bytes / tokens:.3f}"]
    assert lines[3].split()[3] == "1.000"


def test_cli_trains_on_a_single_text_file_with_nothing_held_out(tmp_path, capsys):
    (tmp_path / "book.txt").write_text(MULTILINGUAL, "utf-8")
    code, out, err = cli_in_process(
        capsys, "train", "--data", str(tmp_path / "book.txt"), "--vocab-size", "300",
        "--out", str(tmp_path / "tok"), "--heldout-docs", "0",
    )  # fmt: skip
    assert code == 0, err
    assert Tokenizer.load(tmp_path / "tok").hash == train([MULTILINGUAL], 300).hash
    assert "held-out" not in out


def test_cli_error_is_one_line():
    out = cli("train", "--data", "/no/such/dir", "--vocab-size", "300", "--out", "x")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: /no/such/dir: no such file or directory"]


def test_cli_error_quoting_a_multi_line_message_is_one_line(tmp_path, capsys):
    # pickle's own message for a persistent id spans two lines.
    (tmp_path / "tokenizer.pkl").write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")
    code, _, err = cli_in_process(capsys, "audit", str(tmp_path), "--data", str(tmp_path))
    assert code == 1
    assert err.endswith("\n") and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'tokenizer.pkl'} is not a readable pickle")
    assert "persistent id instruction was encountered, but no persistent_load" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["audit", "/nonexistent", "--data", "."], 1, "no tokenizer found"),
        (["train", "--data", "x", "--vocab-size", "-3", "--out", "x"], 2, "must be at least 1"),
        (["compare", "--data", "x"], 2, "required: tokenizers"),
    ],
)
def test_cli_usage_and_input_errors(capsys, args, code, message):
    got, _, err = cli_in_process(capsys, *args)
    assert got == code
    assert len(err.strip().splitlines()) == 1 and message in err
