"""Reading checkpoints in every published EfficientFormer layout.

Layouts: ``efficientformer`` (ours), ``official`` (snap-research; weights at the top level or under ``model``,
``state_dict`` or ``model_ema``), ``timm`` (hub layout, V1 and V2), ``mmpretrain`` (V1 ``backbone.*`` /
``head.*``) and ``transformers`` (V1 ``EfficientFormerForImageClassification[WithTeacher]`` / ``EfficientFormerModel``,
which transformers removed for v5; a folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
reads too). Foreign layouts are first renamed to the official key names, then to ours, so each layout needs
only one small table. Files are read with ``torch.load(weights_only=True)`` or safetensors: nothing is unpickled
as code.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .base import EfficientFormerBase, ModelSpec
from .layers import resample_bias_table
from .registry import VARIANTS, UnknownModelError, resolve_name, split_activation

StateDict = dict[str, torch.Tensor]

#: Containers searched, in order, when a file holds more than weights.
CONTAINER_KEYS = ("state_dict", "model", "model_ema", "module")

#: Non-tensor objects we let the weights-only unpickler build (argparse args in official training checkpoints).
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why and what to do."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` found and did."""

    source: str
    layout: str
    container: str | None = None
    variant: str | None = None
    renamed: int = 0
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"[{self.container}]" if self.container else ""
        lines = [f"loaded {self.source}{where}: {self.layout} layout, {self.variant or 'unknown variant'}"]
        if self.renamed:
            lines.append(f"  renamed {self.renamed} keys to this toolkit's layout")
        lines += [f"  resampled {r}" for r in self.resampled]
        lines += [f"  {n}" for n in self.notes]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} keys: {_short_list(self.dropped)}")
        if self.missing:
            lines.append(f"  missing (left as initialised) {len(self.missing)}: {_short_list(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored) {len(self.unexpected)}: {_short_list(self.unexpected)}")
        return "\n".join(lines)


def _short_list(items: list[str], limit: int = 6) -> str:
    head = ", ".join(items[:limit])
    return head + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# -- reading files -----------------------------------------------------------------------------------------------
def torch_load_weights(path: Path) -> object:
    """``torch.load(weights_only=True)`` that also accepts argparse ``Namespace`` objects (official checkpoints
    carry the training ``args``) and turns every failure into a one-line :class:`CheckpointError`.

    Works for the zip format and for the legacy (pre-1.6, non-zip) pickle format alike: nothing outside tensors,
    plain containers and ``Namespace`` is ever built."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = _blocked_globals(path, err)
        raise CheckpointError(
            f"refusing to unpickle {path}: it references {named}, which could run code; if you trust the file, "
            "re-save the weights alone (a state dict, or safetensors) from a trusted environment"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, KeyError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({reason}); expected .pth/.pt/.bin or .safetensors weights"
        ) from None


def _blocked_globals(path: Path, err: Exception) -> str:
    """The names of the globals a refused pickle asks for, for a readable message (torch's own is a page long)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))  # zip format only
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: fall back to the name in torch's message
        names = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    if not names:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err)))) or ["objects other than tensors"]
    return ", ".join(names)


def check_finite(state: Mapping[str, torch.Tensor], desc: str) -> None:
    """Refuse weights holding NaN or infinity: such a model prints ``nan`` scores as if nothing were wrong."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{desc} has NaN or infinite values in {len(bad)} tensor(s) ({_short_list(bad, 3)}); the weights are "
            "damaged (a diverged training run?); use an earlier checkpoint"
        )


def read_state_dict(source: str | Path | Mapping, use_ema: bool = False) -> tuple[StateDict, str | None, str]:
    """Return ``(state_dict, container_key, description)`` for a path or an in-memory checkpoint."""
    obj, desc = _read_object(source)
    return (*_state_of(obj, desc, use_ema), desc)


def _read_object(source: str | Path | Mapping) -> tuple[Mapping, str]:
    """The checkpoint's top-level mapping (weights and, for our training checkpoints, what they record)."""
    if isinstance(source, Mapping):
        obj, desc = source, "state dict"
    else:
        path = Path(source).expanduser()
        if path.is_dir():  # a saved or downloaded model folder (ours, timm's or transformers' save_pretrained)
            path = weights_in_folder(path)
        desc = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            try:
                obj = load_file(str(path))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
        else:
            obj = torch_load_weights(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{desc} holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary")
    return obj, desc


#: Weights files of a model folder, in the order they are looked for (safetensors first: nothing to unpickle).
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def weights_in_folder(folder: Path) -> Path:
    """The weights file of a model folder (``save_pretrained`` output of this toolkit, timm or transformers)."""
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} is a folder without weights: expected {' or '.join(FOLDER_WEIGHTS)} in it")


