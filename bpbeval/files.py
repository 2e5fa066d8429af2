"""Atomic file and directory writes: a crash leaves the old content or none, never half.

The ``check_output_*`` functions refuse, before any work, an output that these writes
would fail on or that is misnamed, so that a command does not score for hours and then
find it cannot write its result.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

from bpbeval.errors import OutputError


def _umask() -> int:
    # Read by setting it: the only portable way. tempfile creates files 0600 and directories
    # 0700; the results should be as readable as a plain open() or mkdir() would leave them.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Stream a file to ``path`` through a temporary file in the same directory.

    The body writes to the yielded binary file. If it raises, the temporary file is
    removed and ``path`` is untouched; if it succeeds, the file is synced to disk and
    renamed over ``path``, so a reader never finds it half-written.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_writer(p) as f:
        ...     _ = f.write(b"ab")
        ...     _ = f.write(b"c")
        >>> p.read_bytes()
        b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> atomic_write_bytes(p, b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, owns: Collection[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it into place only on success.

    The body writes into the yielded path. If it raises, the temporary directory
    is removed and ``path`` is untouched. If it succeeds, an existing ``path`` is
    moved aside, the new one renamed in, and the old one deleted; should the rename
    fail, the old one is moved back. An existing ``path`` is replaced only if every
    entry in it matches one of ``owns``, the glob patterns of what its writer writes:
    pointed at a data directory by mistake, the swap would delete it whole.

    Args:
        path: the directory to create or replace.
        owns: glob patterns of the entry names this kind of directory holds.

    Raises:
        FileExistsError: ``path`` is a file, or holds an entry ``owns`` does not match
            (checked before the body runs; nothing is written).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> with atomic_directory(target, owns=["*.txt"]) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (target / "a.txt").read_text()
        'hi'
    """
    path = Path(path)
    _check_replaceable(path, owns)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists():
            os.replace(tmp, path)
            return
        aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside / path.name, path)
            os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(path: Path, owns: Collection[str]) -> None:
    refusal = _replace_refusal(path, owns)
    if refusal:
        raise FileExistsError(f"{path} {refusal}")


def _replace_refusal(path: Path, owns: Collection[str]) -> str | None:
    # Why replacing ``path`` by a directory of ``owns`` would destroy something, if it would.
    if not path.exists():
        return None
    if not path.is_dir():
        strangers = [path.name]
    else:
        strangers = sorted(
            p.name for p in path.iterdir() if not any(fnmatch.fnmatchcase(p.name, g) for g in owns)
        )
    if not strangers:
        return None
    what = "is a file" if not path.is_dir() else f"holds {strangers[0]!r}"
    return (
        f"exists and {what}, which writing here would delete; "
        "choose another directory or remove it first"
    )


def check_output_file(path: str | os.PathLike[str], *, suffix: str, flag: str) -> None:
    """Refuse now an output file that :func:`atomic_write_bytes` could not write, or misnamed.

    Args:
        path: where the output will go.
        suffix: the suffix of the format written (``.json``, ``.parquet``, ``.png``), in any case.
        flag: the option naming ``path``, for the message (``--per-doc``).

    Raises:
        OutputError: ``path`` is a directory, does not end in ``suffix``, or lies where
            nothing can be written (a read-only directory, a file in place of a directory).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_file(d / "new" / "run.json", suffix=".json", flag="--json")
        >>> check_output_file("x.csv", suffix=".parquet", flag="--per-doc")
        Traceback (most recent call last):
        ...
        bpbeval.errors.OutputError: --per-doc x.csv: writes a .parquet file; name it x.parquet
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory; name a file to write")
    if path.suffix.lower() != suffix:
        raise OutputError(
            f"{flag} {path}: writes a {suffix} file; name it {path.with_suffix(suffix)}"
        )
    _check_can_create_in(path.parent, flag, path)


def check_output_directory(
    path: str | os.PathLike[str], *, owns: Collection[str], flag: str
) -> None:
    """Refuse now an output directory that :func:`atomic_directory` would not write.

    Args:
        path: the directory the output will be.
        owns: as in :func:`atomic_directory`.
        flag: the option naming ``path``, for the message (``--out``).

    Raises:
        OutputError: ``path`` is a file or holds what ``owns`` does not match, or lies
            where nothing can be written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_directory(d / "tok", owns=["*.json"], flag="--out")
        >>> _ = (d / "notes.txt").write_text("mine")
        >>> check_output_directory(d, owns=["*.json"], flag="--out")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bpbeval.errors.OutputError: --out ...: exists and holds 'notes.txt', which writing ...
    """
    path = Path(path)
    refusal = _replace_refusal(path, owns)
    if refusal:
        raise OutputError(f"{flag} {path}: {refusal}")
    _check_can_create_in(path.parent, flag, path)


def check_directory_to_fill(path: str | os.PathLike[str], *, flag: str) -> None:
    """Refuse now a directory that files will be added to (a cache) where none can be.

    Raises:
        OutputError: ``path`` is a file, or lies where nothing can be created.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_directory_to_fill(d / "cache", flag="--cache")
        >>> _ = (d / "file").write_text("x")
        >>> check_directory_to_fill(d / "file", flag="--cache")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bpbeval.errors.OutputError: --cache .../file: ... is a file, so nothing can be written in it
    """
    _check_can_create_in(Path(path), flag, Path(path))


def _check_can_create_in(directory: Path, flag: str, path: Path) -> None:
    # The atomic writes create their missing parents and a temporary sibling: what they need
    # is to create an entry in the nearest directory that exists. Trying it is the only sure
    # test (permissions, read-only mounts, immutable directories, root all answer the same).
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, so nothing can be written in it")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".bpbeval-probe-")
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {existing} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
