"""What BitsPerByte costs beside a model, and what the loss helpers save in memory.

Prints, from one run on the same inputs:
- tokens/s of ``BitsPerByte.update``, of a nanochat-style loop (float32 total, an
  ``.any()`` per step) and of a small GPT's forward pass (B=8, T=512, V=8192);
- peak memory and time of per-token losses at V=65536, N=16384 for full logits,
  the chunked path (``token_nats``) and the fused path (``token_nats_from_hidden``).
  Each variant runs in a fresh process; its peak is the growth of peak RSS (Linux).

``benchmarks/gpu_check.py`` repeats both on a CUDA device with these functions.

    python benchmarks/bench_metric.py [--repeats 20] [--tokens 16384] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bpbeval import BitsPerByte
from bpbeval.gpt import GPT, GPTConfig
from bpbeval.losses import token_nats, token_nats_from_hidden

B, T, V = 8, 512, 8192
LOSS_VOCAB, LOSS_DIM = 65536, 256


def seconds_per_call(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best of ``repeats`` timed calls after one warm-up (best: least disturbed by neighbours)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def nanochat_update(totals: dict, loss: torch.Tensor, y: torch.Tensor, token_bytes: torch.Tensor):
    """The accumulation step of nanochat's evaluate_bpb, as written there."""
    loss, y = loss.view(-1), y.view(-1)
    if (y.int() < 0).any():  # host-device sync on every step
        valid = y >= 0
        y_safe = torch.where(valid, y, torch.zeros_like(y))
        num_bytes = torch.where(
            valid, token_bytes[y_safe], torch.zeros_like(y, dtype=token_bytes.dtype)
        )
    else:
        num_bytes = token_bytes[y]
    totals["nats"] += (loss * (num_bytes > 0)).sum()  # float32 accumulator
    totals["bytes"] += num_bytes.sum()


def update_speeds(device: torch.device, repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Tokens per second of the metric, the nanochat-style loop and a GPT forward pass."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, T + 1), generator=g).to(device)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, :7] = -1  # a few masked positions, as with document boundaries
    token_bytes = torch.randint(0, 8, (V,), generator=g).to(device)
    model = GPT(GPTConfig(vocab_size=V, context_len=T)).to(device).eval()
    with torch.inference_mode():
        loss = F.cross_entropy(
            model(x).flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none"
        )
        loss = loss.view(B, T)
        metric = BitsPerByte(token_bytes, validate_args=False)
        checked = BitsPerByte(token_bytes)
        totals = {
            "nats": torch.zeros((), dtype=torch.float32, device=device),
            "bytes": torch.zeros((), dtype=torch.int64, device=device),
        }
        times = {
            "BitsPerByte.update": seconds_per_call(lambda: metric.update(loss, y), repeats, sync),
            "BitsPerByte.update (validate_args)": seconds_per_call(
                lambda: checked.update(loss, y), repeats, sync
            ),
            "nanochat-style loop": seconds_per_call(
                lambda: nanochat_update(totals, loss, y, token_bytes), repeats, sync
            ),
            f"GPT forward (B={B}, T={T}, V={V})": seconds_per_call(
                lambda: model(x), max(3, repeats // 10), sync
            ),
        }
    return {name: B * T / s for name, s in times.items()}


def print_speeds(speeds: dict[str, float]) -> None:
    update, nanochat, forward = (
        speeds["BitsPerByte.update"],
        speeds["nanochat-style loop"],
        speeds[next(k for k in speeds if k.startswith("GPT"))],
    )
    for name, rate in speeds.items():
        print(f"  {name:<38} {rate:>14,.0f} tokens/s")
    print(f"  update / nanochat-style speed: {update / nanochat:.2f}x (want >= 1)")
    print(f"  update time / forward time: {100 * forward / update:.3f}% (want <= 2%)")


def loss_inputs(n: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(n, LOSS_DIM, generator=g).to(device, dtype)
    weight = (torch.randn(LOSS_VOCAB, LOSS_DIM, generator=g) * 0.05).to(device, dtype)
    target = torch.randint(0, LOSS_VOCAB, (n,), generator=g).to(device)
    target[::9] = -100
    return hidden, weight, target


LOSS_VARIANTS: dict[str, Callable] = {
    "full logits": lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t, reduction="none"),
    "chunked (token_nats)": lambda h, w, t: token_nats(F.linear(h, w), t),
    "fused (token_nats_from_hidden)": token_nats_from_hidden,
}


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _cpu_loss_variant(name: str, n: int, repeats: int) -> None:
    """Child process: print the peak RSS growth and best time of one variant as JSON."""
    hidden, weight, target = loss_inputs(n, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        # Linux: reset the peak RSS to the current RSS, so making the inputs does not count.
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _peak_rss_kib()
        seconds = seconds_per_call(
            lambda: LOSS_VARIANTS[name](hidden, weight, target), repeats, lambda: None
        )
        peak_kib = _peak_rss_kib() - before
    print(json.dumps({"peak_bytes": peak_kib * 1024, "seconds": seconds}))


def print_memory(results: dict[str, tuple[int, float]]) -> None:
    for name, (peak, seconds) in results.items():
        print(f"  {name:<32} peak +{peak / 2**20:>9,.0f} MiB   {seconds:>8.3f} s")
    full_peak, full_s = results["full logits"]
    fused_peak, fused_s = results["fused (token_nats_from_hidden)"]
    chunked_peak, _ = results["chunked (token_nats)"]
    print(f"  chunked / full peak: {chunked_peak / full_peak:.3f}")
    print(f"  fused / full peak: {fused_peak / full_peak:.3f} (want <= 0.125)")
    print(f"  fused / full time: {fused_s / full_s:.2f}x (want <= 1.2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=16384, help="N for the loss memory part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss-variant", choices=LOSS_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.loss_variant:
        _cpu_loss_variant(args.loss_variant, args.tokens, max(1, args.repeats // 10))
        return

    print(f"torch {torch.__version__}, {args.threads} threads, CPU")
    print(f"update speed ({B * T} tokens per update):")
    print_speeds(update_speeds(torch.device("cpu"), args.repeats, lambda: None))

    print(f"per-token loss memory (N={args.tokens}, V={LOSS_VOCAB}, D={LOSS_DIM}, float32):")
    results = {}
    for name in LOSS_VARIANTS:
        cmd = [sys.executable, __file__, "--loss-variant", name, "--tokens", str(args.tokens)]
        cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        results[name] = (out["peak_bytes"], out["seconds"])
    print_memory(results)


if __name__ == "__main__":
    main()