def check_dtypes(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], desc: str) -> None:
    """Refuse floating-point parameters stored as integers: they load (PyTorch casts them) and evaluate to NaN."""
    bad = [k for k, v in state.items() if k in target and target[k].is_floating_point() and not v.is_floating_point()]
    if bad:
        kinds = sorted({str(state[k].dtype).replace("torch.", "") for k in bad})
        raise CheckpointError(
            f"{desc} stores {len(bad)} floating-point parameter(s) as {'/'.join(kinds)} ({_short_list(bad, 3)}); "
            "the file is damaged or was written wrongly: re-save the weights as floats"
        )


def _state_of(obj: Mapping, desc: str, use_ema: bool) -> tuple[StateDict, str | None]:
    container = None
    order = ("model_ema", *CONTAINER_KEYS) if use_ema else CONTAINER_KEYS
    for key in order:
        if isinstance(obj.get(key), Mapping) and any(isinstance(v, torch.Tensor) for v in obj[key].values()):
            obj, container = obj[key], key
            break
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{desc} contains no tensors; top-level keys: {_short_list(list(map(str, obj)))}")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    check_finite(state, desc)
    return state, container


def recorded_activation(obj: Mapping) -> tuple[str, str] | None:
    """``(model name, activation)`` a training checkpoint of ours records (``model_name``); None for other files
    (weights alone carry no activation: it has no weights)."""
    name = obj.get("model_name")
    if not isinstance(name, str):
        return None
    try:
        model_name, _ = resolve_name(name)
    except UnknownModelError:  # an architecture file or a name from elsewhere: nothing to compare
        return None
    return model_name, split_activation(model_name)[1]


# -- layout detection --------------------------------------------------------------------------------------------
def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)
    if any(".meta4D_layers." in k for k in keys):
        return "transformers"
    if any(k.startswith("backbone.") for k in keys):
        return "mmpretrain"
    if any(k.startswith(("network.", "patch_embed.")) for k in keys):
        return "official"
    if any(k.endswith("pos_bias.table") for k in keys) or any(k.endswith("ls2.scale") for k in keys):
        return "efficientformer"
    if any(k.startswith("stages.") for k in keys) and any(k.startswith("stem.") for k in keys):
        return "timm"
    raise CheckpointError(f"this does not look like an EfficientFormer checkpoint (first keys: {_short_list(keys, 4)})")


