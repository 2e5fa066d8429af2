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

import contextlib
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bpbeval import distributed, report
from bpbeval.attribution import CLASSES, POSITIONS
from bpbeval.cache import ResultCache
from bpbeval.checkpoint import Checkpoint
from bpbeval.cli import ArgumentParser, int_at_least, run
from bpbeval.data import Document
from bpbeval.errors import ScoringError
from bpbeval.eval import (
    ScoringOptions,
    load_checkpoint,
    read_scoring_documents,
    score,
)
from bpbeval.files import atomic_writer, check_directory_to_fill, check_output_file
from bpbeval.report import MODELS
from bpbeval.results import Scores
from bpbeval.statistics import (
    PairedFigures,
    PartFigures,
    paired_breakdown,
    paired_figures,
    paired_figures_by_domain,
)

# Documents listed each way: where A beats B most, where B beats A most, each model's hardest.
HIGHLIGHTS = 10
# Documents whose per-document figures are worked out at once, to pick the highlights.
HIGHLIGHT_BLOCK = 1 << 16
SNIPPET_CHARS = 60


@dataclass(frozen=True)
class Highlight:
    """One document singled out, with the start of its text (whitespace collapsed)."""

    id: str
    bytes: int
    bits_per_byte_a: float
    bits_per_byte_b: float
    snippet: str


@dataclass(frozen=True)
class Comparison:
    """Two scorings of the same documents, paired.

    Attributes:
        overall: the paired figures over every document: pooled over all bytes, the
            "micro" average, where a domain weighs by its bytes.
        domains: the same figures within each domain, in sorted order; empty when
            no document has a domain.
        classes: both models on the bytes of each character class (:data:`CLASSES`
            order, classes present only); empty without attribution.
        positions: the same by context position bucket (:data:`POSITIONS`).
        highlights: up to ``HIGHLIGHTS`` documents each: ``a_beats_b`` and ``b_beats_a``
            (largest per-document Δbpb each way, winners only), ``hardest_a`` and
            ``hardest_b`` (highest bpb).
    """

    overall: PairedFigures
    domains: dict[str, PairedFigures]
    classes: dict[str, PartFigures] = field(default_factory=dict)
    positions: dict[str, PartFigures] = field(default_factory=dict)
    highlights: dict[str, list[Highlight]] = field(default_factory=dict)

    @property
    def macro(self) -> tuple[float, float] | None:
        """Each model's mean of its per-domain bpbs (Paloma's "macro" average), A then B.

        Every domain weighs the same, however many bytes it has (documents without a domain
        form one more); ``None`` without domains.
        """
        if not self.domains:
            return None
        parts = self.domains.values()
        return (
            math.fsum(f.a.bits_per_byte for f in parts) / len(parts),
            math.fsum(f.b.bits_per_byte for f in parts) / len(parts),
        )


def compare_scores(
    documents: Iterable[Document], a: Scores, b: Scores, *, bootstrap: int = 1000, seed: int = 0
) -> Comparison:
    """Pair two models' scores of ``documents`` and compute every paired figure.

    Args:
        documents: the documents both were scored on, in order (streamed again only
            to name a document whose bytes A and B disagree on).
        a: model A's scores (as rank 0 holds them: every document).
        b: model B's scores.
        bootstrap: bootstrap replicates.
        seed: bootstrap seed.

    Raises:
        ScoringError: the two scorings differ in documents or in any document's bytes,
            so their bpbs would divide by different denominators; or there are no bytes.

    Example:
        >>> from bpbeval.results import DocumentScore, DocumentScores
        >>> docs = [Document("x", "abcd"), Document("y", "ef")]
        >>> def scores(*nats):
        ...     rows = [DocumentScore(None, n, len(d.text), 2) for d, n in zip(docs, nats)]
        ...     return Scores(DocumentScores.from_rows(rows), sum(nats), 6, 4, False)
        >>> compare_scores(docs, scores(2.0, 1.0), scores(2.0, 1.0)).overall.verdict
        'no verdict, too few documents for a 95% interval (2; at least 41): A − B = 0.0000 bpb'
    """
    _check_same_bytes(documents, a, b)
    domains = a.documents.domain
    arrays = (
        a.documents.nats,
        b.documents.nats,
        a.documents.bytes,
        a.documents.tokens,
        b.documents.tokens,
    )
    overall = paired_figures(*arrays, replicates=bootstrap, seed=seed)
    by_domain = {}
    if np.not_equal(domains, None).any():
        by_domain = paired_figures_by_domain(domains, *arrays, replicates=bootstrap, seed=seed)
    classes, positions = {}, {}
    if a.attribution is not None and b.attribution is not None:
        x, y = a.attribution, b.attribution
        options = {"replicates": bootstrap, "seed": seed}
        classes = paired_breakdown(CLASSES, x.classes, y.classes, **options)
        positions = paired_breakdown(POSITIONS, x.positions, y.positions, **options)
    return Comparison(overall, by_domain, classes, positions, _highlights(documents, a, b))


