"""Every example runs with small settings, and what it prints or writes is checked."""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpbeval import eval as bpbeval_eval
from bpbeval.checkpoint import load
from bpbeval.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_example(*args: str | Path, **env: str) -> str:
    """Run ``examples/<args>`` in a fresh interpreter; return its stdout."""
    command = [str(a) for a in args]
    if command[0].endswith(".py"):
        command = [sys.executable, str(ROOT / "examples" / command[0]), *command[1:]]
    else:
        command = [str(ROOT / "examples" / command[0]), *command[1:]]
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        # The examples import bpbeval from this checkout even where it is not installed.
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def first_batch_bpb(vocab_size: int, context: int, n_embd: int, batch_size: int) -> float:
    """The bpb train_loop.py logs after one step, recomputed: its model as initialised, on
    its first batch (the same seed, the same draws), in eager mode and float64."""
    import torch.nn.functional as F

    from bpbeval.demo.train import token_stream
    from bpbeval.gpt import GPT, GPTConfig
    from bpbeval.tokenizer import train

    torch.manual_seed(0)
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    tokenizer = train([t for i, t in enumerate(topics) if i % 10], vocab_size)
    ids = token_stream(tokenizer, [t for i, t in enumerate(topics) if i % 10])
    model = GPT(GPTConfig(tokenizer.vocab_size, context, n_layer=2, n_head=2, n_embd=n_embd))
    starts = torch.randint(len(ids) - context, (batch_size,)).tolist()
    x = torch.stack([ids[i : i + context] for i in starts])
    y = torch.stack([ids[i + 1 : i + context + 1] for i in starts]).flatten()
    with torch.no_grad():
        logprobs = F.log_softmax(model(x).flatten(0, 1).double(), dim=-1)
    nbytes = tokenizer.token_bytes()[y]
    scored = nbytes > 0  # the bos tokens between documents are not text
    nats = math.fsum((-logprobs[torch.arange(len(y)), y])[scored].tolist())
    return nats / (math.log(2) * int(nbytes.sum()))


def test_train_loop_with_torch_compile(tmp_path):
    out = tmp_path / "train.json"
    run_example(
        "train_loop.py", "--steps", "20", "--eval-every", "1", "--backend", "aot_eager",
        "--context", "32", "--n-embd", "16", "--vocab-size", "300", "--json", out,
    )  # fmt: skip
    result = json.loads(out.read_text())
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    val_bytes = sum(len(t.encode("utf-8")) for t in topics[::10])
    history = result["history"]
    assert [e["step"] for e in history] == list(range(1, 21))
    for entry in history:
        assert entry["val_bytes"] == val_bytes
        assert entry["val_bpb"] * math.log(2) * val_bytes == pytest.approx(entry["val_nats"])
        assert entry["val_bpb"] * entry["val_bytes_per_token"] == pytest.approx(
            entry["val_bits_per_token"]
        )
    # The first step's training bpb is the untrained model's on the first batch.
    assert history[0]["train_bpb"] == pytest.approx(first_batch_bpb(300, 32, 16, 8), rel=1e-5)
    # Trained, it predicts better than a uniform guess over the vocabulary, and than itself.
    assert history[-1]["val_bits_per_token"] < math.log2(result["vocab_size"])
    assert history[-1]["val_bpb"] < history[0]["val_bpb"]


def _nanochat_count(encoding_bytes: bytes) -> int:
    # nanochat's token_bytes recipe, written out: the bytes of the decoded string.
    return len(encoding_bytes.decode("utf-8", errors="replace").encode("utf-8"))


def test_nanochat_tokenizer_made_in_place(tmp_path):
    out = tmp_path / "converted"
    stdout = run_example("nanochat_tokenizer.py", "--out", out, "--docs", "100",
                         "--vocab-size", "400")  # fmt: skip
    tokenizer = Tokenizer.load(out)
    assert tokenizer.vocab_size == 400
    exact = tokenizer.token_bytes().tolist()
    wrong = sum(
        _nanochat_count(tokenizer.encoding.decode_single_token_bytes(i)) != exact[i]
        for i in range(tokenizer.vocab_size)
        if exact[i]
    )
    assert wrong >= 128  # at least the single bytes 0x80-0xff, which are not UTF-8 alone
    assert f"token_bytes.pt: {wrong} of 400 entries differ" in stdout
    assert "audit on 100 documents: bytes conserved on all 100 texts" in stdout


def test_nanochat_tokenizer_from_a_nanochat_directory(tmp_path, bpe_tokenizer):
    nanochat = tmp_path / "nanochat"
    nanochat.mkdir()
    # nanochat pickles its tiktoken.Encoding as it is.
    (nanochat / "tokenizer.pkl").write_bytes(pickle.dumps(bpe_tokenizer.encoding))
    out = tmp_path / "converted"
    stdout = run_example("nanochat_tokenizer.py", "--nanochat-dir", nanochat, "--out", out,
                         "--docs", "50")  # fmt: skip
    converted = Tokenizer.load(out)
    assert converted.hash == bpe_tokenizer.hash
    text = pydoc_data.topics.topics["assert"]
    assert converted.encode(text) == bpe_tokenizer.encoding.encode_ordinary(text)
    assert "token_bytes.pt" not in stdout  # this directory has none to check
    assert "audit on 50 documents: bytes conserved" in stdout


