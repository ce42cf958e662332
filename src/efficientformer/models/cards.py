"""Model cards: the facts table (:mod:`efficientformer.models.facts`) plus parameters and MACs counted on our modules.

Published numbers carry their source and evaluation protocol, because the protocols differ (official eval: resize
256, crop 224 = 0.875; timm: crop 0.95). Parameters and MACs are measured here, not copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from .factory import create_model
from .facts import OFFICIAL_LICENCE, OFFICIAL_REPO, PUBLISHED_PROTOCOL, facts
from .hub import hub_id, hub_url
from .registry import resolve_name


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
    eval_preprocessing: str
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
    model_name, _ = resolve_name(name)
    model = create_model(model_name)
    params = sum(p.numel() for p in model.parameters())
    dist = sum(p.numel() for p in model.head_dist.parameters()) if model.head_dist is not None else 0
    f = facts(model_name)
    return ModelCard(
        name=model_name,
        family=f.family,
        params=params,
        params_without_dist_head=params - dist,
        macs=count_macs(model, img_size),
        img_size=img_size,
        published_top1={f"{epochs} epochs": top1 for epochs, top1 in f.top1.items()},
        published_top1_protocol=PUBLISHED_PROTOCOL,
        timm_hub_top1=f.hub_top1,
        published_iphone12_latency_ms=f.iphone12_latency_ms,
        latency_note=f.latency_note,
        published_params_m=f.params_m,
        published_gmacs=f.gmacs,
        hub_id=hub_id(model_name),
        hub_url=hub_url(model_name),
        hub_weights_schedule=f"{f.hub_epochs} epochs",
        hub_licence=f.hub_licence,
        eval_preprocessing=(
            f"resize short side int({f.eval_img_size}/{f.eval_crop_pct}) = {int(f.eval_img_size / f.eval_crop_pct)} "
            f"({f.eval_interpolation}), centre crop {f.eval_img_size}"
        ),
        official_releases=[asdict(r) for r in f.official],
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
        f"  eval             {card.eval_preprocessing}",
        f"  weights (--pretrained)  {card.hub_id}: {card.hub_url}",
        f"                   licence: {card.hub_licence}",
    ]
    for rel in card.official_releases:
        lines.append(f"  official release {rel['filename']} ({rel['epochs']} epochs): {rel['url']}")
    lines.append(f"  official code    {card.official_repo}")
    lines.append(f"                   licence: {card.official_licence}")
    return "\n".join(lines)


def _yaml_block(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None).strip()


def run_card(facts: dict[str, Any]) -> str:
    """A Hub model card (``README.md`` with the Hub's YAML header) from what a run recorded: model, task, data,
    recipe, epochs, measured accuracy and the command that measures it, parameters and MACs, the latency table's
    machine and measured latency (search runs), and the licence of the starting weights. Missing facts are said to
    be missing, never filled in."""
    name, kind = facts["model"], facts.get("kind", "classification")
    header = {
        "library_name": "efficientformer",
        "license": facts.get("license", "apache-2.0"),
        "tags": ["image-classification", "efficientformer", kind],
        "pipeline_tag": "image-classification",
    }
    lines = ["---", _yaml_block(header), "---", "", f"# {name}", ""]
    lines.append(
        facts.get("summary", f"An EfficientFormer model ({kind} run) trained with the efficientformer toolkit.")
    )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from efficientformer import create_model, inference_model",
        'model = create_model("hf-hub:<this repo>", pretrained=True)',
        'print(inference_model(model, "image.jpg")["pred_class"])',
    ]
    if facts.get("timm_compatible"):
        lines.append('# timm reads it too: timm.create_model("hf-hub:<this repo>", pretrained=True)')
    lines += ["```", "", "## Facts", "", "| | |", "|---|---|"]
    rows = [
        ("architecture", facts.get("architecture", name)),
        ("parameters", f"{facts['params']:,}" if facts.get("params") is not None else "not recorded"),
        (f"MACs at {facts.get('img_size', '?')} px", f"{facts['macs']:,}" if facts.get("macs") else "not recorded"),
        ("input", facts.get("preprocessing", "not recorded")),
        ("data", facts.get("data", "not recorded")),
        ("classes", facts.get("classes", "not recorded")),
        ("epochs", facts.get("epochs", "not recorded")),
        ("measured accuracy", facts.get("accuracy", "not measured in this run")),
        ("latency", facts.get("latency", "not measured in this run")),
        ("starting weights and their licence", facts.get("starting_weights", "none: trained from random weights")),
    ]
    if facts.get("notes"):
        rows.append(("notes", facts["notes"]))
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    if facts.get("eval_command"):
        lines += ["", "The accuracy above is measured by:", "", "```sh", facts["eval_command"], "```"]
    if facts.get("recipe"):
        lines += ["", "## Recipe (the run's config)", "", "```yaml", _yaml_block(facts["recipe"]), "```"]
    if facts.get("machine"):
        lines += ["", "## Latency table's machine", "", "```yaml", _yaml_block(facts["machine"]), "```"]
    return "\n".join(lines) + "\n"