def _highlights(documents: Iterable[Document], a: Scores, b: Scores) -> dict[str, list[Highlight]]:
    def block_picks(rows: slice) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        # Per-document figures of one block of documents: a few columns of a block at a time.
        x, y = a.documents[rows], b.documents[rows]
        scored = x.bytes > 0  # the others' bpb is NaN
        bpb_a, bpb_b = x.bits_per_byte, y.bits_per_byte
        delta = bpb_a - bpb_b
        return {
            "a_beats_b": _most(-delta, scored & (delta < 0)),
            "b_beats_a": _most(delta, scored & (delta > 0)),
            "hardest_a": _most(bpb_a, scored),
            "hardest_b": _most(bpb_b, scored),
        }

    # Every document's HIGHLIGHTS largest are among its block's HIGHLIGHTS largest (ties go to
    # the earlier document, in a block as overall): so the best of each block, then of those.
    candidates: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for start in range(0, len(a.documents), HIGHLIGHT_BLOCK):
        for key, (rows, values) in block_picks(slice(start, start + HIGHLIGHT_BLOCK)).items():
            candidates.setdefault(key, []).append((rows + start, values))
    picks = {}
    for key, found in candidates.items():
        rows, values = (np.concatenate(column) for column in zip(*found, strict=True))
        picks[key] = rows[np.lexsort((rows, -values))[:HIGHLIGHTS]].tolist()  # largest, earliest
    wanted = {i for rows in picks.values() for i in rows}
    # Scores hold positions, not ids: the listed documents' ids and text come from the input.
    listed = {i: document for i, document in enumerate(documents) if i in wanted}

    def highlight(i: int) -> Highlight:
        x, y, text = a.documents[i], b.documents[i], listed[i].text
        snippet = " ".join(text[: 4 * SNIPPET_CHARS].split())[:SNIPPET_CHARS].rstrip()
        return Highlight(listed[i].id, x.bytes, x.bits_per_byte, y.bits_per_byte, snippet)

    return {key: [highlight(i) for i in rows] for key, rows in picks.items()}