def _rename(state: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    """Apply regex rules in order to every key (each rule sees the output of the previous one)."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state.items():
        for pattern, repl in compiled:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _is_v2(keys: list[str]) -> bool:
    return any(".mlp.mid" in k for k in keys)


# timm -> official
_TIMM_V1 = [
    (r"^stem\.conv1\.", "patch_embed.0."),
    (r"^stem\.norm1\.", "patch_embed.1."),
    (r"^stem\.conv2\.", "patch_embed.3."),
    (r"^stem\.norm2\.", "patch_embed.4."),
    (r"^(network\.[135])\.conv\.", r"\1.proj."),
    (r"\.ls(\d)\.gamma$", r".layer_scale_\1"),
    (r"^head_dist\.", "dist_head."),
]
_TIMM_V2 = [
    (r"^stem\.conv1\.conv\.", "patch_embed.0."),
    (r"^stem\.conv1\.bn\.", "patch_embed.1."),
    (r"^stem\.conv2\.conv\.", "patch_embed.3."),
    (r"^stem\.conv2\.bn\.", "patch_embed.4."),
    (r"^(network\.[13])\.conv\.conv\.", r"\1.proj."),
    (r"^(network\.[13])\.conv\.bn\.", r"\1.norm."),
    (r"^network\.5\.conv\.conv\.", "network.5.conv."),
    (r"^network\.5\.conv\.bn\.", "network.5.bn."),
    (r"\.q\.local\.", ".q.local.0."),
    (r"\.q\.proj\.conv\.", ".q.proj.0."),
    (r"\.q\.proj\.bn\.", ".q.proj.1."),
    (r"\.mlp\.(fc1|fc2|mid)\.conv\.", r".mlp.\1."),
    (r"\.mlp\.fc1\.bn\.", ".mlp.norm1."),
    (r"\.mlp\.fc2\.bn\.", ".mlp.norm2."),
    (r"\.mlp\.mid\.bn\.", ".mlp.mid_norm."),
    (r"\.(q|k|v|v_local|stride_conv)\.conv\.", r".\1.0."),
    (r"\.(q|k|v|v_local|stride_conv)\.bn\.", r".\1.1."),
    (r"\.proj\.conv\.", ".proj.1."),
    (r"\.proj\.bn\.", ".proj.2."),
    (r"\.ls(\d)\.gamma$", r".layer_scale_\1"),
    (r"^head_dist\.", "dist_head."),
]


def _stage_to_network(key: str) -> str:
    """timm's ``stages.S.downsample`` / ``stages.S.blocks`` to the official flat ``network.N`` index."""
    key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"network.{2 * int(m[1]) - 1}.", key)
    return re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"network.{2 * int(m[1])}.", key)


def timm_to_official(state: StateDict) -> StateDict:
    v2 = _is_v2(list(state))
    out = _rename({_stage_to_network(k): v for k, v in state.items()}, _TIMM_V2 if v2 else _TIMM_V1)
    if v2:  # official V2 layer scales are (C, 1, 1)
        out = {k: (v.reshape(-1, 1, 1) if re.search(r"layer_scale_\d$", k) else v) for k, v in out.items()}
    return out


