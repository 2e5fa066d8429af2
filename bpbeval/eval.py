"""``python -m bpbeval.eval CKPT --data PATH...``: bits per byte of one model on a corpus.

Runs on one process or under ``torchrun --nproc_per_node N -m bpbeval.eval ...``;
only rank 0 prints and writes. Errors a user can fix print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from bpbeval import distributed
from bpbeval.checkpoint import Checkpoint, load
from bpbeval.cli import ArgumentParser, notice, positive_int, run, torch_device
from bpbeval.data import Corpus, Document
from bpbeval.errors import ScoringError
from bpbeval.files import atomic_write_text, check_output_file
from bpbeval.report import breakdown, breakdown_tables, summary
from bpbeval.scoring import DEFAULT_BATCH_TOKENS, Scores, score_documents

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _option(group: str, help: str, *, cache_key: bool = False, **argparse: object) -> Any:
    """A field of :class:`ScoringOptions`: its ``--flag``'s group, help and argparse settings."""
    default = argparse.pop("default", None)
    metadata = {"group": group, "help": help, "cache_key": cache_key, "argparse": argparse}
    if argparse.get("required"):
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ScoringOptions:
    """The options eval and compare share: which documents, which windows, which hardware.

    Each field is one ``--flag`` (:meth:`add_arguments`) whose help shows its default.
    Fields declared with ``cache_key=True`` are those that change a document's score; they,
    and only they, key the result cache (:meth:`cache_settings`), so an option added
    here must say whether it does.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> ScoringOptions.add_arguments(parser)
        >>> options = ScoringOptions.from_args(parser.parse_args(["--data", "x", "--stride", "8"]))
        >>> options.stride, options.batch_tokens, sorted(options.cache_settings())
        (8, 2048, ['allow_inexact_bytes', 'context', 'dtype', 'stride'])
    """

    data: list[str] = _option(  # noqa: RUF009  # a dataclasses.field, like the others
        "documents",
        "Parquet, JSONL or text files, or directories of them",
        nargs="+",
        required=True,
        metavar="PATH",
    )
    text_column: str = _option(
        "documents", "column or key holding the text (default: %(default)s)", default="text"
    )
    domain_column: str | None = _option(
        "documents",
        "column or key holding a domain label (default: 'domain' where the data has it)",
    )
    max_docs: int | None = _option(
        "documents", "score only the first N documents (default: all)", type=positive_int
    )
    max_bytes: int | None = _option(
        "documents",
        "score only the first documents that fit in N UTF-8 bytes (default: all)",
        type=positive_int,
    )
    stride: int | None = _option(
        "scoring",
        "tokens scored per window after the first (default: context / 2)",
        cache_key=True,
        type=positive_int,
    )
    context: int | None = _option(
        "scoring",
        "tokens per window (default and maximum: the model's context)",
        cache_key=True,
        type=positive_int,
    )
    batch_tokens: int = _option(
        "scoring",
        "padded positions per forward pass (default: %(default)s)",
        default=DEFAULT_BATCH_TOKENS,
        type=positive_int,
        metavar="N",
    )
    batch_size: int | None = _option(
        "scoring",
        "at most N windows per forward pass (default: as many as --batch-tokens allows)",
        type=positive_int,
        metavar="N",
    )
    device: str = _option(
        "scoring",
        "where to score (default: cuda if there is one, else cpu; here %(default)s)",
        default="cuda" if torch.cuda.is_available() else "cpu",
        type=torch_device,
    )
    dtype: str | None = _option(
        "scoring",
        "cast the model's weights (default: as saved)",
        cache_key=True,
        choices=sorted(DTYPES),
    )
    loader: str | None = _option(
        "scoring",
        "custom loader: FUNCTION(CKPT) returns (model, tokenizer) (default: none)",
        metavar="MODULE:FUNCTION",
    )
    trust_remote_code: bool = _option(
        "scoring",
        "let a Hugging Face model directory run its own code (default: off)",
        default=False,
        action="store_true",
    )
    attribution: bool = _option(
        "scoring",
        "attribute each document's nats to its bytes' character classes and context positions "
        "(default: on; off saves the ~400 bytes a document it keeps on rank 0)",
        default=True,
        action=argparse.BooleanOptionalAction,
    )
    allow_inexact_bytes: bool = _option(
        "scoring",
        "if the tokens' bytes differ from the text's, divide by the text's (default: off)",
        cache_key=True,
        default=False,
        action="store_true",
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field, in groups."""
        groups: dict[str, Any] = {}
        for f in fields(cls):
            group = f.metadata["group"]
            if group not in groups:
                groups[group] = parser.add_argument_group(group)
            default = {} if f.default is MISSING else {"default": f.default}
            groups[group].add_argument(
                "--" + f.name.replace("_", "-"),
                help=f.metadata["help"],
                **default,
                **f.metadata["argparse"],
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScoringOptions:
        """The options parsed by a parser that :meth:`add_arguments` set up."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def cache_settings(self) -> dict[str, object]:
        """The settings that change a document's score: the result cache's key."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["cache_key"]}


def load_checkpoint(options: ScoringOptions, spec: str) -> Checkpoint:
    """The checkpoint ``spec`` loaded as the options ask, on this rank's device."""
    return load(
        spec,
        device=distributed.device_for_rank(options.device),
        dtype=DTYPES[options.dtype] if options.dtype else None,
        loader=options.loader,
        trust_remote_code=options.trust_remote_code,
    )


def read_scoring_documents(options: ScoringOptions) -> Corpus:
    """The documents the options select, in a fixed order, streamed (each rank decodes
    only its own); rank 0 names what it skips."""
    return Corpus(
        options.data,
        text_column=options.text_column,
        domain_column=options.domain_column,
        max_docs=options.max_docs,
        max_bytes=options.max_bytes,
        on_skipped=notice if distributed.rank() == 0 else None,
    )


def score(
    options: ScoringOptions,
    checkpoint: Checkpoint,
    documents: Iterable[Document],
    **engine: object,
) -> Scores:
    """:func:`score_documents` with the options' windows, batches and hardware."""
    return score_documents(
        checkpoint,
        documents,
        stride=options.stride,
        context_len=options.context,
        batch_tokens=options.batch_tokens,
        batch_size=options.batch_size,
        device=distributed.device_for_rank(options.device),
        allow_inexact_bytes=options.allow_inexact_bytes,
        attribution=options.attribution,
        **engine,  # type: ignore[arg-type]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bpbeval.eval", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="native checkpoint or Hugging Face directory (or --loader argument)",
    )
    ScoringOptions.add_arguments(parser)
    parser.add_argument(
        "--json", metavar="FILE", help="also write the figures as JSON (default: none)"
    )
    args = parser.parse_args(argv)
    options = ScoringOptions.from_args(args)
    if args.json:
        check_output_file(args.json, suffix=".json", flag="--json")  # not after the scoring

    with distributed.process_group(args.device):
        checkpoint = load_checkpoint(options, args.checkpoint)
        scores = score(options, checkpoint, read_scoring_documents(options))
        if distributed.rank() != 0:
            return 0
        if not math.isfinite(scores.bits_per_byte):
            raise ScoringError("the documents hold no text to score (0 bytes)")
        figures = summary(scores)
        for name, value in figures.items():
            if name != "bytes_from_text":
                print(
                    f"{name:<16} {value:.6f}" if isinstance(value, float) else f"{name:<16} {value}"
                )
        if scores.bytes_from_text:
            print(
                "note: the tokenizer is not byte-conservative on these documents; bytes are the "
                "text's own UTF-8 bytes (--allow-inexact-bytes)"
            )
        # Where the nats go: by character class and context position (not with inexact bytes).
        parts = {} if scores.attribution is None else breakdown(scores.attribution)
        if parts:
            print()
            print(breakdown_tables(parts))
        if args.json:
            record = {
                "checkpoint": args.checkpoint,
                "identity": checkpoint.identity,
                **figures,
                **parts,
            }
            atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
