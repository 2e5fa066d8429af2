"""On a CUDA device: prove ``BitsPerByte.update`` never syncs, and repeat bench_metric's ratios.

    python benchmarks/gpu_check.py [--repeats 50] [--tokens 16384]

Runs ``update`` under ``torch.cuda.set_sync_debug_mode("error")``, which turns any
host-device synchronisation into an exception; saves a GPT that lives on the GPU as a
native checkpoint and checks that it loads on the GPU with the CPU's logits; then
measures update speed and the per-token loss memory (``torch.cuda.max_memory_allocated``,
bf16 inputs) with the functions of ``bench_metric.py``; and the scoring engine
(``gpu_scoring.py``): CUDA against CPU float32, syncs while scoring, torchrun on NCCL,
throughput against the bare forward. Takes a minute or two. Without
a CUDA device it prints ``skipped: no CUDA device`` and exits 0.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from bench_metric import (
    LOSS_VARIANTS,
    B,
    T,
    V,
    loss_inputs,
    print_memory,
    print_speeds,
    seconds_per_call,
    update_speeds,
)
from gpu_scoring import check_scoring

from bpbeval import BitsPerByte
from bpbeval.checkpoint import load, save
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.tokenizer import train


def check_no_sync(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    loss = (torch.rand(B, T, generator=g) * 9).to(device)
    target = torch.randint(-1, V, (B, T), generator=g).to(device)
    token_bytes = torch.randint(0, 8, (V,), generator=g).to(device)
    metric = BitsPerByte(token_bytes, ignore_index=5, validate_args=False)
    on_cpu = BitsPerByte(token_bytes.cpu(), ignore_index=5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            metric.update(loss, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(10):
        on_cpu.update(loss.cpu(), target.cpu())
    got, want = metric.compute().item(), on_cpu.compute().item()
    assert abs(got - want) <= 1e-12 * abs(want), (got, want)
    print(f"update: 10 calls without a host-device sync; bpb {got:.12f} equals the CPU's")


def check_native_checkpoint(device: torch.device) -> None:
    tokenizer = train([], vocab_size=265)  # byte-level: nothing to train
    torch.manual_seed(0)
    model = GPT(GPTConfig(tokenizer.vocab_size, context_len=32, n_embd=64)).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        save(f"{tmp}/ckpt", model, tokenizer, 32)  # exported where the model lives, saved on CPU
        on_cpu, on_device = load(f"{tmp}/ckpt"), load(f"{tmp}/ckpt", device=device)
    ids = torch.randint(tokenizer.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = on_cpu.model(ids), on_device.model(ids.to(device))
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(ids.to(device)), got, rtol=1e-5, atol=1e-5)
    assert got.device.type == device.type, got.device
    assert on_cpu.identity == on_device.identity
    error = (got.cpu() - want).abs().max().item()
    print(f"native checkpoint: saved from {device}, loaded on it, logits within {error:.1e} of CPU")


def loss_memory(device: torch.device, n: int, repeats: int) -> dict[str, tuple[int, float]]:
    hidden, weight, target = loss_inputs(n, device, torch.bfloat16)
    results = {}
    with torch.inference_mode():
        for name, variant in LOSS_VARIANTS.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            seconds = seconds_per_call(
                lambda variant=variant: variant(hidden, weight, target),
                repeats,
                torch.cuda.synchronize,
            )
            results[name] = (torch.cuda.max_memory_allocated(device) - before, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=16384, help="N for the loss memory part")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    check_no_sync(device)
    check_native_checkpoint(device)
    check_scoring(device)  # gpu_scoring.py: the scoring engine against the CPU, syncs, NCCL
    print(f"update speed ({B * T} tokens per update):")
    print_speeds(update_speeds(device, args.repeats, torch.cuda.synchronize))
    print(f"per-token loss memory (N={args.tokens}, bf16):")
    print_memory(loss_memory(device, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