# transformers -> official: the same flat stage order (intermediate_stages.N is network.N), new leaf names
_TRANSFORMERS_V1 = [
    (r"^efficientformer\.", ""),
    (r"^patch_embed\.convolution1\.", "patch_embed.0."),
    (r"^patch_embed\.batchnorm_before\.", "patch_embed.1."),
    (r"^patch_embed\.convolution2\.", "patch_embed.3."),
    (r"^patch_embed\.batchnorm_after\.", "patch_embed.4."),
    (r"^encoder\.intermediate_stages\.(\d)\.projection\.", r"network.\1.proj."),
    (r"^encoder\.intermediate_stages\.(\d)\.norm\.", r"network.\1.norm."),
    (r"^encoder\.intermediate_stages\.(\d)\.meta4D_layers\.blocks\.", r"network.\1."),
    (r"^encoder\.last_stage\.meta4D_layers\.blocks\.", "network.6."),
    (r"\.mlp\.convolution1\.", ".mlp.fc1."),
    (r"\.mlp\.convolution2\.", ".mlp.fc2."),
    (r"\.mlp\.batchnorm_before\.", ".mlp.norm1."),
    (r"\.mlp\.batchnorm_after\.", ".mlp.norm2."),
    (r"\.mlp\.linear_in\.", ".mlp.fc1."),
    (r"\.mlp\.linear_out\.", ".mlp.fc2."),
    (r"\.token_mixer\.projection\.", ".token_mixer.proj."),
    (r"\.layernorm(\d)\.", r".norm\1."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^distillation_classifier\.", "dist_head."),
]


def transformers_to_official(state: StateDict) -> StateDict:
    """transformers' EfficientFormer keys to the official ones. The official last stage keeps a parameter-free
    ``Flat`` between its 4D and 3D blocks, so 3D block J is official block ``n4d + 1 + J``."""
    n4d = len({m[1] for k in state if (m := re.search(r"last_stage\.meta4D_layers\.blocks\.(\d+)\.", k))})

    def last_3d(key: str) -> str:
        return re.sub(
            r"^(?:efficientformer\.)?encoder\.last_stage\.meta3D_layers\.blocks\.(\d+)\.",
            lambda m: f"network.6.{n4d + 1 + int(m[1])}.",
            key,
        )

    return _rename({last_3d(k): v for k, v in state.items()}, _TRANSFORMERS_V1)


# ours -> timm, for writing weights timm loads (save_pretrained); checked against the timm -> ours direction
_OURS_TO_TIMM_COMMON = [
    (r"\.ls(\d)\.scale$", r".ls\1.gamma"),
    (r"\.blocks\.(\d+)\.attn\.", r".blocks.\1.token_mixer."),
    (r"\.pos_bias\.table$", ".attention_biases"),
]
_OURS_TO_TIMM_V1 = [
    (r"^stem\.conv(\d)\.conv\.", r"stem.conv\1."),
    (r"^stem\.conv(\d)\.bn\.", r"stem.norm\1."),
    (r"\.mlp\.fc(\d)\.conv\.", r".mlp.fc\1."),
    (r"\.mlp\.fc(\d)\.bn\.", r".mlp.norm\1."),
    (r"\.downsample\.bn\.", ".downsample.norm."),
]
_OURS_TO_TIMM_V2 = [
    (r"^stages\.([12])\.downsample\.(conv|bn)\.", r"stages.\1.downsample.conv.\2."),
    (r"\.downsample\.attn\.q_local\.", ".downsample.attn.q.local."),
    (r"\.downsample\.attn\.q\.(conv|bn)\.", r".downsample.attn.q.proj.\1."),
]


def _timm_v1_bias_idxs(side: int) -> torch.Tensor:
    """timm's V1 ``attention_bias_idxs`` buffer (saved with its weights): |dy| * side + |dx| per token pair."""
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
    rel = (grid[..., :, None] - grid[..., None, :]).abs()
    return rel[0] * side + rel[1]


def _after_flat(j: int, flat_idx: int) -> int:
    return j + 1 if j >= flat_idx else j


def ours_to_timm(state: StateDict, spec: ModelSpec) -> StateDict:
    """Our keys to timm's (``timm.create_model(<variant>)`` loads the result strictly); the conversion is checked
    by converting back, so a key it cannot place is an error here, not a silently missing weight in timm."""
    v2 = spec.family == "v2"
    rules = _OURS_TO_TIMM_COMMON + (_OURS_TO_TIMM_V2 if v2 else _OURS_TO_TIMM_V1)
    renamed = _rename(dict(state), rules)
    if not v2:  # timm's V1 last stage keeps the parameter-free Flat as a block: the 3D blocks come one later
        flat_idx = spec.depths[3] - spec.num_vit

        def shift(m: re.Match) -> str:
            j = int(m[1])
            return f"stages.3.blocks.{j + 1 if j >= flat_idx else j}."

        renamed = {re.sub(r"^stages\.3\.blocks\.(\d+)\.", shift, k): v for k, v in renamed.items()}
    out: StateDict = {}
    for key, value in renamed.items():
        if key.endswith(".attention_biases") and value.ndim == 3:
            if not v2:
                out[key.replace(".attention_biases", ".attention_bias_idxs")] = _timm_v1_bias_idxs(value.shape[-1])
            value = value.reshape(value.shape[0], -1)
        out[key] = value
    back = convert_state_dict(dict(out), "timm", spec)
    if set(back) != set(state) or any(not torch.equal(back[k].reshape(-1), state[k].reshape(-1)) for k in state):
        lost = sorted(set(state) ^ set(back)) or [
            k for k in state if not torch.equal(back[k].flatten(), state[k].flatten())
        ]
        raise CheckpointError(f"cannot write {spec.name} in timm's layout: keys {_short_list(lost)} do not map back")
    return out


def mmpretrain_to_official(state: StateDict) -> StateDict:
    if _is_v2(list(state)):
        raise CheckpointError("mmpretrain has no EfficientFormerV2; only its V1 layout (backbone.*/head.*) is read")
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("head."):
            key = key[len("head.") :]  # head.head.* / head.dist_head.*
        elif key.startswith("backbone."):
            key = key[len("backbone.") :]
            m = re.match(r"^patch_embed\.([01])\.(conv|bn)\.(.*)$", key)
            if m:
                idx = {("0", "conv"): 0, ("0", "bn"): 1, ("1", "conv"): 3, ("1", "bn"): 4}[(m[1], m[2])]
                key = f"patch_embed.{idx}.{m[3]}"
            m = re.match(r"^network\.(\d)\.(\d+)\.(.*)$", key)
            if m:
                stage, j, rest = int(m[1]), int(m[2]), m[3]
                if stage > 0 and j == 0:  # stages 1-3 open with the downsample ConvModule
                    rest = (
                        rest.replace("conv.", "proj.", 1)
                        if rest.startswith("conv.")
                        else rest.replace("bn.", "norm.", 1)
                    )
                    key = f"network.{2 * stage - 1}.{rest}"
                else:
                    j = j - 1 if stage > 0 else j
                    rest = re.sub(r"^ls(\d)\.weight$", r"layer_scale_\1", rest)
                    key = f"network.{2 * stage}.{j}.{rest}"
            key = re.sub(r"^norm3\.", "norm.", key)
        out[key] = value
    return out


# official -> ours
def official_to_ours(state: StateDict, spec: ModelSpec) -> StateDict:
    v2 = spec.family == "v2"
    flat_idx = spec.depths[3] - spec.num_vit  # official V1 keeps a parameter-free Flat at this slot
    out: StateDict = {}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):
            continue  # derived from shapes; we rebuild it
        new = key
        m = re.match(r"^patch_embed\.(\d)\.(.*)$", key)
        if m:
            new = {"0": "stem.conv1.conv.", "1": "stem.conv1.bn.", "3": "stem.conv2.conv.", "4": "stem.conv2.bn."}[
                m[1]
            ] + m[2]
        elif m := re.match(r"^network\.([135])\.(.*)$", key):
            stage, rest = (int(m[1]) + 1) // 2, m[2]
            rest = re.sub(r"^proj\.", "conv.", rest) if not rest.startswith("attn.") else rest
            rest = re.sub(r"^norm\.", "bn.", rest)
            if v2 and stage == 3:
                rest = re.sub(r"^conv\.", "conv.conv.", rest)
                rest = re.sub(r"^bn\.", "conv.bn.", rest)
                rest = _v2_attn_rest(rest, downsample=True)
            new = f"stages.{stage}.downsample.{rest}"
        elif m := re.match(r"^network\.([0246])\.(\d+)\.(.*)$", key):
            stage, j, rest = int(m[1]) // 2, int(m[2]), m[3]
            if not v2 and stage == 3 and j > flat_idx:
                j -= 1
            rest = re.sub(r"^layer_scale_(\d)$", r"ls\1.scale", rest)
            if v2:
                rest = _v2_mlp_rest(rest)
                rest = _v2_attn_rest(rest.replace("token_mixer.", "attn.", 1), downsample=False)
            else:
                is_3d = stage == 3 and j >= spec.depths[3] - spec.num_vit
                if is_3d:
                    rest = rest.replace("token_mixer.attention_biases", "attn.pos_bias.table")
                    rest = rest.replace("token_mixer.", "attn.")
                else:
                    rest = re.sub(r"^mlp\.(fc1|fc2)\.", r"mlp.\1.conv.", rest)
                    rest = re.sub(r"^mlp\.norm1\.", "mlp.fc1.bn.", rest)
                    rest = re.sub(r"^mlp\.norm2\.", "mlp.fc2.bn.", rest)
            new = f"stages.{stage}.blocks.{j}.{rest}"
        elif key.startswith("dist_head."):
            new = "head_dist." + key[len("dist_head.") :]
        if new.endswith("ls1.scale") or new.endswith("ls2.scale"):
            value = value.reshape(-1)
        if new.endswith("pos_bias.table") and value.ndim == 2:
            side = math.isqrt(value.shape[1])
            if side * side != value.shape[1]:
                raise CheckpointError(f"{key}: attention-bias table of {value.shape[1]} entries is not a square grid")
            value = value.reshape(value.shape[0], side, side)
        out[new] = value
    return out


