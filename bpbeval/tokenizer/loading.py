"""One name for any tokenizer on disk: ours, nanochat's, Hugging Face's, or tiktoken's."""

from __future__ import annotations

from pathlib import Path

from bpbeval.errors import TokenizerError
from bpbeval.tokenizer.adapters import from_huggingface, from_tiktoken
from bpbeval.tokenizer.core import CONFIG_FILE, TextTokenizer, Tokenizer
from bpbeval.tokenizer.nanochat import PICKLE_FILE, load_nanochat

_HF_FILE = "tokenizer.json"


def load_tokenizer(spec: str) -> TextTokenizer:
    """Load a tokenizer named by a path or ``tiktoken:NAME``.

    Args:
        spec: one of
            - a directory saved by :meth:`~bpbeval.tokenizer.Tokenizer.save`;
            - a nanochat tokenizer directory (``tokenizer.pkl``, read safely);
            - a Hugging Face ``tokenizer.json``, or a directory holding one (loaded with
              transformers if it is installed, so its bos/eos settings are used);
            - ``tiktoken:NAME``, a tiktoken encoding (from tiktoken's cache or the network).

    Raises:
        TokenizerError: nothing recognisable at ``spec``.

    Example:
        >>> import tempfile
        >>> from bpbeval.tokenizer import train
        >>> d = tempfile.mkdtemp() + "/tok"
        >>> train(["abc abc"], vocab_size=266).save(d)
        >>> load_tokenizer(d).vocab_size
        266
    """
    if spec.startswith("tiktoken:"):
        import tiktoken

        try:
            encoding = tiktoken.get_encoding(spec.removeprefix("tiktoken:"))
        except (ValueError, OSError) as e:
            raise TokenizerError(f"cannot load {spec}: {e}") from None
        return from_tiktoken(encoding)
    path = Path(spec)
    if (path / CONFIG_FILE).is_file():
        return Tokenizer.load(path)
    if (path / PICKLE_FILE).is_file() or path.name == PICKLE_FILE:
        return load_nanochat(path)
    if (path / _HF_FILE).is_file():
        try:
            import transformers
        except ImportError:
            path = path / _HF_FILE
        else:
            try:
                hf = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            except Exception as e:  # transformers fails on bad files with many exception types
                raise TokenizerError(
                    f"{path} is not a loadable Hugging Face tokenizer ({type(e).__name__}: {e})"
                ) from None
            return from_huggingface(hf)
    if path.is_file() and path.suffix == ".json":
        import tokenizers

        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a bad file
            raise TokenizerError(f"{path} is not a Hugging Face tokenizer.json: {e}") from None
        return from_huggingface(hf)
    raise TokenizerError(
        f"{spec}: no tokenizer found; expected a bpbeval tokenizer directory "
        f"({CONFIG_FILE}), a nanochat one ({PICKLE_FILE}), a Hugging Face {_HF_FILE}, "
        "or tiktoken:NAME"
    )
