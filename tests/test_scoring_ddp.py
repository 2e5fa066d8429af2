"""World sizes 1, 2 and 3 (gloo, through ``torchrun``) give the same bpb, every byte once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpbeval.checkpoint import load
from bpbeval.data import read_documents
from bpbeval.scoring import score_documents

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_world_sizes_agree(native_checkpoint, documents_jsonl, tmp_path):
    checkpoint_path = str(native_checkpoint[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launches = {}
    for world in (2, 3):  # both at once: most of each launch is importing torch
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world}", "-m", "bpbeval.eval", checkpoint_path,
            "--data", str(documents_jsonl), "--device", "cpu", "--batch-size", str(world),
            "--json", str(tmp_path / f"world{world}.json"),
        ]  # fmt: skip
        launches[world] = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    outputs = {world: process.communicate(timeout=300) for world, process in launches.items()}

    documents = list(read_documents(documents_jsonl))
    reference = score_documents(load(checkpoint_path), documents, batch_size=8, progress=False)
    for world, (stdout, stderr) in outputs.items():
        assert launches[world].returncode == 0, stderr
        assert stdout.count("bits_per_byte") == 1, stdout  # rank 0 alone prints
        result = json.loads((tmp_path / f"world{world}.json").read_text())
        assert result["bits_per_byte"] == pytest.approx(reference.bits_per_byte, rel=1e-9)
        # Every document once: the byte total is the corpus's own, no more, no less.
        assert result["bytes"] == sum(len(d.text.encode()) for d in documents)
        assert (result["documents"], result["tokens"]) == (len(documents), reference.tokens)
