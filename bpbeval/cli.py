"""What every bpbeval command line shares: one-line errors and rank-0 output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

from bpbeval.errors import BpbevalError, is_rust_panic


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers of at least ``low``; others are usage errors.

    Example:
        >>> int_at_least(1)("3")
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)


def torch_device(text: str) -> str:
    """An argparse ``type`` for a device this machine has (``cpu``, ``cuda:1``, ``meta``, ...).

    Example:
        >>> torch_device("cpu")
        'cpu'
    """
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps, meta, ...)"
        ) from None
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if hasattr(backend, "is_available") and not backend.is_available():
        raise argparse.ArgumentTypeError(
            f"this machine has no {device.type} device usable by torch {torch.__version__}"
        )
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise argparse.ArgumentTypeError(
            f"there is no {text}: this machine has {count()} {device.type} device(s)"
        )
    return text


def notice(message: str) -> None:
    """Tell the user something on stderr, one line, without stopping (not an error)."""
    print(message, file=sys.stderr)


def run(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> NoReturn:
    """Run a command's ``main`` and exit; a user error prints one line and exits 1.

    ``BpbevalError`` and ``OSError`` (a missing file, a full disk) are user errors:
    they print ``error: <message>`` to stderr, with no traceback, on one line even
    where the message quotes a multi-line one from a library. A panic in a Rust
    extension also prints one line and exits 1. Anything else is a bug in bpbeval and
    keeps its traceback.
    """
    try:
        code = main(argv)
    except (BpbevalError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as e:
        if not is_rust_panic(e):
            raise
        print(
            f"error: a Rust extension (tiktoken, rustbpe, tokenizers) panicked: "
            f"{' '.join(str(e).split())}; this is a bug in it, not in the input's format",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(code or 0)
