"""``inference_model``: classify images with a model name (plus optional weights) or a module, mmpretrain-style.

    >>> from efficientformer.inference import inference_model
    >>> inference_model("efficientformer-l1_3rdparty_8xb128_in1k", "bird.jpg", pretrained=True)["pred_class"]

Each result is a dict: ``pred_label`` (int), ``pred_score`` (float), ``pred_class`` (str), ``pred_scores`` (NumPy
softmax over all classes) and ``topk`` (``(label, class, score)`` rows, best first).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn

from ..data.classes import resolve_class_names
from ..data.images import as_rgb_image
from ..data.transforms import EvalTransform, eval_transform_of
from ..models import create_model, load_checkpoint, model_preprocessing, resolve_name
from ..models.base import EfficientFormerBase
from ..models.checkpoint import (
    CheckpointError,
    read_state_dict,
    stored_class_names,
    stored_img_size,
    torch_load_weights,
)
from ..models.hub import is_hub_name, pretrained_path
from ..runtime import distributed
from ..utils.timing import OpenVINOClassifier

#: Keys under which a classifier weight sits in the layouts ``load_checkpoint`` reads (ours/timm/official first,
#: then mmpretrain).
_HEAD_KEYS = ("head.weight", "head.head.weight")


@dataclass
class LoadedModel:
    """A model ready for inference and what is known about its outputs."""

    model: nn.Module
    class_names: list[str]
    source: str  # where the weights came from, for messages and the CLI header


# -- checkpoints -------------------------------------------------------------------------------------------------
def read_checkpoint_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """Read a checkpoint file without ever unpickling code (``weights_only`` / safetensors).

    A pickle that references anything beyond tensors and plain containers is refused with a
    :class:`~efficientformer.CheckpointError` before any of it runs. safetensors metadata may carry
    ``class_names`` (a JSON list), which is returned under that key.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                obj: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
        if "class_names" in meta:
            try:
                obj["class_names"] = json.loads(meta["class_names"])
            except ValueError:
                raise CheckpointError(f"{path}: metadata 'class_names' is not a JSON list") from None
        return obj
    obj = torch_load_weights(path)  # the loader's own weights-only reader (allow-lists argparse only)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary")
    return obj


def checkpoint_num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    for key in _HEAD_KEYS:
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


# -- building ----------------------------------------------------------------------------------------------------
def build_model(
    name: str, checkpoint: str | os.PathLike | None = None, img_size: int | None = None
) -> tuple[nn.Module, list[str] | None]:
    """``(eval model, class names or None)`` of any name ``create_model`` takes (architecture files and
    ``timm:NAME`` included) at ``img_size`` (default 224). With a ``checkpoint`` the classifier is sized from it,
    so a fine-tuned (e.g. 10-class) model exports as it is, and the class names it carries (our training stores
    them) come along."""
    if checkpoint is None:
        return create_model(name, img_size=img_size or 224).eval(), None
    obj = read_checkpoint_file(checkpoint)  # weights-only / safetensors, with a one-line error for a bad file
    names = stored_class_names(obj)
    state = read_state_dict(obj)[0]
    num_classes = checkpoint_num_classes(state) or 1000
    # the whole checkpoint, not only its weights: a training checkpoint's recorded activation is checked too
    model = create_model(name, img_size=img_size or 224, num_classes=num_classes, checkpoint=obj).eval()
    return model, names


