"""``python -m bpbeval.eval``: the figures it prints and writes, and one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpbeval.checkpoint import META_FILE, load
from bpbeval.cli import run
from bpbeval.data import read_documents
from bpbeval.eval import main
from bpbeval.scoring import score_documents

ROOT = Path(__file__).resolve().parents[1]


def test_prints_and_writes_the_figures_of_score_documents(
    native_checkpoint, documents_jsonl, tmp_path, capsys
):
    path = str(native_checkpoint[0])
    out = tmp_path / "out" / "result.json"
    argv = [path, "--data", str(documents_jsonl), "--batch-size", "3", "--stride", "5"]
    assert main([*argv, "--json", str(out), "--device", "cpu"]) == 0
    figures = capsys.readouterr().out.split("\n\n")[0]  # then the by-class/position tables
    printed = dict(line.split(maxsplit=1) for line in figures.splitlines())
    written = json.loads(out.read_text())

    checkpoint = load(path)
    documents = list(read_documents(documents_jsonl))
    expected = score_documents(checkpoint, documents, stride=5, progress=False)
    assert written["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-12)
    assert written["bytes"] == sum(len(d.text.encode()) for d in documents) == expected.bytes
    assert (written["tokens"], written["documents"]) == (expected.tokens, len(documents))
    assert written["identity"] == checkpoint.identity
    assert written["bytes_from_text"] is False
    assert float(printed["bits_per_byte"]) == pytest.approx(expected.bits_per_byte, abs=1e-6)
    assert float(printed["bits_per_token"]) == pytest.approx(
        expected.nats / math.log(2) / expected.tokens, abs=1e-6
    )
    assert float(printed["bytes_per_token"]) == pytest.approx(
        expected.bytes / expected.tokens, abs=1e-6
    )
    assert int(printed["documents"]) == len(documents)


SMALL_VOCAB_LOADER = """
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train

def load(spec):
    return GPT(GPTConfig(200, context_len=8, n_layer=1, n_embd=16)), train([], vocab_size=265)
"""


@pytest.fixture
def bad_inputs(tmp_path, native_checkpoint, monkeypatch):
    """Paths for each error case: (name -> argv without --json)."""
    good = native_checkpoint[0]
    mismatch = tmp_path / "mismatch"
    shutil.copytree(good, mismatch)
    meta = json.loads((mismatch / META_FILE).read_text())
    meta["tokenizer_hash"] = "f" * 64
    (mismatch / META_FILE).write_text(json.dumps(meta))
    (tmp_path / "small_vocab.py").write_text(SMALL_VOCAB_LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "ok.jsonl"
    data.write_text('{"text": "hello world"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "unknown").mkdir()
    with_data = ["--data", str(data)]
    return {
        "does not exist": [str(tmp_path / "missing"), *with_data],
        "neither a bpbeval checkpoint": [str(tmp_path / "unknown"), *with_data],
        "tokenizer hash mismatch": [str(mismatch), *with_data],
        "smaller than its tokenizer": ["x", "--loader", "small_vocab:load", *with_data],
        "no documents": [str(good), "--data", str(tmp_path / "empty.jsonl")],
        "column": [str(good), *with_data, "--text-column", "body"],
        "UTF-8": [str(good), "--data", str(tmp_path / "latin1.txt")],
        "too small": [str(good), *with_data, "--context", "1"],
    }


def test_each_user_error_is_one_line_and_writes_nothing(bad_inputs, tmp_path, capsys):
    out = tmp_path / "result.json"
    for message, argv in bad_inputs.items():
        with pytest.raises(SystemExit) as exit_info:
            run(main, [*argv, "--json", str(out), "--device", "cpu"])
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 1, stderr
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr
        assert not out.exists()


def test_the_command_line_exits_without_traceback(tmp_path, spawn):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "bpbeval.eval", str(tmp_path / "nope"), "--data", str(tmp_path)]
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert stdout == ""
    assert stderr.startswith("error: checkpoint") and stderr.count("\n") == 1


NFKC_LOADER = """
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import from_huggingface

def load(spec):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    hf = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    hf.normalizer = normalizers.NFKC()  # rewrites the text: the ligature 'ﬁ' becomes 'fi'
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(["<|endoftext|>"])
    return GPT(GPTConfig(257, context_len=8, n_layer=1, n_embd=16)), from_huggingface(hf)
"""


def test_a_normalising_tokenizer_stops_the_run_unless_text_bytes_are_allowed(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "nfkc_loader.py").write_text(NFKC_LOADER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "docs.jsonl"
    text = "a ﬁne ﬁsh"  # each 'ﬁ' is 3 UTF-8 bytes, 'fi' is 2
    data.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    argv = ["x", "--loader", "nfkc_loader:load", "--data", str(data), "--device", "cpu"]
    with pytest.raises(SystemExit):
        run(main, argv)
    err = capsys.readouterr().err
    assert "not byte-conservative on document docs.jsonl:0" in err
    assert "difference -2" in err  # two ligatures, one byte short each

    assert main([*argv, "--allow-inexact-bytes"]) == 0
    out = capsys.readouterr().out
    printed = dict(
        line.split(maxsplit=1) for line in out.splitlines() if not line.startswith("note")
    )
    assert int(printed["bytes"]) == len(text.encode("utf-8"))
    assert "note: the tokenizer is not byte-conservative" in out


def test_a_readme_beside_the_data_is_skipped_and_named(
    native_checkpoint, documents_jsonl, tmp_path, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(documents_jsonl, data / "docs.jsonl")
    argv = ["--device", "cpu", "--stride", "8"]
    assert main([str(native_checkpoint[0]), "--data", str(documents_jsonl), *argv]) == 0
    alone = capsys.readouterr()
    (data / "README.md").write_text("# A corpus\n\nTwelve documents in one JSONL file.\n")
    assert main([str(native_checkpoint[0]), "--data", str(data), *argv]) == 0
    beside = capsys.readouterr()
    assert beside.out == alone.out  # every figure, the bpb included, as for the data alone
    notices = [line for line in beside.err.splitlines() if line.startswith("skipped")]
    assert notices == [
        f"skipped 1 file that is not data (.parquet, .jsonl, .txt): {data / 'README.md'}"
    ]
    assert "skipped" not in alone.err


def test_a_bad_json_output_fails_before_the_checkpoint_is_loaded(tmp_path, read_only_dir, capsys):
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "dir.json").mkdir()
    outputs = {
        tmp_path / "dir.json": "is a directory",
        tmp_path / "out.txt": f"writes a .json file; name it {tmp_path / 'out.json'}",
        read_only_dir / "out.json": f"cannot write in {read_only_dir}",
        tmp_path / "a_file" / "out.json": "is a file, so nothing can be written in it",
    }
    # Neither the checkpoint nor the data exist: the output is the first thing checked.
    argv = [str(tmp_path / "no-checkpoint"), "--data", str(tmp_path / "no-data"), "--device", "cpu"]
    for out, message in outputs.items():
        with pytest.raises(SystemExit) as exit_info:
            run(main, [*argv, "--json", str(out)])
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 1
        assert stderr.startswith(f"error: --json {out}: ") and stderr.count("\n") == 1, stderr
        assert message in stderr
    assert (tmp_path / "a_file").read_text() == "precious"