def _v2_mlp_rest(rest: str) -> str:
    rest = re.sub(r"^mlp\.(fc1|fc2|mid)\.", r"mlp.\1.conv.", rest)
    rest = re.sub(r"^mlp\.norm1\.", "mlp.fc1.bn.", rest)
    rest = re.sub(r"^mlp\.norm2\.", "mlp.fc2.bn.", rest)
    return re.sub(r"^mlp\.mid_norm\.", "mlp.mid.bn.", rest)


def _v2_attn_rest(rest: str, downsample: bool) -> str:
    if not rest.startswith("attn."):
        return rest
    rest = rest.replace("attn.attention_biases", "attn.pos_bias.table")
    if downsample:
        rest = re.sub(r"^attn\.q\.local\.0\.", "attn.q_local.", rest)
        rest = re.sub(r"^attn\.q\.proj\.0\.", "attn.q.conv.", rest)
        rest = re.sub(r"^attn\.q\.proj\.1\.", "attn.q.bn.", rest)
    rest = re.sub(r"^attn\.(q|k|v|v_local|stride_conv)\.0\.", r"attn.\1.conv.", rest)
    rest = re.sub(r"^attn\.(q|k|v|v_local|stride_conv)\.1\.", r"attn.\1.bn.", rest)
    rest = re.sub(r"^attn\.proj\.1\.", "attn.proj.conv.", rest)
    return re.sub(r"^attn\.proj\.2\.", "attn.proj.bn.", rest)


