"""Test-only: the official and mmpretrain key layouts, enumerated from the variant tables.

The official names are those of the official code (snap-research/EfficientFormer, models/efficientformer*.py); the
mmpretrain names from mmpretrain's V1 backbone. ``official_from_timm`` renames a timm state dict to the official
layout module by module, so the parity tests can feed the same random weights in both layouts. It is checked
against the independent key enumeration below and, for V1, against timm's own official->timm filter.
"""

from __future__ import annotations

import itertools

import torch

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
WB = ("weight", "bias")


def _keys(prefix: str, names) -> list[str]:
    return [f"{prefix}.{n}" for n in names]


def official_keys(spec) -> list[str]:
    """Every key of the official model's state_dict (distillation head included)."""
    keys = _keys("patch_embed.0", WB) + _keys("patch_embed.1", BN) + _keys("patch_embed.3", WB)
    keys += _keys("patch_embed.4", BN)
    v2 = spec.family == "v2"
    for s in range(4):
        if s > 0 and not (v2 and s == 3):
            keys += _keys(f"network.{2 * s - 1}.proj", WB) + _keys(f"network.{2 * s - 1}.norm", BN)
        if v2 and s == 3:
            p = "network.5"
            keys += _keys(f"{p}.conv", WB) + _keys(f"{p}.bn", BN)
            keys += _keys(f"{p}.attn.q.local.0", WB) + _keys(f"{p}.attn.q.proj.0", WB) + _keys(f"{p}.attn.q.proj.1", BN)
            for m in ("k", "v", "v_local"):
                keys += _keys(f"{p}.attn.{m}.0", WB) + _keys(f"{p}.attn.{m}.1", BN)
            keys += _keys(f"{p}.attn.proj.1", WB) + _keys(f"{p}.attn.proj.2", BN)
            keys += [f"{p}.attn.attention_biases", f"{p}.attn.attention_bias_idxs"]
        depth = spec.depths[s]
        if v2:
            for j in range(depth):
                b = f"network.{2 * s}.{j}"
                keys += [f"{b}.layer_scale_2"]
                for conv, norm in (("fc1", "norm1"), ("mid", "mid_norm"), ("fc2", "norm2")):
                    keys += _keys(f"{b}.mlp.{conv}", WB) + _keys(f"{b}.mlp.{norm}", BN)
                if s >= 2 and j >= depth - spec.num_vit:
                    keys += [f"{b}.layer_scale_1"]
                    mods = ("q", "k", "v", "v_local") + (("stride_conv",) if s == 2 else ())
                    for m in mods:
                        keys += _keys(f"{b}.token_mixer.{m}.0", WB) + _keys(f"{b}.token_mixer.{m}.1", BN)
                    keys += _keys(f"{b}.token_mixer.talking_head1", WB) + _keys(f"{b}.token_mixer.talking_head2", WB)
                    keys += _keys(f"{b}.token_mixer.proj.1", WB) + _keys(f"{b}.token_mixer.proj.2", BN)
                    keys += [f"{b}.token_mixer.attention_biases", f"{b}.token_mixer.attention_bias_idxs"]
        else:
            num_3d = spec.num_vit if s == 3 else 0
            slots = ["4d"] * (depth - num_3d) + (["flat"] + ["3d"] * num_3d if num_3d else [])
            for j, kind in enumerate(slots):
                b = f"network.{2 * s}.{j}"
                if kind == "4d":
                    keys += [f"{b}.layer_scale_1", f"{b}.layer_scale_2"]
                    keys += _keys(f"{b}.mlp.fc1", WB) + _keys(f"{b}.mlp.norm1", BN)
                    keys += _keys(f"{b}.mlp.fc2", WB) + _keys(f"{b}.mlp.norm2", BN)
                elif kind == "3d":
                    keys += [f"{b}.layer_scale_1", f"{b}.layer_scale_2"]
                    keys += _keys(f"{b}.norm1", WB) + _keys(f"{b}.norm2", WB)
                    keys += _keys(f"{b}.token_mixer.qkv", WB) + _keys(f"{b}.token_mixer.proj", WB)
                    keys += [f"{b}.token_mixer.attention_biases", f"{b}.token_mixer.attention_bias_idxs"]
                    keys += _keys(f"{b}.mlp.fc1", WB) + _keys(f"{b}.mlp.fc2", WB)
    keys += _keys("norm", BN if v2 else WB) + _keys("head", WB) + _keys("dist_head", WB)
    return keys


def official_bias_idxs(resolution: int, query_resolution: int | None = None) -> torch.Tensor:
    """The official enumeration: each new (|dr|, |dc|) offset gets the next id, in visiting order."""
    q_res = query_resolution or resolution
    step = resolution // q_res if query_resolution else 1
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in itertools.product(range(q_res), range(q_res)):
        for p2 in itertools.product(range(resolution), range(resolution)):
            off = (abs(p1[0] * step - p2[0]), abs(p1[1] * step - p2[1]))
            offsets.setdefault(off, len(offsets))
            idxs.append(offsets[off])
    return torch.tensor(idxs).view(q_res * q_res, resolution * resolution)


