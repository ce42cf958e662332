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
