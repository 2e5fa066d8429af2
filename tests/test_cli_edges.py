"""Command-line paths nothing else covers: each test fails if its behaviour breaks.

--dtype (and the causality probe's 16-bit tolerance), --trust-remote-code that
runs, --max-bytes, --seed, eval's "no text to score", a loader's bad return value,
a Hugging Face config without a context length, a .parquet file that is not
Parquet, and Ctrl-C (exit 130).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import pydoc_data.topics
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from bpbeval.checkpoint import Checkpoint, load
from bpbeval.cli import run
from bpbeval.compare import main as compare_main
from bpbeval.data import Document, read_documents
from bpbeval.errors import CheckpointError, DataError, ScoringError
from bpbeval.eval import main as eval_main
from bpbeval.scoring import score_documents
from bpbeval.statistics import MIN_DOCUMENTS, MIN_REPLICATES, paired_figures

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(argv: list[str], *, main=eval_main) -> str:
    """Run a command line that must fail as a user error: exit 1, one line, no traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    text = err.getvalue()
    assert exit_info.value.code == 1, text
    # Progress bars share stderr: the error is the one line that starts with "error: ".
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


# A causal bigram model (the logits depend on the current id only) whose logits round
# one way for a single sequence and another in a batch, by one unit of its dtype's
# precision, as GPU kernels that pick their reduction order by shape do.
BIGRAM_LOADER = """
import torch
from bpbeval.tokenizer import train

class Bigram(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=generator))

    def forward(self, ids):
        dtype = self.table.dtype
        logits = self.table[ids].float()
        if ids.shape[0] > 1:
            logits = logits * (1 + torch.finfo(dtype).eps)
        return logits.to(dtype)

def load(spec):
    tokenizer = train([], vocab_size=256 + 9)
    return Bigram(tokenizer.vocab_size), tokenizer, 64
"""


