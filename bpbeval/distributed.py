"""Ranks under ``torchrun``: start the process group, shard work, gather to rank 0.

On one process everything here is a no-op, so the scoring code reads the same
with and without ``torchrun``. Documents are sharded round-robin by position,
which needs no communication and gives every rank at most one more than another.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def rank() -> int:
    """This process's rank, 0 without a process group.

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """How many processes score together, 1 without a process group.

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if dist.is_initialized() else 1


def device_for_rank(device: str | torch.device) -> torch.device:
    """The device this rank uses: ``cuda`` becomes ``cuda:$LOCAL_RANK`` under ``torchrun``.

    Example:
        >>> device_for_rank("cpu")
        device(type='cpu')
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def process_group(device: str | torch.device) -> Iterator[None]:
    """Join the ``torchrun`` process group for the body, if launched by ``torchrun``.

    Reads the standard environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).
    The backend is NCCL for CUDA devices and gloo otherwise. Without ``WORLD_SIZE``,
    or when a group already exists (the caller owns it), the body runs as is.

    Example:
        >>> with process_group("cpu"):
        ...     world_size()
        1
    """
    device = device_for_rank(device)
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torch.distributed.nn binds the default group that exists when it is first imported as
    # its functions' default argument, for good. Imported inside the group (torch.export.load
    # imports it), it would keep the group past destroy_process_group, and with it gloo's
    # worker threads, into interpreter shutdown: a worker freeing a tensor there needs the
    # GIL and aborts the rank ("terminate called without an active exception"). Imported
    # first, it binds None, and destroy_process_group joins the workers.
    importlib.import_module("torch.distributed.nn")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        # Leave together, so that no rank closes its connections while a peer still uses them.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; ``None`` on the other ranks.

    Example:
        >>> gather_to_rank0({"docs": 3})
        [{'docs': 3}]
    """
    if not dist.is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank.

    Example:
        >>> all_gather(1)
        [1]
    """
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (other ranks' argument is ignored).

    Example:
        >>> broadcast_from_rank0("total")
        'total'
    """
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_stream(items: Iterable[T]) -> Iterator[tuple[int, T]]:
    """This rank's share of a stream with positions, lazily: every ``world_size()``-th item.

    Example:
        >>> list(shard_stream(iter("ab")))
        [(0, 'a'), (1, 'b')]
    """
    here, world = rank(), world_size()
    for index, item in enumerate(items):
        if index % world == here:
            yield index, item


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_shards(array: np.ndarray) -> np.ndarray | None:
    """Rows sharded by :func:`shard_stream` (each rank's in its order), in input order on rank 0.

    The inverse of round-robin sharding: row ``k`` of rank ``r`` is input row
    ``k * world_size() + r``. ``None`` on other ranks. Travels as tensors, not pickled.

    Example:
        >>> gather_shards(np.array([[1, 2], [3, 4]]))
        array([[1, 2],
               [3, 4]])
    """
    if not dist.is_initialized():
        return array
    sizes = all_gather(len(array))  # rows per rank
    device, row_shape = _collective_device(), array.shape[1:]
    dtype = torch.from_numpy(array[:0]).dtype
    mine = torch.zeros((max(sizes), *row_shape), dtype=dtype, device=device)  # one shape for all
    mine[: len(array)] = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    parts = [torch.empty_like(mine) for _ in sizes] if rank() == 0 else None
    dist.gather(mine, parts, dst=0)
    if parts is None:
        return None
    world = len(sizes)
    out = np.empty((sum(sizes), *row_shape), dtype=array.dtype)
    for source, (part, count) in enumerate(zip(parts, sizes, strict=True)):
        out[source::world] = part[:count].cpu().numpy()
    return out


def sum_to_rank0(array: np.ndarray) -> np.ndarray | None:
    """The element-wise sum of every rank's ``array`` on rank 0; ``None`` on other ranks.

    Travels as one tensor. Exact for integers, and for floats that only one rank holds
    (the others' zeros add nothing).

    Example:
        >>> sum_to_rank0(np.array([1, 2]))
        array([1, 2])
    """
    if not dist.is_initialized():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_collective_device())
    dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy() if rank() == 0 else None
