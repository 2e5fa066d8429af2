"""The demo, stage by stage: corpus, two tokenizers, two models, one comparison.

Every stage writes under one build directory (``runs/demo`` by default) and records a
stamp in its ``stamps/`` folder: the SHA-256 of the stage's inputs (settings and the
fingerprints of the stages it used) and the fingerprint of what it wrote. A second run
reuses an artefact when both still match, and rebuilds it, and whatever was built from
it, when either does not (or the stamp is unreadable).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bpbeval import checkpoint, compare
from bpbeval.data import read_documents, read_texts
from bpbeval.demo import corpus
from bpbeval.demo.train import TrainConfig, token_stream, train
from bpbeval.files import atomic_write_text
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import SPECIAL_TOKENS, Tokenizer
from bpbeval.tokenizer import train as train_tokenizer
from bpbeval.tokenizer.core import sha256_json

Log = Callable[[str], None]
HEAD_DIM = 16  # the BPE model has n_embd // HEAD_DIM heads (one if narrower)


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Everything the demo's results depend on; each field is also a command-line flag."""

    train_chars: int = _option(3_000_000, "characters of training text")
    val_docs: int = _option(100, "validation documents per domain (docs, code)")
    doc_chars: int = _option(800, "target characters per document")
    vocab_size: int = _option(4096, "vocabulary of the BPE tokenizer (the other is byte-level)")
    context_len: int = _option(256, "tokens per training window, for both models")
    n_embd: int = _option(64, "width of the BPE model, in heads of 16; byte-level is matched")
    n_layer: int = _option(2, "depth of both models")
    steps: int = _option(200, "training steps of each model")
    batch_size: int = _option(8, "training windows per step")
    lr: float = _option(3e-3, "peak learning rate")
    eval_every: int = _option(50, "steps between validation scores")
    eval_bytes: int = _option(20_000, "bytes of val text scored during training")
    bootstrap: int = _option(1000, "bootstrap resamples for the confidence interval")
    seed: int = _option(0, "seed of the corpus split, the initial weights and the batches")


@dataclass(frozen=True)
class Outputs:
    """Where the demo put what it built."""

    data: corpus.Splits
    checkpoints: dict[str, Path]
    json: Path
    plot: Path


