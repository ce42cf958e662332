"""One name, one meaning: a public top-level function or class is defined in one module of the package only.

A second definition under the same name is either the same idea (merge it into the lowest layer that owns it) or
another idea (give it its own name). The few deliberate exceptions are listed below, each with its reason. Renamed
names stay importable from their old modules for one release, with a DeprecationWarning naming the new one.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "efficientformer"

ALLOWED = {
    # one per command module by design: the CLI's root calls each module's register(subparsers)
    "register",
    # the stage of each model family (V1 and V2 stages differ), as timm names them; attribute names are
    # state-dict keys and never change
    "Stage",
    # being merged into runtime.config by the config pass
    "dump_yaml",
}

#: (old module, old name, new module, new name) of every renamed or merged public function.
RENAMED = [
    ("models.checkpoint", "read_checkpoint", "models.checkpoint", "read_state_dict"),
    ("inference.api", "resolve_device", "runtime.distributed", "resolve_device"),
    ("inference.api", "checkpoint_class_names", "models.checkpoint", "stored_class_names"),
    ("models.arch", "count_params", "models.arch", "num_params"),
    ("search.space", "normalise", "search.space", "canonical_spec"),
    ("bench.latency", "count_macs", "models.cards", "count_macs"),
    ("train.engine", "evaluate", "train.engine", "classification_metrics"),
    ("dense.detection", "evaluate", "dense.detection", "detection_metrics"),
    ("dense.segmentation", "evaluate", "dense.segmentation", "segmentation_metrics"),
]


def _public_definitions() -> dict[str, list[str]]:
    """Public top-level def/class name -> the modules (paths) defining it."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith(
                "_"
            ):
                found[node.name].append(str(path.relative_to(PACKAGE)))
    return found


def test_each_public_name_is_defined_in_one_module():
    homonyms = {name: where for name, where in _public_definitions().items() if len(where) > 1}
    unexpected = {name: where for name, where in homonyms.items() if name not in ALLOWED}
    assert not unexpected, (
        f"public names defined in more than one module: {unexpected}; merge them if they are one idea, "
        "else give one of them its own name (or, if deliberate, add it to ALLOWED with the reason)"
    )


def test_the_scan_sees_a_homonym():
    # the allow-list's deliberate homonym is found, so an empty result above means none, not a blind scan
    assert len(_public_definitions()["register"]) > 1


@pytest.mark.parametrize(("old_module", "old_name", "new_module", "new_name"), RENAMED)
def test_old_import_path_works_and_warns(old_module, old_name, new_module, new_name):
    old = importlib.import_module(f"efficientformer.{old_module}")
    new = getattr(importlib.import_module(f"efficientformer.{new_module}"), new_name)
    with pytest.warns(DeprecationWarning, match=f"efficientformer.{new_module}.{new_name}"):
        got = getattr(old, old_name)
    assert got is new
    # the old name is not a second definition left behind
    tree = ast.parse((PACKAGE / Path(*old_module.split("."))).with_suffix(".py").read_text(encoding="utf-8"))
    assert old_name not in {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_from_import_of_an_old_name_warns():
    with pytest.warns(DeprecationWarning, match="read_state_dict"):
        from efficientformer.models.checkpoint import read_checkpoint  # noqa: F401


@pytest.mark.parametrize("module", sorted({old for old, *_ in RENAMED}))
def test_unknown_names_still_raise_attribute_error(module):
    mod = importlib.import_module(f"efficientformer.{module}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no_such_name"):
            _ = mod.no_such_name
        assert not hasattr(mod, "no_such_name")


def test_train_evaluates_old_class_names_reader_warns_and_reads_a_training_checkpoint(tmp_path):
    from efficientformer.runtime.checkpoint import save_checkpoint
    from efficientformer.train import evaluate

    path = save_checkpoint(tmp_path / "last.pth", {"model": {}, "class_names": ["cat", "dog"]})
    with pytest.warns(DeprecationWarning, match="stored_class_names"):
        reader = evaluate.checkpoint_class_names
    assert reader(path) == ["cat", "dog"]
    assert reader(tmp_path / "w.safetensors") is None  # other layouts: load_checkpoint reads them


def test_family_is_asked_of_the_spec_never_guessed_from_the_name():
    from efficientformer.models.registry import VARIANTS, family_of, list_models

    for name in list_models():
        assert family_of(name) == VARIANTS[name].family
        assert family_of(f"{name}_relu") == VARIANTS[name].family
    # a timm baseline whose name holds "v2", and an architecture file, are no family of ours
    assert family_of("mobilenetv2_100") is None and family_of("searched.yaml") is None
    guesses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if '"v2" in ' in line or '"v1" in ' in line or 'startswith("efficientformer' in line:
                guesses.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not guesses, f"model family guessed from a name (use models.registry.family_of): {guesses}"
