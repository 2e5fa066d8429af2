"""``examples/lightning_bpb.py``: logged val/bpb equals a plain loop's, on 1 and 2 ranks."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")  # bpbeval[test] installs it

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lightning_bpb.py"


def example():
    spec = importlib.util.spec_from_file_location("lightning_bpb", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_loop_bpb(model, rows: torch.Tensor, token_bytes: torch.Tensor, batch_size: int) -> float:
    """A plain validation loop: per-token nats of each batch, summed exactly over scored tokens."""
    nats, nbytes = [], 0
    model.eval()
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            x, y = rows[first : first + batch_size, :-1], rows[first : first + batch_size, 1:]
            per_token = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
            lengths = token_bytes[y.flatten()]
            nats += per_token[lengths > 0].tolist()
            nbytes += int(lengths.sum())
    return math.fsum(nats) / (math.log(2) * nbytes)


def test_logged_val_bpb_equals_a_plain_loop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything Lightning writes lands here
    lightning_bpb = example()
    args = lightning_bpb.parser().parse_args(
        ["--steps", "3", "--context", "48", "--vocab-size", "300", "--batch-size", "4"]
    )
    module, trainer = lightning_bpb.build(args)
    trainer.fit(module)
    (result,) = trainer.validate(module, verbose=False)

    data = module.data
    expected = plain_loop_bpb(module.model, data.val, data.token_bytes, args.batch_size)
    assert result["val/bpb"] == pytest.approx(expected, rel=1e-9)
    assert module.val_bpb.tokens == 0  # Lightning reset it after logging


@pytest.mark.slow
def test_val_bpb_on_two_ddp_processes_equals_a_plain_loop(tmp_path, spawn):
    settings = ["--steps", "0", "--context", "48", "--vocab-size", "300", "--batch-size", "1"]
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = spawn(
        [sys.executable, str(EXAMPLE), "--devices", "2", "--json", str(out), *settings],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("val/bpb") == 1  # rank 0 alone prints

    lightning_bpb = example()
    module, _ = lightning_bpb.build(lightning_bpb.parser().parse_args(settings))
    data = module.data
    assert len(data.val) % 2 == 1  # uneven shards: a padding sampler would repeat a row
    expected = plain_loop_bpb(module.model, data.val, data.token_bytes, batch_size=1)
    assert json.loads(out.read_text())["val_bpb"] == pytest.approx(expected, rel=1e-9)
