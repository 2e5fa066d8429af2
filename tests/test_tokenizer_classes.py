"""`python -m bpbeval.tokenizer compare`'s bytes per token by character class, against a loop."""

from __future__ import annotations

import json

import pytest

from bpbeval.attribution import CLASSES, character_class
from bpbeval.cli import run
from bpbeval.tokenizer.__main__ import main
from tests.conftest import stdlib_texts

TEXTS = [
    *stdlib_texts(6, offset=30),
    "Привет, мир! Это тест 2024 года.\nДа.",
    "数据 和 文本 1234 ＡＢＣ 日本語のテキスト",
    "مرحبا بالعالم ١٢٣ 🙂👍🏽 — «ok»",
]


def _reference(tokenizer, texts) -> tuple[dict[str, float], dict[str, int]]:
    # Byte by byte: each byte carries 1/len of its token, and the class of its character.
    tokens = dict.fromkeys(CLASSES, 0.0)
    n_bytes = dict.fromkeys(CLASSES, 0)
    table = tokenizer.token_bytes().tolist()
    for text in texts:
        classes = [character_class(c) for c in text for _ in c.encode("utf-8")]
        position = 0
        for token in tokenizer.encode(text):
            for _ in range(table[token]):
                tokens[classes[position]] += 1 / table[token]
                n_bytes[classes[position]] += 1
                position += 1
        assert position == len(classes)
    return tokens, n_bytes


def test_bytes_per_token_by_class_equal_a_per_byte_loop(
    tmp_path, capsys, bpe_tokenizer, byte_tokenizer
):
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), "utf-8")
    bpe_tokenizer.save(tmp_path / "bpe")
    byte_tokenizer.save(tmp_path / "bytes")
    with pytest.raises(SystemExit) as info:
        run(main, ["compare", str(tmp_path / "bpe"), str(tmp_path / "bytes"), "--data", str(data)])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bytes per token by class"))
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 1 :]}

    tokens, n_bytes = _reference(bpe_tokenizer, TEXTS)
    total = sum(n_bytes.values())
    present = [c for c in CLASSES if n_bytes[c]]
    assert list(rows) == present
    assert {"ascii_letters", "digits", "cyrillic", "han", "kana", "arabic", "symbols"} <= set(rows)
    for name in present:
        share = f"{n_bytes[name] / total:.1%}"
        bpe = f"{n_bytes[name] / tokens[name]:.3f}"
        assert rows[name] == [f"{n_bytes[name]:,}", share, bpe, "1.000"]  # byte tokens: 1 each
