"""V1 latency-driven slimming: the MetaPath supernet with Gumbel-softmax path weights, then iterative slimming.

Supernet: every block position is a MetaPath (MP). Positions of stages 1-3 choose between MB4D (pool mixer +
conv MLP) and identity; stage-4 positions choose between MB4D, MB3D (LayerNorm + attention, LayerNorm + MLP, on
the flattened tokens) and identity (MB3D only in stage 4: see ``v1space.py``). The output of a position is
``sum_n softmax((alpha_n + g_n) / tau)_n * MP_n(x)`` with Gumbel noise ``g`` (the paper writes uniform noise; we
use the standard Gumbel-softmax), alpha and the weights trained jointly, tau annealed exponentially.

Slimming starts from the argmax path at the supernet's widths and repeats, until the table latency is at most the
target, the best of three actions by accuracy lost per millisecond saved:

(a) the least important active MP becomes identity (importance: ``p4D / pI`` in stages 1-3, ``(p3D + p4D) / pI``
    in stage 4, from ``softmax(alpha)``);
(b) the first MB3D becomes MB4D (at least one MB3D is kept: the V1 deploy form needs it);
(c) the least important stage (sum of its active MPs' importance) narrows by 16 channels.

Accuracy is that of the hard path on held-out data after BatchNorm recalibration, on shared weights (prefix
slicing for narrowed stages).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.samplers import TrainSampler
from ..models.base import ModelSpec
from ..models.efficientformer import Meta3D, Meta4D
from ..models.layers import ConvNorm, Stem, to_grid
from ..runtime.distributed import process_group
from ..runtime.loop import Plan, Reporting, Schedule, Step, Task, fit
from ..runtime.schedule import epoch_scheduler
from .supernet import sliced_call
from .train import held_out_accuracy, memory_batches
from .v1space import V1Space

MB4D, MB3D, IDENTITY = "mb4d", "mb3d", "id"


def options(stage: int) -> tuple[str, ...]:
    return (MB4D, MB3D, IDENTITY) if stage == 3 else (MB4D, IDENTITY)


@dataclass
class V1Path:
    """A hard choice per position and a width per stage."""

    choices: list[list[str]]
    widths: list[int]

    def spec(self, name: str = "efficientformer_searched") -> ModelSpec:
        depths = tuple(sum(c != IDENTITY for c in stage) for stage in self.choices)
        num_vit = sum(c == MB3D for c in self.choices[3])
        return ModelSpec(name, "v1", tuple(self.widths), depths, num_vit=num_vit)

    def copy(self) -> V1Path:
        return V1Path([list(c) for c in self.choices], list(self.widths))

    def key(self) -> tuple:
        return (tuple(tuple(c) for c in self.choices), tuple(self.widths))


def canonical(path: V1Path) -> V1Path:
    """MB3D blocks only at the end of stage 4 (once tokens are 3-D they stay 3-D), and at least one of them."""
    p = path.copy()
    s4 = p.choices[3]
    active = [j for j, c in enumerate(s4) if c != IDENTITY]
    if not active:
        s4[-1] = MB3D
        return p
    first = next((j for j in active if s4[j] == MB3D), active[-1])
    for j in active:
        if j >= first:
            s4[j] = MB3D
    for i in range(3):  # every stage keeps at least one block
        if all(c == IDENTITY for c in p.choices[i]):
            p.choices[i][0] = MB4D
    return p


class _Sliced:
    """Runs a full-width module on the leading channels of its weights (:func:`~.supernet.sliced_call`, the V2
    supernet's mechanism) through a skeleton built once per width on the meta device."""

    def __init__(self) -> None:
        self.cache: dict[tuple, nn.Module] = {}

    def __call__(self, module: nn.Module, key: tuple, build: Callable[[], nn.Module], *args) -> torch.Tensor:
        skel = self.cache.get(key)
        if skel is None:
            with torch.device("meta"):
                skel = build()
            self.cache[key] = skel
        return sliced_call(module, skel, *args)


class V1MetaSupernet(nn.Module):
    """The MetaPath supernet at the space's largest widths and depths."""

    def __init__(self, space: V1Space | None = None, num_classes: int = 1000, img_size: int = 224) -> None:
        super().__init__()
        self.space = space or V1Space()
        W, D = self.space.max_widths, self.space.max_depths
        h, w = to_grid(img_size)
        self.grid = (h // 32, w // 32)
        self.stem = Stem(3, W[0], nn.ReLU)
        self.downsamples = nn.ModuleList([nn.Identity()] + [ConvNorm(W[i - 1], W[i], 3, 2, 1) for i in range(1, 4)])
        self.blocks4d = nn.ModuleList(nn.ModuleList(Meta4D(W[i]) for _ in range(D[i])) for i in range(4))
        self.blocks3d = nn.ModuleList(Meta3D(W[3], self.grid) for _ in range(D[3]))
        self.norm = nn.LayerNorm(W[3])
        self.head = nn.Linear(W[3], num_classes)
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(D[i], len(options(i)))) for i in range(4))
        self.tau = 5.0
        self.num_classes = num_classes
        self._sliced = _Sliced()

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.alphas}
        return [p for p in self.parameters() if id(p) not in ids]

    def max_path(self) -> V1Path:
        return V1Path([[MB4D] * d for d in self.space.max_depths], list(self.space.max_widths))

    # -- forward -----------------------------------------------------------------------------------------------
    def _mb(self, kind: str, i: int, j: int, x: torch.Tensor, width: int) -> torch.Tensor:
        full = self.space.max_widths[i]
        if kind == MB4D:
            blk = self.blocks4d[i][j]
            if width == full:
                return blk(x)
            return self._sliced(blk, ("4d", width), lambda: Meta4D(width), x)
        # MB3D on the flattened tokens of a 4-D map; reshaped back so paths can be mixed
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        blk = self.blocks3d[j]
        if width == full:
            out = blk(tokens, (H, W))
        else:
            out = self._sliced(blk, ("3d", width), lambda: Meta3D(width, self.grid), tokens, (H, W))
        return out.transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x: torch.Tensor, path: V1Path | None = None) -> torch.Tensor:
        """``path=None``: Gumbel-softmax mixture of every position's options (training); else the hard path."""
        widths = path.widths if path is not None else list(self.space.max_widths)
        W = self.space.max_widths
        if widths[0] == W[0]:
            x = self.stem(x)
        else:
            x = self._sliced(self.stem, ("stem", widths[0]), lambda: Stem(3, widths[0], nn.ReLU), x)
        for i in range(4):
            if i > 0:
                down = self.downsamples[i]
                if (widths[i - 1], widths[i]) == (W[i - 1], W[i]):
                    x = down(x)
                else:
                    a, b = widths[i - 1], widths[i]
                    x = self._sliced(down, ("down", i, a, b), lambda a=a, b=b: ConvNorm(a, b, 3, 2, 1), x)
            for j in range(self.space.max_depths[i]):
                if path is not None:
                    kind = path.choices[i][j]
                    if kind != IDENTITY:
                        x = self._mb(kind, i, j, x, widths[i])
                    continue
                weights = F.gumbel_softmax(self.alphas[i][j], tau=self.tau, hard=False)
                out = weights[-1] * x  # identity
                for n, kind in enumerate(options(i)[:-1]):
                    out = out + weights[n] * self._mb(kind, i, j, x, widths[i])
                x = out
        w3 = widths[3]
        feats = F.layer_norm(x.permute(0, 2, 3, 1), (w3,), self.norm.weight[:w3], self.norm.bias[:w3], self.norm.eps)
        return F.linear(feats.mean(dim=(1, 2)), self.head.weight[:, :w3], self.head.bias)

    # -- importance --------------------------------------------------------------------------------------------
    def importance(self, i: int, j: int) -> float:
        p = self.alphas[i][j].detach().softmax(-1)
        keep = p[:-1].sum() if i == 3 else p[0]
        return float(keep / p[-1].clamp_min(1e-12))

    def argmax_path(self) -> V1Path:
        choices = [
            [options(i)[int(self.alphas[i][j].argmax())] for j in range(self.space.max_depths[i])] for i in range(4)
        ]
        return canonical(V1Path(choices, list(self.space.max_widths)))


