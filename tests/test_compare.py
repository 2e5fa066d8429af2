"""``python -m bpbeval.compare``: paired figures, outputs, resumes, world sizes and errors."""

from __future__ import annotations

import copy
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
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bpbeval import compare
from bpbeval.checkpoint import load, save
from bpbeval.cli import run
from bpbeval.compare import HIGHLIGHTS, _highlights, main
from bpbeval.data import Document
from bpbeval.results import DocumentScores, Scores
from bpbeval.statistics import (
    MIN_DOCUMENTS,
    MIN_REPLICATES,
    paired_figures,
    paired_figures_by_domain,
)

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 48  # enough for an interval overall and in domain "common", not in "rare"
REPLICATES = 500
TOPICS = sorted(pydoc_data.topics.topics.items())[20:80]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A JSONL file of stdlib help topics in two domains (42 and 6 documents), and its rows."""
    rows = [
        {"text": text[:200], "domain": "rare" if i % 8 == 7 else "common"}
        for i, (_, text) in enumerate(TOPICS[:N_DOCS])
    ]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path, rows


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe_tokenizer, native_checkpoint) -> tuple[str, str]:
    """(trained, untrained): the shared tiny GPT after a few steps of training, and as is."""
    untrained_path, untrained = native_checkpoint
    model = copy.deepcopy(untrained).train()
    ids = [i for doc in bpe_tokenizer.encode_batch([t for _, t in TOPICS]) for i in doc]
    ids = torch.tensor(ids)
    context = model.config.context_len
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(len(ids) - context - 1, (16,), generator=generator)
        batch = torch.stack([ids[s : s + context + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained_path = tmp_path_factory.mktemp("trained") / "ckpt"
    save(trained_path, model.eval(), bpe_tokenizer, context)
    return str(trained_path), str(untrained_path)


def _args(corpus, a, b, *extra) -> list[str]:
    return [a, b, "--data", str(corpus[0]), "--domain-column", "domain", "--stride", "16",
            "--batch-size", "16", "--device", "cpu", "--bootstrap", str(REPLICATES),
            *extra]  # fmt: skip


def _cli(argv) -> tuple[int, str, str]:
    """Run the command line in-process as `python -m bpbeval.compare` would: (status, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        run(main, argv)
    return exit_info.value.code, out.getvalue(), err.getvalue()


def _subprocess(spawn, argv: list[str], *, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", *launcher, "bpbeval.compare", *argv]
    return spawn(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _scored_and_reused(err: str) -> list[tuple[int, int]]:
    # "A: 3 documents scored, 21 from DIR" for each model.
    lines = [line.split() for line in err.splitlines() if " documents scored, " in line]
    return [(int(words[1]), int(words[4])) for words in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, checkpoints) -> dict:
    """An uninterrupted single-process run, trained (A) against untrained (B), every output."""
    root = tmp_path_factory.mktemp("reference")
    paths = {name: root / name for name in ("out.json", "docs.parquet", "plot.png", "cache")}
    status, out, err = _cli(
        _args(corpus, *checkpoints, "--json", str(paths["out.json"]), "--per-doc",
              str(paths["docs.parquet"]), "--plot", str(paths["plot.png"]), "--cache",
              str(paths["cache"]))
    )  # fmt: skip
    assert status == 0, err
    assert _scored_and_reused(err) == [(N_DOCS, 0), (N_DOCS, 0)]
    return {**paths, "stdout": out, "json": paths["out.json"].read_bytes()}


def test_a_trained_model_beats_an_untrained_one(corpus, reference):
    result = json.loads(reference["json"])
    overall = result["overall"]
    assert overall["ci"][0] <= overall["delta_bpb"] <= overall["ci"][1] < 0
    assert overall["verdict"].startswith(f"A is better by {-overall['delta_bpb']:.4f} bpb")
    assert overall["verdict"] in reference["stdout"]

    # Per-document results: every document, its own UTF-8 bytes, the totals of the JSON.
    table = pq.read_table(reference["docs.parquet"]).to_pydict()
    assert table["id"] == [f"docs.jsonl:{i}" for i in range(N_DOCS)]
    assert table["domain"] == [row["domain"] for row in corpus[1]]
    assert table["bytes"] == [len(row["text"].encode("utf-8")) for row in corpus[1]]
    for model, column in (("A", "nats_a"), ("B", "nats_b")):
        figures = result["models"][model]
        assert figures["nats"] == math.fsum(table[column])
        assert figures["bytes"] == sum(table["bytes"])
        assert figures["bits_per_byte"] == pytest.approx(
            math.fsum(table[column]) / (math.log(2) * sum(table["bytes"])), rel=1e-12
        )
        assert figures["tokens"] == sum(table[f"tokens_{model.lower()}"])
        assert figures["tokenizer_hash"] == load(figures["checkpoint"]).tokenizer.hash

    # The paired figures are those of the per-document results, recomputed here.
    columns = [np.array(table[c]) for c in ("nats_a", "nats_b", "bytes", "tokens_a", "tokens_b")]
    expected = paired_figures(*columns, replicates=REPLICATES, seed=0)
    assert overall["ci"] == list(expected.ci)
    assert overall["a_wins"] == expected.a_wins
    assert overall["correlation"] == expected.correlation
    assert (overall["p_value"], overall["mde"]) == (expected.p_value, expected.mde)

    # Per domain: each pools its own documents, and the domains pool to the whole.
    domains = paired_figures_by_domain(table["domain"], *columns, replicates=REPLICATES, seed=0)
    assert sorted(result["domains"]) == sorted(domains) == ["common", "rare"]
    for name, f in domains.items():
        assert result["domains"][name]["ci"] == (None if f.ci is None else list(f.ci))
        assert result["domains"][name]["verdict"] == f.verdict
        assert result["domains"][name]["A"]["nats"] == f.a.nats
    # Six documents are too few for an interval: the row says so and gives no verdict.
    assert domains["common"].ci is not None and domains["rare"].ci is None
    assert result["domains"]["rare"]["verdict"].startswith("no verdict, too few documents")
    rare_row = next(line for line in reference["stdout"].splitlines() if line.startswith("rare"))
    assert "too few" in rare_row
    parts = result["domains"].values()
    assert sum(p["A"]["bytes"] for p in parts) == result["models"]["A"]["bytes"]
    assert sum(p["documents"] for p in parts) == N_DOCS
    pooled = math.fsum(p["A"]["nats"] for p in parts) / (math.log(2) * sum(table["bytes"]))
    assert pooled == pytest.approx(result["models"]["A"]["bits_per_byte"], rel=1e-12)
    # Macro: each domain's bpb from the per-document table, then their plain mean.
    for model, column in (("A", "nats_a"), ("B", "nats_b")):
        per_domain = [
            math.fsum(n for n, d in zip(table[column], table["domain"], strict=True) if d == name)
            / (math.log(2) * sum(b for b, d in zip(table["bytes"], table["domain"], strict=True)
                                 if d == name))
            for name in ("common", "rare")
        ]  # fmt: skip
        assert result["macro"][model] == pytest.approx(sum(per_domain) / 2, rel=1e-12)
    assert result["macro"]["domains"] == 2
    macro_row = next(line for line in reference["stdout"].splitlines() if "macro" in line)
    assert macro_row.startswith("macro: mean of 2")
    assert macro_row.split()[-3:-1] == [f"{result['macro'][m]:.4f}" for m in ("A", "B")]
    micro_row = next(line for line in reference["stdout"].splitlines() if "micro" in line)
    assert micro_row.startswith("micro: all bytes")

    # The terminal table: aligned columns, both models' bpb as in the JSON.
    lines = reference["stdout"].splitlines()
    bpb_line = next(line for line in lines if line.startswith("bits per byte"))
    bpbs = [f"{result['models'][m]['bits_per_byte']:.6f}" for m in ("A", "B")]
    assert bpb_line.split()[-2:] == bpbs
    assert len(lines[0]) == len(bpb_line)


def test_the_plot_is_a_png_of_the_asked_size(reference):
    assert reference["plot.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two rows of two panels: per document, and the attribution by class and by position.
    assert matplotlib.image.imread(reference["plot.png"]).shape == (900, 1000, 4)


def test_a_model_against_itself_gives_zero(tmp_path, corpus, checkpoints):
    out_json = tmp_path / "self.json"
    argv = _args(corpus, checkpoints[0], checkpoints[0], "--json", str(out_json))
    status, out, _ = _cli(argv)
    assert status == 0
    overall = json.loads(out_json.read_text())["overall"]
    assert (overall["delta_bpb"], overall["ci"], overall["ties"]) == (0.0, [0.0, 0.0], 1.0)
    assert overall["verdict"].startswith("no significant difference")
    assert "no significant difference" in out


@pytest.mark.parametrize(
    ("documents", "replicates", "reason"),
    [
        (1, 1, "too few documents for a 95% interval (1; at least 41)"),
        (N_DOCS, MIN_REPLICATES - 1, "too few bootstrap replicates for a 95% interval (474;"),
    ],
)
def test_too_few_for_an_interval_gives_null_and_no_verdict(
    tmp_path, corpus, checkpoints, reference, documents, replicates, reason
):
    cache, out_json = tmp_path / "cache", tmp_path / "few.json"
    shutil.copytree(reference["cache"], cache)  # the scores are known: only the statistics run
    argv = _args(corpus, *checkpoints, "--cache", str(cache), "--json", str(out_json))
    argv += ["--max-docs", str(documents), "--bootstrap", str(replicates)]
    status, out, err = _cli(argv)
    assert status == 0, err
    overall = json.loads(out_json.read_text())["overall"]
    assert overall["ci"] is None
    assert overall["verdict"].startswith(f"no verdict, {reason}")
    assert f"95% CI        none, {reason}" in out
    for text in (out, overall["verdict"]):
        assert "significant" not in text and "better by" not in text
    # The trained model is still better on these documents: only the verdict is withheld.
    assert overall["delta_bpb"] < 0


def test_just_enough_for_an_interval_gives_one(tmp_path, corpus, checkpoints, reference):
    cache, out_json = tmp_path / "cache", tmp_path / "enough.json"
    shutil.copytree(reference["cache"], cache)
    argv = _args(corpus, *checkpoints, "--cache", str(cache), "--json", str(out_json))
    argv += ["--max-docs", str(MIN_DOCUMENTS), "--bootstrap", str(MIN_REPLICATES)]
    status, out, err = _cli(argv)
    assert status == 0, err
    overall = json.loads(out_json.read_text())["overall"]
    table = pq.read_table(reference["docs.parquet"]).to_pydict()
    columns = [
        table[c][:MIN_DOCUMENTS] for c in ("nats_a", "nats_b", "bytes", "tokens_a", "tokens_b")
    ]
    expected = paired_figures(*columns, replicates=MIN_REPLICATES, seed=0)
    assert overall["ci"] == list(expected.ci)
    assert overall["verdict"] == expected.verdict and expected.verdict in out


def test_json_is_identical_on_two_ranks(tmp_path, corpus, checkpoints, reference, spawn):
    out_json, cache = tmp_path / "ws2.json", tmp_path / "cache"
    torchrun = ("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    argv = _args(corpus, *checkpoints, "--json", str(out_json), "--cache", str(cache))
    proc = _subprocess(spawn, argv, launcher=torchrun)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.count("A is better by") == 1  # only rank 0 prints
    assert out_json.read_bytes() == reference["json"]
    # Each rank kept its own share; rank 0 reports the sum.
    assert _scored_and_reused(err) == [(N_DOCS, 0), (N_DOCS, 0)]
    for model in cache.iterdir():
        files = sorted(model.glob("*.jsonl"))
        assert [f.read_bytes().count(b"\n") for f in files] == [N_DOCS // 2, N_DOCS // 2]


# Runs bpbeval.compare with the cache's put wrapped: after the given number of documents
# is recorded, the run writes a marker and waits to be killed. The kill then lands at a
# known point, whatever the machine's speed.
PAUSE_AFTER_PUTS = """
import pathlib, runpy, sys, time
from bpbeval.cache import ResultCache

marker, pause_after = pathlib.Path(sys.argv[1]), int(sys.argv[2])
put, puts = ResultCache.put, []

def put_then_pause(self, document, score):
    put(self, document, score)
    puts.append(document.id)
    if len(puts) == pause_after:
        marker.write_text("paused")
        time.sleep(600)

ResultCache.put = put_then_pause
sys.argv = ["bpbeval.compare", *sys.argv[3:]]
runpy.run_module("bpbeval.compare", run_name="__main__", alter_sys=True)
"""


def test_a_killed_run_resumes_to_identical_json(tmp_path, corpus, checkpoints, reference, spawn):
    cache, out_json, marker = tmp_path / "cache", tmp_path / "resumed.json", tmp_path / "paused"
    argv = _args(corpus, *checkpoints, "--json", str(out_json), "--cache", str(cache))
    done = N_DOCS + 5  # all of A's documents and 5 of B's
    command = [sys.executable, "-c", PAUSE_AFTER_PUTS, str(marker), str(done), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = spawn(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # only bounds a hang: the kill waits for the marker
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    def cached() -> int:
        return sum(f.read_bytes().count(b"\n") for f in cache.rglob("*.jsonl"))

    assert cached() == done and not out_json.exists()

    status, _, err = _cli(argv)
    assert status == 0, err
    assert out_json.read_bytes() == reference["json"]
    # Over both runs every document was scored once: none of the first run's again.
    assert cached() == 2 * N_DOCS
    assert _scored_and_reused(err) == [(0, N_DOCS), (N_DOCS - 5, 5)]


def test_changed_settings_score_everything_anew(tmp_path, corpus, checkpoints, reference):
    cache = tmp_path / "cache"
    shutil.copytree(reference["cache"], cache)
    argv = _args(corpus, *checkpoints, "--cache", str(cache), "--max-docs", "6")
    status, _, err = _cli([*argv, "--batch-size", "3"])  # batch sizes do not change scores
    assert status == 0 and _scored_and_reused(err) == [(0, 6), (0, 6)]
    status, _, err = _cli([*argv, "--stride", "8"])
    assert status == 0 and _scored_and_reused(err) == [(6, 0), (6, 0)]


def _one_line_error(status: int, err: str, expected_status: int, text: str) -> None:
    errors = [line for line in err.splitlines() if "error: " in line]
    assert status == expected_status
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("flag", "value"), [("--bootstrap", "0"), ("--seed", "-1"), ("--bootstrap", "many")]
)
def test_an_out_of_range_flag_is_one_line(corpus, checkpoints, flag, value):
    status, _, err = _cli([*_args(corpus, *checkpoints), flag, value])
    _one_line_error(status, err, 2, f"argument {flag}:")


def test_an_unreadable_cache_is_one_line(tmp_path, corpus, checkpoints, reference):
    cache = tmp_path / "cache"
    shutil.copytree(reference["cache"], cache)
    first = next(cache.rglob("*.jsonl"))
    first.write_bytes(b"garbage\n" + first.read_bytes())
    status, _, err = _cli(_args(corpus, *checkpoints, "--cache", str(cache)))
    _one_line_error(status, err, 1, f"{first.name}:1 is corrupt")


def test_byte_totals_that_disagree_are_one_line(tmp_path, corpus, checkpoints, reference):
    # B's cached result for one document claims other bytes than its text has (an edited cache).
    cache = tmp_path / "cache"
    shutil.copytree(reference["cache"], cache)
    identity = load(checkpoints[1]).identity
    (b_file,) = next(d for d in cache.iterdir() if identity in (d / "key.json").read_text()).glob(
        "*.jsonl"
    )
    lines = [json.loads(line) for line in b_file.read_text().splitlines()]
    lines[5]["bytes"] += 1
    for part in ("class_bytes", "position_bytes"):  # still adding up: the cache takes the line
        lines[5]["attribution"][part][0] += 1
    b_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    status, _, err = _cli(_args(corpus, *checkpoints, "--cache", str(cache)))
    _one_line_error(status, err, 1, f"disagree on the bytes of document {lines[5]['id']}")


def test_a_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch, corpus, checkpoints):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    status, _, err = _cli(_args(corpus, *checkpoints, "--plot", str(tmp_path / "p.png")))
    _one_line_error(status, err, 1, "pip install 'bpbeval[plot]'")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("flag", "name", "message"),
    [
        ("--json", "dir.json", "is a directory"),
        ("--per-doc", "dir.parquet", "is a directory"),
        ("--per-doc", "x.csv", "writes a .parquet file; name it"),
        ("--plot", "x.txt", "writes a .png file; name it"),
        ("--json", "x.parquet", "writes a .json file; name it"),
        ("--plot", "a_file/x.png", "is a file, so nothing can be written in it"),
        ("--per-doc", "READ_ONLY/x.parquet", "cannot write in"),
        ("--json", "READ_ONLY/new/x.json", "cannot write in"),
        ("--cache", "a_file", "is a file, so nothing can be written in it"),
        ("--cache", "a_file/cache", "is a file, so nothing can be written in it"),
        ("--cache", "READ_ONLY", "cannot write in"),
        ("--cache", "READ_ONLY/cache", "cannot write in"),
    ],
)
def test_a_bad_output_fails_before_any_checkpoint_is_loaded(
    tmp_path, read_only_dir, flag, name, message
):
    (tmp_path / "a_file").write_text("precious")
    for directory in ("dir.json", "dir.parquet"):
        (tmp_path / directory).mkdir()
    root = read_only_dir if name.startswith("READ_ONLY") else tmp_path
    out = str(root / name.removeprefix("READ_ONLY").removeprefix("/"))
    # Neither checkpoint nor the data exist: the outputs are the first thing checked.
    missing = [str(tmp_path / "no-a"), str(tmp_path / "no-b"), "--data", str(tmp_path / "no-data")]
    status, out_text, err = _cli([*missing, "--device", "cpu", flag, out])
    _one_line_error(status, err, 1, f"{flag} {out}: ")
    assert message in err and out_text == ""
    assert os.listdir(read_only_dir) == [] and (tmp_path / "a_file").read_text() == "precious"


def test_models_of_other_formats_and_vocabularies_share_the_bytes(
    tmp_path, corpus, checkpoints, hf_checkpoint
):
    # A native checkpoint with our BPE against a Hugging Face GPT-2 with its own tokenizer.
    out_json, per_doc = tmp_path / "mixed.json", tmp_path / "mixed.parquet"
    argv = _args(corpus, checkpoints[0], str(hf_checkpoint[0]), "--max-docs", "6", "--json",
                 str(out_json), "--per-doc", str(per_doc))  # fmt: skip
    status, _, err = _cli(argv)
    assert status == 0, err
    result = json.loads(out_json.read_text())
    a, b = result["models"]["A"], result["models"]["B"]
    assert (a["kind"], b["kind"]) == ("native", "huggingface")
    assert a["tokenizer_hash"] != b["tokenizer_hash"]
    table = pq.read_table(per_doc).to_pydict()
    assert table["bytes"] == [len(row["text"].encode("utf-8")) for row in corpus[1][:6]]
    assert a["bytes"] == b["bytes"] == sum(table["bytes"])
    assert table["tokens_a"] != table["tokens_b"]


def test_documents_without_text_are_one_line(tmp_path, checkpoints):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": ""}\n')
    status, _, err = _cli([*checkpoints, "--data", str(empty), "--device", "cpu"])
    _one_line_error(status, err, 1, "no text to compare on")


@pytest.mark.parametrize("block", [compare.HIGHLIGHT_BLOCK, 7])
def test_the_documents_listed_are_those_a_full_stable_sort_lists_first(monkeypatch, block):
    # Ties and documents of 0 bytes, many: the lists must be what sorting every document
    # (stable: ties to the earlier one) and taking the first HIGHLIGHTS gives, whether the
    # documents are looked at in one block or in several.
    monkeypatch.setattr(compare, "HIGHLIGHT_BLOCK", block)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        n_bytes = rng.integers(0, 4, n)
        nats_a, nats_b = (rng.integers(0, 3, n).astype(float) for _ in "ab")
        domains = np.array([None] * n, dtype=object)
        a, b = (
            Scores(DocumentScores(domains, nats, n_bytes, n_bytes), 0.0, 0, 0, False)
            for nats in (nats_a, nats_b)
        )
        documents = [Document(f"d{i}", "x") for i in range(n)]
        scored = np.flatnonzero(n_bytes > 0)
        bpb_a, bpb_b = nats_a[scored] / n_bytes[scored], nats_b[scored] / n_bytes[scored]
        delta = bpb_a - bpb_b
        expected = {
            "a_beats_b": [i for i in np.argsort(delta, kind="stable") if delta[i] < 0],
            "b_beats_a": [i for i in np.argsort(-delta, kind="stable") if delta[i] > 0],
            "hardest_a": list(np.argsort(-bpb_a, kind="stable")),
            "hardest_b": list(np.argsort(-bpb_b, kind="stable")),
        }
        listed = _highlights(documents, a, b)
        for key, rows in expected.items():
            assert [h.id for h in listed[key]] == [f"d{scored[i]}" for i in rows[:HIGHLIGHTS]]
