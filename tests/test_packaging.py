"""Packaging metadata: the [all] extra installs every optional feature."""

import pathlib

import tomllib


def test_all_extra_names_every_optional_extra():
    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert "all" in extras
    (spec,) = extras["all"]
    name, _, rest = spec.partition("[")
    assert name == meta["project"]["name"]
    named = set(rest.rstrip("]").split(","))
    assert named == set(extras) - {"all", "test"}  # every feature extra, and only those


def test_the_wheel_lists_every_package_and_ships_the_configs():
    """pyproject.toml lists the packages (so configs/ can be mapped into the wheel as efficientformer.recipes):
    the list must be exactly the source tree's packages plus that one."""
    from setuptools import find_packages

    root = pathlib.Path(__file__).parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    tool = meta["tool"]["setuptools"]
    assert set(tool["packages"]) == set(find_packages(str(root / "src"))) | {"efficientformer.recipes"}
    assert tool["package-dir"]["efficientformer.recipes"] == "configs"
    shipped = {str(p.relative_to(root / "configs")) for p in (root / "configs").rglob("*.yaml")}
    patterns = tool["package-data"]["efficientformer.recipes"]
    assert all(any(pathlib.PurePath(name).match(pat) for pat in patterns) for name in shipped)


def test_configs_are_addressable_by_name(tmp_path):
    from efficientformer.runtime.config import read_yaml
    from efficientformer.utils.recipes import list_configs, resolve_config

    names = list_configs()
    assert {"efficientformer_l1_300e", "digits", "search/v2_proxy", "dense/toy_segment"} <= set(names)
    assert resolve_config("efficientformer_l1_300e").name == "efficientformer_l1_300e.yaml"
    assert resolve_config("configs/search/v2_proxy.yaml").name == "v2_proxy.yaml"  # a clone path, from anywhere
    assert resolve_config("v1_proxy") == resolve_config("search/v1_proxy")
    own = tmp_path / "mine.yaml"
    own.write_text("epochs: 3\n")
    assert resolve_config(own) == own and read_yaml(own) == {"epochs": 3}  # a path still works
    assert read_yaml("efficientformerv2_s0_300e")["model"] == "efficientformerv2_s0"
    import pytest

    with pytest.raises(FileNotFoundError, match="not a file, nor a shipped config; shipped: .*digits"):
        resolve_config("efficientformer_l9_300e")