def load_model(
    model: str | nn.Module,
    *,
    checkpoint: str | os.PathLike | Mapping | None = None,
    pretrained: bool = False,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    cache: str | os.PathLike | None = None,
) -> LoadedModel:
    """Build (or take) a model, load its weights and work out its class names.

    ``model`` may be ``hf-hub:ORG/REPO``: the repository's config builds it, ``pretrained=True`` loads its
    weights from the shared Hub cache (``cache``, another cache folder, applies to the published weights).

    Class names, first match wins: ``class_names``; the checkpoint's ``class_names``; the model's own
    (``pretrained_cfg["label_names"]``, e.g. from a Hub config); ImageNet-1k for 1000 outputs; ``class_0`` ...
    otherwise. A checkpoint of another class count builds a model of that count, at the resolution its
    attention-bias tables were stored for.
    """
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    hub_source = None
    if isinstance(model, str) and is_hub_name(model):
        hub_source = model.strip() if pretrained else None
        model, pretrained = create_model(model, pretrained=pretrained), False
    if isinstance(model, nn.Module):
        net, model_name = model, getattr(getattr(model, "spec", None), "name", None)
        tag = None
    elif isinstance(model, str):
        net, (model_name, tag) = None, resolve_name(model)
    else:
        raise TypeError(f"model must be a model name or an nn.Module, got {type(model).__name__}")

    if pretrained:
        if model_name is None:
            raise ValueError("pretrained=True needs an EfficientFormer model (one with .spec) or a model name")
        checkpoint = pretrained_path(model_name, tag, cache=cache)

    ckpt_names: list[str] | None = None
    source = hub_source or "random weights (no checkpoint)"
    if checkpoint is not None:
        desc = "state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
        obj = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint_file(checkpoint)
        ckpt_names = stored_class_names(obj)
        state, _, _ = read_state_dict(obj)
        n_ckpt = checkpoint_num_classes(state)
        if net is None:
            if n_ckpt is None:
                raise CheckpointError(f"{desc} has no classifier head (a backbone checkpoint?); it cannot classify")
            net = create_model(model_name, num_classes=n_ckpt, img_size=_stored_img_size(state))
        if not isinstance(net, EfficientFormerBase):
            raise TypeError(f"checkpoints load into EfficientFormer models only, got {type(net).__name__}")
        try:
            load_checkpoint(net, obj, strict=True)  # obj: what it records is checked too (its activation)
        except CheckpointError as err:
            raise CheckpointError(f"{desc}: {err}") from None
        source = desc
    elif net is None:
        net = create_model(model_name)

    num_classes = _num_outputs(net)
    own_names = model_preprocessing(net).class_names if isinstance(net, EfficientFormerBase) else None
    if own_names is not None and len(own_names) != num_classes:
        own_names = None
    given = class_names if class_names is not None else ckpt_names if ckpt_names is not None else own_names
    names = resolve_class_names(num_classes, given)
    if device is None and isinstance(model, nn.Module):
        return LoadedModel(net, names, source)  # a module the caller built stays where they put it
    return LoadedModel(net.to(distributed.resolve_device(device, local_rank=None)), names, source)


def _stored_img_size(state: Mapping[str, torch.Tensor]) -> int | None:
    """The resolution a checkpoint was made for (None: unknown; the model's default then)."""
    try:
        return stored_img_size(state)
    except CheckpointError:
        return None  # not a layout we can read: load_checkpoint says why, in its own words


def preprocessing_for(
    model: nn.Module,
    img_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
) -> EvalTransform:
    """The evaluation preprocessing of ``model``: its own resolution, crop fraction, interpolation and mean/std
    (see :func:`efficientformer.models.model_preprocessing`), each overridden by an argument that is not None."""
    if not isinstance(model, EfficientFormerBase):  # a module of another kind: the published protocol
        base = EvalTransform()
        return EvalTransform(
            img_size=base.img_size if img_size is None else img_size,
            resize=resize,
            interpolation=base.interpolation if interpolation is None else interpolation,
        )
    return eval_transform_of(model_preprocessing(model), img_size, resize, interpolation)


def _num_outputs(net: nn.Module) -> int:
    n = getattr(net, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    head = getattr(net, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    raise ValueError(f"cannot tell how many classes {type(net).__name__} predicts; it needs a classifier head")


# -- predicting --------------------------------------------------------------------------------------------------
class Predictor:
    """Preprocess, batch and classify RGB PIL images with a loaded model."""

    def __init__(self, loaded: LoadedModel, preprocess: EvalTransform | None = None, topk: int = 5) -> None:
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive integer, got {topk!r}")
        self.model = loaded.model
        self.class_names = loaded.class_names
        self.preprocess = preprocess or preprocessing_for(loaded.model)
        self.topk = min(topk, len(self.class_names))
        self.device = next(iter(self.model.parameters())).device

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        if not images:
            return []
        return self.predict_tensor(torch.stack([self.preprocess(img) for img in images]))

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor) -> list[dict[str, Any]]:
        """Classify an already preprocessed NCHW float32 batch."""
        batch = batch.to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(batch)
        finally:
            self.model.train(was_training)
        if isinstance(out, (tuple, list)):  # a module returning (head, dist) logits: use their mean, as in eval
            out = torch.stack(list(out)).mean(0)
        probs = torch.softmax(out.float(), dim=-1).cpu().numpy()
        return [self._result(p) for p in probs]

    def _result(self, probs: np.ndarray) -> dict[str, Any]:
        order = np.argsort(-probs, kind="stable")[: self.topk]
        top = [(int(i), self.class_names[int(i)], float(probs[i])) for i in order]
        return {
            "pred_label": top[0][0],
            "pred_score": top[0][2],
            "pred_class": top[0][1],
            "pred_scores": probs,
            "topk": top,
        }


@dataclass
class FileBatch:
    """One batch of :func:`classify_files`: its files, ``(file, result)`` of each one classified (a result as
    :meth:`Predictor.predict_tensor` gives it) and ``(file, error)`` of each one that could not be read or
    preprocessed (an :class:`~efficientformer.data.images.ImageLoadError`, or the preprocessing's ``ValueError``)."""

    files: list[Path]
    results: list[tuple[Path, dict[str, Any]]]
    failures: list[tuple[Path, ValueError]]


def classify_files(
    predictor: Predictor, files: Sequence[Path], batch_size: int = 32, max_pixels: int | None = None
) -> Iterator[FileBatch]:
    """Classify image files ``batch_size`` at a time with the predictor's preprocessing, one :class:`FileBatch`
    per batch; a file that fails is reported in its batch and the others are still classified. ``max_pixels``
    refuses larger images (a decompression-bomb guard)."""
    for start in range(0, len(files), batch_size):
        batch = list(files[start : start + batch_size])
        tensors, names, failures = [], [], []
        for path in batch:
            try:
                tensors.append(predictor.preprocess(as_rgb_image(path, max_pixels=max_pixels)))
                names.append(path)
            except ValueError as err:  # ImageLoadError, or the preprocessing refused it (too large after resizing)
                failures.append((path, err))
        results = predictor.predict_tensor(torch.stack(tensors)) if tensors else []
        yield FileBatch(batch, list(zip(names, results, strict=True)), failures)


def _as_list(images: Any) -> tuple[list[Any], bool]:
    """Split ``images`` into items; the flag says whether a single image (-> single dict) was given."""
    if isinstance(images, (list, tuple)):
        return list(images), False
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0)), False
    return [images], True


