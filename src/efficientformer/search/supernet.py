"""The V2 weight-sharing supernet: every subnet of a :class:`~.space.V2Space` runs on prefixes of its weights.

The supernet *is* the largest subnet, an ordinary :class:`EfficientFormerV2` (so its ``state_dict`` keys are the
standalone model's keys). A subnet is run by building its standalone module tree once on the ``meta`` device (a
skeleton without storage, cached per architecture) and calling it with ``torch.func.functional_call`` on views
that take the leading slice of every supernet tensor along every axis:

* width: stage ``i`` of width ``w`` uses the first ``w`` channels of every conv, BatchNorm, layer scale and the
  head's inputs (prefix channel slicing);
* expansion: a block with hidden width ``h = int(w * ratio)`` uses the first ``h`` channels of ``fc1``/``mid``/
  ``fc2``;
* depth: a stage of depth ``d`` runs the first ``d`` blocks of the supernet stage;
* attention: a stage-3/4 block without attention simply does not run its attention mixer.

Because the subnet runs the very module code of the standalone model on the very values it would be given,
:meth:`V2Supernet.forward` with a subnet active equals the standalone model built from the subnet's architecture
with :meth:`V2Supernet.extract` weights, bit for bit. Gradients reach the shared supernet tensors through the
views, and training-mode BatchNorm updates the running statistics of the active prefix in place.

BatchNorm statistics are shared across widths (the paper's switchable per-width BN is replaced, as in
US-Nets/OFA, by recalibrating the statistics of a chosen subnet before it is scored: :func:`recalibrate_bn`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from ..models.arch import ArchError, build_from_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import EfficientFormerV2
from ..utils.io import atomic_torch_save, safe_torch_load
from .space import V2Space, arch_key, canonical_spec

SUPERNET_FORMAT = "efficientformer-v2-supernet"

SKELETON_CACHE = 64


def prefix(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The leading ``shape`` block of ``t`` (a view)."""
    if tuple(t.shape) == tuple(shape):
        return t
    if t.ndim != len(shape) or any(s > n for s, n in zip(shape, t.shape, strict=True)):
        raise ArchError(f"cannot slice a supernet tensor of shape {tuple(t.shape)} to {tuple(shape)}")
    return t[tuple(slice(0, s) for s in shape)]