def test_compare_hf(tmp_path):
    run_example("compare_hf.py", "--out", tmp_path, "--steps", "5", "--val-docs", "8")
    result = json.loads((tmp_path / "compare.json").read_text())
    texts = [json.loads(line)["text"] for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    val_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert len(texts) == 8
    models = result["models"]
    for name, m in models.items():
        assert m["kind"] == "huggingface"
        assert m["bytes"] == val_bytes
        assert m["bits_per_byte"] * math.log(2) * val_bytes == pytest.approx(m["nats"], rel=1e-9)
        assert (
            load(str(tmp_path / ("gpt2" if name == "A" else "llama"))).tokenizer.hash
            == (m["tokenizer_hash"])
        )
    assert models["A"]["tokenizer_hash"] != models["B"]["tokenizer_hash"]
    assert models["A"]["tokens"] != models["B"]["tokens"]  # different tokenizers, same bytes
    expected = models["A"]["bits_per_byte"] - models["B"]["bits_per_byte"]
    assert result["overall"]["delta_bpb"] == pytest.approx(expected, rel=1e-9)


def test_ddp_eval_on_two_processes_equals_one(tmp_path, native_checkpoint, documents_jsonl):
    path, _ = native_checkpoint
    two = tmp_path / "two.json"
    one = tmp_path / "one.json"
    stdout = run_example("ddp_eval.sh", path, "--data", documents_jsonl, "--json", two,
                         "--batch-size", "3")  # fmt: skip
    assert stdout.count("bits_per_byte") == 1  # rank 0 alone prints
    assert bpbeval_eval.main([str(path), "--data", str(documents_jsonl), "--json", str(one)]) == 0
    a, b = json.loads(two.read_text()), json.loads(one.read_text())
    texts = [json.loads(line)["text"] for line in documents_jsonl.read_text().splitlines()]
    assert a["bytes"] == b["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert a["documents"] == b["documents"] == len(texts)
    assert a["bits_per_byte"] == pytest.approx(b["bits_per_byte"], rel=1e-9)


def test_hf_trainer_reports_exact_bpb(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from bpbeval.tokenizer import from_huggingface

    run_example("hf_trainer.py", "--out", tmp_path, "--steps", "5", "--val-docs", "8")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # The same rows, scored by a plain float64 loop over the saved model.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    hf_trainer = importlib.import_module("hf_trainer")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model", local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "model", local_files_only=True).eval()
    texts = [json.loads(line)["text"] for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    token_bytes = from_huggingface(tokenizer).token_bytes()
    nats, nbytes, tokens = [], 0, 0
    with torch.no_grad():
        for row in hf_trainer.rows(tokenizer, texts):
            ids = row["input_ids"]
            log_probs = model(ids[None]).logits[0, :-1].double().log_softmax(-1)
            for position, target in enumerate(ids[1:].tolist()):
                if token_bytes[target] > 0:
                    nats.append(-float(log_probs[position, target]))
                    nbytes += int(token_bytes[target])
                    tokens += 1
    assert metrics["eval_bytes_per_token"] == pytest.approx(nbytes / tokens, rel=1e-12)
    expected = math.fsum(nats) / (math.log(2) * nbytes)
    assert metrics["eval_bits_per_byte"] == pytest.approx(expected, rel=1e-6)  # float32 logits
    assert metrics["eval_bits_per_token"] == pytest.approx(
        metrics["eval_bits_per_byte"] * metrics["eval_bytes_per_token"], rel=1e-12
    )


def test_nanochat_bpb_with_the_exact_table(tmp_path):
    from bpbeval.tokenizer import load_nanochat

    out, figures = tmp_path / "tokenizer", tmp_path / "bpb.json"
    stdout = run_example("nanochat_bpb.py", "--out", out, "--steps", "5", "--docs", "200",
                         "--vocab-size", "400", "--context", "64", "--json", figures)  # fmt: skip
    table = torch.load(out / "token_bytes.pt", weights_only=True)
    assert table.dtype == torch.int32
    assert torch.equal(table, load_nanochat(out).token_bytes())
    assert "token_bytes.pt: 128 of 400 entries rewritten" in stdout  # the 128 bytes 0x80-0xff
    decoded, exact = (json.loads(figures.read_text())[k] for k in ("decoded", "exact"))
    # The same nats over different byte counts: the decoded table counts lone bytes as 3.
    assert decoded["bytes"] > exact["bytes"]
    assert decoded["bits_per_byte"] * decoded["bytes"] == pytest.approx(
        exact["bits_per_byte"] * exact["bytes"], rel=1e-12
    )
