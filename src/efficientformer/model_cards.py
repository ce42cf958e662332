"""Model cards: published numbers per model, plus parameters and MACs counted on our own modules.

Published numbers are quoted from the official README / papers (snap-research/EfficientFormer) and, for the hub
weights, from timm's result tables; each carries its source and evaluation protocol, because the protocols differ
(official eval: resize 256, crop 224 = 0.875; timm: crop 0.95). Parameters and MACs are measured here, not copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from .hub import OFFICIAL_RELEASES, hub_id, hub_url

OFFICIAL_REPO = "https://github.com/snap-research/EfficientFormer"

#: What the official LICENSE file says (read at snap-research/EfficientFormer commit 4382af4): Snap's own code is
#: under an MIT-style permission notice ("Copyright (c) 2022 Snap Inc."), and the parts derived from LeViT,
#: PoolFormer and mmcv keep their Apache-2.0 licences. The file does not name a separate licence for the weights.
OFFICIAL_LICENCE = (
    "official code: MIT-style permission notice (Copyright (c) 2022 Snap Inc.) with Apache-2.0 for its LeViT, "
    "PoolFormer and mmcv parts (official LICENSE file); the weights carry no separate licence statement there"
)
#: timm's pretrained cfg for these models says ``license='apache-2.0'`` for the hub copies.
HUB_LICENCE = "apache-2.0 (as declared in timm's pretrained cfg for the hub copies)"


@dataclass(frozen=True)
class Published:
    """Numbers as published, with where they come from."""

    top1: dict[str, float]  # training schedule -> ImageNet-1k top-1 (%)
    iphone12_latency_ms: float
    latency_note: str
    params_m: float  # README / paper figure (toolbox-style count, both heads)
    gmacs: float
    timm_hub_top1: float  # timm results-imagenet.csv, crop 0.95, for the hub weights


_V1_LAT = "iPhone 12, CoreML, iOS 15 (EfficientFormer paper/README)"
_V2_LAT = "iPhone 12, CoreML, iOS 16, Xcode 14 benchmark (EfficientFormerV2 README)"

PUBLISHED: dict[str, Published] = {
    "efficientformer_l1": Published({"300 epochs": 79.2, "1000 epochs": 80.2}, 1.6, _V1_LAT, 12.3, 1.3, 80.502),
    "efficientformer_l3": Published({"300 epochs": 82.4}, 3.0, _V1_LAT, 31.3, 3.9, 82.562),
    "efficientformer_l7": Published({"300 epochs": 83.3}, 7.0, _V1_LAT, 82.1, 10.2, 83.396),
    "efficientformerv2_s0": Published({"300 epochs": 75.7, "450 epochs": 76.2}, 0.9, _V2_LAT, 3.5, 0.40, 76.102),
    "efficientformerv2_s1": Published({"300 epochs": 79.0, "450 epochs": 79.7}, 1.1, _V2_LAT, 6.1, 0.65, 79.684),
    "efficientformerv2_s2": Published({"300 epochs": 81.6, "450 epochs": 82.0}, 1.6, _V2_LAT, 12.6, 1.25, 82.156),
    "efficientformerv2_l": Published({"300 epochs": 83.3, "450 epochs": 83.5}, 2.7, _V2_LAT, 26.1, 2.56, 83.642),
}

#: Which official schedule the hub copy corresponds to (timm's numbers match these official ones).
HUB_SCHEDULE = {
    "efficientformer_l1": "1000 epochs",
    "efficientformer_l3": "300 epochs",
    "efficientformer_l7": "300 epochs",
    "efficientformerv2_s0": "450 epochs",
    "efficientformerv2_s1": "450 epochs",
    "efficientformerv2_s2": "450 epochs",
    "efficientformerv2_l": "450 epochs",
}


@dataclass
class ModelCard:
    name: str
    family: str
    params: int
    params_without_dist_head: int
    macs: int
    img_size: int
    published_top1: dict[str, float]
    published_top1_protocol: str
    timm_hub_top1: float
    published_iphone12_latency_ms: float
    latency_note: str
    published_params_m: float
    published_gmacs: float
    hub_id: str
    hub_url: str
    hub_weights_schedule: str
    hub_licence: str
    official_releases: list[dict[str, object]] = field(default_factory=list)
    official_repo: str = OFFICIAL_REPO
    official_licence: str = OFFICIAL_LICENCE
    macs_note: str = (
        "counted with torch.utils.flop_counter.FlopCounterMode (FLOPs/2): convs, linears, attention matmuls"
    )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def count_macs(model: torch.nn.Module, img_size: int = 224) -> int:
    """Multiply-accumulates of one eval forward at ``img_size``: FlopCounterMode's FLOPs / 2.

    FlopCounterMode counts 2 FLOPs per MAC of convolutions, (batched) matrix products and linear layers, attention
    matmuls included; bias adds, norms, activations and softmax are not counted.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, img_size, img_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_card(name: str, img_size: int = 224) -> ModelCard:
    from .models import create_model, resolve_name

    model_name, _ = resolve_name(name)
    model = create_model(model_name)
    params = sum(p.numel() for p in model.parameters())
    dist = sum(p.numel() for p in model.head_dist.parameters()) if model.head_dist is not None else 0
    pub = PUBLISHED[model_name]
    return ModelCard(
        name=model_name,
        family=model.spec.family,
        params=params,
        params_without_dist_head=params - dist,
        macs=count_macs(model, img_size),
        img_size=img_size,
        published_top1=dict(pub.top1),
        published_top1_protocol="official README: ImageNet-1k val, resize 256 + centre crop 224, distilled head mean",
        timm_hub_top1=pub.timm_hub_top1,
        published_iphone12_latency_ms=pub.iphone12_latency_ms,
        latency_note=pub.latency_note,
        published_params_m=pub.params_m,
        published_gmacs=pub.gmacs,
        hub_id=f"{hub_id(model_name)}",
        hub_url=hub_url(model_name),
        hub_weights_schedule=HUB_SCHEDULE[model_name],
        hub_licence=HUB_LICENCE,
        official_releases=[asdict(r) for r in OFFICIAL_RELEASES[model_name]],
    )


def format_card(card: ModelCard) -> str:
    top1 = ", ".join(f"{v:.1f} ({k})" for k, v in card.published_top1.items())
    lines = [
        f"{card.name}  ({'EfficientFormerV2' if card.family == 'v2' else 'EfficientFormer (V1)'})",
        f"  parameters       {card.params:,} ({card.params / 1e6:.2f} M; {card.params_without_dist_head:,} without"
        f" the distillation head; published {card.published_params_m} M)",
        f"  MACs @{card.img_size}        {card.macs:,} ({card.macs / 1e9:.3f} G; published {card.published_gmacs} G)",
        f"                   {card.macs_note}",
        f"  top-1 published  {top1}",
        f"                   {card.published_top1_protocol}",
        f"  top-1 hub copy   {card.timm_hub_top1:.3f} (timm results, crop 0.95; {card.hub_weights_schedule} weights)",
        f"  latency          {card.published_iphone12_latency_ms} ms, {card.latency_note}",
        f"  weights (--pretrained)  {card.hub_id}: {card.hub_url}",
        f"                   licence: {card.hub_licence}",
    ]
    for rel in card.official_releases:
        lines.append(f"  official release {rel['filename']} ({rel['epochs']} epochs): {rel['url']}")
    lines.append(f"  official code    {card.official_repo}")
    lines.append(f"                   licence: {card.official_licence}")
    return "\n".join(lines)
