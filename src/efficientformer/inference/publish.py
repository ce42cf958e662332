"""Publishing a run: ``efficientformer push RUN_DIR REPO_ID`` (and :func:`publish_run` for a local folder).

A training run (``last.pth`` of task ``classify`` + ``summary.json``), a search run (``arch.yaml`` +
``supernet_weights.pth`` + ``summary.json``) or a dense run (``last.pth`` of task ``detect`` / ``segment``: its
backbone) becomes a Hub repository folder through :func:`efficientformer.models.hub.save_pretrained`, with a model
card written from what the run recorded (:func:`efficientformer.models.cards.run_card`), then goes up with
``HfApi.upload_folder`` (:func:`efficientformer.models.hub.push_to_hub`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.cache import default_cache_dir
from ..models import create_model, load_checkpoint
from ..models.base import EfficientFormerBase
from ..models.cards import count_macs, run_card
from ..models.checkpoint import CheckpointError, stored_img_size, torch_load_weights
from ..models.facts import HUB_LICENCE
from ..models.hub import hub_config, push_to_hub, save_pretrained
from .api import preprocessing_for

#: The suffix of our stem's first convolution weight: finds a backbone inside a dense model's state dict.
_STEM_KEY = "stem.conv1.conv.weight"


@dataclass
class RunToPublish:
    """A run's model and what its card says."""

    kind: str  # "classification", "search" or "dense"
    model: EfficientFormerBase
    class_names: list[str] | None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def card(self) -> str:
        return run_card(self.facts)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def _starting_weights(cfg: dict[str, Any]) -> str:
    start = cfg.get("finetune") or cfg.get("pretrained")
    if not start:
        return "none: trained from random weights in this run"
    if start is True or (isinstance(start, str) and not Path(start).exists()):
        return f"{start} (published ImageNet-1k weights; licence {HUB_LICENCE})"
    return f"{start} (a local file; its licence is whatever its source says)"