# timm -> official, module by module (the reverse of timm's own official -> timm filter for V1)
_V1_PAIRS = [
    ("stem.conv1.", "patch_embed.0."),
    ("stem.norm1.", "patch_embed.1."),
    ("stem.conv2.", "patch_embed.3."),
    ("stem.norm2.", "patch_embed.4."),
    ("head_dist.", "dist_head."),
]
_V2_PAIRS = [
    ("stem.conv1.conv.", "patch_embed.0."),
    ("stem.conv1.bn.", "patch_embed.1."),
    ("stem.conv2.conv.", "patch_embed.3."),
    ("stem.conv2.bn.", "patch_embed.4."),
    ("head_dist.", "dist_head."),
]
_V2_INNER = (
    [
        (".mlp.fc1.conv.", ".mlp.fc1."),
        (".mlp.fc1.bn.", ".mlp.norm1."),
        (".mlp.mid.conv.", ".mlp.mid."),
        (".mlp.mid.bn.", ".mlp.mid_norm."),
        (".mlp.fc2.conv.", ".mlp.fc2."),
        (".mlp.fc2.bn.", ".mlp.norm2."),
        (".q.local.", ".q.local.0."),
        (".q.proj.conv.", ".q.proj.0."),
        (".q.proj.bn.", ".q.proj.1."),
        (".proj.conv.", ".proj.1."),
        (".proj.bn.", ".proj.2."),
    ]
    + [(f".{m}.conv.", f".{m}.0.") for m in ("q", "k", "v", "v_local", "stride_conv")]
    + [(f".{m}.bn.", f".{m}.1.") for m in ("q", "k", "v", "v_local", "stride_conv")]
)


def official_from_timm(timm_state: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    v2 = spec.family == "v2"
    out = {}
    for key, value in timm_state.items():
        new = key
        for old, rep in _V2_PAIRS if v2 else _V1_PAIRS:
            if new.startswith(old):
                new = rep + new[len(old) :]
        if new.startswith("stages."):
            s = int(new.split(".")[1])
            rest = new.split(".", 2)[2]
            if rest.startswith("downsample."):
                rest = rest[len("downsample.") :]
                if v2 and s == 3:  # dual-path downsample: conv path is network.5.conv / network.5.bn
                    if rest.startswith("conv.conv."):
                        rest = "conv." + rest[len("conv.conv.") :]
                    elif rest.startswith("conv.bn."):
                        rest = "bn." + rest[len("conv.bn.") :]
                elif v2:
                    rest = rest.replace("conv.conv.", "proj.", 1).replace("conv.bn.", "norm.", 1)
                else:
                    rest = rest.replace("conv.", "proj.", 1)
                new = f"network.{2 * s - 1}.{rest}"
            else:
                new = f"network.{2 * s}.{rest[len('blocks.') :]}"
        if v2:
            for old, rep in _V2_INNER:
                new = new.replace(old, rep)
        if new.endswith(("ls1.gamma", "ls2.gamma")):
            new = new[: -len("ls1.gamma")] + "layer_scale_" + new[-len("1.gamma")]
            value = value.reshape(-1, 1, 1) if v2 else value
        out[new] = value.clone()
    # official stores the index buffers; timm V2 does not
    for key in list(out):
        if key.endswith("attention_biases") and key.replace("attention_biases", "attention_bias_idxs") not in out:
            n = out[key].shape[1]
            side = int(round(n**0.5))
            q_side = side // 2 if key.startswith("network.5.") else None
            out[key.replace("attention_biases", "attention_bias_idxs")] = official_bias_idxs(side, q_side)
    return out


def mmpretrain_from_official(state: dict[str, torch.Tensor], spec) -> dict[str, torch.Tensor]:
    """mmpretrain's V1 ImageClassifier layout: backbone.* with a downsample ConvModule opening stages 1-3."""
    out = {}
    stem = {"0": "patch_embed.0.conv", "1": "patch_embed.0.bn", "3": "patch_embed.1.conv", "4": "patch_embed.1.bn"}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "patch_embed":
            new = f"backbone.{stem[parts[1]]}.{'.'.join(parts[2:])}"
        elif parts[0] == "network":
            n = int(parts[1])
            if n % 2:  # downsample -> index 0 of the next stage
                conv = {"proj": "conv", "norm": "bn"}[parts[2]]
                new = f"backbone.network.{(n + 1) // 2}.0.{conv}.{'.'.join(parts[3:])}"
            else:
                s, j = n // 2, int(parts[2]) + (1 if n > 0 else 0)
                rest = ".".join(parts[3:]).replace("layer_scale_1", "ls1.weight").replace("layer_scale_2", "ls2.weight")
                new = f"backbone.network.{s}.{j}.{rest}"
        elif parts[0] == "norm":
            new = "backbone.norm3." + parts[1]
        else:
            new = "head." + key
        out[new] = value
    return out


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights where every parameter matters: BN stats, layer scales and attention biases included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", ".scale")) or "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.25 + 0.05)
            elif "attention_biases" in name or name.endswith("table"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
    return model
