"""What `pip install rmq_style` (no extras) installs is enough for the demo and memory:// URLs."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_fakeredis_with_lua_is_a_plain_dependency_and_memory_stays_an_alias() -> None:
    project = _project()["project"]
    assert isinstance(project, dict)
    fakeredis = [d for d in project["dependencies"] if d.startswith("fakeredis")]
    assert fakeredis == ["fakeredis[lua]>=2.26,<2.41"]
    assert project["optional-dependencies"]["memory"] == fakeredis  # README's `pip install -e ".[memory]"`


def test_every_lua_file_is_package_data() -> None:
    """An installed (non-editable) package loads its scripts from package data: includes too."""
    patterns = _project()["tool"]["setuptools"]["package-data"]["rmq_style"]  # type: ignore[index]
    package = ROOT / "rmq_style"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    lua = set(package.rglob("*.lua"))
    assert lua and lua <= shipped, sorted(str(p.relative_to(package)) for p in lua - shipped)
