"""The package list in pyproject.toml names every package of the source tree: a package left out
is missing from a wheel (an editable install, as the tests use, would hide it)."""

from __future__ import annotations

import tomllib

from support import ROOT


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {"uniobs": ROOT / "uniobs", **{k: ROOT / v for k, v in config["package-dir"].items()}}
    found = set()
    for name, path in dirs.items():
        for init in path.rglob("__init__.py"):
            rel = init.parent.relative_to(path)
            found.add(".".join((name, *rel.parts)) if rel.parts else name)
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"
