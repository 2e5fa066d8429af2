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

import torch

from bpbeval import distributed
from bpbeval.checkpoint import Checkpoint, load
from bpbeval.cli import ArgumentParser, notice, positive_int, run, torch_device
from bpbeval.data import Corpus, Document
from bpbeval.errors import ScoringError
from bpbeval.files import atomic_write_text, check_output_file
from bpbeval.scoring import DEFAULT_BATCH_TOKENS, Scores, score_documents

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose documents, windows and hardware (shared with compare)."""
    data = parser.add_argument_group("documents")
    data.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="Parquet, JSONL or text files, or directories of them",
    )
    data.add_argument("--text-column", default="text", help="column or key holding the text")
    data.add_argument(
        "--domain-column",
        help="column or key holding a domain label (default: 'domain' where the data has it)",
    )
    data.add_argument("--max-docs", type=positive_int, help="score only the first N documents")
    data.add_argument(
        "--max-bytes",
        type=positive_int,
        help="score only the first documents that fit in N UTF-8 bytes",
    )
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--stride",
        type=positive_int,
        help="tokens scored per window after the first (default: context / 2)",
    )
    scoring.add_argument(
        "--context",
        type=positive_int,
        help="tokens per window (default and maximum: the model's context)",
    )
    scoring.add_argument(
        "--batch-tokens",
        type=positive_int,
        default=DEFAULT_BATCH_TOKENS,
        metavar="N",
        help="padded positions per forward pass (default %(default)s)",
    )
    scoring.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="at most N windows per forward pass (default: as many as --batch-tokens allows)",
    )
    scoring.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    scoring.add_argument("--dtype", choices=sorted(DTYPES), help="cast the model's weights")
    scoring.add_argument(
        "--loader",
        metavar="MODULE:FUNCTION",
        help="custom loader: FUNCTION(CKPT) returns (model, tokenizer)",
    )
    scoring.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a Hugging Face model directory run its own code",
    )
    scoring.add_argument(
        "--allow-inexact-bytes",
        action="store_true",
        help="if the tokens' bytes differ from the text's, divide by the text's",
    )


def load_checkpoint(args: argparse.Namespace, spec: str) -> Checkpoint:
    """The checkpoint ``spec`` loaded as the scoring arguments ask, on this rank's device."""
    return load(
        spec,
        device=distributed.device_for_rank(args.device),
        dtype=DTYPES[args.dtype] if args.dtype else None,
        loader=args.loader,
        trust_remote_code=args.trust_remote_code,
    )


def read_scoring_documents(args: argparse.Namespace) -> Corpus:
    """The documents the scoring arguments select, in a fixed order, streamed (each rank
    decodes only its own); rank 0 names what it skips."""
    return Corpus(
        args.data,
        text_column=args.text_column,
        domain_column=args.domain_column,
        max_docs=args.max_docs,
        max_bytes=args.max_bytes,
        on_skipped=notice if distributed.rank() == 0 else None,
    )


def score(
    args: argparse.Namespace,
    checkpoint: Checkpoint,
    documents: Iterable[Document],
    **options: object,
) -> Scores:
    """:func:`score_documents` with the scoring arguments' windows and hardware."""
    return score_documents(
        checkpoint,
        documents,
        stride=args.stride,
        context_len=args.context,
        batch_tokens=args.batch_tokens,
        batch_size=args.batch_size,
        device=distributed.device_for_rank(args.device),
        allow_inexact_bytes=args.allow_inexact_bytes,
        **options,
    )


def summary(scores: Scores) -> dict[str, object]:
    """The figures eval prints and writes."""
    return {
        "bits_per_byte": scores.bits_per_byte,
        "bits_per_token": scores.bits_per_token,
        "bytes_per_token": scores.bytes_per_token,
        "tokens": scores.tokens,
        "documents": len(scores.documents),
        "bytes": scores.bytes,
        "bytes_from_text": scores.bytes_from_text,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bpbeval.eval", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="native checkpoint or Hugging Face directory (or --loader argument)",
    )
    add_scoring_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.json:
        check_output_file(args.json, suffix=".json", flag="--json")  # not after the scoring

    with distributed.process_group(args.device):
        checkpoint = load_checkpoint(args, args.checkpoint)
        documents = read_scoring_documents(args)
        scores = score(args, checkpoint, documents)
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
        if args.json:
            record = {"checkpoint": args.checkpoint, "identity": checkpoint.identity, **figures}
            atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