class GumbelTraining(nn.Module):
    """One training step of the MetaPath supernet in one ``forward(images, targets)``: the Gumbel temperature
    follows the step counter (a buffer, so a resumed run continues the annealing exactly), from ``tau_start`` to
    ``tau_end`` exponentially over ``steps``; returns the cross-entropy."""

    def __init__(self, net: V1MetaSupernet, steps: int, tau_start: float = 5.0, tau_end: float = 0.5) -> None:
        super().__init__()
        self.net, self.total, self.tau_start, self.tau_end = net, steps, tau_start, tau_end
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        progress = int(self.steps) / max(1, self.total - 1)
        self.net.tau = self.tau_start * (self.tau_end / self.tau_start) ** min(progress, 1.0)
        if self.training:
            self.steps += 1
        return F.cross_entropy(self.net(images), targets)


def train_v1_supernet(
    net: V1MetaSupernet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    output: str | Path,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    arch_lr: float = 3e-3,
    tau_start: float = 5.0,
    tau_end: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Train the weights and the architecture parameters jointly on the training runtime (one optimiser, two
    groups: AdamW on the weights, Adam-like on the alphas with betas (0.5, 0.999) and no weight decay; the epoch
    cosine applies to both); checkpoints and exact resume in ``output``. Returns the final state's summary."""
    with process_group(device) as info:
        model = GumbelTraining(net.to(info.device), steps, tau_start, tau_end)
        optimizer = torch.optim.AdamW(
            [
                {"params": net.weight_parameters(), "lr": lr, "weight_decay": 0.05},
                {"params": net.arch_parameters(), "lr": arch_lr, "weight_decay": 0.0, "betas": (0.5, 0.999)},
            ]
        )
        sampler = TrainSampler(len(labels), info.rank, info.world, seed=seed)
        per_epoch = len(sampler) // batch_size
        if per_epoch == 0:
            raise ValueError(f"{len(labels)} training images is fewer than one batch of {batch_size}; lower it")
        epochs = -(-steps // per_epoch)
        scheduler = epoch_scheduler(optimizer, "cosine", epochs, warmup_epochs=0, warmup_lr=lr, min_lr=0.0)

        def step(train_model: nn.Module, batch) -> Step:
            x, y = batch[0].to(info.device), batch[1].to(info.device)
            return Step(train_model(x, y), x.shape[0])

        plan = Plan(
            task=Task(
                name="search-v1-supernet",
                model=model,
                optimizer=optimizer,
                step=step,
                batches=memory_batches(images, labels, sampler, batch_size, seed),
                evaluate=lambda m: {},
                config=_V1TrainConfig(steps, batch_size, lr, arch_lr, tau_start, tau_end, seed),
                seed=seed,
            ),
            schedule=Schedule(
                steps_per_epoch=per_epoch,
                total_steps=steps,
                epoch_scheduler=scheduler,
                clip_grad=5.0,
                clip_mode="norm",
                eval_every=0,
            ),
            reporting=Reporting(
                log_every=20,
                progress=progress,
                describe=lambda r: f"epoch {r['epoch']} loss {r['train_loss']:.4f} tau {net.tau:.3f}",
            ),
            output=Path(output),
            info=info,
        )
        state = fit(plan)
    return {"steps": state.iteration, "tau": net.tau, "history": state.history}


@dataclass
class _V1TrainConfig:
    """What a V1 supernet checkpoint records of its training settings."""

    steps: int
    batch_size: int
    lr: float
    arch_lr: float
    tau_start: float
    tau_end: float
    seed: int


class V1PathEvaluator:
    """Held-out accuracy (%) of a hard path: a copy of the supernet running the path, BatchNorm recalibrated and
    scored by the evaluator the V2 search uses (:func:`~.train.held_out_accuracy`)."""

    def __init__(self, net: V1MetaSupernet, eval_images, eval_labels, calib_images, batch: int = 256) -> None:
        self.net, self.batch = net, batch
        self.eval_x, self.eval_y = eval_images, eval_labels
        self.calib = [calib_images[i : i + 64] for i in range(0, len(calib_images), 64)]

    @torch.no_grad()
    def __call__(self, path: V1Path) -> float:
        model = _PathModule(copy.deepcopy(self.net), path)
        return held_out_accuracy(model, self.calib, self.eval_x, self.eval_y, self.batch)


class _PathModule(nn.Module):
    def __init__(self, net: V1MetaSupernet, path: V1Path) -> None:
        super().__init__()
        self.net, self.path = net, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.path)


@dataclass
class SlimResult:
    final: V1Path
    latency_ms: float
    accuracy: float
    trajectory: list[dict[str, Any]] = field(default_factory=list)


def slim(
    start: V1Path,
    importance: Callable[[int, int], float],
    evaluate: Callable[[V1Path], float],
    latency: Callable[[ModelSpec], float],
    target_ms: float,
    space: V1Space,
    log: Callable[[dict], None] | None = None,
    max_steps: int = 10_000,
) -> SlimResult:
    """The paper's iterative slimming until ``latency(path.spec()) <= target_ms`` (see the module docstring)."""
    current = canonical(start)
    acc = evaluate(current)
    lat = latency(current.spec())
    result = SlimResult(current, lat, acc)
    result.trajectory.append(
        {"step": 0, "action": "start", "accuracy": acc, "latency_ms": lat, "arch": _describe(current)}
    )
    if log:
        log(result.trajectory[-1])
    step = 0
    while lat > target_ms and step < max_steps:
        cands: list[tuple[str, V1Path]] = []
        active = [(importance(i, j), i, j) for i in range(4) for j, c in enumerate(current.choices[i]) if c != IDENTITY]
        n_mb3d = sum(c == MB3D for c in current.choices[3])
        for _, i, j in sorted(active):  # (a): the least important MP that may go
            stage_active = sum(c != IDENTITY for c in current.choices[i])
            if stage_active <= 1 or (current.choices[i][j] == MB3D and n_mb3d <= 1):
                continue
            p = current.copy()
            p.choices[i][j] = IDENTITY
            cands.append((f"(a) s{i + 1}b{j} -> identity", canonical(p)))
            break
        if n_mb3d > 1:  # (b)
            p = current.copy()
            j = p.choices[3].index(MB3D)
            p.choices[3][j] = MB4D
            cands.append((f"(b) first MB3D (s4b{j}) -> MB4D", p))
        stage_imp = sorted((sum(imp for imp, si, _ in active if si == i), i) for i in range(4))
        for _, i in stage_imp:  # (c): the least important stage that can still narrow
            if current.widths[i] - space.width_step >= space.min_widths[i]:
                p = current.copy()
                p.widths[i] -= space.width_step
                cands.append((f"(c) width s{i + 1} {current.widths[i]}->{p.widths[i]}", p))
                break
        if not cands:
            break
        best = None
        for name, p in cands:
            p_lat = latency(p.spec())
            saved = lat - p_lat
            p_acc = evaluate(p)
            score = (acc - p_acc) / saved if saved > 0 else math.inf
            if best is None or score < best[0]:
                best = (score, name, p, p_acc, p_lat)
        assert best is not None
        _, name, current, acc, lat = best
        step += 1
        result.trajectory.append(
            {"step": step, "action": name, "accuracy": acc, "latency_ms": lat, "arch": _describe(current)}
        )
        if log:
            log(result.trajectory[-1])
    result.final, result.latency_ms, result.accuracy = current, lat, acc
    return result


def _describe(path: V1Path) -> dict[str, Any]:
    spec = path.spec()
    return {"widths": list(spec.widths), "depths": list(spec.depths), "num_vit": spec.num_vit}


def random_importance(seed: int) -> Callable[[int, int], float]:
    rng = random.Random(seed)
    cache: dict[tuple[int, int], float] = {}

    def imp(i: int, j: int) -> float:
        return cache.setdefault((i, j), rng.random())

    return imp