def tree_sha256(path: Path) -> str:
    """SHA-256 over every file under ``path`` (names and contents), or of ``path`` itself.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a").write_text("x")
        >>> tree_sha256(d) == tree_sha256(d) != tree_sha256(d / "a")
        True
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _stage(
    root: Path, name: str, inputs: dict[str, Any], build: Callable[[Path], dict[str, Any]], log: Log
) -> dict[str, Any]:
    """Build ``root/name`` with ``build`` unless its stamp shows it is up to date.

    Returns the stamp: ``inputs`` (their hash), ``fingerprint`` (of the artefact) and
    ``info`` (what ``build`` returned, for the report).
    """
    path, stamp_path = root / name, root / "stamps" / f"{name.replace('/', '-')}.json"
    key = sha256_json(inputs)
    try:
        stamp = json.loads(stamp_path.read_text("utf-8"))
        fresh = stamp["inputs"] == key and stamp["fingerprint"] == tree_sha256(path)
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: build again
        fresh = False
    if fresh:
        log(f"  {name}: reusing {path} (same settings, unchanged)")
        return stamp
    log(f"  {name}: building {path} ...")
    start = time.perf_counter()
    info = build(path)
    stamp = {"inputs": key, "fingerprint": tree_sha256(path), "info": info}
    atomic_write_text(stamp_path, json.dumps(stamp, indent=1) + "\n")
    log(f"  {name}: built in {time.perf_counter() - start:.1f}s")
    return stamp


def matched_config(reference: GPTConfig, vocab_size: int) -> GPTConfig:
    """``reference`` with another vocabulary and the width that best matches its parameters.

    Depth, context and head size stay; the width moves in steps of one head.

    Example:
        >>> bpe = GPTConfig(vocab_size=4096, context_len=256, n_layer=2, n_head=4, n_embd=64)
        >>> byte_level = matched_config(bpe, 265)
        >>> byte_level.n_embd, byte_level.n_head
        (144, 9)
    """
    head_dim = reference.n_embd // reference.n_head

    def params(config: GPTConfig) -> int:
        with torch.device("meta"):  # count without allocating
            return GPT(config).num_params()

    target = params(reference)
    widths = range(head_dim, 8 * reference.n_embd + 1, head_dim)
    candidates = [
        replace(reference, vocab_size=vocab_size, n_embd=w, n_head=w // head_dim) for w in widths
    ]
    return min(candidates, key=lambda config: abs(params(config) - target))


def run(
    out: str | os.PathLike[str], settings: Settings = Settings(), *, log: Log = print
) -> Outputs:
    """Run the demo into ``out``; reuse what an earlier run with the same settings built."""
    root, s = Path(out), settings
    start = time.perf_counter()

    def header(step: str) -> None:
        log(f"\n[{time.perf_counter() - start:5.1f}s] {step}")

    header("1/4 corpus: Python's own docs and stdlib sources, as nanochat-style Parquet shards")
    data_stamp = _stage(
        root,
        "data",
        {
            "train_chars": s.train_chars,
            "val_docs": s.val_docs,
            "doc_chars": s.doc_chars,
            "seed": s.seed,
        },
        lambda path: _build_corpus(path, s),
        log,
    )
    splits = corpus.splits(root / "data")
    log(f"  {data_stamp['info']['summary']}")
    train_texts = list(read_texts(splits.train))

    header("2/4 tokenizers: byte-level (special tokens only) and BPE, trained with rustbpe")
    tokenizers = {}
    for name, vocab_size in (
        ("byte-level", 256 + len(SPECIAL_TOKENS)),
        (f"bpe-{s.vocab_size}", s.vocab_size),
    ):
        inputs = {"data": data_stamp["fingerprint"], "vocab_size": vocab_size}
        _stage(
            root,
            f"tokenizers/{name}",
            inputs,
            lambda path, v=vocab_size: _build_tokenizer(path, train_texts, v),
            log,
        )
        tokenizers[name] = Tokenizer.load(root / "tokenizers" / name)

    # Equal budgets. The BPE model's embedding and unembedding tables (vocab_size x
    # n_embd each) are most of its parameters; the byte-level model's are tiny, so at the
    # same depth it gets the width that brings it to as many parameters. Both then train
    # on the same number of TOKENS (steps x batch x context): with the usual estimate of
    # training compute, C = 6 x parameters x tokens, equal parameters and equal tokens
    # are equal FLOPs. Equal bytes instead would hand the byte-level model ~3-4x the
    # compute, since it needs that many more tokens for the same text. (Counted without
    # the embedding lookups, which cost no multiplies, the byte-level model even gets
    # more compute per token.) What BPE buys with the same compute is more text seen
    # and a longer reach in bytes; whether that is worth its much larger loss per token
    # is exactly the question bits per byte answers.
    header("3/4 models: equal parameters, equal training tokens; val bpb from BitsPerByte")
    bpe = f"bpe-{s.vocab_size}"
    reference = GPTConfig(
        vocab_size=s.vocab_size,
        context_len=s.context_len,
        n_layer=s.n_layer,
        n_head=max(1, s.n_embd // HEAD_DIM),
        n_embd=s.n_embd,
    )
    configs = {
        "byte-level": matched_config(reference, tokenizers["byte-level"].vocab_size),
        bpe: reference,
    }
    val_texts = [d.text for d in read_documents(splits.val, max_bytes=s.eval_bytes)]
    train_config = TrainConfig(
        steps=s.steps, batch_size=s.batch_size, lr=s.lr, eval_every=s.eval_every, seed=s.seed
    )
    checkpoints = {}
    for name, config in configs.items():
        tokenizer = tokenizers[name]
        inputs = {
            "data": data_stamp["fingerprint"],
            "tokenizer": tokenizer.hash,
            "model": asdict(config),
            "train": asdict(train_config),
            "eval_bytes": s.eval_bytes,
        }
        stamp = _stage(
            root,
            f"models/{name}",
            inputs,
            lambda path, c=config, t=tokenizer: _build_model(
                path, c, t, train_texts, val_texts, train_config, log
            ),
            log,
        )
        info = stamp["info"]
        log(
            f"  {name}: {info['params']:,} parameters, "
            f"{info['train_tokens']:,} tokens = {info['train_bytes']:,} bytes of text seen, "
            f"val {info['val_bpb']:.3f} bpb"
        )
        checkpoints[name] = root / "models" / name

    header("4/4 compare on the val documents: per-token loss vs bits per byte")
    json_path, plot_path = root / "compare.json", root / "compare.png"
    argv = [str(checkpoints["byte-level"]), str(checkpoints[bpe]), "--data", str(splits.val)]
    argv += ["--domain-column", "domain", "--bootstrap", str(s.bootstrap)]
    argv += ["--json", str(json_path), "--plot", str(plot_path)]
    argv += ["--per-doc", str(root / "per_doc.parquet"), "--cache", str(root / "cache")]
    log("  $ python -m bpbeval.compare " + " ".join(argv))
    compare.main(argv)
    log("")
    for line in the_point(json.loads(json_path.read_text("utf-8")), ("byte-level", bpe)):
        log(line)
    header(f"done: {json_path}, {plot_path}")
    return Outputs(data=splits, checkpoints=checkpoints, json=json_path, plot=plot_path)


def the_point(result: dict[str, Any], names: tuple[str, str]) -> list[str]:
    """What a compare JSON says about loss per token against bits per byte, in words.

    Example:
        >>> def model(bpb, bpt):
        ...     return {"bits_per_byte": bpb, "bits_per_token": bpt, "bytes_per_token": bpt / bpb}
        >>> classes = {"ascii_letters": {"delta_bpb": 1.8, "share": 0.7},
        ...            "whitespace": {"delta_bpb": 0.9, "share": 0.2},
        ...            "digits": {"delta_bpb": -0.2, "share": 0.1}}
        >>> result = {"models": {"A": model(4.0, 4.0), "B": model(2.5, 9.0)},
        ...           "overall": {"delta_bpb": 1.5, "ci": [1.4, 1.6]}, "classes": classes}
        >>> print("\\n".join(the_point(result, ("bytes", "bpe"))))  # doctest: +NORMALIZE_WHITESPACE
        loss per token ranks bytes first: 2.773 against 6.238 nats/token
        bits per byte ranks bpe first: 4.000 against 2.500, Δ +1.500 (95% CI +1.400 to +1.600)
        a bytes token is 1.00 bytes of text, a bpe token 3.60: only bpb compares them
        where bpe wins most: ascii_letters by 1.80 bpb on 70% of the bytes;
        whitespace by 0.90 bpb on 20% of the bytes
    """
    a, b = result["models"]["A"], result["models"]["B"]
    first = {k: names[0] if a[k] < b[k] else names[1] for k in ("bits_per_token", "bits_per_byte")}
    nats = [m["bits_per_token"] * math.log(2) for m in (a, b)]
    delta, ci = result["overall"]["delta_bpb"], result["overall"]["ci"]
    interval = "too few for a CI" if ci is None else f"95% CI {ci[0]:+.3f} to {ci[1]:+.3f}"
    lines = [
        f"loss per token ranks {first['bits_per_token']} first: "
        f"{nats[0]:.3f} against {nats[1]:.3f} nats/token",
        f"bits per byte ranks {first['bits_per_byte']} first: "
        f"{a['bits_per_byte']:.3f} against {b['bits_per_byte']:.3f}, Δ {delta:+.3f} ({interval})",
        f"a {names[0]} token is {a['bytes_per_token']:.2f} bytes of text, "
        f"a {names[1]} token {b['bytes_per_token']:.2f}: only bpb compares them",
    ]
    # Where B's lead comes from: the classes adding most to Δ (share × Δbpb), B winning.
    gains = sorted(
        ((c["share"] * c["delta_bpb"], name, c) for name, c in result.get("classes", {}).items()),
        reverse=True,
    )
    wins = [
        f"{name} by {c['delta_bpb']:.2f} bpb on {c['share']:.0%} of the bytes"
        for gain, name, c in gains[:2]
        if gain > 0
    ]
    if wins:
        lines.append(f"where {names[1]} wins most: " + "; ".join(wins))
    return lines


def _build_corpus(path: Path, s: Settings) -> dict[str, Any]:
    splits = corpus.build(
        path, train_chars=s.train_chars, val_docs=s.val_docs, doc_chars=s.doc_chars, seed=s.seed
    )
    train_bytes = sum(len(t.encode()) for t in read_texts(splits.train))
    val = list(read_documents(splits.val))
    val_bytes = sum(len(d.text.encode()) for d in val)
    return {
        "summary": f"{len(splits.train)} train shards ({train_bytes:,} bytes), "
        f"1 val shard ({len(val)} documents, {val_bytes:,} bytes)"
    }


def _build_tokenizer(path: Path, texts: list[str], vocab_size: int) -> dict[str, Any]:
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save(path)
    return {"vocab_size": tokenizer.vocab_size}


def _build_model(
    path: Path,
    config: GPTConfig,
    tokenizer: Tokenizer,
    train_texts: list[str],
    val_texts: list[str],
    train_config: TrainConfig,
    log: Log,
) -> dict[str, Any]:
    torch.manual_seed(train_config.seed)
    model = GPT(config)
    train_stream = token_stream(tokenizer, train_texts)
    val_stream = token_stream(tokenizer, val_texts)
    token_bytes = tokenizer.token_bytes()
    bytes_per_token = int(token_bytes[train_stream].sum()) / len(train_stream)
    log(
        f"  {model.num_params():,} parameters, {config.n_layer} layers x {config.n_embd} wide, "
        f"{config.n_head} heads; "
        f"training text at {bytes_per_token:.2f} bytes/token"
    )
    history = train(model, train_stream, val_stream, token_bytes, train_config, log=log)
    checkpoint.save(path, model, tokenizer, config.context_len)
    tokens = history[-1]["tokens"]
    return {
        "params": model.num_params(),
        "train_tokens": tokens,
        "train_bytes": round(tokens * bytes_per_token),
        "val_bpb": history[-1]["val_bpb"],
        "history": history,
    }
