"""Weights from the Hugging Face Hub, through ``huggingface_hub`` (the same cache as timm and transformers).

Every download goes through :func:`huggingface_hub.hf_hub_download`, so a file timm or transformers already fetched
is not fetched again, and the Hub client's behaviour applies: resumable downloads, ETag revalidation,
``HF_HUB_OFFLINE=1`` (only the cache is read), ``HF_ENDPOINT`` (a mirror), ``HF_HUB_CACHE`` / ``HF_HOME`` (where the
cache lives) and tokens (``hf auth login`` or ``HF_TOKEN``) for private or gated repositories.

Published weights. ``create_model(name, pretrained=True)`` and ``--pretrained`` read
``timm/<name>.snap_dist_in1k/model.safetensors``, which exists for all seven models (timm converted the official
weights; V1-L1 is the 1000-epoch checkpoint, V2 the 450-epoch ones). The official releases are Google-Drive files
(:data:`OFFICIAL_RELEASES`); Drive serves them behind a confirmation page, so they are not downloaded automatically,
but a downloaded copy loads directly (``checkpoint=`` / ``--checkpoint``, or ``EFFICIENTFORMER_WEIGHTS_<NAME>``).

Any repository. ``create_model("hf-hub:ORG/REPO[@revision]", pretrained=True)`` reads the repository's
``config.json`` and weights (``model.safetensors``, else ``pytorch_model.bin``) in our layout, timm's layout (a
``config.json`` with ``architecture``) or transformers' EfficientFormer layout (``model_type: efficientformer``);
see :func:`hub_model`.

Integrity (SHA-256). For files stored with Git LFS (every weights file on the Hub) the cache names the file's blob
by its SHA-256, as the Hub declared it; each load hashes the file and refuses one that does not match (a cache file
corrupted or replaced after download). Where :data:`KNOWN_SHA256` holds a hash verified by us, it is enforced too.
It is empty (``None`` for every model) on purpose: this toolkit was written without network access to the Hub, and
we do not ship hashes we have not checked.

Migration from 0.1: the toolkit's own cache (``$EFFICIENTFORMER_CACHE``/``<name>.<tag>.safetensors`` with
``.sha256`` sidecars) and its ``urllib`` downloader are gone, and so is ``EFFICIENTFORMER_OFFLINE`` (use
``HF_HUB_OFFLINE=1``). Old cache files are not read; delete ``~/.cache/efficientformer/*.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save as safetensors_save

from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .arch import save_arch
from .base import EfficientFormerBase
from .checkpoint import ours_to_timm
from .facts import FACTS, HUB_TAG, CheckpointSource
from .registry import VARIANTS, UnknownModelError, get_spec

DEFAULT_TAG = HUB_TAG
WEIGHTS_ENV_PREFIX = "EFFICIENTFORMER_WEIGHTS_"
#: The Hub client's own switch; read here at call time as well (the client reads it once, at import).
OFFLINE_ENV = "HF_HUB_OFFLINE"
#: ``create_model("hf-hub:ORG/REPO")``: the prefix timm uses for the same thing.
HUB_PREFIX = "hf-hub:"
#: Weights files looked for in a repository, in order (safetensors first: nothing to unpickle).
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
#: The architecture file of a searched model, beside its weights (what ``efficientformer search`` writes).
ARCH_FILE = "architecture.yaml"
#: transformers' preprocessing file (crop, resize, mean/std).
PREPROCESSOR_FILE = "preprocessor_config.json"

#: Models with published weights: every row of the facts table.
MODEL_NAMES = tuple(FACTS)

#: SHA-256 of each published file, enforced when not None (from the facts table). All None on purpose: see above.
KNOWN_SHA256: dict[str, str | None] = {name: f.hub_sha256 for name, f in FACTS.items()}

#: The earlier name of :class:`~efficientformer.models.facts.CheckpointSource`.
OfficialRelease = CheckpointSource

#: Official PyTorch checkpoints (Google Drive links of the official README). Not downloaded automatically.
OFFICIAL_RELEASES: dict[str, tuple[CheckpointSource, ...]] = {name: f.official for name, f in FACTS.items()}


class HubError(ValueError):
    """Weights that cannot be found, fetched or trusted. The message is one actionable line."""


# -- names -------------------------------------------------------------------------------------------------------
def hub_id(model_name: str, tag: str | None = None) -> str:
    """The Hub repository of a published model's weights (timm's copy)."""
    return f"timm/{model_name}.{tag or DEFAULT_TAG}"


def hub_url(model_name: str, tag: str | None = None) -> str:
    """Where the published weights file is served (``$HF_ENDPOINT`` when set)."""
    _check_name(model_name, tag)
    return f"{constants.ENDPOINT}/{hub_id(model_name, tag)}/resolve/main/{WEIGHTS_FILES[0]}"


def weights_env_var(model_name: str) -> str:
    return WEIGHTS_ENV_PREFIX + model_name.upper().replace("-", "_").replace(".", "_")


def is_hub_name(name: object) -> bool:
    return isinstance(name, str) and name.strip().startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/REPO@rev"`` -> ``("ORG/REPO", "rev")``; a one-line error for anything else."""
    body = name.strip()[len(HUB_PREFIX) :] if is_hub_name(name) else name.strip()
    repo_id, _, revision = body.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise HubError(f"{name!r} is not a Hub model name; write hf-hub:ORG/REPO (optionally @revision)")
    return repo_id, revision or None