def _most(values: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and values of the ``HIGHLIGHTS`` largest ``values`` where ``where``, largest
    first, ties to the earlier row.

    The cut from a partition, then a stable sort of the few at or above it, never a sort of
    every document.
    """
    count = min(HIGHLIGHTS, int(np.count_nonzero(where)))
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    keyed = np.where(where, values, -np.inf)
    cut = np.partition(keyed, len(keyed) - count)[len(keyed) - count]
    rows = np.flatnonzero(where & (keyed >= cut))
    rows = rows[np.argsort(-keyed[rows], kind="stable")[:HIGHLIGHTS]]
    return rows, keyed[rows]


def _check_same_bytes(documents: Iterable[Document], a: Scores, b: Scores) -> None:
    if len(a.documents) != len(b.documents):
        raise ScoringError(
            f"A and B were not scored on the same documents ({len(a.documents)} vs "
            f"{len(b.documents)})"
        )
    differ = np.flatnonzero(a.documents.bytes != b.documents.bytes)
    if len(differ):
        x, y = a.documents[int(differ[0])], b.documents[int(differ[0])]
        document = next(itertools.islice(documents, int(differ[0]), None))
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
    ScoringOptions.add_arguments(parser)
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
        "--cache",
        metavar="DIR",
        help="keep per-document results here; a rerun resumes (default: none)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write every figure and the settings (default: none)"
    )
    parser.add_argument(
        "--per-doc", metavar="FILE", help="write per-document results, Parquet (default: none)"
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="plot per-document bpb, needs matplotlib (default: none)"
    )
    return parser


# Flags that name outputs: they do not change a single figure, so the JSON leaves them out.
# Nor does the token budget; a speed setting added later, it is left out so that the same
# settings give the same JSON, byte for byte, as before it existed. So is the attribution
# switch (added later too): the JSON shows it anyway, as empty classes and positions.
_OUTPUT_FLAGS = (
    "checkpoint_a", "checkpoint_b", "cache", "json", "per_doc", "plot", "batch_tokens",
    "attribution",
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
    if args.cache:
        check_directory_to_fill(args.cache, flag="--cache")
    if args.plot:
        report.pyplot()
    with distributed.process_group(args.device):
        options = ScoringOptions.from_args(args)
        documents = read_scoring_documents(options)
        models, scores = {}, {}
        for name, spec in zip(MODELS, (args.checkpoint_a, args.checkpoint_b), strict=True):
            checkpoint = load_checkpoint(options, spec)
            models[name] = _describe(checkpoint)
            # --per-doc has a column per class for each document: only then are they kept.
            scores[name] = _score(
                name, checkpoint, documents, options, args.cache, per_document=bool(args.per_doc)
            )
            del checkpoint  # free A before loading B
        if distributed.rank() != 0:
            return 0
    a, b = scores["A"], scores["B"]
    _check_same_bytes(documents, a, b)
    # Checked equal, so B may hold A's domain and byte columns: one copy of each (10M documents:
    # 160 MB less at the statistics' peak).
    shared = replace(b.documents, domain=a.documents.domain, bytes=a.documents.bytes)
    scores["B"] = b = replace(b, documents=shared)
    comparison = compare_scores(documents, a, b, bootstrap=args.bootstrap, seed=args.seed)
    print(report.terminal(comparison, models, scores))
    # Every output is whole in a temporary file before any is moved into place: a failure
    # leaves none behind.
    rendered: dict[str, bytes] = {}
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in _OUTPUT_FLAGS}
        rendered[args.json] = report.to_json(comparison, models, scores, settings).encode()
    if args.plot:
        rendered[args.plot] = report.plot_png(comparison, scores, report.model_names(models))
    with contextlib.ExitStack() as outputs:
        for path, data in rendered.items():
            outputs.enter_context(atomic_writer(path)).write(data)
        if args.per_doc:
            # Opened last so that it is synced and moved first: should that fail, no other
            # output is in place yet.
            sink = outputs.enter_context(atomic_writer(args.per_doc))
            report.write_per_document_parquet(sink, documents, scores["A"], scores["B"])
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
    name: str,
    checkpoint: Checkpoint,
    documents: Iterable[Document],
    options: ScoringOptions,
    cache_dir: str | None,
    *,
    per_document: bool,
) -> Scores:
    engine = {"per_document_attribution": per_document}
    if cache_dir is None:
        return score(options, checkpoint, documents, **engine)
    settings = options.cache_settings()
    with ResultCache(cache_dir, identity=checkpoint.identity, settings=settings) as cache:
        result = score(options, checkpoint, documents, cache=cache, **engine)
    counts = distributed.gather_to_rank0((cache.written, cache.hits))
    if counts is not None:
        scored, reused = (sum(column) for column in zip(*counts, strict=True))
        print(f"{name}: {scored} documents scored, {reused} from {cache_dir}", file=sys.stderr)
    return result


if __name__ == "__main__":
    run(main)
