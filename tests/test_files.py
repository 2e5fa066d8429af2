"""Atomic writes leave the old content or the new, whole, with the usual permissions."""

from __future__ import annotations

import os
import re
import stat

import pytest

from bpbeval import files
from bpbeval.errors import OutputError
from bpbeval.files import (
    atomic_directory,
    atomic_write_bytes,
    check_output_directory,
    check_output_file,
)


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


def _write_fails(path) -> bool:
    try:
        atomic_write_bytes(path, b"x")
    except OSError:
        return True
    return False


def test_an_output_file_the_write_would_fail_on_is_refused_first(tmp_path, read_only_dir):
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "a_dir.json").mkdir()
    cases = {
        tmp_path / "a_dir.json": "is a directory; name a file to write",
        read_only_dir / "out.json": rf"cannot write in {read_only_dir} \(",
        read_only_dir / "new" / "out.json": rf"cannot write in {read_only_dir} \(",
        tmp_path / "a_file" / "out.json": ".*/a_file is a file, so nothing can be written in it",
        tmp_path / "a_file" / "deeper" / "out.json": ".*/a_file is a file",
    }
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(read_only_dir))
    for path, message in cases.items():
        with pytest.raises(OutputError, match=re.escape(f"--json {path}: ") + message):
            check_output_file(path, suffix=".json", flag="--json")
        assert _write_fails(path)  # the check says what the real write would find
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(read_only_dir))) == before
    assert (tmp_path / "a_file").read_text() == "precious"


def test_an_output_file_the_write_would_succeed_on_passes(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    for path in (tmp_path / "old.json", tmp_path / "new.JSON", tmp_path / "a" / "b" / "c.json"):
        before = sorted(tmp_path.rglob("*"))
        check_output_file(path, suffix=".json", flag="--json")
        assert sorted(tmp_path.rglob("*")) == before  # the probe is gone, nothing created
        atomic_write_bytes(path, b"{}")
        assert path.read_bytes() == b"{}"


@pytest.mark.parametrize(
    ("name", "suffix", "fixed"),
    [
        ("x.csv", ".parquet", "x.parquet"),
        ("x.txt", ".png", "x.png"),
        ("x", ".json", "x.json"),
        ("x.json.bak", ".json", "x.json.json"),
        ("x.png", ".json", "x.json"),
    ],
)
def test_an_output_file_named_as_another_format_is_refused(tmp_path, name, suffix, fixed):
    with pytest.raises(OutputError) as e:
        check_output_file(tmp_path / name, suffix=suffix, flag="--out")
    assert (
        str(e.value)
        == f"--out {tmp_path / name}: writes a {suffix} file; name it {tmp_path / fixed}"
    )
    assert os.listdir(tmp_path) == []


def test_an_output_directory_is_refused_where_atomic_directory_would_be(tmp_path, read_only_dir):
    owns = ["*.json"]
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("precious")
    cases = {
        tmp_path / "a_file": "exists and is a file, which writing here would delete",
        tmp_path / "mixed": "exists and holds 'notes.txt', which writing here would delete",
        read_only_dir / "tok": rf"cannot write in {read_only_dir} \(",
        tmp_path / "a_file" / "tok": ".*/a_file is a file",
    }
    for path, message in cases.items():
        with pytest.raises(OutputError, match=re.escape(f"--out {path}: ") + message):
            check_output_directory(path, owns=owns, flag="--out")
        with pytest.raises(OSError), atomic_directory(path, owns=owns):
            pass  # the real write fails there too
    for path in (tmp_path / "new", tmp_path / "mixed" / "deeper" / "tok"):
        check_output_directory(path, owns=owns, flag="--out")
        with atomic_directory(path, owns=owns) as tmp:
            (tmp / "a.json").write_text("{}")
        check_output_directory(path, owns=owns, flag="--out")  # its own output is replaceable
