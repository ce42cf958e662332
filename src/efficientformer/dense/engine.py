"""What the detection and segmentation loops share: configuration, DDP, checkpoints, logs, samplers, schedules.

Checkpoints hold only tensors and plain containers so they load with ``torch.load(weights_only=True)``; they are
written atomically, so a run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..train.distributed import DistInfo, cleanup, setup
from ..utils.io import atomic_torch_save, atomic_write_json, safe_torch_load
from .backbone import EfficientFormerBackbone

C = TypeVar("C")
CHECKPOINT_NAME = "last.pth"


# -- configuration -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DenseConfig:
    """The fields both tasks share: data, backbone, and how the run executes. Task configs add head, data
    pipeline and schedule fields (and override the defaults that differ, such as the split names)."""

    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    output: str = "runs/dense"
    model: str = "efficientformer_l1"
    pretrained: str | None = None  # ImageNet checkpoint (any supported layout); None = random init
    img_size: int = 0  # grid the attention-bias tables are stored for; 0 = the task's working size
    frozen_bn: bool = False
    frozen_stages: int = -1
    output_norm: bool | None = None  # GroupNorm(1, C) on the backbone maps; None = official (V1 on, V2 off)
    fpn_channels: int = 256
    grad_clip: float = 0.0  # 0 = no clipping (official)
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0 = torch default; 1 is much faster on an oversubscribed CPU)
    resume: bool = True

    def build_backbone(self, working_size: int) -> EfficientFormerBackbone:
        """The backbone this config describes; ``working_size`` stands in for ``img_size=0``."""
        return EfficientFormerBackbone(
            self.model,
            checkpoint=self.pretrained,
            frozen_bn=self.frozen_bn,
            frozen_stages=self.frozen_stages,
            img_size=self.img_size or working_size,
            output_norm=self.output_norm,
        )


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML value or a ``key=value`` string to the dataclass field type ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else str
        return tuple(_coerce(v, item, key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return low in ("1", "true", "yes", "on")
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {getattr(typ, '__name__', typ)}") from None
    return value


def build_config(cls: type[C], yaml_path: str | Path | None = None, overrides: list[str] | None = None, **kw) -> C:
    """Dataclass defaults, then a YAML file, then keyword values (CLI flags), then ``key=value`` overrides."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}

    def put(key: str, value: Any, where: str) -> None:
        if key not in names:
            close = [n for n in sorted(names) if key.split("_")[0] in n][:5]
            hint = f"; similar keys: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown config key {key!r} in {where}{hint} (see --help for the list)")
        values[key] = _coerce(value, hints[key], key)

    if yaml_path:
        from ..train.config import load_yaml

        for k, v in load_yaml(yaml_path).items():
            put(str(k), v, str(yaml_path))
    for k, v in kw.items():
        if v is not None:
            put(k, v, "command-line flags")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. lr=1e-4)")
        put(key.strip().replace("-", "_"), value.strip(), "overrides")
    return cls(**values)


def config_help(cls: type) -> str:
    """One line per field: name, type and default; shown in ``--help``."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        typ = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  {f.name}={default!r} ({typ})")
    return "\n".join(lines)


# -- distributed -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[DistInfo]:
    """Classification training's process-group set-up (:func:`efficientformer.train.distributed.setup`) for the
    duration of a ``with`` block. The group is destroyed at the end only if this block created it, so a caller's
    own group (a test, a notebook) survives."""
    owned = not (dist.is_available() and dist.is_initialized())
    env = setup(device)
    try:
        yield env
    finally:
        if owned:
            cleanup()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module, env: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), the ones a checkpoint stores.

    DDP broadcasts buffers only at the start of each training forward, so after the last step every rank holds
    statistics updated with its own last batch; evaluating with those would make the shards disagree.
    """
    if env.enabled:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def shard(items: list[C], rank: int, world_size: int) -> list[C]:
    """This rank's share of an evaluation list: every ``world_size``-th item from ``rank``.

    Unlike ``DistributedSampler`` nothing is padded, so every item is evaluated exactly once and the merged
    result equals a single process's.
    """
    return items[rank::world_size]


def all_gather_lists(local: list, world_size: int) -> list:
    """Concatenate every rank's list (rank order) on every rank; the list itself when not distributed."""
    if world_size == 1:
        return list(local)
    parts: list[list | None] = [None] * world_size
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part or []]


def all_reduce_sum(tensor: torch.Tensor, world_size: int, device: torch.device) -> torch.Tensor:
    """Sum a tensor over ranks (on ``device``: NCCL reduces only CUDA tensors); returned on its original device."""
    if world_size == 1:
        return tensor
    work = tensor.to(device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


# -- sampling ----------------------------------------------------------------------------------------------------
class ResumableSampler(torch.utils.data.Sampler[int]):
    """A seeded per-epoch permutation, split across ranks, that can start part-way through an epoch.

    The permutation depends only on ``(seed, epoch)``, so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: the number of this rank's samples already consumed in this epoch."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world_size)
        order = (order * math.ceil(per_rank * self.world_size / max(1, self.size)))[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return len(self._indices()) - self.start


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose random augmentation of sample ``i`` in epoch ``e`` is drawn from a seed of ``(seed, e, i)``
    alone, in an RNG fork that leaves the caller's torch RNG untouched.

    So the augmented data do not depend on the number of loader workers or on where in an epoch a resumed run
    starts, and the global RNG, which the checkpoint restores, is consumed by the model only. Together with the
    resumable sampler this makes a resumed run train on exactly the data of a straight one.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# -- checkpoints, RNG, logs --------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: nn.Module, optimizer, schedule, progress: dict, config: Any) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "progress": progress,
        "rng": rng_state(),
        "config": dataclasses.asdict(config),
    }
    atomic_torch_save(state, path)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a checkpoint written by this toolkit's dense training (no 'model' key)")
    return state


class JsonlLog:
    """Append-only JSON-lines log (one record per line); only the main process writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def write_config(out: Path, config: Any) -> None:
    atomic_write_json(out / "config.json", dataclasses.asdict(config))


# -- schedules ---------------------------------------------------------------------------------------------------
class WarmupSchedule:
    """Learning rate factor per iteration: linear warm-up, then steps (``milestones`` in iterations) or poly decay.

    Keeps only numbers in its state, so it checkpoints with ``weights_only=True``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        *,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        poly_power: float | None = None,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.total_iters = max(1, total_iters)
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        self.milestones, self.gamma = tuple(milestones), gamma
        self.poly_power, self.min_lr = poly_power, min_lr
        self.iteration = 0
        self._apply()

    def lr_at(self, base: float, it: int) -> float:
        if self.poly_power is not None:
            lr = (base - self.min_lr) * (1 - min(it, self.total_iters) / self.total_iters) ** self.poly_power
            lr += self.min_lr
        else:
            lr = base * self.gamma ** sum(it >= m for m in self.milestones)
        if it < self.warmup_iters:
            k = it / self.warmup_iters
            lr *= self.warmup_ratio + (1 - self.warmup_ratio) * k
        return lr

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(base, self.iteration)

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases, attention-bias tables and layer scales (1-D parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith("pos_bias.table") or name.endswith(".scale"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
