"""Architecture files: what a search writes and what ``build_from_arch`` builds.

An architecture file is YAML (``.yaml``/``.yml``) or JSON (``.json``) holding one mapping::

    format: efficientformer-arch      # required, identifies the file
    version: 1
    family: v2                        # v1 or v2
    name: efficientformerv2_custom    # free text; used as the model's name
    widths: [32, 48, 96, 176]         # channels of stages 1-4
    depths: [2, 2, 6, 4]              # blocks of stages 1-4
    mlp_ratios:                       # V2 only: FFN expansion of every block (hidden = int(width * ratio))
      - [4, 4]
      - [4, 4]
      - [4, 3, 3, 3, 4, 4]
      - [4, 3, 3, 4]
    attention:                        # V2 only: which blocks of stages 3-4 carry attention (0-based indices)
      - []
      - []
      - [4, 5]
      - [2, 3]
    num_vit: 1                        # V1 only: Meta3D blocks at the end of stage 4
    drop_path_rate: 0.0
    act: relu                         # optional: gelu (default, as published), relu or hardswish for every GELU
    search: {...}                     # optional provenance (space, table, latency, MES); never read back

The published models are points of this format: :func:`spec_to_arch` of any of the seven, written and read back,
builds the same network (same ``state_dict`` keys and shapes, same parameter count).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..utils.io import atomic_write_text
from .base import EfficientFormerBase, ModelSpec
from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2
from .layers import ACTIVATIONS

FORMAT_NAME = "efficientformer-arch"
FORMAT_VERSION = 1
DEFAULT_NAME = {"v1": "efficientformer_custom", "v2": "efficientformerv2_custom"}


class ArchError(ValueError):
    """An architecture file or mapping that cannot describe a network; the message says what to fix."""


def spec_to_arch(spec: ModelSpec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture mapping of a model spec (a published variant or a searched one)."""
    arch: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "family": spec.family,
        "name": spec.name,
        "widths": [int(w) for w in spec.widths],
        "depths": [int(d) for d in spec.depths],
    }
    if spec.family == "v2":
        arch["mlp_ratios"] = [[_plain_number(r) for r in stage] for stage in spec.mlp_ratios]
        arch["attention"] = [
            [j for j in range(spec.depths[i]) if spec.has_attention(i, j)] for i in range(len(spec.depths))
        ]
    else:
        arch["num_vit"] = int(spec.num_vit)
    arch["drop_path_rate"] = float(spec.drop_path_rate)
    if spec.act != "gelu":  # written only when it differs, so the published models' files stay as they were
        arch["act"] = spec.act
    if extra:
        arch.update(extra)
    return arch


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _int_list(arch: dict[str, Any], key: str, length: int = 4) -> tuple[int, ...]:
    value = arch.get(key)
    if not isinstance(value, list | tuple) or len(value) != length:
        raise ArchError(f"'{key}' must be a list of {length} integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ArchError(f"'{key}' must hold positive integers, got {value!r}")
        out.append(int(v))
    return tuple(out)


def arch_to_spec(arch: dict[str, Any]) -> ModelSpec:
    """Check an architecture mapping and turn it into a :class:`ModelSpec`; one-line :class:`ArchError` if bad."""
    if not isinstance(arch, dict):
        raise ArchError(f"an architecture must be a mapping, got {type(arch).__name__}")
    if arch.get("format") != FORMAT_NAME:
        raise ArchError(f"not an architecture file: expected 'format: {FORMAT_NAME}', got {arch.get('format')!r}")
    if int(arch.get("version", 0)) > FORMAT_VERSION:
        raise ArchError(f"architecture format version {arch.get('version')} is newer than this library reads (1)")
    family = arch.get("family")
    if family not in ("v1", "v2"):
        raise ArchError(f"'family' must be 'v1' or 'v2', got {family!r}")
    widths = _int_list(arch, "widths")
    depths = _int_list(arch, "depths")
    if widths[0] % 2:
        raise ArchError(f"the stage-1 width must be even (the stem halves it), got {widths[0]}")
    name = str(arch.get("name") or DEFAULT_NAME[family])
    drop_path = float(arch.get("drop_path_rate", 0.0))
    if not 0.0 <= drop_path < 1.0:
        raise ArchError(f"'drop_path_rate' must be in [0, 1), got {drop_path}")
    act = arch.get("act", "gelu")
    if act not in ACTIVATIONS:
        raise ArchError(f"'act' must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    if family == "v1":
        num_vit = arch.get("num_vit")
        if isinstance(num_vit, bool) or not isinstance(num_vit, int) or not 0 <= num_vit <= depths[3]:
            raise ArchError(f"'num_vit' must be an integer in 0..{depths[3]} (stage-4 depth), got {num_vit!r}")
        return ModelSpec(name, "v1", widths, depths, num_vit=num_vit, drop_path_rate=drop_path, act=act)
    ratios = arch.get("mlp_ratios")
    if not isinstance(ratios, list | tuple) or len(ratios) != 4:
        raise ArchError("'mlp_ratios' must be four lists (one expansion ratio per block of each stage)")
    mlp_ratios = []
    for i, stage in enumerate(ratios):
        if not isinstance(stage, list | tuple) or len(stage) != depths[i]:
            raise ArchError(f"'mlp_ratios' of stage {i + 1} must list {depths[i]} ratios (its depth), got {stage!r}")
        for r in stage:
            if isinstance(r, bool) or not isinstance(r, int | float) or r <= 0 or int(widths[i] * r) < 1:
                raise ArchError(f"'mlp_ratios' of stage {i + 1} must hold positive numbers, got {stage!r}")
        mlp_ratios.append(tuple(float(r) for r in stage))
    attn = arch.get("attention", [[], [], [], []])
    if not isinstance(attn, list | tuple) or len(attn) != 4:
        raise ArchError("'attention' must be four lists of block indices (stages 1-2 must be empty)")
    flags = []
    for i, stage in enumerate(attn):
        if not isinstance(stage, list | tuple):
            raise ArchError(f"'attention' of stage {i + 1} must be a list of block indices, got {stage!r}")
        idx = set()
        for j in stage:
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < depths[i]:
                raise ArchError(f"'attention' of stage {i + 1} holds {j!r}; indices must be in 0..{depths[i] - 1}")
            idx.add(j)
        if idx and i < 2:
            raise ArchError(f"attention is only allowed in stages 3 and 4, stage {i + 1} lists {sorted(idx)}")
        flags.append(tuple(j in idx for j in range(depths[i])))
    num_vit = max(sum(flags[2]), sum(flags[3]))
    return ModelSpec(
        name,
        "v2",
        widths,
        depths,
        num_vit=num_vit,
        drop_path_rate=drop_path,
        mlp_ratios=tuple(mlp_ratios),
        attention=tuple(flags),
        act=act,
    )


def load_arch(path: str | Path) -> dict[str, Any]:
    """Read an architecture file (YAML or JSON) and check it; returns the mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"architecture file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0]
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise ArchError(f"{path} is not valid {kind}: {first}") from None
    try:
        arch_to_spec(data)
    except ArchError as err:
        raise ArchError(f"{path}: {err}") from None
    return data


def save_arch(arch: dict[str, Any] | ModelSpec, path: str | Path) -> Path:
    """Write an architecture (mapping or spec) as YAML or JSON, chosen by the suffix; atomic."""
    if isinstance(arch, ModelSpec):
        arch = spec_to_arch(arch)
    arch_to_spec(arch)  # never write a file we could not read back
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(arch, indent=2) + "\n"
    elif path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(arch, sort_keys=False, default_flow_style=None)
    else:
        raise ArchError(f"architecture files end in .yaml, .yml or .json, got {path.name}")
    return atomic_write_text(path, text)


def is_arch_path(name: object) -> bool:
    """True for strings that name an architecture file rather than a registered model."""
    return isinstance(name, str | Path) and Path(name).suffix.lower() in (".yaml", ".yml", ".json")


def arch_spec(arch: dict[str, Any] | ModelSpec | str | Path) -> ModelSpec:
    """The spec of an architecture given as a spec, a mapping or a file."""
    if isinstance(arch, ModelSpec):
        return arch
    return arch_to_spec(load_arch(arch) if isinstance(arch, str | Path) else arch)


def build_from_arch(arch: dict[str, Any] | ModelSpec | str | Path, **kwargs: Any) -> EfficientFormerBase:
    """Build the network an architecture describes; ``kwargs`` are those of ``create_model`` (``num_classes``,
    ``img_size``, ``distillation``, ``drop_path_rate``, ``features_only``, ``out_indices``, ...)."""
    spec = arch_spec(arch)
    cls: type[EfficientFormerBase] = EfficientFormer if spec.family == "v1" else EfficientFormerV2
    return cls(spec, **kwargs)


def num_params(model: nn.Module) -> int:
    """The parameter count of a built network (``search.params.count_params`` computes it from a spec)."""
    return sum(p.numel() for p in model.parameters())


def __getattr__(name: str) -> Any:
    # count_params is search.params' count from a spec, without building the network
    if name == "count_params":
        warnings.warn(
            "efficientformer.models.arch.count_params is deprecated; use efficientformer.models.arch.num_params",
            DeprecationWarning,
            stacklevel=2,
        )
        return num_params
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
