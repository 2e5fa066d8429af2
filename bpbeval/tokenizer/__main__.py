"""``python -m bpbeval.tokenizer {train,audit,compare,token-bytes}``.

    train        train a tokenizer on Parquet/JSONL/text files and save it
    audit        check that a tokenizer's token_bytes conserve the bytes of a corpus
    compare      bytes per token of several tokenizers on the same documents, overall and
                 by character class and script
    token-bytes  write a tokenizer's exact byte table as nanochat's token_bytes.pt

A tokenizer is named as :func:`bpbeval.tokenizer.loading.load_tokenizer` reads it: a bpbeval
or nanochat directory, a Hugging Face tokenizer.json, or ``tiktoken:NAME``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from bpbeval.attribution import CLASSES, attribute
from bpbeval.cli import ArgumentParser, int_at_least, notice, positive_int, run
from bpbeval.data import cap_texts, read_documents
from bpbeval.errors import DataError
from bpbeval.files import check_output_directory, check_output_file
from bpbeval.integrations.nanochat import save_token_bytes
from bpbeval.report import table
from bpbeval.tokenizer.audit import AuditReport, audit
from bpbeval.tokenizer.core import SAVED_FILES, TextTokenizer, train
from bpbeval.tokenizer.loading import load_tokenizer


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m bpbeval.tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", nargs="+", required=True, help="Parquet/JSONL/text files or dirs")
        p.add_argument("--text-column", default="text", help="Parquet column / JSON key of text")

    p = commands.add_parser("train", help="train a tokenizer and save it")
    data_options(p)
    p.add_argument(
        "--vocab-size", type=positive_int, required=True, help="including special tokens"
    )
    p.add_argument("--out", required=True, help="directory to save the tokenizer to")
    p.add_argument("--max-chars", type=positive_int, help="train on at most this many characters")
    p.add_argument("--doc-cap", type=positive_int, help="cut each document to this many characters")
    p.add_argument(
        "--heldout-docs",
        type=int_at_least(0),
        default=64,
        help="the first N documents are not trained on; compression is measured on them",
    )

    p = commands.add_parser("audit", help="check byte conservation on a corpus")
    p.add_argument("tokenizer")
    data_options(p)
    p.add_argument("--max-docs", type=positive_int, help="audit only the first N documents")

    p = commands.add_parser("compare", help="bytes per token of several tokenizers")
    p.add_argument("tokenizers", nargs="+")
    data_options(p)
    p.add_argument("--max-docs", type=positive_int, help="use only the first N documents")

    p = commands.add_parser("token-bytes", help="write the exact byte table as token_bytes.pt")
    p.add_argument("tokenizer")
    p.add_argument(
        "--out", required=True, help="file to write, e.g. the nanochat directory's token_bytes.pt"
    )
    return parser


def _counting(texts: Iterable[str], bar: tqdm) -> Iterator[str]:
    for text in texts:
        bar.update(len(text))
        yield text


def _train(args: argparse.Namespace) -> int:
    check_output_directory(args.out, owns=SAVED_FILES, flag="--out")  # not after the training
    docs = read_documents(args.data, text_column=args.text_column, on_skipped=notice)
    heldout = [doc.text for doc in islice(docs, args.heldout_docs)]
    texts = cap_texts((doc.text for doc in docs), max_chars=args.max_chars, doc_cap=args.doc_cap)
    first = next(texts, None)
    if first is None:
        raise DataError(
            f"no documents are left to train on after the {len(heldout)} held out; "
            "add data or lower --heldout-docs"
        )
    start = time.perf_counter()
    with tqdm(desc="training on", unit="char", unit_scale=True, total=args.max_chars) as bar:
        tokenizer = train(_counting(chain([first], texts), bar), args.vocab_size)
        chars = bar.n
    seconds = time.perf_counter() - start
    tokenizer.save(args.out)

    lengths = tokenizer.token_bytes()
    lengths = lengths[lengths > 0].double()
    print(f"saved {args.out} (hash {tokenizer.hash[:16]})")
    print(f"trained in {seconds:.1f} s on {chars:,} chars ({chars / seconds:,.0f} chars/s)")
    print(
        f"vocab_size {tokenizer.vocab_size} ({len(tokenizer.special_tokens)} special); "
        "token_bytes of the "
        f"others: min {lengths.min():.0f} max {lengths.max():.0f} "
        f"mean {lengths.mean():.2f} std {lengths.std():.2f}"
    )
    if heldout:
        report = audit(tokenizer, heldout)
        print(
            f"held-out: {report.expected_bytes / max(report.tokens, 1):.3f} bytes/token "
            f"on {report.texts} documents ({report.expected_bytes:,} bytes); {report}"
        )
    return 0


def _texts(args: argparse.Namespace) -> list[str]:
    docs = read_documents(
        args.data, text_column=args.text_column, max_docs=args.max_docs, on_skipped=notice
    )
    return [doc.text for doc in docs]


def _audit(args: argparse.Namespace) -> int:
    report = audit(load_tokenizer(args.tokenizer), _texts(args))
    print(report)
    return 0 if report.ok else 1


def _compare(args: argparse.Namespace) -> int:
    texts = _texts(args)
    rows: list[tuple[str, int, AuditReport]] = []
    tokenizers = [load_tokenizer(spec) for spec in args.tokenizers]
    for spec, tokenizer in zip(args.tokenizers, tokenizers, strict=True):
        rows.append((spec, tokenizer.vocab_size, audit(tokenizer, texts)))
    width = max(len("tokenizer"), *(len(spec) for spec, _, _ in rows))
    print(f"{len(texts)} documents, {rows[0][2].expected_bytes:,} bytes")
    print(f"{'tokenizer':<{width}}  {'vocab':>7}  {'tokens':>12}  {'bytes/token':>11}  exact")
    for spec, vocab, report in rows:
        bpt = report.expected_bytes / max(report.tokens, 1)
        exact = "yes" if report.ok else f"no ({len(report.violations)} texts)"
        print(f"{spec:<{width}}  {vocab:>7}  {report.tokens:>12,}  {bpt:>11.3f}  {exact}")
    print()
    print(_class_table(args.tokenizers, [_tokens_by_class(t, texts) for t in tokenizers]))
    return 0


def _tokens_by_class(
    tokenizer: TextTokenizer, texts: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    # Tokens and bytes per character class. A token spanning classes counts in each by its
    # share of bytes, the rule that attributes nats (bpbeval.attribution), with 1 per token in
    # place of nats. Texts whose tokens do not add up to their bytes are left out (the table
    # above says how many).
    table = tokenizer.token_bytes().numpy()
    tokens = np.zeros(len(CLASSES))
    n_bytes = np.zeros(len(CLASSES), dtype=np.int64)
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        lengths = table[ids]
        if (lengths > 0).all() and int(lengths.sum()) == len(text.encode("utf-8")):
            part = attribute(text, np.ones(len(ids)), lengths)
            tokens += part.class_nats
            n_bytes += part.class_bytes
    return tokens, n_bytes


def _class_table(
    specs: list[str], counts: list[tuple[NDArray[np.float64], NDArray[np.int64]]]
) -> str:
    n_bytes = counts[0][1]
    rows = [["bytes per token by class", "bytes", "share", *specs]]
    for k in np.flatnonzero(n_bytes):
        ratios = [f"{b[k] / t[k]:.3f}" if t[k] > 0 else "n/a" for t, b in counts]
        rows.append([CLASSES[k], f"{n_bytes[k]:,}", f"{n_bytes[k] / n_bytes.sum():.1%}", *ratios])
    return table(rows)


def _token_bytes(args: argparse.Namespace) -> int:
    check_output_file(args.out, suffix=".pt", flag="--out")
    table = save_token_bytes(load_tokenizer(args.tokenizer), args.out)
    print(
        f"wrote {args.out}: {len(table)} byte lengths, nanochat's layout "
        "(an int32 tensor; torch.load(path, weights_only=True) reads it)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": _train, "audit": _audit, "compare": _compare, "token-bytes": _token_bytes}
    return commands[args.command](args)


if __name__ == "__main__":
    run(main)