@pytest.fixture
def bigram(tmp_path, monkeypatch):
    """The loader module importable here and in child processes: gives its module."""
    (tmp_path / "bigram_loader.py").write_text(BIGRAM_LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("bigram_loader")


def bigram_bpb(table: torch.Tensor, bos_id: int, encoded: list[list[int]]) -> float:
    """Bits per byte of the bigram table, each token scored on its own (a byte tokenizer)."""
    nats = 0.0
    for ids in encoded:
        seq = [bos_id, *ids]
        logprobs = F.log_softmax(table.double()[seq[:-1]], dim=-1)
        nats += math.fsum((-logprobs[torch.arange(len(ids)), ids]).tolist())
    return nats / (math.log(2) * sum(map(len, encoded)))


def test_dtype_casts_the_weights_and_16_bit_logits_pass_the_probe(bigram, tmp_path):
    texts = ["héllo wörld, " * 5, "def f(x):\n    return x + 1\n", "日本語 🙂"]
    data = write_jsonl(tmp_path / "docs.jsonl", texts)
    model, tokenizer, _ = bigram.load("x")
    encoded = tokenizer.encode_batch(texts)
    figures = {}
    for dtype in ("float32", "bfloat16", "float16"):
        out = tmp_path / f"{dtype}.json"
        # One window per forward pass: the logits are the table's own, in that dtype.
        argv = ["x", "--loader", "bigram_loader:load", "--data", str(data), "--batch-size", "1"]
        assert eval_main([*argv, "--dtype", dtype, "--json", str(out), "--device", "cpu"]) == 0
        figures[dtype] = json.loads(out.read_text())["bits_per_byte"]
        table = model.table.detach().to(getattr(torch, dtype))
        expected = bigram_bpb(table, tokenizer.bos_id, encoded)
        assert figures[dtype] == pytest.approx(expected, rel=1e-6), dtype
    # The cast happened: rounding the table to 16 bits moves bpb far beyond that tolerance.
    assert abs(figures["bfloat16"] - figures["float32"]) > 1e-4 * figures["float32"]
    assert abs(figures["float16"] - figures["float32"]) > 1e-5 * figures["float32"]


def test_the_probe_s_tolerance_follows_the_logits_dtype(bigram, byte_tokenizer):
    document = [Document("d", "some text to score " * 4, None)]
    model, tokenizer, context_len = bigram.load("x")
    # In float32, a batch moves the logits by float32's epsilon: within its tolerance.
    checkpoint = Checkpoint(model, tokenizer, context_len, "", "custom", "t")
    assert score_documents(checkpoint, document, progress=False).tokens == 76
    # In bfloat16 by bfloat16's epsilon, 65536 times more: within the 16-bit tolerance.
    checkpoint = Checkpoint(model.to(torch.bfloat16), tokenizer, context_len, "", "custom", "t")
    assert score_documents(checkpoint, document, progress=False).tokens == 76

    class Bf16Logits32(torch.nn.Module):
        """The bfloat16-sized change in float32 logits: more than float32 kernels may differ."""

        def forward(self, ids):
            return model(ids).float()

    checkpoint = Checkpoint(Bf16Logits32(), tokenizer, context_len, "", "custom", "t")
    with pytest.raises(ScoringError, match="not causal"):
        score_documents(checkpoint, document, progress=False)

    class LeakyBf16(torch.nn.Module):
        """16-bit logits that see the next token: the looser tolerance still refuses them."""

        def forward(self, ids):
            following = torch.roll(ids, -1, dims=1)
            return (5.0 * F.one_hot(following, tokenizer.vocab_size)).to(torch.bfloat16)

    checkpoint = Checkpoint(LeakyBf16(), tokenizer, context_len, "", "custom", "t")
    with pytest.raises(ScoringError, match="not causal"):
        score_documents(checkpoint, document, progress=False)


def remote_code(marker: Path) -> str:
    return f"""
from pathlib import Path
Path({str(marker)!r}).write_text("imported")  # the mark of code that ran
from transformers import GPT2Config, GPT2LMHeadModel

class RemoteConfig(GPT2Config):
    model_type = "remote_gpt2"

class RemoteModel(GPT2LMHeadModel):
    config_class = RemoteConfig
"""


def test_trust_remote_code_runs_the_directory_s_model(hf_checkpoint, tmp_path, spawn):
    path, _ = hf_checkpoint
    remote, marker = tmp_path / "remote", tmp_path / "ran"
    shutil.copytree(path, remote)
    (remote / "remote_gpt2.py").write_text(remote_code(marker))
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "remote_gpt2.RemoteConfig",
        "AutoModelForCausalLM": "remote_gpt2.RemoteModel",
    }
    config["model_type"] = "remote_gpt2"
    (remote / "config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "docs.jsonl", ["a document for the remote model " * 3])

    def eval_process(directory: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
        # A process of its own: transformers copies remote modules into HF_MODULES_CACHE,
        # which it reads once, at import.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "hf")}
        argv = [sys.executable, "-m", "bpbeval.eval", str(directory), "--data", str(data),
                "--json", str(out), "--device", "cpu", *flags]  # fmt: skip
        proc = spawn(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out_bytes, err_bytes = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(argv, proc.returncode, out_bytes, err_bytes.decode())

    refused = eval_process(remote, tmp_path / "refused.json")
    assert refused.returncode == 1 and "trust_remote_code" in refused.stderr
    assert not marker.exists() and not (tmp_path / "refused.json").exists()

    trusted = eval_process(remote, tmp_path / "remote.json", "--trust-remote-code")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.read_text() == "imported"
    plain = eval_process(path, tmp_path / "plain.json")
    assert plain.returncode == 0, plain.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("remote.json", "plain.json"))
    # The same weights through the subclass: the same figures, but another model identity.
    assert a["bits_per_byte"] == pytest.approx(b["bits_per_byte"], rel=1e-12)
    assert a["identity"] != b["identity"]


def test_max_bytes_scores_the_documents_that_fit(native_checkpoint, documents, tmp_path):
    path = str(native_checkpoint[0])
    data = write_jsonl(tmp_path / "docs.jsonl", [d.text for d in documents])
    sizes = [len(d.text.encode("utf-8")) for d in documents]
    checkpoint = load(path)
    for limit, count in ((sum(sizes[:5]), 5), (sum(sizes[:5]) - 1, 4), (sizes[0], 1)):
        out = tmp_path / f"{limit}.json"
        argv = [path, "--data", str(data), "--max-bytes", str(limit), "--json", str(out)]
        assert eval_main([*argv, "--device", "cpu"]) == 0
        written = json.loads(out.read_text())
        assert (written["documents"], written["bytes"]) == (count, sum(sizes[:count]))
        expected = score_documents(checkpoint, documents[:count], progress=False)
        assert written["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-12)
    message = one_line_error([path, "--data", str(data), "--max-bytes", str(sizes[0] - 1)])
    assert f"({sizes[0]} bytes); raise it" in message


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_a_file_name_that_is_not_utf8_names_documents_in_utf8(native_checkpoint, tmp_path):
    # Linux file names are bytes; this one decodes to a lone surrogate, which no JSON,
    # Parquet or cache line can hold. It made compare end in a traceback.
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / os.fsdecode(b"caf\xe9.jsonl"), ["hello world", "second document"])
    out, per_doc = tmp_path / "out.json", tmp_path / "docs.parquet"
    path = str(native_checkpoint[0])
    argv = [path, path, "--data", str(data), "--json", str(out), "--per-doc", str(per_doc),
            "--cache", str(tmp_path / "cache"), "--device", "cpu"]  # fmt: skip
    for _ in range(2):  # the second run reads the cache back
        assert compare_main(argv) == 0
        assert pq.read_table(per_doc)["id"].to_pylist() == ["caf\\xe9.jsonl:0", "caf\\xe9.jsonl:1"]
        listed = json.loads(out.read_text(encoding="utf-8"))["documents"]["hardest_a"]
        assert sorted(h["id"] for h in listed) == ["caf\\xe9.jsonl:0", "caf\\xe9.jsonl:1"]


def test_seed_chooses_the_bootstrap_resamples(native_checkpoint, hf_checkpoint, tmp_path, capsys):
    # Enough documents and replicates for an interval (statistics.MIN_DOCUMENTS, MIN_REPLICATES).
    topics = sorted(pydoc_data.topics.topics.values())[:MIN_DOCUMENTS]
    data = write_jsonl(tmp_path / "docs.jsonl", [text[:100] for text in topics])
    cis = {}
    for seed in (0, 7):
        out, per_doc = tmp_path / f"{seed}.json", tmp_path / f"{seed}.parquet"
        argv = [str(native_checkpoint[0]), str(hf_checkpoint[0]), "--data", str(data),
                "--bootstrap", str(MIN_REPLICATES), "--seed", str(seed), "--json", str(out),
                "--per-doc", str(per_doc), "--cache", str(tmp_path / "cache"),
                "--device", "cpu"]  # fmt: skip
        assert compare_main(argv) == 0
        overall = json.loads(out.read_text())["overall"]
        table = pq.read_table(per_doc).to_pydict()
        columns = ("nats_a", "nats_b", "bytes", "tokens_a", "tokens_b")
        expected = paired_figures(
            *(np.array(table[c]) for c in columns), replicates=MIN_REPLICATES, seed=seed
        )
        assert expected.ci is not None and overall["ci"] == list(expected.ci)
        cis[seed] = overall["ci"]
    capsys.readouterr()
    assert cis[0] != cis[7]


def test_eval_of_documents_without_text_is_one_line(native_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    out = tmp_path / "out.json"
    argv = [str(native_checkpoint[0]), "--data", str(data), "--json", str(out)]
    assert "no text to score" in one_line_error(argv)
    assert not out.exists()


BAD_LOADERS = """
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train

def parts():
    return GPT(GPTConfig(265, context_len=8, n_layer=1, n_embd=16)), train([], vocab_size=265)

def model_only(spec):
    return parts()[0]

def one(spec):
    return (parts()[0],)

def four(spec):
    return (*parts(), 8, "extra")

def a_list(spec):
    return list(parts())
"""


@pytest.mark.parametrize("function", ["model_only", "one", "four", "a_list"])
def test_a_loader_returning_a_bad_value_is_one_line(function, tmp_path, monkeypatch):
    (tmp_path / "bad_loaders.py").write_text(BAD_LOADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"must return \(model, tokenizer\)"):
        load("x", loader=f"bad_loaders:{function}")
    data = write_jsonl(tmp_path / "docs.jsonl", ["text"])
    message = one_line_error(["x", "--loader", f"bad_loaders:{function}", "--data", str(data)])
    assert f"loader bad_loaders:{function} must return" in message


def test_a_huggingface_config_without_a_context_length(hf_checkpoint, tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    path, _ = hf_checkpoint
    config = MambaConfig(vocab_size=300, hidden_size=16, state_size=4, num_hidden_layers=1)
    assert not any(
        hasattr(config, name) for name in ("context_len", "max_position_embeddings", "n_positions")
    )
    mamba = tmp_path / "mamba"
    MambaForCausalLM(config).save_pretrained(mamba)
    for tokenizer_file in path.glob("*token*"):
        shutil.copy(tokenizer_file, mamba)
    with pytest.raises(CheckpointError, match="no max_position_embeddings or n_positions"):
        load(str(mamba))
    data = write_jsonl(tmp_path / "docs.jsonl", ["text"])
    assert "config.json gives no" in one_line_error([str(mamba), "--data", str(data)])


@pytest.mark.parametrize(
    "content", [b"not parquet at all", b'{"text": "JSON lines"}\n', b"", b"PAR1" + b"\0" * 40]
)
def test_a_parquet_file_that_is_not_parquet(content, native_checkpoint, tmp_path):
    bad = tmp_path / "shard_00000.parquet"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=f"{bad}: not a readable Parquet file"):
        list(read_documents(bad))
    message = one_line_error([str(native_checkpoint[0]), "--data", str(bad)])
    assert "not a readable Parquet file" in message


# A model that stops in its first scoring pass, once the probe is done (it probes at the
# full context; a short document's window is padded to less), and says so in a file.
STOPPING_LOADER = """
import pathlib, time
import torch
from bpbeval.tokenizer import train

class Stops(torch.nn.Module):
    def forward(self, ids):
        if ids.shape[1] < 64:
            pathlib.Path(__file__).with_name("scoring").write_text("now")
            time.sleep(600)
        return torch.zeros(*ids.shape, 265)

def load(spec):
    return Stops(), train([], vocab_size=265), 64
"""


def test_ctrl_c_exits_130_with_one_line(tmp_path, spawn):
    (tmp_path / "stopping_loader.py").write_text(STOPPING_LOADER)
    data = write_jsonl(tmp_path / "docs.jsonl", ["a short document"])
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    argv = [sys.executable, "-m", "bpbeval.eval", "x", "--loader", "stopping_loader:load",
            "--data", str(data), "--json", str(out), "--device", "cpu"]  # fmt: skip
    proc = spawn(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # only bounds a hang: the signal waits for the file
    while not (tmp_path / "scoring").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stdout == "" and "Traceback" not in stderr
    # The progress bar's line is not ended first, so the message may follow it on its line.
    assert [line for line in stderr.splitlines() if "error: " in line] == [
        line for line in stderr.splitlines() if line.endswith("error: interrupted")
    ]
    assert stderr.count("error: ") == 1
    assert not out.exists()
