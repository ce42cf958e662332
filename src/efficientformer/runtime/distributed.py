"""Process groups for torchrun and Slurm, and the collectives the training loops use.

One group serves both devices: on CUDA machines it is ``cpu:gloo,cuda:nccl``, so a reduction runs through NCCL
for CUDA tensors and through gloo for CPU ones; the loops keep their statistics on the training device and reduce
them there, once per logging interval.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors and gloo for CPU ones in the same group on GPU machines; gloo alone on CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = 0) -> torch.device:
    """``auto`` or None (CUDA when available), ``cpu``, ``cuda`` (the local rank's GPU; the current GPU when
    ``local_rank`` is None), ``cuda:N`` or any other torch device; one-line error when CUDA is asked for and absent.
    """
    name = "auto" if device is None else str(device)
    if name == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        dev = torch.device(name)
        if dev.type != "cuda":
            return dev
        use_cuda = True
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} asked for CUDA but no CUDA device is available; use device=cpu")
        if dev.index is not None:
            return dev
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def setup(device: str = "auto") -> DistInfo:
    """Read torchrun's (or Slurm's) environment; start the process group when there is more than one process.

    A process group the caller already started (a test, a notebook) is used as it is: rank and size come from it.
    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if active():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local = int(env.get("LOCAL_RANK", rank if world > 1 else 0))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not active():
        store = elastic_attempt_store()
        if store is None:
            dist.init_process_group(backend=backend_for(dev))
        else:
            dist.init_process_group(backend=backend_for(dev), store=store, rank=rank, world_size=world)
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


def elastic_attempt_store(timeout: datetime.timedelta = default_pg_timeout) -> dist.Store | None:
    """Under ``torchrun`` (which hosts the store the workers share): that store, its keys scoped to this attempt
    (``TORCHELASTIC_RESTART_COUNT``); None elsewhere.

    torchrun's agent keeps one store for all its attempts, and the process group writes the same key names in
    each: after ``--max-restarts`` restarts the workers, a rank reading another's address can find the *previous*
    attempt's (a dead port), and gloo fails with ``connectFullMesh failed`` or hangs, as NCCL reads a stale unique
    id (pytorch/pytorch#135712). Every rank of an attempt has the same restart count (all ranks stop together on a
    signal, so every agent counts the same failure); a fresh prefix per attempt leaves nothing stale to read."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    client = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"efficientformer/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def cleanup() -> None:
    if active():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """:func:`setup` for the duration of a ``with`` block; the group is destroyed at the end only if this block
    created it, so a caller's own group (a test, a notebook) survives."""
    owned = not active()
    info = setup(device)
    try:
        yield info
    finally:
        if owned:
            cleanup()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op on one process). Keep it on the training device."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(items: list, rank: int, world: int) -> list:
    """This rank's share of an evaluation list: every ``world``-th item from ``rank``. Nothing is padded (unlike
    ``DistributedSampler``), so every item is evaluated exactly once and the merged result equals one process's."""
    return items[rank::world]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank; ``[obj]`` on one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): the ones a checkpoint stores.

    DDP broadcasts buffers only at the start of each training forward, so after the last step every rank holds
    statistics updated with its own last batch; evaluating with those would make the ranks disagree with the
    saved checkpoint."""
    if active():
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if active():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (in any order): the one checkpoints hold."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused: bool = False) -> nn.Module:
    """DDP on more than one process (rank 0's weights are broadcast on construction), the model itself otherwise."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


__all__ = [
    "DistInfo",
    "setup",
    "resolve_device",
    "cleanup",
    "process_group",
    "all_reduce_sum",
    "all_gather_objects",
    "broadcast_buffers",
    "broadcast_module",
    "barrier",
    "shard",
    "unwrap",
    "wrap_ddp",
    "backend_for",
    "active",
    "elastic_attempt_store",
]