def _check_name(model_name: str, tag: str | None) -> None:
    if model_name not in MODEL_NAMES:
        raise HubError(f"no pretrained weights for {model_name!r}; models with weights: {', '.join(MODEL_NAMES)}")
    if tag not in (None, DEFAULT_TAG):
        raise HubError(f"unknown pretrained tag {tag!r} for {model_name}; the only tag is {DEFAULT_TAG!r}")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as the Hub client read it at import, or as the environment says now."""
    now = os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or now


# -- hashing -----------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, known: str | None = None, what: str = "") -> str:
    """Check a cached Hub file against ``known`` (if given) and against its LFS blob name; return its SHA-256.

    The Hub cache stores an LFS file as ``blobs/<sha256>`` (the hash the Hub declared) with the snapshot path a
    link to it; a file whose content no longer hashes to that name was corrupted or replaced after download."""
    actual = sha256_file(path)
    blob = Path(path).resolve().name
    fix = f"delete {Path(path).resolve()} and run again to fetch it afresh (or `hf download {what}`)"
    if re.fullmatch(r"[0-9a-f]{64}", blob) and actual != blob:
        raise HubError(f"{path} does not match the Hub's SHA-256 ({actual[:16]}... != {blob[:16]}...); {fix}")
    if known and actual != known.lower():
        raise HubError(f"{path} is not the published file: SHA-256 {actual[:16]}... != {known[:16]}...; {fix}")
    return actual


# -- download ----------------------------------------------------------------------------------------------------
def hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache: str | os.PathLike | None = None,
    required: bool = True,
    local_files_only: bool | None = None,
) -> Path | None:
    """One file of a Hub repository, from the Hugging Face cache or downloaded into it.

    ``required=False``: None when the repository has no such file (or, offline, when the cache has none). Every
    failure is a :class:`HubError` of one line that says what to do."""
    local_only = offline() if local_files_only is None else local_files_only
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=str(cache) if cache is not None else None,
                local_files_only=local_only,
                library_name="efficientformer",
            )
        )
    except GatedRepoError:
        raise HubError(
            f"{where} is gated: accept its terms on the Hub, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"no Hub repository {where} (or it is private: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r}; use a branch, tag or commit of it") from None
    except RemoteEntryNotFoundError:
        if not required:
            return None
        raise HubError(f"{where} has no file {filename}") from None
    except LocalEntryNotFoundError:
        if not required:
            return None
        why = f"{OFFLINE_ENV} is set" if local_only else "the Hub could not be reached"
        cache_dir = cache if cache is not None else constants.HF_HUB_CACHE
        raise HubError(
            f"{filename} of {where} is not in the Hugging Face cache ({cache_dir}) and cannot be downloaded ({why}); "
            f"run once with network access (or `hf download {repo_id} {filename}`), or pass a local checkpoint"
        ) from None
    except HFValidationError as err:
        raise HubError(f"{where}: {str(err).splitlines()[0]}") from None
    except (HfHubHTTPError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(f"downloading {filename} of {where} failed ({reason}); try again, or set HF_ENDPOINT") from None


# -- the published weights ---------------------------------------------------------------------------------------
def pretrained_path(
    model_name: str,
    tag: str | None = None,
    *,
    cache: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> Path:
    """Path of verified published weights for ``model_name`` (from the Hugging Face cache, downloaded on first use).

    Order: ``$EFFICIENTFORMER_WEIGHTS_<NAME>`` (a file used as given), then :func:`hub_file` (cache, else download
    unless ``allow_download=False`` or ``HF_HUB_OFFLINE``). ``cache``: another Hub cache folder."""
    _check_name(model_name, tag)
    override = os.environ.get(weights_env_var(model_name))
    if override:
        file = Path(override).expanduser()
        if not file.is_file():
            raise HubError(f"{weights_env_var(model_name)} points at {file}, which is not a file")
        return file
    repo = hub_id(model_name, tag)
    local_only = None if allow_download is None else not allow_download
    try:
        path = hub_file(repo, WEIGHTS_FILES[0], cache=cache, local_files_only=local_only)
    except HubError as err:
        raise HubError(f"{err} (or set {weights_env_var(model_name)}=/path/to/weights)") from None
    assert path is not None
    verify_file(path, KNOWN_SHA256.get(model_name), f"{repo} {WEIGHTS_FILES[0]}")
    return path


# -- any repository: config + weights ----------------------------------------------------------------------------
@dataclass
class HubModel:
    """What a Hub repository says about the model it holds (see :func:`hub_model`)."""

    repo_id: str
    revision: str | None
    layout: str  # "efficientformer" / "timm" (a config.json with "architecture"), "transformers", or "weights"
    model_name: str | None  # a registered name; None for a searched architecture (see arch_file)
    build_args: dict[str, Any] = field(default_factory=dict)  # num_classes, img_size, distillation
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing and label names
    arch_file: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None  # filled by hub_weights

    @property
    def source(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HubError(f"{what} is not readable JSON ({err})") from None
    if not isinstance(obj, dict):
        raise HubError(f"{what} holds a {type(obj).__name__}, not a JSON object")
    return obj


def hub_model(name: str, *, cache: str | os.PathLike | None = None) -> HubModel:
    """Read ``config.json`` (and, for a searched model, ``architecture.yaml``) of ``hf-hub:ORG/REPO[@rev]``.

    Layouts: timm's and ours (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg``,
    ``label_names``), transformers' EfficientFormer (``model_type: efficientformer``: ``hidden_sizes``, ``depths``,
    ``id2label``, ``architectures``); a repository with weights only is resolved from the weights' shapes by the
    caller (``layout="weights"``)."""
    repo_id, revision = parse_hub_name(name)
    cfg_path = hub_file(repo_id, CONFIG_FILE, revision=revision, cache=cache, required=False)
    if cfg_path is None:
        return HubModel(repo_id, revision, "weights", None)
    config = _read_json(cfg_path, f"{HUB_PREFIX}{repo_id}/{CONFIG_FILE}")
    if config.get("model_type") == "efficientformer" or "hidden_sizes" in config:
        model = _from_transformers_config(repo_id, revision, config)
        pre = hub_file(repo_id, PREPROCESSOR_FILE, revision=revision, cache=cache, required=False)
        if pre is not None:
            model.pretrained_cfg.update(transformers_preprocessing(_read_json(pre, PREPROCESSOR_FILE)))
        return model
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise HubError(
            f"{HUB_PREFIX}{repo_id}/{CONFIG_FILE} names no architecture (neither timm's 'architecture' nor "
            "transformers' 'model_type: efficientformer'); it is not an EfficientFormer repository we can read"
        )
    ours = config.get("efficientformer") if isinstance(config.get("efficientformer"), Mapping) else {}
    arch_file = None
    if ours.get("arch_file"):
        arch_file = hub_file(repo_id, str(ours["arch_file"]), revision=revision, cache=cache)
    model_args = {**{k: ours[k] for k in ("img_size", "distillation") if k in ours}, **(config.get("model_args") or {})}
    build = {k: model_args[k] for k in ("img_size", "distillation") if k in model_args}
    if isinstance(build.get("img_size"), list):
        build["img_size"] = tuple(build["img_size"])
    pcfg = dict(config.get("pretrained_cfg") or {})
    if "num_classes" in config:
        build["num_classes"] = int(config["num_classes"])
    elif "num_classes" in pcfg:
        build["num_classes"] = int(pcfg["num_classes"])
    if "label_names" in config:
        pcfg["label_names"] = list(config["label_names"])
    layout = str(ours.get("layout", "efficientformer")) if ours else "timm"
    return HubModel(repo_id, revision, layout, None if arch_file else arch, build, pcfg, arch_file, config)


def hub_weights(model: HubModel, *, cache: str | os.PathLike | None = None) -> Path:
    """The repository's weights file (``model.safetensors``, else ``pytorch_model.bin``), verified; sets
    ``model.weights``."""
    for filename in WEIGHTS_FILES:
        path = hub_file(model.repo_id, filename, revision=model.revision, cache=cache, required=False)
        if path is not None:
            verify_file(path, None, f"{model.repo_id} {filename}")
            model.weights = path
            return path
    why = " in the cache (HF_HUB_OFFLINE is set)" if offline() else ""
    raise HubError(
        f"{model.source} has no weights file{why}: looked for {', '.join(WEIGHTS_FILES)}; "
        "run once with network access, or pass checkpoint="
    )


# -- transformers' EfficientFormer (V1) --------------------------------------------------------------------------
#: transformers' model classes and whether their checkpoints carry the distillation head.
TRANSFORMERS_HEADS = {
    "EfficientFormerForImageClassificationWithTeacher": True,
    "EfficientFormerForImageClassification": False,
    "EfficientFormerModel": False,
}


def _from_transformers_config(repo_id: str, revision: str | None, config: dict[str, Any]) -> HubModel:
    widths, depths = tuple(config.get("hidden_sizes") or ()), tuple(config.get("depths") or ())
    name = next(
        (n for n, s in VARIANTS.items() if s.family == "v1" and s.widths == widths and s.depths == depths), None
    )
    if name is None:
        raise HubError(
            f"{HUB_PREFIX}{repo_id}: transformers EfficientFormer with hidden_sizes {list(widths)} and depths "
            f"{list(depths)} is none of the published sizes (L1, L3, L7)"
        )
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=lambda k: int(k))] if id2label else []
    num_classes = int(config.get("num_labels") or len(labels) or 1000)
    archs = config.get("architectures") or []
    build: dict[str, Any] = {"num_classes": num_classes, "img_size": int(config.get("image_size") or 224)}
    if archs:
        build["distillation"] = any(TRANSFORMERS_HEADS.get(a, False) for a in archs)
    pcfg: dict[str, Any] = {}
    if labels and not all(re.fullmatch(r"LABEL_\d+", lab) for lab in labels):
        pcfg["label_names"] = labels
    return HubModel(repo_id, revision, "transformers", name, build, pcfg, None, config)


def transformers_preprocessing(pre: Mapping[str, Any]) -> dict[str, Any]:
    """An ``EfficientFormerImageProcessor`` config as a pretrained cfg: crop size, crop fraction, mean/std."""
    out: dict[str, Any] = {}
    crop = pre.get("crop_size")
    crop_side = crop.get("height") if isinstance(crop, Mapping) else crop
    size = pre.get("size")
    short = size.get("shortest_edge") if isinstance(size, Mapping) else size
    if isinstance(crop_side, int):
        out["input_size"] = (3, crop_side, crop_side)
        if isinstance(short, int) and short >= crop_side:
            out["crop_pct"] = crop_side / short
    if pre.get("image_mean"):
        out["mean"] = tuple(pre["image_mean"])
    if pre.get("image_std"):
        out["std"] = tuple(pre["image_std"])
    resample = pre.get("resample")
    if resample in (2, 3):  # PIL codes: 2 bilinear, 3 bicubic
        out["interpolation"] = "bicubic" if resample == 3 else "bilinear"
    return out


# -- out: a folder timm and this toolkit read, and the Hub upload ------------------------------------------------
#: The model card's file name in a Hub repository.
CARD_FILE = "README.md"


def timm_compatible(model: EfficientFormerBase) -> bool:
    """Whether ``timm.create_model(<variant>)`` builds exactly this network: a published variant (GELU) with a
    classifier; V1 only at 224 (timm fixes its V1 attention grid at 7x7), V2 at any size."""
    spec = model.spec
    if VARIANTS.get(spec.name) != spec or model.features_only:
        return False
    return spec.family == "v2" or tuple(model.img_size) == (224, 224)


def _registered(spec: Any) -> bool:
    """Whether ``create_model(spec.name)`` builds this very spec (published variants and their activations)."""
    try:
        return get_spec(spec.name) == spec
    except UnknownModelError:
        return False


def hub_config(model: EfficientFormerBase, class_names: list[str] | None = None) -> dict[str, Any]:
    """``config.json`` for ``model``: timm's fields (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``, ``label_names``) plus an ``efficientformer`` section that this toolkit reads."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    height, width = (int(v) for v in model.img_size)
    compatible = timm_compatible(model)
    ours: dict[str, Any] = {
        "layout": "timm" if compatible else "efficientformer",
        "timm_compatible": compatible,
        "img_size": [height, width],
        "distillation": model.head_dist is not None,
        "act": model.spec.act,
    }
    if not _registered(model.spec):  # a searched architecture: its file travels with the weights
        ours["arch_file"] = ARCH_FILE
    model_args: dict[str, Any] = {}
    if model.spec.family == "v2":  # timm's V2 takes both; its V1 has neither (224 only, always two heads)
        model_args = {"img_size": [height, width], "distillation": model.head_dist is not None}
    names = class_names if class_names is not None else cfg.get("label_names")
    pretrained_cfg = {
        "input_size": [3, height, width],
        "crop_pct": cfg.get("crop_pct", 0.875),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "num_classes": int(model.num_classes),
        "classifier": ["head", "head_dist"],
        "first_conv": "stem.conv1" if model.spec.family == "v1" else "stem.conv1.conv",
        "fixed_input_size": True,
    }
    if cfg.get("license"):
        pretrained_cfg["license"] = cfg["license"]
    out: dict[str, Any] = {
        "architecture": model.spec.name,
        "num_classes": int(model.num_classes),
        "num_features": int(model.num_features),
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
        "efficientformer": ours,
    }
    if names:
        out["label_names"] = list(names)
    return out


