"""Model names and aliases (``create_model`` lives in :mod:`efficientformer.models.factory`)."""

from __future__ import annotations

import difflib
import fnmatch

from .base import ModelSpec
from .efficientformer import V1_VARIANTS
from .efficientformer_v2 import V2_VARIANTS
from .facts import FACTS, HUB_TAG

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


def resolve_name(name: str) -> tuple[str, str | None]:
    """Map any accepted spelling to ``(model_name, tag)``; raise ``UnknownModelError`` with suggestions."""
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
    candidates = list(VARIANTS) + list(ALIASES) + [f"{n}.{t}" for n, ts in PRETRAINED_TAGS.items() for t in ts]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (all models: {', '.join(list_models())})")
