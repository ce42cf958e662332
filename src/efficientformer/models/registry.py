"""Model names and aliases (``create_model`` lives in :mod:`efficientformer.models.factory`)."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch

from .base import ModelSpec
from .efficientformer import V1_VARIANTS
from .efficientformer_v2 import V2_VARIANTS
from .facts import FACTS, HUB_TAG
from .layers import ACTIVATIONS, check_activation

VARIANTS: dict[str, ModelSpec] = {**V1_VARIANTS, **V2_VARIANTS}

#: Pretrained tags known for each model (timm-style ``name.tag``).
PRETRAINED_TAGS: dict[str, tuple[str, ...]] = {name: (HUB_TAG,) for name in VARIANTS if name in FACTS}

#: Other libraries' names for the same networks.
ALIASES: dict[str, str] = {
    "efficientformer-l1_3rdparty_8xb128_in1k": "efficientformer_l1",
    "efficientformer-l3_3rdparty_8xb128_in1k": "efficientformer_l3",
    "efficientformer-l7_3rdparty_8xb128_in1k": "efficientformer_l7",
}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close matches."""


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"*v2*"``)."""
    names = sorted(VARIANTS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def split_activation(name: str) -> tuple[str, str]:
    """``(published variant, activation)`` of a registered name: ``efficientformerv2_s0_relu`` ->
    ``("efficientformerv2_s0", "relu")``, ``efficientformer_l1`` -> ``("efficientformer_l1", "gelu")``. Other names
    come back unchanged with ``"gelu"``."""
    for act in ACTIVATIONS:
        base = name.removesuffix(f"_{act}")
        if act != "gelu" and base != name and base in VARIANTS:
            return base, act
    return name, "gelu"


def with_activation(spec: ModelSpec, act: str) -> ModelSpec:
    """``spec`` with ``act`` in place of every GELU. A published variant is renamed ``<variant>_<act>`` (the name
    ``create_model`` takes back, and the name exports, benchmarks and training checkpoints record); GELU gives
    the published spec itself. A searched architecture keeps its name (its file records ``act``)."""
    act = check_activation(act)
    base, _ = split_activation(spec.name)
    published = VARIANTS.get(base)
    if published is not None and dataclasses.replace(spec, name=base, act="gelu") == published:
        return published if act == "gelu" else dataclasses.replace(published, name=f"{base}_{act}", act=act)
    return dataclasses.replace(spec, act=act)


def get_spec(model_name: str) -> ModelSpec:
    """The spec of a name :func:`resolve_name` returned: a published variant or one with another activation."""
    base, act = split_activation(model_name)
    if base not in VARIANTS:
        raise UnknownModelError(f"unknown model {model_name!r} (all models: {', '.join(list_models())})")
    return with_activation(VARIANTS[base], act)


def family_of(model_name: str) -> str | None:
    """``"v1"`` or ``"v2"`` for a registered model name (as :func:`resolve_name` returns it), None for any other
    name (a timm baseline such as ``mobilenetv2_100``, an architecture file): asked of the spec, never guessed
    from the spelling."""
    base, _ = split_activation(model_name)
    spec = VARIANTS.get(base)
    return spec.family if spec is not None else None


def resolve_name(name: str) -> tuple[str, str | None]:
    """Map any accepted spelling to ``(model_name, tag)``; raise ``UnknownModelError`` with suggestions.

    ``<variant>_relu`` and ``<variant>_hardswish`` name a published variant with that activation in place of every
    GELU (see :func:`with_activation`); they have no published weights, so no tag."""
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip()
    if key in ALIASES:
        return ALIASES[key], None
    base, _, tag = key.partition(".")
    if base in VARIANTS:
        if tag and tag not in PRETRAINED_TAGS[base]:
            raise UnknownModelError(f"unknown tag {tag!r} for {base}; known tags: {', '.join(PRETRAINED_TAGS[base])}")
        return base, tag or None
    published, act = split_activation(base)
    if act != "gelu":
        if tag:
            raise UnknownModelError(
                f"{base} has no published weights (tag {tag!r}); build it with checkpoint= weights of {published} "
                "(they fit: activations have no weights) and fine-tune"
            )
        return base, None
    swapped = [f"{n}_{a}" for n in VARIANTS for a in ACTIVATIONS if a != "gelu"]
    tagged = [f"{n}.{t}" for n, ts in PRETRAINED_TAGS.items() for t in ts]
    candidates = list(VARIANTS) + swapped + list(ALIASES) + tagged
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (all models: {', '.join(list_models())})")
