"""Atomic writes leave the old content or the new, whole, with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from bpbeval import files
from bpbeval.files import atomic_directory, atomic_write_bytes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_results_get_the_permissions_of_a_plain_write(tmp_path):
    # tempfile makes 0600 files and 0700 directories; a saved tokenizer must not stay that way.
    mask = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
        with atomic_directory(tmp_path / "d", owns=["a"]) as tmp:
            (tmp / "a").write_bytes(b"y")
        (tmp_path / "plain_f").write_bytes(b"x")
        (tmp_path / "plain_d").mkdir()
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "f") == _mode(tmp_path / "plain_f") == 0o640
    assert _mode(tmp_path / "d") == _mode(tmp_path / "plain_d") == 0o750


def test_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_directory(target, owns=["a"]) as tmp:
        (tmp / "a").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):  # the new directory's rename into place
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_directory(target, owns=["a"]) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing left aside or half-built


def test_replaces_only_a_directory_of_what_it_owns(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name in ("shard_0.parquet", "shard_1.parquet"):
        (target / name).write_text("old")
    with atomic_directory(target, owns=["shard_*.parquet"]) as tmp:  # fewer shards than before
        (tmp / "shard_0.parquet").write_text("new")
    assert sorted(os.listdir(target)) == ["shard_0.parquet"]
    (target / "notes.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    for path, what in ((target, r"holds 'notes\.txt'"), (tmp_path / "file", "is a file")):
        with (
            pytest.raises(FileExistsError, match=what),
            atomic_directory(path, owns=["shard_*.parquet"]),
        ):
            raise AssertionError("the body must not run")
    assert (target / "notes.txt").read_text() == (tmp_path / "file").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["file", "out"]  # no temporary left over
