"""Parameter and MAC counts, in total and per stage.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2): it counts every convolution, linear
layer and matrix product, including the attention ``q @ k`` and ``attn @ v`` that hook-based counters miss, and
nothing else (no norms, activations, softmax, pooling or bias adds). That is the convention the papers' MACs
follow closely: this reproduces the published 224 px numbers within about 1%.

Two parameter counts are given:

* ``params``: the true module count (every parameter, both heads);
* ``paper_params``: the convention of the official ``toolbox.py`` profiler, which is what the papers and README
  print. It leaves out BatchNorm, layer-scale and attention-bias parameters, counts each conv as
  ``weight.numel() + weight.size(1)`` (the official hook adds the input-channel count where the bias size was
  meant), and counts linear layers and LayerNorms in full. It reproduces the published M-params of all seven
  variants to within 0.0005 M.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.factory import create_model
from ..models.facts import FACTS
from ..models.layers import check_img_size

#: Published (params M, GMACs) at 224 px, from the facts table: the official ``toolbox.py`` parameter count (three
#: decimals) and the README / paper GMACs.
PUBLISHED: dict[str, tuple[float, float]] = {name: (f.toolbox_params_m, f.gmacs) for name, f in FACTS.items()}


@dataclass
class StageRow:
    name: str
    params: int
    paper_params: int
    macs: int
    out_shape: tuple[int, ...] = ()


@dataclass
class ProfileResult:
    model: str
    img_size: tuple[int, int]
    params: int
    paper_params: int
    macs: int
    stages: list[StageRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def paper_param_count(module: nn.Module) -> int:
    """Parameters under the official ``toolbox.py`` convention (see the module docstring)."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel() + m.weight.size(1)
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            total += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    return total


def _parts(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Stem, the four stages, and the head (final norm + classifier) as named parts."""
    parts = [("stem", model.stem)]
    parts += [(f"stage{i + 1}", s) for i, s in enumerate(model.stages)]
    head = nn.ModuleList(
        [
            m
            for m in (getattr(model, "norm", None), model.head, getattr(model, "head_dist", None))
            if isinstance(m, nn.Module)
        ]
    )
    parts.append(("head", head))
    return parts


@torch.no_grad()
def profile_model(model: nn.Module, img_size: int | tuple[int, int] | None = None, name: str | None = None):
    """Count parameters and MACs of ``model`` (an EfficientFormer, deployed or not) at ``img_size``."""
    h, w = img = check_img_size(img_size if img_size is not None else getattr(model, "img_size", 224), "--img-size")
    was_training = model.training
    model.eval()
    x = torch.zeros(1, getattr(model, "in_chans", 3), h, w, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False, depth=None)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, key=key: shapes.__setitem__(key, tuple(out.shape)))
        for key, m in _parts(model)[:-1]
    ]
    try:
        with counter:
            model(x)
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    per_module = counter.get_flop_counts()
    root = type(model).__name__  # FlopCounterMode prefixes module paths with the model's class name
    total = sum(counter.get_flop_counts()["Global"].values()) // 2

    rows = []
    for key, part in _parts(model):
        if key == "stem":
            fqn = f"{root}.stem" if f"{root}.stem" in per_module else "stem"
            macs = sum(per_module.get(fqn, {}).values()) // 2
        elif key.startswith("stage"):
            fqn = f"{root}.stages.{int(key[5:]) - 1}"
            macs = sum(per_module.get(fqn, {}).values()) // 2
        else:
            macs = 0  # filled below as the remainder (the head's matmul and the mean-pool are not a submodule call)
        rows.append(
            StageRow(key, sum(p.numel() for p in part.parameters()), paper_param_count(part), macs, shapes.get(key, ()))
        )
    rows[-1].macs = total - sum(r.macs for r in rows[:-1])
    spec = getattr(model, "spec", None)
    return ProfileResult(
        model=name or (spec.name if spec is not None else type(model).__name__),
        img_size=img,
        params=sum(p.numel() for p in model.parameters()),
        paper_params=paper_param_count(model),
        macs=total,
        stages=rows,
    )


def format_profile(result: ProfileResult) -> str:
    """A Markdown-style table for one model."""
    h, w = result.img_size
    lines = [
        f"{result.model} @ {h}x{w}: {result.params / 1e6:.3f} M params (module count), "
        f"{result.paper_params / 1e6:.3f} M (paper convention), {result.macs / 1e9:.3f} GMACs",
        "| part | params (M) | paper params (M) | GMACs | output |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result.stages:
        out = "x".join(str(s) for s in r.out_shape[1:]) if r.out_shape else "logits"
        lines.append(f"| {r.name} | {r.params / 1e6:.3f} | {r.paper_params / 1e6:.3f} | {r.macs / 1e9:.4f} | {out} |")
    return "\n".join(lines)


def zoo_summary(models: list[str], img_size: int = 224, batch_size: int = 1, runs: int = 3) -> list[dict]:
    """Parameters and median eval forward time (CPU, fp32, ``runs`` timed calls after one warm-up) of each model
    (what ``efficientformer zoo`` lists)."""
    rows = []
    for name in models:
        model = create_model(name, img_size=img_size).eval()
        x = torch.randn(batch_size, 3, img_size, img_size)
        times = []
        with torch.inference_mode():
            model(x)  # warm-up
            for _ in range(runs):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        rows.append(
            {
                "model": name,
                "family": model.spec.family,
                "params": sum(p.numel() for p in model.parameters()),
                "img_size": img_size,
                "batch_size": batch_size,
                "forward_ms": 1000 * sorted(times)[len(times) // 2],
            }
        )
    return rows
