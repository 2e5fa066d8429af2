"""Read nanochat's tokenizer (``tokenizer.pkl``) without running code from the file.

nanochat saves its tokenizer as a pickled ``tiktoken.Encoding``. A pickle can name any
importable callable and have the loader call it, so loading one from an untrusted directory
can run anything. Pickling an Encoding references exactly one global,
``tiktoken.core.Encoding``, rebuilt as ``Encoding.__new__`` then ``__setstate__(state)`` with
``state`` a dict of four plain values. Our unpickler resolves that one name to an inert
record of the state and refuses every other name; the Encoding is then built from the
checked values by us, and nothing in the file is ever called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

from bpbeval.errors import TokenizerError
from bpbeval.tokenizer.core import Tokenizer, _encoding

PICKLE_FILE = "tokenizer.pkl"


class _EncodingState:
    """Stands in for ``tiktoken.core.Encoding`` while unpickling: it only keeps the state."""

    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise TokenizerError(
            f"{PICKLE_FILE} refers to {module}.{name}; a nanochat tokenizer refers only to "
            "tiktoken.core.Encoding, so this file is refused unread"
        )


def _checked_state(state: object, path: Path) -> dict[str, object]:
    """The Encoding's constructor arguments, if ``state`` has exactly their types."""
    keys = {"name", "pat_str", "mergeable_ranks", "special_tokens"}
    if not (isinstance(state, dict) and set(state) == keys):
        raise TokenizerError(
            f"{path} does not hold a tiktoken Encoding's fields {sorted(keys)} "
            "(an Encoding pickled by name, like 'gpt2', has no vocabulary in the file)"
        )
    ranks, specials = state["mergeable_ranks"], state["special_tokens"]
    if not (
        isinstance(state["name"], str)
        and isinstance(state["pat_str"], str)
        and isinstance(ranks, dict)
        and all(type(k) is bytes and type(v) is int for k, v in ranks.items())
        and isinstance(specials, dict)
        and all(type(k) is str and type(v) is int for k, v in specials.items())
    ):
        raise TokenizerError(f"{path}: the Encoding's fields do not have the expected types")
    return state


def load_nanochat(directory: str | os.PathLike[str], *, bos: str = "<|bos|>") -> Tokenizer:
    """Read a nanochat tokenizer directory's ``tokenizer.pkl`` safely.

    Convert it to our format with ``load_nanochat(src).save(dst)``.

    Args:
        directory: the nanochat tokenizer directory (or the ``tokenizer.pkl`` itself).
        bos: the special token documents start with.

    Raises:
        TokenizerError: the file is missing, refers to anything but ``tiktoken.core.Encoding``,
            or does not hold an Encoding's fields.

    Example:
        >>> import pickle, tempfile, pathlib, tiktoken
        >>> enc = tiktoken.Encoding("rustbpe", pat_str=r"\\S+|\\s+",
        ...     mergeable_ranks={bytes([b]): b for b in range(256)},
        ...     special_tokens={"<|bos|>": 256})
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "tokenizer.pkl").write_bytes(pickle.dumps(enc))
        >>> tok = load_nanochat(d)
        >>> tok.encode("hi"), tok.bos_id
        ([104, 105], 256)
    """
    path = Path(directory)
    if path.is_dir():
        path = path / PICKLE_FILE
    if not path.is_file():
        raise TokenizerError(f"{path} is missing; point at a nanochat tokenizer directory")
    try:
        record = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except TokenizerError:
        raise
    except Exception as e:  # a truncated or malformed pickle fails in many ways
        raise TokenizerError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(record, _EncodingState):
        raise TokenizerError(f"{path} holds a {type(record).__name__}, not a tiktoken Encoding")
    state = _checked_state(record.state, path)
    encoding = _encoding(**state, where=str(path))  # type: ignore[arg-type]
    return Tokenizer(encoding, bos=bos)
