"""``python -m bpbeval.compare CKPT_A CKPT_B --data PATH...``: which model is better, and how sure.

Both checkpoints score the same documents with the scoring engine, whatever
their vocabularies, so every document is a paired observation with one byte
count. The paired figures (:mod:`bpbeval.statistics`) come from the per-document
results gathered on rank 0, so they are the same on one process or many.
``--cache DIR`` keeps each document's result as soon as it is scored
(:mod:`bpbeval.cache`): a killed run resumes where it stopped and ends with the
same JSON, byte for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq

import bpbeval
from bpbeval import distributed
from bpbeval.cache import ResultCache
from bpbeval.checkpoint import Checkpoint
from bpbeval.cli import ArgumentParser, int_at_least, run
from bpbeval.data import Document
from bpbeval.errors import MissingDependencyError, ScoringError
from bpbeval.eval import (
    add_scoring_arguments,
    load_checkpoint,
    read_scoring_documents,
    score,
    summary,
)
from bpbeval.files import atomic_write_bytes, check_output_file
from bpbeval.scoring import Scores
from bpbeval.statistics import (
    CONFIDENCE,
    ModelFigures,
    PairedFigures,
    paired_figures,
    paired_figures_by_domain,
)

MODELS = ("A", "B")


@dataclass(frozen=True)
class Comparison:
    """Two scorings of the same documents, paired.

    Attributes:
        overall: the paired figures over every document.
        domains: the same figures within each domain, in sorted order; empty when
            no document has a domain.
    """

    overall: PairedFigures
    domains: dict[str, PairedFigures]


def compare_scores(
    documents: Sequence[Document], a: Scores, b: Scores, *, bootstrap: int = 1000, seed: int = 0
) -> Comparison:
    """Pair two models' scores of ``documents`` and compute every paired figure.

    Args:
        documents: the documents both were scored on, in order.
        a: model A's scores (as rank 0 holds them: every document).
        b: model B's scores.
        bootstrap: bootstrap replicates.
        seed: bootstrap seed.

    Raises:
        ScoringError: the two scorings differ in documents or in any document's bytes,
            so their bpbs would divide by different denominators; or there are no bytes.

    Example:
        >>> from bpbeval.scoring import DocumentScore
        >>> docs = [Document("x", "abcd"), Document("y", "ef")]
        >>> def scores(*nats):
        ...     per_doc = [DocumentScore(d.id, None, n, len(d.text), 2) for d, n in zip(docs, nats)]
        ...     return Scores(per_doc, sum(nats), 6, 4, False)
        >>> compare_scores(docs, scores(2.0, 1.0), scores(2.0, 1.0)).overall.verdict
        'no verdict, too few documents for a 95% interval (2; at least 41): A − B = 0.0000 bpb'
    """
    _check_same_bytes(documents, a, b)
    domains = [s.domain for s in a.documents]
    arrays = (
        [s.nats for s in a.documents],
        [s.nats for s in b.documents],
        [s.bytes for s in a.documents],
        [s.tokens for s in a.documents],
        [s.tokens for s in b.documents],
    )
    overall = paired_figures(*arrays, replicates=bootstrap, seed=seed)
    by_domain = {}
    if any(domain is not None for domain in domains):
        by_domain = paired_figures_by_domain(domains, *arrays, replicates=bootstrap, seed=seed)
    return Comparison(overall, by_domain)


def _check_same_bytes(documents: Sequence[Document], a: Scores, b: Scores) -> None:
    ids = [d.id for d in documents]
    if [s.id for s in a.documents] != ids or [s.id for s in b.documents] != ids:
        raise ScoringError("A and B were not scored on the same documents in the same order")
    for document, x, y in zip(documents, a.documents, b.documents, strict=True):
        if x.bytes != y.bytes:
            n = len(document.text.encode("utf-8"))
            odd = [m for m, s in zip(MODELS, (x, y), strict=True) if s.bytes != n]
            raise ScoringError(
                f"A and B disagree on the bytes of document {document.id} ({x.bytes} vs "
                f"{y.bytes}; its text has {n} UTF-8 bytes), so their bpbs would not share a "
                f"denominator; {' and '.join(odd)} counted other bytes than the text's: a "
                "--cache directory written by other code or edited would do this; delete it"
            )
    if a.bytes != b.bytes:
        raise ScoringError(f"A and B disagree on the byte total ({a.bytes} vs {b.bytes})")
    if a.bytes == 0:
        raise ScoringError("the documents hold no text to compare on (0 bytes)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m bpbeval.compare",
        description="Compare two checkpoints' bits per byte on the same documents, paired, "
        "with a bootstrap confidence interval.",
    )
    parser.add_argument("checkpoint_a", metavar="CKPT_A", help="model A (see bpbeval.eval)")
    parser.add_argument("checkpoint_b", metavar="CKPT_B", help="model B")
    add_scoring_arguments(parser)
    parser.add_argument(
        "--bootstrap",
        type=int_at_least(1),
        default=1000,
        metavar="N",
        help="bootstrap replicates (default 1000)",
    )
    parser.add_argument(
        "--seed", type=int_at_least(0), default=0, help="bootstrap seed (default 0)"
    )
    parser.add_argument(
        "--cache", metavar="DIR", help="keep per-document results here; a rerun resumes"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure and the settings")
    parser.add_argument("--per-doc", metavar="FILE", help="write per-document results (Parquet)")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="plot per-document bpb (needs matplotlib)"
    )
    return parser


# Flags that name outputs: they do not change a single figure, so the JSON leaves them out.
# Nor does the token budget; a speed setting added later, it is left out so that the same
# settings give the same JSON, byte for byte, as before it existed.
_OUTPUT_FLAGS = (
    "checkpoint_a", "checkpoint_b", "cache", "json", "per_doc", "plot", "batch_tokens",
)  # fmt: skip
# The output files and the suffix of what each holds.
_OUTPUT_SUFFIXES = {"json": ".json", "per_doc": ".parquet", "plot": ".png"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Fail now, not after scoring: outputs that cannot be written, a plot without matplotlib.
    for dest, suffix in _OUTPUT_SUFFIXES.items():
        path = getattr(args, dest)
        if path:
            check_output_file(path, suffix=suffix, flag="--" + dest.replace("_", "-"))
    if args.plot:
        _pyplot()
    with distributed.process_group(args.device):
        documents = read_scoring_documents(args)
        models, scores = {}, {}
        for name, spec in zip(MODELS, (args.checkpoint_a, args.checkpoint_b), strict=True):
            checkpoint = load_checkpoint(args, spec)
            models[name] = _describe(checkpoint)
            scores[name] = _score(name, checkpoint, documents, args)
            del checkpoint  # free A before loading B
        if distributed.rank() != 0:
            return 0
    comparison = compare_scores(
        documents, scores["A"], scores["B"], bootstrap=args.bootstrap, seed=args.seed
    )
    print(report(comparison, models, scores))
    # Every output is rendered before any is written: a failure leaves none behind.
    outputs: dict[str, bytes] = {}
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in _OUTPUT_FLAGS}
        outputs[args.json] = to_json(comparison, models, scores, settings).encode("utf-8")
    if args.per_doc:
        outputs[args.per_doc] = per_document_parquet(scores["A"], scores["B"])
    if args.plot:
        outputs[args.plot] = plot_png(scores["A"], scores["B"])
    for path, data in outputs.items():
        atomic_write_bytes(path, data)
    return 0


def _describe(checkpoint: Checkpoint) -> dict[str, object]:
    return {
        "checkpoint": checkpoint.source,
        "kind": checkpoint.kind,
        "identity": checkpoint.identity,
        "tokenizer_hash": checkpoint.tokenizer.hash,
        "context_len": checkpoint.context_len,
    }


def _score(
    name: str, checkpoint: Checkpoint, documents: list[Document], args: argparse.Namespace
) -> Scores:
    if args.cache is None:
        return score(args, checkpoint, documents)
    # Exactly the settings that change a document's score; batch size and world size do not.
    settings = {
        "stride": args.stride,
        "context": args.context,
        "dtype": args.dtype,
        "allow_inexact_bytes": args.allow_inexact_bytes,
    }
    with ResultCache(args.cache, identity=checkpoint.identity, settings=settings) as cache:
        result = score(args, checkpoint, documents, cache=cache)
    counts = distributed.gather_to_rank0((cache.written, cache.hits))
    if counts is not None:
        scored, reused = (sum(column) for column in zip(*counts, strict=True))
        print(f"{name}: {scored} documents scored, {reused} from {args.cache}", file=sys.stderr)
    return result


def _model_figures(figures: ModelFigures, documents: int) -> dict[str, object]:
    # The figures eval reports for a whole run, here for a domain, plus the nats to pool them.
    return {
        "bits_per_byte": figures.bits_per_byte,
        "bits_per_token": figures.bits_per_token,
        "bytes_per_token": figures.bytes_per_token,
        "tokens": figures.tokens,
        "documents": documents,
        "bytes": figures.bytes,
        "nats": figures.nats,
    }


def _paired(figures: PairedFigures) -> dict[str, object]:
    return {
        "delta_bpb": figures.delta,
        "ci": None if figures.ci is None else list(figures.ci),
        "a_wins": figures.a_wins,
        "ties": figures.ties,
        "correlation": figures.correlation,
        "documents": figures.documents,
        "verdict": figures.verdict,
    }


def to_json(
    comparison: Comparison,
    models: dict[str, dict[str, object]],
    scores: dict[str, Scores],
    settings: dict[str, object],
) -> str:
    """Every figure and setting as JSON; the same inputs always give the same bytes.

    Keys are sorted and nothing depends on time, world size or where outputs go.
    """
    out = {
        "bpbeval": bpbeval.__version__,
        "models": {m: {**models[m], **summary(scores[m]), "nats": scores[m].nats} for m in MODELS},
        "overall": _paired(comparison.overall),
        "domains": {
            domain: {
                "A": _model_figures(f.a, f.documents),
                "B": _model_figures(f.b, f.documents),
                **_paired(f),
            }
            for domain, f in comparison.domains.items()
        },
        "settings": {**settings, "bootstrap_confidence": CONFIDENCE},
    }
    return json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def per_document_parquet(a: Scores, b: Scores) -> bytes:
    """Per-document results as Parquet bytes: id, domain, bytes, then nats and tokens per model."""
    table = pa.table(
        {
            "id": pa.array([s.id for s in a.documents], pa.string()),
            "domain": pa.array([s.domain for s in a.documents], pa.string()),
            "bytes": pa.array([s.bytes for s in a.documents], pa.int64()),
            "nats_a": pa.array([s.nats for s in a.documents], pa.float64()),
            "tokens_a": pa.array([s.tokens for s in a.documents], pa.int64()),
            "nats_b": pa.array([s.nats for s in b.documents], pa.float64()),
            "tokens_b": pa.array([s.tokens for s in b.documents], pa.int64()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _pyplot() -> ModuleType:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError(
            "--plot needs matplotlib, which is not installed: pip install 'bpbeval[plot]'"
        ) from e
    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_png(a: Scores, b: Scores) -> bytes:
    """PNG bytes: per-document bpb of A against B, and a histogram of per-document Δbpb."""
    plt = _pyplot()
    pairs = [(x, y) for x, y in zip(a.documents, b.documents, strict=True) if x.bytes > 0]
    bpb_a = [x.nats / (math.log(2) * x.bytes) for x, _ in pairs]
    bpb_b = [y.nats / (math.log(2) * y.bytes) for _, y in pairs]
    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=100)
    scatter.scatter(bpb_b, bpb_a, s=8, alpha=0.6)
    low, high = min(bpb_a + bpb_b), max(bpb_a + bpb_b)
    scatter.plot([low, high], [low, high], color="grey", linewidth=1)  # A = B
    scatter.set(
        xlabel="bpb of B", ylabel="bpb of A", title="per document (below the line: A better)"
    )
    histogram.hist([x - y for x, y in zip(bpb_a, bpb_b, strict=True)], bins=40)
    histogram.axvline(0, color="grey", linewidth=1)
    histogram.set(xlabel="bpb of A − bpb of B", ylabel="documents", title="per-document Δbpb")
    histogram.yaxis.get_major_locator().set_params(integer=True)  # counts of documents
    fig.tight_layout()
    sink = io.BytesIO()
    fig.savefig(sink, format="png")
    plt.close(fig)
    return sink.getvalue()


def report(
    comparison: Comparison, models: dict[str, dict[str, object]], scores: dict[str, Scores]
) -> str:
    """The terminal report: both models side by side, the paired figures, then per domain."""
    figures = {m: summary(scores[m]) for m in MODELS}
    per_model = [["", *MODELS], ["checkpoint", *(str(models[m]["checkpoint"]) for m in MODELS)]]
    per_model += [
        [label, *(fmt.format(figures[m][key]) for m in MODELS)] for label, key, fmt in _MODEL_ROWS
    ]
    overall = comparison.overall
    resampled = f"{overall.replicates} replicates of {overall.documents} documents"
    paired = [
        ("Δbpb (A − B)", f"{overall.delta:+.6f}"),
        (f"{CONFIDENCE:.0%} CI", _interval(overall, 6) or f"none, {overall.too_few}"),
        ("bootstrap", resampled if overall.ci else "not run"),
        ("A wins", f"{overall.a_wins:.1%} of documents ({overall.ties:.1%} ties)"),
        ("correlation", _correlation(overall.correlation)),
    ]
    width = max(len(label) for label, _ in paired)
    lines = [_table(per_model), ""]
    lines += [f"{label:<{width}}  {value}" for label, value in paired]
    lines += ["", overall.verdict]
    if any(scores[m].bytes_from_text for m in MODELS):
        lines.append("note: bytes are the texts' own UTF-8 bytes (--allow-inexact-bytes)")
    if comparison.domains:
        rows = [["domain", "docs", "bytes", "bpb A", "bpb B", "Δbpb", "CI", "A wins", "corr"]]
        rows += [
            [
                domain or "(none)",
                f"{f.documents:,}",
                f"{f.a.bytes:,}",
                f"{f.a.bits_per_byte:.4f}",
                f"{f.b.bits_per_byte:.4f}",
                f"{f.delta:+.4f}",
                _interval(f, 4) or "too few",
                f"{f.a_wins:.1%}",
                _correlation(f.correlation),
            ]
            for domain, f in comparison.domains.items()
        ]
        lines += ["", _table(rows)]
    return "\n".join(lines)


_MODEL_ROWS = (
    ("bits per byte", "bits_per_byte", "{:.6f}"),
    ("bits per token", "bits_per_token", "{:.6f}"),
    ("bytes per token", "bytes_per_token", "{:.4f}"),
    ("tokens", "tokens", "{:,}"),
    ("documents", "documents", "{:,}"),
    ("bytes", "bytes", "{:,}"),
)


def _interval(figures: PairedFigures, digits: int) -> str | None:
    if figures.ci is None:
        return None
    lo, hi = figures.ci
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _correlation(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.4f}"


def _table(rows: list[list[str]]) -> str:
    # First column left-aligned (labels), the others right-aligned (numbers).
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


if __name__ == "__main__":
    run(main)
