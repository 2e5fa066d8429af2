"""What eval and compare show and write: terminal tables, JSON, per-document Parquet, plot.

Everything here renders one model's scores (eval) or a :class:`bpbeval.compare.Comparison`
and the two models' scores; nothing computes a figure that the JSON and the terminal could
then disagree on. Every renderer returns text or bytes, so that compare renders every
output before writing any, except the per-document Parquet, which can outgrow memory: it
is streamed to a file that compare moves into place with the others.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

import bpbeval
from bpbeval.attribution import CLASSES, POSITIONS, CorpusAttribution
from bpbeval.data import Document
from bpbeval.errors import MissingDependencyError
from bpbeval.results import Scores, bits_per_byte
from bpbeval.statistics import (
    CONFIDENCE,
    POWER,
    ModelFigures,
    PairedFigures,
    PartFigures,
    enumerates_all_flips,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bpbeval.compare import Comparison, Highlight

MODELS = ("A", "B")
# The terminal shows classes holding at least this share of the bytes (the JSON has all),
# and this many documents of each list.
TERMINAL_SHARE = 0.01
TERMINAL_DOCUMENTS = 3
# Rows per row group of the per-document Parquet: what it holds in memory at a time.
PER_DOCUMENT_ROWS = 1 << 15
_HIGHLIGHT_TITLES = {
    "a_beats_b": "documents where A beats B most",
    "b_beats_a": "documents where B beats A most",
    "hardest_a": "A's hardest documents",
    "hardest_b": "B's hardest documents",
}


def model_names(models: dict[str, dict[str, object]]) -> dict[str, str]:
    """What to call each model in a plot: its checkpoint's directory name, else A and B.

    Example:
        >>> model_names({"A": {"checkpoint": "runs/byte-level"}, "B": {"checkpoint": "x/bpe/"}})
        {'A': 'byte-level', 'B': 'bpe'}
        >>> model_names({"A": {"checkpoint": "a/ckpt"}, "B": {"checkpoint": "b/ckpt"}})
        {'A': 'A: ckpt', 'B': 'B: ckpt'}
    """
    names = {m: Path(str(models[m]["checkpoint"])).name or m for m in MODELS}
    if len(set(names.values())) < len(MODELS):
        return {m: f"{m}: {name}" for m, name in names.items()}
    return names


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
        "p_value": figures.p_value,
        "mde": figures.mde,
    }


def _macro(comparison: Comparison) -> dict[str, object] | None:
    if comparison.macro is None:
        return None
    a, b = comparison.macro
    return {"A": a, "B": b, "delta_bpb": a - b, "domains": len(comparison.domains)}


def summary(scores: Scores) -> dict[str, object]:
    """The figures of one model's scores, as eval prints and writes them.

    Example:
        >>> from bpbeval.results import DocumentScores
        >>> summary(Scores(DocumentScores.from_rows([]), 0.0, 0, 0, False))["bits_per_byte"]
        nan
    """
    return {
        "bits_per_byte": scores.bits_per_byte,
        "bits_per_token": scores.bits_per_token,
        "bytes_per_token": scores.bytes_per_token,
        "tokens": scores.tokens,
        "documents": len(scores.documents),
        "bytes": scores.bytes,
        "bytes_from_text": scores.bytes_from_text,
    }


def breakdown(attribution: CorpusAttribution) -> dict[str, dict[str, dict[str, float | int]]]:
    """One model's bpb by character class and by context position, as eval reports them.

    Example:
        >>> from bpbeval.attribution import AttributionSums, attribute
        >>> import math
        >>> sums = AttributionSums()
        >>> sums.add(0, attribute("ab 1", [2.0, math.log(2), 1.0], [2, 1, 1]))
        >>> one = AttributionSums.combine(sums.arrays(), [sums.partials()])
        >>> breakdown(one)["classes"]["whitespace"]
        {'bytes': 1, 'share': 0.25, 'nats': 0.6931471805599453, 'bits_per_byte': 1.0}
    """
    out = {}
    for key, names, parts in (
        ("classes", CLASSES, attribution.classes),
        ("positions", POSITIONS, attribution.positions),
    ):
        total = int(parts.bytes.sum())
        out[key] = {
            name: {
                "bytes": int(parts.bytes[k]),
                "share": int(parts.bytes[k]) / total,
                "nats": float(parts.nats[k]),
                "bits_per_byte": bits_per_byte(float(parts.nats[k]), int(parts.bytes[k])),
            }
            for k, name in enumerate(names)
            if parts.bytes[k]
        }
    return out


def breakdown_tables(figures: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """The terminal form of :func:`breakdown`: classes with at least ``TERMINAL_SHARE`` of
    the bytes, and every position bucket."""
    classes = [["by class", "share", "bpb"]]
    classes += [
        [name, f"{f['share']:.1%}", f"{f['bits_per_byte']:.4f}"]
        for name, f in figures["classes"].items()
        if f["share"] >= TERMINAL_SHARE
    ]
    positions = [["by position", "bytes", "bpb"]]
    positions += [
        [name, f"{f['bytes']:,}", f"{f['bits_per_byte']:.4f}"]
        for name, f in figures["positions"].items()
    ]
    return table(classes) + "\n\n" + table(positions)


def _part(part: PartFigures) -> dict[str, object]:
    return {
        "bytes": part.bytes,
        "share": part.share,
        "documents": part.documents,
        "nats_a": part.nats_a,
        "nats_b": part.nats_b,
        "bits_per_byte_a": part.bits_per_byte_a,
        "bits_per_byte_b": part.bits_per_byte_b,
        "delta_bpb": part.delta,
        "ci": None if part.ci is None else list(part.ci),
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
        "macro": _macro(comparison),
        "domains": {
            domain: {
                "A": _model_figures(f.a, f.documents),
                "B": _model_figures(f.b, f.documents),
                **_paired(f),
            }
            for domain, f in comparison.domains.items()
        },
        "classes": {name: _part(p) for name, p in comparison.classes.items()},
        "positions": {name: _part(p) for name, p in comparison.positions.items()},
        "documents": {
            key: [asdict(h) for h in rows] for key, rows in comparison.highlights.items()
        },
        "settings": {**settings, "bootstrap_confidence": CONFIDENCE},
    }
    return json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_per_document_parquet(
    sink: BinaryIO, documents: Iterable[Document], a: Scores, b: Scores
) -> None:
    """Write per-document results as Parquet: id, domain, bytes, then nats and tokens per model.

    With per-document attribution (``Scores.per_document_attribution``), then for each class
    ``c`` of :data:`CLASSES`: ``bytes_c``, ``nats_a_c`` and ``nats_b_c``. Written
    ``PER_DOCUMENT_ROWS`` documents at a time, one row group each, so memory holds one row
    group whatever the corpus.

    Args:
        sink: a binary file open for writing (:func:`bpbeval.files.atomic_writer`).
        documents: the documents both were scored on, in order (streamed once, for ids).
        a: model A's scores (every document, as rank 0 holds them).
        b: model B's scores.

    Raises:
        ValueError: ``documents`` are more or fewer than the scored documents.

    Example:
        >>> import io
        >>> from bpbeval.results import DocumentScore, DocumentScores
        >>> def scores(nats):
        ...     rows = DocumentScores.from_rows([DocumentScore("web", nats, 4, 2)])
        ...     return Scores(rows, nats, 4, 2, False)
        >>> sink = io.BytesIO()
        >>> write_per_document_parquet(sink, [Document("d1", "abcd")], scores(3.0), scores(2.5))
        >>> pq.read_table(sink).to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'id': 'd1', 'domain': 'web', 'bytes': 4, 'nats_a': 3.0, 'tokens_a': 2,
          'nats_b': 2.5, 'tokens_b': 2}]
    """
    docs_a, docs_b = a.documents, b.documents
    columns = {
        "domain": (docs_a.domain, pa.string()),
        "bytes": (docs_a.bytes, pa.int64()),
        "nats_a": (docs_a.nats, pa.float64()),
        "tokens_a": (docs_a.tokens, pa.int64()),
        "nats_b": (docs_b.nats, pa.float64()),
        "tokens_b": (docs_b.tokens, pa.int64()),
    }
    parts_a, parts_b = a.per_document_attribution, b.per_document_attribution
    if parts_a is not None and parts_b is not None:
        for k, name in enumerate(CLASSES):
            columns[f"bytes_{name}"] = (parts_a.class_bytes[:, k], pa.int64())
            columns[f"nats_a_{name}"] = (parts_a.class_nats[:, k], pa.float64())
            columns[f"nats_b_{name}"] = (parts_b.class_nats[:, k], pa.float64())
    schema = pa.schema([("id", pa.string())] + [(name, t) for name, (_, t) in columns.items()])
    ids = (document.id for document in documents)
    with pq.ParquetWriter(sink, schema) as writer:
        for start in range(0, len(docs_a), PER_DOCUMENT_ROWS):
            rows = slice(start, start + PER_DOCUMENT_ROWS)
            arrays = [pa.array(list(itertools.islice(ids, PER_DOCUMENT_ROWS)), pa.string())]
            arrays += [pa.array(column[rows], t) for column, t in columns.values()]
            # Fewer ids than rows fails here too: the batch's columns differ in length.
            writer.write_batch(pa.record_batch(arrays, schema=schema))
        if next(ids, None) is not None:
            raise ValueError(f"more documents than the {len(docs_a)} scored")


def pyplot() -> ModuleType:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError(
            "--plot needs matplotlib, which is not installed: pip install 'bpbeval[plot]'"
        ) from e
    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_png(comparison: Comparison, scores: dict[str, Scores], names: dict[str, str]) -> bytes:
    """PNG bytes: per-document bpb of A against B, a histogram of per-document Δbpb and, with
    attribution, Δbpb by character class (with its interval) and bpb by context position.

    ``names`` (see :func:`model_names`) label every panel.
    """
    plt = pyplot()
    a, b = scores["A"].documents, scores["B"].documents
    scored = a.bytes > 0
    bpb_a = bits_per_byte(a.nats[scored], a.bytes[scored])
    bpb_b = bits_per_byte(b.nats[scored], b.bytes[scored])
    name_a, name_b = names["A"], names["B"]
    panels = 4 if comparison.classes else 2
    fig, axes = plt.subplots(panels // 2, 2, figsize=(10, 4.5 * (panels // 2)), dpi=100)
    scatter, histogram, *attributed = axes.flat
    scatter.scatter(bpb_b, bpb_a, s=8, alpha=0.6)
    low, high = min(bpb_a.min(), bpb_b.min()), max(bpb_a.max(), bpb_b.max())
    scatter.plot([low, high], [low, high], color="grey", linewidth=1)  # A = B
    scatter.set(
        xlabel=f"bpb of {name_b}",
        ylabel=f"bpb of {name_a}",
        title=f"per document (below the line: {name_a} better)",
    )
    histogram.hist(bpb_a - bpb_b, bins=40)
    histogram.axvline(0, color="grey", linewidth=1)
    histogram.set(
        xlabel=f"bpb of {name_a} − bpb of {name_b}", ylabel="documents", title="per-document Δbpb"
    )
    histogram.yaxis.get_major_locator().set_params(integer=True)  # counts of documents
    if attributed:
        by_class, by_position = attributed
        _class_panel(by_class, comparison.classes, name_a, name_b)
        _position_panel(by_position, comparison.positions, name_a, name_b)
    fig.tight_layout()
    sink = io.BytesIO()
    fig.savefig(sink, format="png")
    plt.close(fig)
    return sink.getvalue()


def _class_panel(ax: Axes, classes: dict[str, PartFigures], name_a: str, name_b: str) -> None:
    names = list(classes)
    deltas = [p.delta for p in classes.values()]
    # Error bars from the interval; a class too rare for one gets none.
    below = [0.0 if p.ci is None else p.delta - p.ci[0] for p in classes.values()]
    above = [0.0 if p.ci is None else p.ci[1] - p.delta for p in classes.values()]
    ax.barh(names, deltas, xerr=[below, above], capsize=3)
    ax.axvline(0, color="grey", linewidth=1)
    ax.invert_yaxis()  # CLASSES order, top to bottom
    ax.set(
        xlabel=f"Δbpb, {name_a} − {name_b} ({CONFIDENCE:.0%} CI over documents)",
        title="by character class (left of 0: " + name_a + " better)",
    )


def _position_panel(ax: Axes, positions: dict[str, PartFigures], name_a: str, name_b: str) -> None:
    labels = list(positions)
    x = range(len(labels))
    ax.plot(x, [p.bits_per_byte_a for p in positions.values()], marker="o", label=name_a)
    ax.plot(x, [p.bits_per_byte_b for p in positions.values()], marker="o", label=name_b)
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set(
        xlabel="bytes of the document before the byte", ylabel="bpb", title="by context position"
    )
    ax.legend()


def terminal(
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
    detectable = "n/a" if overall.mde is None else f"{overall.mde:.6f} bpb ({POWER:.0%} power)"
    paired = [
        ("Δbpb (A − B)", f"{overall.delta:+.6f}"),
        (f"{CONFIDENCE:.0%} CI", _interval(overall, 6) or f"none, {overall.too_few}"),
        ("bootstrap", resampled if overall.ci else "not run"),
        ("sign-flip p", f"{overall.p_value:.4g} ({_flips(overall)})"),
        ("detectable", detectable),
        ("A wins", f"{overall.a_wins:.1%} of documents ({overall.ties:.1%} ties)"),
        ("correlation", _correlation(overall.correlation)),
    ]
    width = max(len(label) for label, _ in paired)
    lines = [table(per_model), ""]
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
        if comparison.macro is not None:
            a, b = comparison.macro
            micro = _bpbs(overall.a.bits_per_byte, overall.b.bits_per_byte)
            total = (f"{overall.documents:,}", f"{overall.a.bytes:,}")
            rows += [
                ["micro: all bytes", *total, *micro, "", "", ""],
                [f"macro: mean of {len(comparison.domains)}", "", "", *_bpbs(a, b), "", "", ""],
            ]
        lines += ["", table(rows)]
    if comparison.classes:
        lines += ["", _class_table(comparison.classes), "", _position_table(comparison.positions)]
    for key, rows in comparison.highlights.items():
        if rows:
            lines += ["", _HIGHLIGHT_TITLES[key], _highlight_table(rows[:TERMINAL_DOCUMENTS])]
    return "\n".join(lines)


def _class_table(classes: dict[str, PartFigures]) -> str:
    rows = [["by class", "share", "bpb A", "bpb B", "Δbpb", f"{CONFIDENCE:.0%} CI"]]
    rows += [
        [name, f"{p.share:.1%}", *_bpbs(p.bits_per_byte_a, p.bits_per_byte_b), _part_ci(p)]
        for name, p in classes.items()
        if p.share >= TERMINAL_SHARE
    ]
    return table(rows)


def _position_table(positions: dict[str, PartFigures]) -> str:
    rows = [["by position", "bytes", "bpb A", "bpb B", "Δbpb", f"{CONFIDENCE:.0%} CI"]]
    rows += [
        [name, f"{p.bytes:,}", *_bpbs(p.bits_per_byte_a, p.bits_per_byte_b), _part_ci(p)]
        for name, p in positions.items()
    ]
    return table(rows)


def _part_ci(part: PartFigures) -> str:
    return "too few" if part.ci is None else f"[{part.ci[0]:+.4f}, {part.ci[1]:+.4f}]"


def _highlight_table(rows: list[Highlight]) -> str:
    cells = [["document", "bytes", "bpb A", "bpb B", "Δbpb"]]
    cells += [[h.id, f"{h.bytes:,}", *_bpbs(h.bits_per_byte_a, h.bits_per_byte_b)] for h in rows]
    # The snippets trail each line, left-aligned, being text.
    lines = table(cells).splitlines()
    width = max(len(line) for line in lines)
    snippets = ["text", *(h.snippet for h in rows)]
    return "\n".join(f"{line:<{width}}  {text}" for line, text in zip(lines, snippets, strict=True))


_MODEL_ROWS = (
    ("bits per byte", "bits_per_byte", "{:.6f}"),
    ("bits per token", "bits_per_token", "{:.6f}"),
    ("bytes per token", "bytes_per_token", "{:.4f}"),
    ("tokens", "tokens", "{:,}"),
    ("documents", "documents", "{:,}"),
    ("bytes", "bytes", "{:,}"),
)


def _flips(figures: PairedFigures) -> str:
    if enumerates_all_flips(figures.documents, figures.replicates):
        return f"exact: all {2**figures.documents} sign vectors"
    return f"{figures.replicates} random sign flips"


def _bpbs(a: float, b: float) -> list[str]:
    return [f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"]


def _interval(figures: PairedFigures, digits: int) -> str | None:
    if figures.ci is None:
        return None
    lo, hi = figures.ci
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _correlation(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.4f}"


def table(rows: list[list[str]]) -> str:
    """Rows as aligned columns: the first left-aligned (labels), the others right (numbers).

    Example:
        >>> print(table([["name", "n"], ["a", "10"], ["bb", "2"]]))
        name   n
        a     10
        bb     2
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
