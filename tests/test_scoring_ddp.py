"""World sizes 1, 2 and 3 (gloo, through ``torchrun``) give the same bpb, every byte once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpbeval.checkpoint import load
from bpbeval.data import read_documents
from bpbeval.scoring import score_documents
from tests.conftest import ROOT, torchrun, torchrun_env


@pytest.mark.slow
def test_world_sizes_agree(native_checkpoint, documents_jsonl, tmp_path, spawn):
    checkpoint_path = str(native_checkpoint[0])
    env = torchrun_env()
    launches, outputs = {}, {}
    # One launch at a time: 5 ranks at once on 2 cores only slow each other down.
    for world in (2, 3):
        argv = torchrun(
            world, "-m", "bpbeval.eval", checkpoint_path,
            "--data", str(documents_jsonl), "--device", "cpu", "--batch-size", str(world),
            "--json", str(tmp_path / f"world{world}.json"),
        )  # fmt: skip
        launches[world] = spawn(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        outputs[world] = launches[world].communicate(timeout=300)

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


PER_DOCUMENT = """
import json, sys
from bpbeval import distributed
from bpbeval.checkpoint import load
from bpbeval.data import read_documents
from bpbeval.scoring import score_documents

checkpoint, data, budget, out = sys.argv[1:]
with distributed.process_group("cpu"):
    scores = score_documents(
        load(checkpoint), read_documents(data), stride=5, batch_tokens=int(budget), progress=False
    )
    if distributed.rank() == 0:
        rows = [[s.domain, s.nats.hex(), s.bytes, s.tokens] for s in scores.documents]
        with open(out, "w") as f:
            json.dump({"documents": rows, "nats": scores.nats.hex()}, f)
"""


@pytest.mark.slow
def test_per_document_nats_are_bit_identical_at_world_sizes_2_and_3(
    native_checkpoint, documents_jsonl, tmp_path, spawn
):
    """Streamed documents, sharded, gathered as arrays: exactly one process's figures."""
    checkpoint_path = str(native_checkpoint[0])
    script = tmp_path / "per_document.py"
    script.write_text(PER_DOCUMENT)
    env = torchrun_env()
    launches, outputs = {}, {}
    for world, budget in ((2, 50), (3, 4096)):  # one at a time, as above
        argv = torchrun(
            world, str(script), checkpoint_path, str(documents_jsonl), str(budget),
            str(tmp_path / f"world{world}.json"),
        )  # fmt: skip
        launches[world] = spawn(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        outputs[world] = launches[world].communicate(timeout=300)

    documents = list(read_documents(documents_jsonl))
    reference = score_documents(load(checkpoint_path), documents, stride=5, progress=False)
    expected = [[s.domain, s.nats.hex(), s.bytes, s.tokens] for s in reference.documents]
    for world, (_, stderr) in outputs.items():
        assert launches[world].returncode == 0, stderr
        result = json.loads((tmp_path / f"world{world}.json").read_text())
        assert result["documents"] == expected  # every document once, in order, to the bit
        assert result["nats"] == reference.nats.hex()


LAUNCHER = """
import subprocess, sys, time
# Like torchrun: the worker gets a session of its own, out of reach of a kill of ours.
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                          start_new_session=True)
print(worker.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its (new) parent to reap it


@pytest.mark.parametrize("launcher_dies_first", [False, True])
def test_spawned_processes_and_their_own_sessions_die_with_the_test(spawn, launcher_dies_first):
    launcher = spawn([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    worker = int(launcher.stdout.readline())
    assert os.getsid(worker) == worker != os.getsid(launcher.pid)  # beyond a killpg of ours
    if launcher_dies_first:  # as when a test SIGKILLs torchrun: the worker is orphaned
        launcher.kill()
        launcher.wait()
    assert _alive(worker)
    spawn.close()  # what the fixture's teardown does
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(worker) and not _alive(launcher.pid)


# Joins and leaves a group the way eval and compare do, importing on the way what
# torch.export.load imports; writes, at exit, the gloo threads still running to a file per
# rank (the ranks share one stdout, where their lines can interleave).
TEARDOWN = """
import atexit, json, os, sys
from bpbeval import distributed

def gloo_threads():
    names = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as comm:
            names.append(comm.read().strip())
    return [name for name in names if "gloo" in name]

def report():
    with open(f"{sys.argv[1]}/rank{os.environ['RANK']}.json", "w") as out:
        json.dump(gloo_threads(), out)

atexit.register(report)
with distributed.process_group("cpu"):
    import torch.distributed.nn
    distributed.all_gather(distributed.rank())
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="threads from Linux /proc")
def test_leaving_the_group_stops_gloo_before_the_interpreter_exits(tmp_path, spawn):
    """torch.distributed.nn, imported inside the group, used to keep it alive past
    destroy_process_group: gloo's threads then ran into interpreter shutdown, where one
    freeing a tensor aborted the rank now and then under load (SIGABRT, "terminate called
    without an active exception"). Whether they still run at exit does not depend on load."""
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    launch = spawn(
        torchrun(2, str(script), str(tmp_path)),
        env=torchrun_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = launch.communicate(timeout=120)
    assert launch.returncode == 0, stderr
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports == [[], []]  # both ranks, no gloo thread left
