"""``python -m bpbeval.tokenizer``: a bad --out fails first, in one line, before any work."""

from __future__ import annotations

import os

import pytest
import torch

from bpbeval.cli import run
from bpbeval.tokenizer.__main__ import main


def _one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_train_refuses_a_bad_out_before_reading_any_data(tmp_path, read_only_dir, capsys):
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("precious")
    outs = {
        tmp_path / "a_file": "exists and is a file, which writing here would delete",
        tmp_path / "mixed": "exists and holds 'notes.txt', which writing here would delete",
        read_only_dir / "tok": f"cannot write in {read_only_dir}",
        tmp_path / "a_file" / "tok": "is a file, so nothing can be written in it",
    }
    # The data does not exist: the output is the first thing checked.
    argv = ["train", "--data", str(tmp_path / "no-data"), "--vocab-size", "300"]
    for out, message in outs.items():
        err = _one_line_error([*argv, "--out", str(out)], capsys)
        assert err.startswith(f"error: --out {out}: ") and message in err
    assert (tmp_path / "a_file").read_text() == (tmp_path / "mixed" / "notes.txt").read_text()
    assert os.listdir(read_only_dir) == []


def test_train_replaces_a_tokenizer_it_saved(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("hello world, hello tokens " * 20)
    argv = ["train", "--data", str(data), "--vocab-size", "270", "--heldout-docs", "0"]
    for _ in range(2):  # the second run finds its own output there, and may replace it
        with pytest.raises(SystemExit) as exit_info:
            run(main, [*argv, "--out", str(tmp_path / "tok")])
        assert exit_info.value.code == 0, capsys.readouterr().err
    assert len(os.listdir(tmp_path / "tok")) == 3


def test_token_bytes_refuses_a_bad_out_before_loading_the_tokenizer(
    tmp_path, read_only_dir, capsys
):
    (tmp_path / "dir.pt").mkdir()
    outs = {
        tmp_path / "dir.pt": "is a directory",
        tmp_path / "token_bytes.txt": f"writes a .pt file; name it {tmp_path / 'token_bytes.pt'}",
        read_only_dir / "token_bytes.pt": f"cannot write in {read_only_dir}",
    }
    for out, message in outs.items():
        err = _one_line_error(["token-bytes", str(tmp_path / "no-tok"), "--out", str(out)], capsys)
        assert err.startswith(f"error: --out {out}: ") and message in err


def test_token_bytes_writes_a_good_out(tmp_path, bpe_tokenizer, capsys):
    bpe_tokenizer.save(tmp_path / "tok")
    out = tmp_path / "nanochat" / "token_bytes.pt"
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["token-bytes", str(tmp_path / "tok"), "--out", str(out)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert torch.equal(torch.load(out, weights_only=True), bpe_tokenizer.token_bytes())
