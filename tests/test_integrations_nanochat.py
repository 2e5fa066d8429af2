"""nanochat drop-ins: ``evaluate_bpb`` against float64 references, and ``token_bytes.pt``.

The DDP test runs each rank as ``python this_file.py RANK WORLD INIT_FILE``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bpbeval.gpt import GPT, GPTConfig
from bpbeval.integrations.nanochat import evaluate_bpb
from bpbeval.tokenizer import load_nanochat
from bpbeval.tokenizer.__main__ import main as tokenizer_main

ROOT = Path(__file__).resolve().parents[1]


class NanochatGPT(torch.nn.Module):
    """A GPT called as nanochat's is: ``model(x, y, loss_reduction="none")`` gives flat nats."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size, context_len=16, n_layer=1, n_head=2, n_embd=32)
        self.gpt = GPT(config).eval()

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = self.gpt(idx).float()
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)),
            targets.view(-1),
            ignore_index=-1,
            reduction=loss_reduction,
        )


def nanochat_batches(ids: list[int], bos: int, *, rows: int, seed: int):
    """(x, y) pairs cut from a token stream, as nanochat's loader yields them; y has -1 masks."""
    stream = torch.tensor([bos, *ids])
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(stream) - 17 * rows, 17 * rows):
        block = stream[start : start + 17 * rows].view(rows, 17)
        x, y = block[:, :-1].clone(), block[:, 1:].clone()
        y[torch.rand(y.shape, generator=generator) < 0.2] = -1
        yield x, y


@torch.no_grad()
def reference_bpb(model, batches, token_bytes: torch.Tensor) -> float:
    """Per-token losses in float64 from the same logits, summed exactly (math.fsum)."""
    nats, nbytes = [], 0
    for x, y in batches:
        logits = model.gpt(x).double()
        for row, targets in enumerate(y.tolist()):
            log_probs = logits[row].log_softmax(-1)
            for position, target in enumerate(targets):
                if target >= 0 and token_bytes[target] > 0:
                    nats.append(-float(log_probs[position, target]))
                    nbytes += int(token_bytes[target])
    return math.fsum(nats) / (math.log(2) * nbytes)


def test_evaluate_bpb_equals_float64_reference(bpe_tokenizer):
    texts = [pickle.__doc__, json.__doc__, "héllo wörld — naïve café ✓ 日本語 🙂"]
    ids = [i for text in texts for i in [bpe_tokenizer.bos_id, *bpe_tokenizer.encode(text)]]
    token_bytes = bpe_tokenizer.token_bytes()
    model = NanochatGPT(bpe_tokenizer.vocab_size)
    batches = list(nanochat_batches(ids, bpe_tokenizer.bos_id, rows=3, seed=0))
    steps = len(batches) - 1  # takes exactly `steps` batches from a generator
    assert steps >= 5
    assert any((y == bpe_tokenizer.bos_id).any() for _, y in batches)  # 0-byte targets too

    got = evaluate_bpb(model, iter(batches), steps, token_bytes)
    expected = reference_bpb(model, batches[:steps], token_bytes)
    # float32 per-token losses (as nanochat's model gives) against float64 ones
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(reference_bpb(model, batches, token_bytes), rel=1e-6)


def test_evaluate_bpb_totals_stay_exact_past_float32():
    # 2**25 tokens of one loss: a float32 total, nanochat's, has lost count by then.
    loss = torch.tensor(1.1, dtype=torch.float32)
    tokens_per_step, steps = 2**17, 2**8
    y = torch.ones(1, tokens_per_step, dtype=torch.int64)

    def model(x, y, loss_reduction):
        return loss.expand(y.numel())

    token_bytes = torch.tensor([0, 3])
    got = evaluate_bpb(model, iter(lambda: (y, y), None), steps, token_bytes)
    n = tokens_per_step * steps
    assert got == pytest.approx(n * float(loss) / (math.log(2) * 3 * n), rel=1e-12)
    float32_total = torch.zeros((), dtype=torch.float32)
    for _ in range(steps):
        float32_total += loss.expand(tokens_per_step).sum()
    assert abs(float(float32_total) / (n * float(loss)) - 1) > 1e-7  # what this test guards


def test_token_bytes_export_is_nanochats_file(tmp_path, bpe_tokenizer, capsys):
    nanochat = tmp_path / "tokenizer"
    nanochat.mkdir()
    (nanochat / "tokenizer.pkl").write_bytes(pickle.dumps(bpe_tokenizer.encoding))
    encoding = bpe_tokenizer.encoding
    # nanochat's recipe: the UTF-8 length of each token's decoded string, 0 for specials.
    decoded = [
        0 if i in encoding._special_tokens.values() else len(encoding.decode([i]).encode())
        for i in range(encoding.n_vocab)
    ]
    out = nanochat / "token_bytes.pt"
    torch.save(torch.tensor(decoded, dtype=torch.int32), out)

    assert tokenizer_main(["token-bytes", str(nanochat), "--out", str(out)]) == 0
    table = torch.load(out, weights_only=True)
    assert table.dtype == torch.int32 and table.device.type == "cpu"
    assert torch.equal(table, load_nanochat(nanochat).token_bytes())
    raw = [len(encoding.decode_single_token_bytes(i)) for i in range(encoding.n_vocab)]
    assert table.tolist() == [0 if d == 0 else r for d, r in zip(decoded, raw, strict=True)]
    assert table.tolist() != decoded  # lone bytes 0x80-0xff: 1 byte, not U+FFFD's 3
    assert f"wrote {out}: {encoding.n_vocab} byte lengths" in capsys.readouterr().out


VOCAB = 50
N_BATCHES = 5


def ddp_setup() -> tuple[NanochatGPT, list, torch.Tensor]:
    """The model, batches and byte table every rank (and the single process) builds alike."""
    generator = torch.Generator().manual_seed(7)
    token_bytes = torch.randint(1, 5, (VOCAB,), generator=generator)
    token_bytes[0] = 0
    batches = []
    for _ in range(N_BATCHES):
        x = torch.randint(VOCAB, (2, 16), generator=generator)
        y = torch.randint(-1, VOCAB, (2, 16), generator=generator)
        batches.append((x, y))
    return NanochatGPT(VOCAB, seed=3), batches, token_bytes


def worker(rank: int, world: int, init_file: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    model, batches, token_bytes = ddp_setup()
    mine = batches[rank::world]
    # Every rank takes the same number of steps, as nanochat's loop does; rank 1 repeats one.
    steps = math.ceil(N_BATCHES / world)
    print(json.dumps(evaluate_bpb(model, iter(mine + mine), steps, token_bytes)))
    torch.distributed.destroy_process_group()


def test_evaluate_bpb_sums_over_ranks(tmp_path, spawn):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__]
    procs = [
        spawn([*argv, str(rank), "2", str(tmp_path / "init")], env=env, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    figures = [json.loads(out) for out, _ in outputs]

    model, batches, token_bytes = ddp_setup()
    # Rank 0 scores batches 0, 2, 4; rank 1 scores 1, 3 and then 1 again.
    expected = reference_bpb(model, [*batches, batches[1]], token_bytes)
    assert figures[0] == figures[1]
    assert figures[0] == pytest.approx(expected, rel=1e-6)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
