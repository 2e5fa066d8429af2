"""The demo end to end with tiny settings, its corpus, its training loop and its reuse."""

from __future__ import annotations

import hashlib
import json
import math
import pydoc_data.topics
import shutil
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from bpbeval.checkpoint import load
from bpbeval.demo import corpus
from bpbeval.demo.__main__ import main as demo_main
from bpbeval.demo.pipeline import Settings, matched_config, run
from bpbeval.demo.train import TrainConfig, evaluate_bpb, token_stream
from bpbeval.demo.train import train as train_gpt
from bpbeval.errors import DataError
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import Tokenizer, train

TINY = Settings(
    train_chars=60_000,
    val_docs=6,
    doc_chars=400,
    vocab_size=300,
    context_len=32,
    n_embd=16,
    n_layer=1,
    steps=4,
    batch_size=4,
    eval_every=2,
    eval_bytes=2_000,
    bootstrap=50,
)


def artefact_files(root) -> dict[str, tuple[int, str]]:
    """(mtime in ns, SHA-256) of every file of the reusable stages and their stamps."""
    return {
        str(path.relative_to(root)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for stage in ("data", "tokenizers", "models", "stamps")
        for path in sorted((root / stage).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo run twice with the same tiny settings; gives (directory, outputs, logs, files).

    ``files`` holds :func:`artefact_files` after each run.
    """
    out = tmp_path_factory.mktemp("demo") / "runs"
    logs, outputs, files = [[], []], [], []
    for lines in logs:
        outputs.append(run(out, TINY, log=lines.append))
        files.append(artefact_files(out))
    return out, outputs, logs, files


def test_checkpoints_load_with_their_tokenizers(demo):
    out, outputs, *_ = demo
    for name, vocab_size in (("byte-level", 256 + 9), ("bpe-300", 300)):
        ckpt = load(str(outputs[0].checkpoints[name]))
        tokenizer = Tokenizer.load(out / "tokenizers" / name)
        assert (ckpt.kind, ckpt.context_len) == ("native", TINY.context_len)
        assert ckpt.tokenizer.hash == tokenizer.hash
        assert ckpt.model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, vocab_size)


def test_compare_json_is_consistent_with_the_val_text(demo):
    _, outputs, *_ = demo
    result = json.loads(outputs[0].json.read_text())
    # The val documents' UTF-8 bytes, read straight from the shard.
    texts = pq.read_table(outputs[0].data.val).column("text").to_pylist()
    val_bytes = sum(len(t.encode("utf-8")) for t in texts)
    for m in ("A", "B"):
        figures = result["models"][m]
        assert figures["bytes"] == val_bytes
        assert figures["documents"] == len(texts) == 2 * TINY.val_docs
        expected_nats = figures["bits_per_byte"] * math.log(2) * figures["bytes"]
        assert expected_nats == pytest.approx(figures["nats"], rel=1e-9)
    a, b = result["models"]["A"], result["models"]["B"]
    assert a["bytes_per_token"] == 1.0 < b["bytes_per_token"]  # byte-level against BPE
    assert set(result["domains"]) == {"code", "docs"}
    assert sum(d["A"]["bytes"] for d in result["domains"].values()) == val_bytes
    assert outputs[0].plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_everything(demo):
    _, outputs, logs, files = demo
    built = [line for line in logs[0] if ": building " in line]
    reused = [line for line in logs[1] if ": reusing " in line]
    assert len(built) == len(reused) == 5  # data, two tokenizers, two models
    assert not any(": building " in line for line in logs[1])
    assert outputs[0] == outputs[1]
    # Reused means untouched: every file of every stage, and its stamp, has the same bytes
    # and was not even rewritten.
    assert files[0] == files[1]
    kinds = {name.split("/")[0] for name in files[0]}
    assert kinds == {"data", "tokenizers", "models", "stamps"}


def test_changed_settings_rebuild_only_what_depends_on_them(demo, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(demo[0], out)
    before = {p.name: p.read_text() for p in (out / "stamps").iterdir()}
    lines: list[str] = []
    run(out, replace(TINY, steps=3), log=lines.append)
    rebuilt = sorted(line.split(": ")[0].strip() for line in lines if ": building " in line)
    assert rebuilt == ["models/bpe-300", "models/byte-level"]
    after = {p.name: p.read_text() for p in (out / "stamps").iterdir()}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["models-bpe-300.json", "models-byte-level.json"]


def test_a_damaged_artefact_is_rebuilt(demo, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(demo[0], out)
    (out / "tokenizers" / "bpe-300" / "token_bytes.npy").write_bytes(b"damaged")
    lines: list[str] = []
    run(out, TINY, log=lines.append)
    rebuilt = [line.split(": ")[0].strip() for line in lines if ": building " in line]
    # Retrained from the same text, the tokenizer is the same one: the models stay valid.
    assert rebuilt == ["tokenizers/bpe-300"]
    assert (
        Tokenizer.load(out / "tokenizers" / "bpe-300").hash
        == Tokenizer.load(demo[0] / "tokenizers" / "bpe-300").hash
    )


def test_corpus_layout(demo):
    _, outputs, *_ = demo
    splits = outputs[0].data
    shards = sorted(splits.val.parent.glob("*.parquet"))
    assert [p.name for p in shards] == [f"shard_{i:05d}.parquet" for i in range(len(shards))]
    assert shards[:-1] == splits.train and shards[-1] == splits.val
    train = [pq.read_table(p) for p in splits.train]
    val = pq.read_table(splits.val)
    assert val.column_names == ["text", "domain"]
    assert val.column("domain").to_pylist() == ["docs", "code"] * TINY.val_docs
    train_texts = [t for table in train for t in table.column("text").to_pylist()]
    assert sum(map(len, train_texts)) <= TINY.train_chars
    assert not set(train_texts) & set(val.column("text").to_pylist())
    assert all(pq.ParquetFile(p).metadata.row_group(0).num_rows <= 1024 for p in shards)


def test_split_text_keeps_every_paragraph_in_order():
    for text in list(pydoc_data.topics.topics.values())[:20]:
        docs = corpus.split_text(text, 300)
        assert "\n\n".join(docs).strip() == text.strip()
        # Only the last document may be shorter than the target.
        assert all(len(doc) >= 300 for doc in docs[:-1])


def test_matched_config_is_the_closest_width():
    reference = GPTConfig(vocab_size=2048, context_len=64, n_layer=2, n_head=4, n_embd=64)
    matched = matched_config(reference, 265)
    assert (matched.n_layer, matched.context_len, matched.vocab_size) == (2, 64, 265)
    target = GPT(reference).num_params()
    # Brute force over every width in steps of one head (16).
    gaps = {
        w: abs(GPT(replace(matched, n_embd=w, n_head=w // 16)).num_params() - target)
        for w in range(16, 257, 16)
    }
    assert matched.n_embd == min(gaps, key=gaps.get)
    assert gaps[matched.n_embd] < 0.1 * target


def test_evaluate_bpb_scores_every_byte_once_whatever_the_batch():
    texts = ["héllo wörld", "def f(x):\n    return x", "日本語 🙂"]
    tokenizer = train(texts * 3, vocab_size=280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(tokenizer.vocab_size, context_len=4, n_layer=1, n_head=2, n_embd=16))
    stream = token_stream(tokenizer, texts)
    results = [
        evaluate_bpb(model, stream, tokenizer.token_bytes(), batch_size=b) for b in (1, 3, 64)
    ]
    # Reference: each target scored by the window it falls in, in float64, one at a time.
    nats = 0.0
    for start in range(0, len(stream) - 1, 4):
        window = stream[start : start + 4]
        logp = F.log_softmax(model(window[None])[0].double(), dim=-1)
        for i, target in enumerate(stream[start + 1 : start + 5].tolist()):
            if target != tokenizer.bos_id:
                nats -= logp[i, target].item()
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    for result in results:
        assert int(result.bytes) == total_bytes
        assert int(result.tokens) == len(stream) - len(texts)  # every token but the bos ones
        assert result.nats.item() == pytest.approx(nats, rel=1e-5)
        assert result.bits_per_byte.item() == pytest.approx(
            nats / math.log(2) / total_bytes, rel=1e-5
        )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--steps", "0"),
        ("--context-len", "1"),
        ("--n-embd", "50"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--out", str(tmp_path / "runs"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err
    assert not (tmp_path / "runs").exists()  # refused before anything was built


def test_corpus_without_training_text_is_a_data_error(tmp_path):
    shortest = min(len(doc) for _, text in corpus.sources() for doc in corpus.split_text(text, 400))
    with pytest.raises(DataError, match="raise train_chars"):
        corpus.build(tmp_path / "data", train_chars=shortest - 1, val_docs=1, doc_chars=400)
    assert not (tmp_path / "data").exists()


def test_training_stream_shorter_than_the_context_is_a_data_error():
    model = GPT(GPTConfig(vocab_size=260, context_len=8, n_layer=1, n_embd=16))
    stream = torch.arange(8)  # 8 tokens: not one window of 8 inputs and 8 targets
    with pytest.raises(DataError, match="shorter context"):
        train_gpt(model, stream, stream, torch.ones(260), TrainConfig(steps=1), log=print)


def test_gpt_config_refuses_a_width_its_heads_do_not_divide():
    assert GPTConfig(vocab_size=10, n_head=4, n_embd=64).n_embd // 4 == 16
    with pytest.raises(ValueError, match="multiple of n_head=3"):
        GPTConfig(vocab_size=10, n_head=3, n_embd=64)