def sliced_tensors(full: nn.Module, skel: nn.Module, detach: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``skel`` (a smaller module of the same tree) as a view of the leading slice
    of ``full``'s tensor of the same name: the one weight-sharing mechanism of both supernets (V2's subnets,
    V1's narrowed MetaPath blocks)."""
    tensors = dict(full.named_parameters())
    tensors.update(dict(full.named_buffers()))
    out = {}
    for name, t in list(skel.named_parameters()) + list(skel.named_buffers()):
        view = prefix(tensors[name], t.shape)
        out[name] = view.detach() if detach else view
    return out


def sliced_call(full: nn.Module, skel: nn.Module, *args):
    """Run ``skel`` (usually on the meta device: no storage of its own) on the sliced tensors of ``full``, in
    ``full``'s train/eval mode; gradients and training-mode BatchNorm updates reach ``full``'s prefixes."""
    skel.train(full.training)
    return functional_call(skel, sliced_tensors(full, skel), args, strict=True)


class V2Supernet(EfficientFormerV2):
    """EfficientFormerV2 at the space's largest point, able to run any subnet of the space on shared weights."""

    def __init__(
        self,
        space: V2Space | None = None,
        *,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        distillation: bool = False,
        in_chans: int = 3,
    ) -> None:
        self.space = space or V2Space()
        super().__init__(
            self.space.largest(),
            num_classes=num_classes,
            img_size=img_size,
            distillation=distillation,
            in_chans=in_chans,
            drop_path_rate=0.0,  # elastic depth is the depth sampling itself
        )
        self._build_kwargs = dict(
            num_classes=num_classes, img_size=img_size, distillation=distillation, in_chans=in_chans
        )
        self._skeletons: OrderedDict[tuple, nn.Module] = OrderedDict()
        self.active: ModelSpec | None = None

    # -- subnet selection --------------------------------------------------------------------------------------
    def set_subnet(self, spec: ModelSpec | None) -> None:
        """Make ``spec`` (a point of the space) the network :meth:`forward` runs; ``None`` runs the full supernet."""
        if spec is not None:
            self.space.check(spec)
            spec = canonical_spec(spec)
        self.active = spec

    def skeleton(self, spec: ModelSpec) -> nn.Module:
        """The standalone module tree of ``spec`` on the meta device (no storage), cached per architecture."""
        key = arch_key(spec)
        skel = self._skeletons.get(key)
        if skel is None:
            with torch.device("meta"):
                skel = build_from_arch(spec, drop_path_rate=0.0, **self._build_kwargs)
            self._skeletons[key] = skel
            if len(self._skeletons) > SKELETON_CACHE:
                self._skeletons.popitem(last=False)
        else:
            self._skeletons.move_to_end(key)
        return skel

    def sliced_tensors(self, skel: nn.Module, detach: bool = False) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of a skeleton, as a view of the leading slice of the supernet's tensor."""
        return sliced_tensors(self, skel, detach)

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        if self.active is None:
            return super().forward(x)
        return sliced_call(self, self.skeleton(self.active), x)

    def run_subnet(self, spec: ModelSpec, x: torch.Tensor):
        """Forward ``x`` through ``spec`` without changing the active subnet."""
        previous = self.active
        self.set_subnet(spec)
        try:
            return self(x)
        finally:
            self.active = previous

    # -- extraction --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, spec: ModelSpec, **kwargs) -> EfficientFormerV2:
        """A standalone model of ``spec`` holding copies of the supernet's sliced weights (and BN statistics).

        ``kwargs`` override the build arguments (e.g. ``drop_path_rate`` for fine-tuning); the head layout
        (``num_classes``, ``distillation``) must stay that of the supernet.
        """
        self.space.check(spec)
        build = {**self._build_kwargs, **kwargs}
        model = build_from_arch(spec, **build)
        skel = self.skeleton(canonical_spec(spec))
        state = {k: v.clone() for k, v in self.sliced_tensors(skel, detach=True).items()}
        persistent = model.state_dict()
        missing = set(persistent) - set(state)
        if missing:
            raise ArchError(f"the supernet has no weights for {sorted(missing)[:3]}; extract with its head layout")
        model.load_state_dict({k: state[k] for k in persistent}, strict=True)
        return model.to(next(self.parameters()).device).train(self.training)

    def load_subnet_weights(self, model: nn.Module, spec: ModelSpec) -> None:
        """Write a standalone model's weights into the supernet prefix of ``spec`` (the inverse of extract)."""
        own = dict(self.named_parameters())
        own.update(dict(self.named_buffers()))
        with torch.no_grad():
            for name, t in model.state_dict().items():
                prefix(own[name], t.shape).copy_(t)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``batches``.

    Returns the number of batches used. The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    used = 0
    try:
        for images in batches:
            if max_batches is not None and used >= max_batches:
                break
            model(images)
            used += 1
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m
        model.eval()
    if used == 0:
        raise ValueError("BatchNorm recalibration needs at least one batch of images")
    return used


def save_supernet(net: V2Supernet, path: str | Path, data: str = "") -> Path:
    """Write a trained supernet (its space, resolution, classes and weights) atomically."""
    return atomic_torch_save(
        {
            "format": SUPERNET_FORMAT,
            "space": net.space.to_dict(),
            "img_size": list(net.img_size),
            "num_classes": net.num_classes,
            "data": data,
            "state_dict": net.state_dict(),
        },
        path,
    )


def load_supernet(path: str | Path) -> V2Supernet:
    """A supernet written by :func:`save_supernet` (weights only, no pickled code), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"supernet checkpoint not found: {path}; train one with `efficientformer search supernet`"
        )
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != SUPERNET_FORMAT:
        raise ValueError(f"{path} is not a supernet checkpoint written by `efficientformer search supernet`")
    net = V2Supernet(
        V2Space.from_dict(ckpt["space"]), num_classes=ckpt["num_classes"], img_size=tuple(ckpt["img_size"])
    )
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