# -- variant inference -------------------------------------------------------------------------------------------
def infer_variant(state: Mapping[str, torch.Tensor], layout: str) -> str | None:
    """Name of the registered variant whose widths and depths match ``state`` (official or our layout)."""
    if layout == "efficientformer":
        block_re, ls_suffix = re.compile(r"^stages\.(\d)\.blocks\.(\d+)\."), "ls2.scale"
        to_stage = int
    else:
        block_re, ls_suffix = re.compile(r"^network\.([0246])\.(\d+)\."), "layer_scale_2"

        def to_stage(s: str) -> int:
            return int(s) // 2

    blocks: dict[int, set[int]] = {}
    widths: dict[int, int] = {}
    for key, value in state.items():
        m = block_re.match(key)
        if not m:
            continue
        stage = to_stage(m[1])
        blocks.setdefault(stage, set()).add(int(m[2]))
        if key.endswith(ls_suffix):
            widths[stage] = int(value.shape[0])
    if sorted(blocks) != [0, 1, 2, 3] or sorted(widths) != [0, 1, 2, 3]:
        return None
    family = "v2" if _is_v2(list(state)) else "v1"
    depths = tuple(len(blocks[s]) for s in range(4))
    found = tuple(widths[s] for s in range(4))
    for name, spec in VARIANTS.items():
        if spec.family == family and spec.widths == found and spec.depths == depths:
            return name
    return None


def to_official(state: StateDict, layout: str) -> StateDict:
    """A foreign layout's keys renamed to the official ones (ours and official come back as they are)."""
    convert = {"timm": timm_to_official, "mmpretrain": mmpretrain_to_official, "transformers": transformers_to_official}
    return convert.get(layout, dict)(state)


def variant_of(state: Mapping[str, torch.Tensor], layout: str | None = None) -> str | None:
    """The registered variant whose widths and depths a state dict of any supported layout has (None: another)."""
    layout = layout or detect_layout(state)
    if layout == "efficientformer":
        return infer_variant(state, "efficientformer")
    return infer_variant(to_official(dict(state), layout), "official")


def stored_class_names(obj: Mapping[str, object]) -> list[str] | None:
    """The ``class_names`` list our training stores beside the weights, if any."""
    names = obj.get("class_names")
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError("checkpoint entry 'class_names' must be a list of strings")
    return list(names)


