"""Class names: ImageNet-1k names shipped with the package, or the names a checkpoint carries."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_synsets_and_names() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in label order as ``(wordnet_id, names)``, e.g. ``("n02123045", "tabby, tabby
    cat")``. Read from ``efficientformer/data/imagenet_classes.txt`` (generated from timm's WordNet lemma table)."""
    text = resources.files("efficientformer.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    if len(rows) != 1000 or any(len(r) != 2 for r in rows):
        raise RuntimeError("efficientformer/data/imagenet_classes.txt is damaged: expected 1000 'wnid<TAB>name' lines")
    return rows  # type: ignore[return-value]


def imagenet_class_names() -> list[str]:
    """ImageNet-1k class names in label order (``"tench, Tinca tinca"`` ... ``"toilet tissue, ..."``)."""
    return [name for _, name in imagenet_synsets_and_names()]


def resolve_class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Names for ``num_classes`` outputs: ``names`` when given (must match the count), else ImageNet-1k for 1000
    classes, else ``class_0`` ... ``class_{n-1}``."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != num_classes:
            raise ValueError(
                f"{len(names)} class names given for a model with {num_classes} outputs; pass one name per class"
            )
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(num_classes)]
