"""The shipped configs (training recipes, dense tasks, search), addressable by name as timm and mmpretrain address
theirs: ``--config efficientformer_l1_300e`` works from an installed wheel, anywhere; a path still works.

In a wheel they live in the package (``efficientformer/recipes/``, copied from the repository's ``configs/`` by
``pyproject.toml``); in a clone they are read from ``configs/`` itself. :func:`resolve_config` is THE place a
config argument becomes a file.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
#: Where shipped configs are looked for, in order: inside the installed package, then the clone's configs/.
CONFIG_ROOTS = (_PACKAGE / "recipes", _PACKAGE.parents[1] / "configs")
SUFFIXES = (".yaml", ".yml")


def config_root() -> Path | None:
    """The folder the shipped configs are read from (None: neither an installed copy nor a clone's)."""
    return next((root for root in CONFIG_ROOTS if root.is_dir() and any(root.glob("*.yaml"))), None)


def list_configs() -> list[str]:
    """Names of the shipped configs (``efficientformer_l1_300e``, ``search/v2_proxy``, ``dense/toy_segment``)."""
    root = config_root()
    if root is None:
        return []
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config(value: str | Path) -> Path:
    """A config argument as a file: an existing path as given, else a shipped config by name.

    ``value`` may be a path, a name (``efficientformer_l1_300e``, ``v2_proxy``, ``search/v2_proxy``) or a
    repository path that does not exist here (``configs/search/v2_proxy.yaml`` run outside the clone: found by
    its name). Raises ``FileNotFoundError`` with one line listing the shipped names."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    root = config_root()
    if root is not None:
        text = str(value).replace("\\", "/")
        stem = text[: -len(suffix)] if (suffix := next((s for s in SUFFIXES if text.endswith(s)), "")) else text
        # "configs/search/v2_proxy.yaml" and "/abs/clone/configs/digits.yaml" give "search/v2_proxy" and "digits"
        stem = stem.split("configs/", 1)[-1]
        for candidate in (root / f"{stem}.yaml", *sorted(root.rglob(f"{Path(stem).name}.yaml"))):
            if candidate.is_file():
                return candidate
    names = ", ".join(list_configs()) or "none (the package has no shipped configs)"
    raise FileNotFoundError(f"config file not found: {value} (not a file, nor a shipped config; shipped: {names})")