def stored_img_size(state: Mapping[str, torch.Tensor], layout: str | None = None) -> int | None:
    """The input side a checkpoint's attention-bias tables were made for: the last stage works at 1/32 of it (both
    families), and its tables are one entry per grid offset. None when the weights have no such table."""
    layout = layout or detect_layout(state)
    variant = variant_of(state, layout)
    if variant is None:
        return None
    ours = convert_state_dict(dict(state), layout, VARIANTS[variant])
    for key, value in ours.items():
        if re.fullmatch(r"stages\.3\.blocks\.\d+\.attn\.pos_bias\.table", key) and value.ndim == 3:
            return int(value.shape[-1]) * 32
    return None


# -- loading -----------------------------------------------------------------------------------------------------
def convert_state_dict(state: StateDict, layout: str, spec: ModelSpec) -> StateDict:
    """Rename a state dict of any supported layout to this toolkit's key names for ``spec``."""
    if layout == "efficientformer":
        return dict(state)
    if layout == "timm":
        state = timm_to_official(state)
    elif layout == "transformers":
        state = transformers_to_official(state)
    elif layout == "mmpretrain":
        state = mmpretrain_to_official(state)
    return official_to_ours(state, spec)


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping,
    *,
    strict: bool = True,
    use_ema: bool = False,
    change_activation: bool | None = None,
) -> LoadReport:
    """Load weights of any supported layout into ``model`` and return what was done.

    ``source`` is a path (.pth/.pt/.bin/.safetensors) or a state dict / checkpoint dictionary. Attention-bias
    tables stored for another resolution are resampled; a two-head checkpoint going into a one-head model has its
    heads merged (their mean is exactly what the distilled model outputs in eval), and a one-head checkpoint going
    into a two-head model is copied to both heads. With ``strict=False`` heads of another class count are dropped
    (for fine-tuning) and missing or unexpected keys are reported instead of raised.

    A training checkpoint of ours records the model it trained (``model_name``), and with it the activation
    (``efficientformerv2_s0_relu``: ReLU in place of GELU). Weights of one activation in a model of another fit
    key for key but compute another function, so that is refused unless ``change_activation`` (default: allowed
    exactly when ``strict=False``, i.e. when fine-tuning from the checkpoint).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint expects a model (nn.Module), got {type(model).__name__}")
    if not isinstance(model, EfficientFormerBase):  # another library's model (create_model("timm:NAME"))
        return _load_plain(model, source, strict, use_ema)
    raw, desc = _read_object(source)
    state, container = _state_of(raw, desc, use_ema)
    layout = detect_layout(state)
    report = LoadReport(source=desc, layout=layout, container=container)
    recorded = recorded_activation(raw)
    if recorded is not None and recorded[1] != model.spec.act:
        trained, act = recorded
        if not (not strict if change_activation is None else change_activation):
            raise CheckpointError(
                f"this checkpoint was trained as {trained} ({act} activations), the model uses {model.spec.act}; "
                f"build {trained} instead (--model {trained}), or fine-tune from it (finetune=<checkpoint>)"
            )
        report.notes.append(f"activation changed: trained with {act} ({trained}), this model uses {model.spec.act}")

    found = variant_of(state, layout)
    report.variant = found
    if found is not None and found != split_activation(model.spec.name)[0]:
        raise CheckpointError(
            f"this checkpoint is {found}, the model is {model.spec.name}; build {found} instead (--model {found})"
        )

    converted = convert_state_dict(state, layout, model.spec)
    report.renamed = sum(1 for k in converted if k not in state)
    target = model.state_dict()
    check_dtypes(converted, target, desc)

    if model.features_only:
        for key in [k for k in converted if k.split(".")[0] in ("norm", "head", "head_dist")]:
            converted.pop(key)
            report.dropped.append(key)
    else:
        _fit_heads(model, converted, target, strict, report)

    for key, value in list(converted.items()):
        if key.endswith("pos_bias.table") and key in target and value.shape != target[key].shape:
            if value.shape[0] != target[key].shape[0]:
                raise CheckpointError(
                    f"{key}: {value.shape[0]} attention heads in the checkpoint, {target[key].shape[0]} in the model"
                )
            converted[key] = resample_bias_table(value.to(target[key].dtype), tuple(target[key].shape[-2:]))
            report.resampled.append(f"{key} {tuple(value.shape[-2:])} -> {tuple(target[key].shape[-2:])}")

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        if strict:
            raise CheckpointError(f"shape mismatch in {len(mismatched)} keys: {_short_list(mismatched, 8)}")
        for item in mismatched:
            key = item.split(":")[0]
            converted.pop(key)
            report.dropped.append(key)

    report.missing = sorted(k for k in target if k not in converted)
    report.unexpected = sorted(k for k in converted if k not in target)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"checkpoint does not fit {model.spec.name}: missing {_short_list(report.missing)}; "
            f"unexpected {_short_list(report.unexpected)} (is it a checkpoint of another model or a backbone only?)"
        )
    model.load_state_dict({k: v for k, v in converted.items() if k in target}, strict=False)
    return report


def _load_plain(model: nn.Module, source: str | Path | Mapping, strict: bool, use_ema: bool) -> LoadReport:
    """Weights of a model that is not ours (a ``timm:`` model) in its own keys, e.g. our training checkpoint of
    it: no layout conversion; with ``strict=False`` tensors of another shape (heads of another class count) are
    dropped and missing or unexpected keys reported."""
    state, container, desc = read_state_dict(source, use_ema)
    report = LoadReport(source=desc, layout="plain", container=container)
    target = model.state_dict()
    check_dtypes(state, target, desc)
    mismatched = [k for k, v in state.items() if k in target and v.shape != target[k].shape]
    report.missing = sorted(k for k in target if k not in state)
    report.unexpected = sorted(k for k in state if k not in target)
    if strict and (mismatched or report.missing or report.unexpected):
        raise CheckpointError(
            f"{desc} does not fit {type(model).__name__}: shape mismatch {_short_list(mismatched)}; missing "
            f"{_short_list(report.missing)}; unexpected {_short_list(report.unexpected)} (a checkpoint of another "
            "model?)"
        )
    report.dropped = mismatched
    model.load_state_dict({k: v for k, v in state.items() if k in target and k not in mismatched}, strict=False)
    return report


def _fit_heads(
    model: EfficientFormerBase, state: StateDict, target: StateDict, strict: bool, report: LoadReport
) -> None:
    has_dist = "head_dist.weight" in state
    wants_dist = model.head_dist is not None and "head_dist.weight" in target
    if "head.weight" in state and "head.weight" in target and state["head.weight"].shape != target["head.weight"].shape:
        n_ckpt, n_model = state["head.weight"].shape[0], target["head.weight"].shape[0]
        if strict:
            raise CheckpointError(
                f"checkpoint has {n_ckpt} classes, the model {n_model}; to fine-tune new heads from it, train with "
                "finetune: <this checkpoint> in the config"
            )
        for key in [k for k in state if k.startswith(("head.", "head_dist."))]:
            state.pop(key)
            report.dropped.append(key)
        report.notes.append(f"classifier heads dropped: checkpoint has {n_ckpt} classes, the model {n_model}")
        return
    if has_dist and not wants_dist and "head.weight" in state:
        for p in ("weight", "bias"):
            state[f"head.{p}"] = (state[f"head.{p}"] + state.pop(f"head_dist.{p}")) / 2
        report.notes.append("merged head and head_dist into one head (their mean: the distilled model's eval output)")
    elif wants_dist and not has_dist and "head.weight" in state:
        for p in ("weight", "bias"):
            state[f"head_dist.{p}"] = state[f"head.{p}"].clone()
        report.notes.append("checkpoint has one head: copied it to head_dist so eval outputs match the checkpoint")


def __getattr__(name: str) -> Any:
    # read_checkpoint was also runtime.checkpoint's reader of whole training checkpoints; this one reads weights
    if name == "read_checkpoint":
        warnings.warn(
            "efficientformer.models.checkpoint.read_checkpoint is deprecated; use "
            "efficientformer.models.checkpoint.read_state_dict",
            DeprecationWarning,
            stacklevel=2,
        )
        return read_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