def save_pretrained(
    model: EfficientFormerBase,
    folder: str | os.PathLike,
    *,
    card: str | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write ``model`` as a Hub repository folder: ``model.safetensors``, ``config.json``, ``README.md`` and, for
    a searched architecture, ``architecture.yaml``.

    A published variant is written in timm's layout with a config timm reads, so ``timm.create_model(
    "hf-hub:ORG/REPO", pretrained=True)`` (or ``"local-dir:FOLDER"``) builds it with the same outputs; a V1 model
    with one head gets its head copied as ``head_dist`` (timm's V1 always has both; the mean of two equal heads is
    the head). Anything else (searched, another activation, V1 at another size) is written in our layout.
    ``create_model("hf-hub:...")`` and ``load_checkpoint(folder)`` read both."""
    if not isinstance(model, EfficientFormerBase):
        raise TypeError(f"save_pretrained expects an EfficientFormer model, got {type(model).__name__}")
    if model.features_only:
        raise ValueError("save_pretrained writes classifier models; build it without features_only=True")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = hub_config(model, class_names)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if config["efficientformer"]["timm_compatible"]:
        if model.spec.family == "v1" and model.head_dist is None and "head.weight" in state:
            state.update({f"head_dist.{p}": state[f"head.{p}"].clone() for p in ("weight", "bias")})
        state = ours_to_timm(state, model.spec)
    metadata = {"format": "pt", "efficientformer_layout": config["efficientformer"]["layout"]}
    if config.get("label_names"):
        metadata["class_names"] = json.dumps(config["label_names"])
    payload = safetensors_save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)
    atomic_write_bytes(folder / WEIGHTS_FILES[0], lambda f: f.write(payload))
    atomic_write_json(folder / CONFIG_FILE, config)
    if config["efficientformer"].get("arch_file"):
        save_arch(model.spec, folder / ARCH_FILE)
    atomic_write_text(folder / CARD_FILE, card if card is not None else basic_card(model, config))
    return folder


def basic_card(model: EfficientFormerBase, config: dict[str, Any]) -> str:
    """A model card from what the model itself knows (``efficientformer push`` writes a fuller one from its run)."""
    params = sum(p.numel() for p in model.parameters())
    timm_line = (
        'timm.create_model("hf-hub:<this repo>", pretrained=True)  # timm reads it too'
        if config["efficientformer"]["timm_compatible"]
        else "(timm cannot build this architecture; use efficientformer)"
    )
    return (
        f"---\nlibrary_name: efficientformer\ntags:\n- image-classification\n- efficientformer\n---\n\n"
        f"# {model.spec.name}\n\n{params:,} parameters, {model.num_classes} classes, input "
        f"{model.img_size[0]}x{model.img_size[1]}.\n\n```python\nfrom efficientformer import create_model\n"
        f'model = create_model("hf-hub:<this repo>", pretrained=True)\n{timm_line}\n```\n'
    )


def push_to_hub(
    model: EfficientFormerBase | None,
    repo_id: str,
    *,
    folder: str | os.PathLike | None = None,
    card: str | None = None,
    class_names: list[str] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload EfficientFormer model",
    api: Any = None,
) -> Any:
    """Upload ``model`` (written by :func:`save_pretrained` to a temporary folder) or an already written
    ``folder`` to the Hub repository ``repo_id`` (created if needed) with ``HfApi.upload_folder``; returns its
    commit info. ``api`` replaces ``huggingface_hub.HfApi(token=token)`` (tests pass a local stand-in)."""
    parse_hub_name(repo_id)
    if (model is None) == (folder is None):
        raise ValueError("pass a model or a folder written by save_pretrained, not both")
    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="efficientformer-push-") as tmp:
        if folder is None:
            folder = save_pretrained(model, Path(tmp) / "repo", card=card, class_names=class_names)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
            )
        except (HfHubHTTPError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HubError(
                f"uploading to {repo_id} failed ({reason}); log in with `hf auth login` (a token with write access) "
                "or set HF_TOKEN"
            ) from None