def inference_model(
    model: str | nn.Module,
    images: Any,
    *,
    checkpoint: str | os.PathLike | Mapping | None = None,
    pretrained: bool = False,
    topk: int = 5,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    img_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    class_names: Sequence[str] | None = None,
    max_pixels: int | None = None,
    runtime: str = "torch",
) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify one image (returns a dict) or a list of images (returns a list of dicts).

    ``model``: any name ``create_model`` takes (mmpretrain names included) or an ``nn.Module`` (used as given; its
    train/eval mode is restored afterwards). ``images``: a path, a PIL image, a NumPy array (HWC uint8/uint16, or
    float in [0, 1]), a CHW tensor (uint8, or float in [0, 1]), a list of these, or an NCHW tensor (a list).
    ``checkpoint`` (any layout ``load_checkpoint`` reads) or ``pretrained=True`` (hub weights, see
    :mod:`efficientformer.models.hub`) load weights; names come from ``class_names``, else the checkpoint, else
    ImageNet.
    Preprocessing is the model's own (:func:`preprocessing_for`: the resolution it was built or trained for, its
    crop fraction, interpolation and mean/std; for a published model at 224 that is the published evaluation,
    resize 256, centre crop 224, bicubic, ImageNet mean/std); ``img_size``, ``resize`` and ``interpolation``
    override it. Bad inputs raise
    :class:`~efficientformer.data.images.ImageLoadError` (a ``ValueError``) naming the input.
    ``runtime``: ``"torch"`` (default), or ``"openvino"`` / ``"openvino-bf16"`` to run the model in OpenVINO on the
    CPU (extra ``efficientformer[openvino]``; bf16 where the CPU has native bf16).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    items, single = _as_list(images)
    loaded = load_model(model, checkpoint=checkpoint, pretrained=pretrained, class_names=class_names, device=device)
    preprocess = preprocessing_for(loaded.model, img_size, resize, interpolation)
    if runtime != "torch":  # ``runtime="openvino"`` / ``"openvino-bf16"``: the same model run by OpenVINO on the CPU
        if runtime not in ("openvino", "openvino-bf16"):
            raise ValueError(f"runtime must be 'torch', 'openvino' or 'openvino-bf16', got {runtime!r}")
        net = OpenVINOClassifier(loaded.model.cpu(), "bf16" if runtime.endswith("bf16") else "fp32")
        loaded = LoadedModel(net, loaded.class_names, loaded.source)
    predictor = Predictor(loaded, preprocess, topk=topk)
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):  # decode per batch: memory stays bounded for long lists
        chunk = items[start : start + batch_size]
        pil = [as_rgb_image(obj, index=start + i, max_pixels=max_pixels) for i, obj in enumerate(chunk)]
        results += predictor.predict_batch(pil)
    return results[0] if single else results


def __getattr__(name: str) -> Any:
    # checkpoint_class_names moved to the models layer (train.evaluate had another function of that name)
    if name == "checkpoint_class_names":
        warnings.warn(
            "efficientformer.inference.api.checkpoint_class_names is deprecated; use "
            "efficientformer.models.checkpoint.stored_class_names",
            DeprecationWarning,
            stacklevel=2,
        )
        return stored_class_names
    # this module's resolve_device merged into the runtime's (one device rule for training and inference)
    if name == "resolve_device":
        warnings.warn(
            "efficientformer.inference.api.resolve_device is deprecated; use "
            "efficientformer.runtime.distributed.resolve_device",
            DeprecationWarning,
            stacklevel=2,
        )
        return distributed.resolve_device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
