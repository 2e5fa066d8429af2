"""``python -m bpbeval.demo`` (``make demo``): per-token loss misleads, bits per byte does not.

Builds a corpus from Python's own docs and sources, trains a byte-level and a BPE
tokenizer, trains one small GPT on each with the same parameter and compute budget,
and compares them with ``bpbeval.compare``. A second run reuses what the first built.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence

from bpbeval.cli import ArgumentParser, run
from bpbeval.demo.pipeline import HEAD_DIM, Settings
from bpbeval.demo.pipeline import run as run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bpbeval.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="build directory (default: %(default)s)")
    for f in dataclasses.fields(Settings):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{f.metadata['help']} (default: %(default)s)",
        )
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    for f in dataclasses.fields(Settings):
        if f.name != "seed" and not 0 < getattr(settings, f.name) < math.inf:  # NaN fails too
            parser.error(f"--{f.name.replace('_', '-')} must be positive and finite")
    if settings.context_len < 2:
        parser.error("--context-len must be at least 2 (the prefix token and one to predict)")
    if settings.n_embd % HEAD_DIM and settings.n_embd > HEAD_DIM:
        parser.error(f"--n-embd must be a multiple of {HEAD_DIM} (the head size), or less")
    run_demo(args.out, settings)
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
