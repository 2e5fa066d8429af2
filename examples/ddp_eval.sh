#!/usr/bin/env bash
# Score a checkpoint on several processes with torchrun: documents are sharded across
# ranks (none twice, none dropped), the sums are reduced through BitsPerByte's sync, and
# rank 0 prints and writes. On CPU the processes talk over gloo; on GPUs, NCCL.
# The result equals a single-process run's (float64 sums; world size does not matter).
#
#   examples/ddp_eval.sh runs/demo/models/bpe-4096 --data runs/demo/data/shard_00004.parquet
#   NPROC=4 examples/ddp_eval.sh CKPT --data PATH... --json out.json
#
# Everything after the script's name goes to `python -m bpbeval.eval`. PYTHON picks the
# interpreter (default: the checkout's .venv/bin/python, which `make` creates, else python3),
# NPROC the number of processes (default: 2).
set -euo pipefail
venv_python="$(dirname "$0")/../.venv/bin/python"
if [[ -z "${PYTHON:-}" && -x "$venv_python" ]]; then
    PYTHON="$venv_python"
fi
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "${NPROC:-2}" \
    -m bpbeval.eval "$@"