def read_run(run_dir: str | Path) -> RunToPublish:
    """The model of a training, search or dense run folder, with the facts its card states."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    if (run / "arch.yaml").is_file() and (run / "supernet_weights.pth").is_file():
        return _read_search_run(run)
    last = run / "last.pth"
    if not last.is_file():
        raise FileNotFoundError(
            f"{run} is not a run folder: expected last.pth (training or dense run) or arch.yaml and "
            "supernet_weights.pth (search run)"
        )
    ckpt = torch_load_weights(last)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{last} holds no model weights")
    task = ckpt.get("task", "classify")
    if task in ("detect", "segment"):
        return _read_dense_run(run, ckpt, task)
    return _read_training_run(run, ckpt)


def _common_facts(model: EfficientFormerBase, cfg: dict[str, Any]) -> dict[str, Any]:
    side = int(model.img_size[0])
    prep = preprocessing_for(model)
    return {
        "model": model.spec.name,
        "architecture": model.spec.name,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, side),
        "img_size": side,
        "preprocessing": prep.describe(),
        "timm_compatible": hub_config(model)["efficientformer"]["timm_compatible"],
        "starting_weights": _starting_weights(cfg),
        "recipe": cfg,
    }


def _read_training_run(run: Path, ckpt: dict[str, Any]) -> RunToPublish:
    cfg = dict(ckpt.get("config") or {})
    summary = _json(run / "summary.json")
    names = list(ckpt.get("class_names") or []) or None
    state = ckpt["model"]
    name = ckpt.get("model_name") or cfg.get("model")
    if "head.weight" not in state:
        raise CheckpointError(f"{run / 'last.pth'} has no classifier head to publish")
    model = create_model(
        name,
        num_classes=int(state["head.weight"].shape[0]),
        img_size=int(cfg.get("img_size", 224)),
        distillation="head_dist.weight" in state,
    )
    load_checkpoint(model, state)
    model.pretrained_cfg["label_names"] = names
    facts = _common_facts(model, cfg)
    data = cfg.get("data") or "the bundled digits dataset"
    digits = Path(cfg.get("cache_dir") or default_cache_dir()) / f"digits-{cfg.get('digits_size', 64)}px"
    data_dir = cfg.get("data") or digits
    top1 = summary.get("val_top1")
    facts.update(
        kind="classification",
        data=f"{summary.get('dataset', data)} ({summary.get('val_images', '?')} held-out images)",
        classes=f"{len(names or [])}: {', '.join((names or [])[:10])}{' ...' if len(names or []) > 10 else ''}",
        epochs=summary.get("epochs", len(ckpt.get("history") or []) or "not recorded"),
        accuracy=(
            f"top-1 {top1:.2f}% on the held-out split (EMA {summary.get('ema_top1')}, best {summary.get('best_top1')})"
            if isinstance(top1, (int, float))
            else "not measured in this run"
        ),
        eval_command=f"efficientformer eval --model {name} --checkpoint {run / 'last.pth'} --data {data_dir} "
        f"--img-size {int(model.img_size[0])}",
    )
    return RunToPublish("classification", model, names, facts)


def _read_search_run(run: Path) -> RunToPublish:
    arch = yaml.safe_load((run / "arch.yaml").read_text(encoding="utf-8")) or {}
    weights = torch_load_weights(run / "supernet_weights.pth")
    state = weights.get("model", weights) if isinstance(weights, dict) else {}
    if "head.weight" not in state:
        raise CheckpointError(f"{run / 'supernet_weights.pth'} has no classifier head to publish")
    side = int(arch.get("img_size") or stored_img_size(state, "efficientformer") or 224)
    model = create_model(
        str(run / "arch.yaml"),
        num_classes=int(state["head.weight"].shape[0]),
        img_size=side,
        distillation="head_dist.weight" in state,
    )
    load_checkpoint(model, state)
    found = dict(arch.get("search") or {})
    facts = _common_facts(model, {})
    lut = Path(str(found.get("lut", ""))) if found.get("lut") else None
    table = _json(lut) if lut is not None else {}
    facts.update(
        kind="search",
        summary="An architecture found by the efficientformer toolkit's latency-driven search, with the weights "
        "it inherits from the supernet (a starting point for training, not a trained model).",
        data="the search's proxy task (see the recipe)",
        epochs="supernet training (see the search run)",
        accuracy=(
            f"{found['accuracy_heldout']:.2f}% held-out accuracy of the supernet subnet during the search"
            if isinstance(found.get("accuracy_heldout"), (int, float))
            else "not recorded"
        ),
        latency=(
            f"{found['table_latency_ms']:.3f} ms predicted by the latency table {lut} "
            f"({table.get('runtime', 'runtime not recorded')})"
            if isinstance(found.get("table_latency_ms"), (int, float))
            else "not recorded"
        ),
        machine=table.get("machine") or None,
        recipe={"search": found},
    )
    return RunToPublish("search", model, None, facts)


def _read_dense_run(run: Path, ckpt: dict[str, Any], task: str) -> RunToPublish:
    cfg = dict(ckpt.get("config") or {})
    state = ckpt["model"]
    stem = next((k for k in state if k.endswith(_STEM_KEY)), None)
    if stem is None:
        raise CheckpointError(f"{run / 'last.pth'}: no EfficientFormer backbone found in the {task} model")
    prefix = stem[: -len(_STEM_KEY)]
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    side = stored_img_size(backbone, "efficientformer") or int(cfg.get("img_size") or 224)
    model = create_model(cfg.get("model", "efficientformer_l1"), num_classes=0, img_size=side)
    report = load_checkpoint(model, backbone, strict=False)  # the backbone has no final norm: left as built
    facts = _common_facts(model, cfg)
    metrics = _json(run / "metrics.json")
    facts.update(
        kind="dense",
        summary=f"The EfficientFormer backbone of a {task} run (the four stages; no classifier: forward returns "
        "pooled features). The detector / segmenter heads are not part of this repository.",
        data=cfg.get("data") or "not recorded",
        classes="none (a backbone)",
        epochs=metrics.get("epoch", "not recorded"),
        accuracy=", ".join(f"{k} {v}" for k, v in metrics.items() if k not in ("iteration", "epoch"))
        or "not measured in this run",
        notes=f"left as built (not in a dense backbone): {', '.join(report.missing) or 'nothing'}",
    )
    return RunToPublish("dense", model, None, facts)


def publish_run(run_dir: str | Path, folder: str | Path) -> Path:
    """Write ``run_dir``'s model as a Hub repository folder (weights, config.json, model card)."""
    run = read_run(run_dir)
    return save_pretrained(run.model, folder, card=run.card, class_names=run.class_names)


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    api: Any = None,
) -> Any:
    """``efficientformer push``: :func:`publish_run` into a temporary folder, then upload it to ``repo_id``."""
    with tempfile.TemporaryDirectory(prefix="efficientformer-push-") as tmp:
        folder = publish_run(run_dir, Path(tmp) / "repo")
        return push_to_hub(
            None,
            repo_id,
            folder=folder,
            private=private,
            token=token,
            api=api,
            commit_message=f"Upload {Path(run_dir).name} (efficientformer push)",
        )
