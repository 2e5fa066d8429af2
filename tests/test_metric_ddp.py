"""BitsPerByte across processes: gloo, 2 and 3 ranks, uneven batches, same answer as one process.

Each rank is a fresh ``python this_file.py RANK WORLD INIT_FILE`` process, which
keeps the test independent of how pytest imports this module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpbeval import BitsPerByte

VOCAB = 40
N_BATCHES = 7  # 4+3 batches on 2 ranks, 3+2+2 on 3: uneven on purpose


def token_bytes() -> torch.Tensor:
    tb = torch.randint(1, 6, (VOCAB,), generator=torch.Generator().manual_seed(0))
    tb[0] = 0
    return tb


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Batches differ in size too, as the last batch of an epoch does.
    g = torch.Generator().manual_seed(100 + i)
    shape = (1 + i % 3, 50 + 13 * i)
    return torch.rand(shape, generator=g) * 9, torch.randint(-1, VOCAB, shape, generator=g)


def worker(rank: int, world: int, init_file: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    metric = BitsPerByte(token_bytes(), ignore_index=3)
    for i in range(rank, N_BATCHES, world):
        metric.update(*batch(i))
    r = metric.compute_all()
    print(
        json.dumps({"bpb": metric.compute().item(), "nats": r.nats.item(), "bytes": r.bytes.item()})
    )
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_equals_single_process(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    init_file = tmp_path / "init"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(world), str(init_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err

    single = BitsPerByte(token_bytes(), ignore_index=3)
    batches = [batch(i) for i in range(N_BATCHES)]
    for b in batches:
        single.update(*b)
    # Independent check of the single-process value itself.
    tb = token_bytes().tolist()
    kept = [
        (x, tb[t])
        for loss, target in batches
        for x, t in zip(loss.double().flatten().tolist(), target.flatten().tolist(), strict=True)
        if t >= 0 and t != 3 and tb[t] > 0
    ]
    nats, nbytes = math.fsum(x for x, _ in kept), sum(n for _, n in kept)
    assert single.compute().item() == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-12)

    for out, _ in outputs:
        got = json.loads(out.strip().splitlines()[-1])
        assert got["bytes"] == nbytes
        assert got["nats"] == pytest.approx(nats, rel=1e-12, abs=0)
        assert got["bpb"] == pytest.approx(single.compute().item(), rel=1e-12, abs=0)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
