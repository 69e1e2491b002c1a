"""rmq_style.settings is the one place every settings model can be imported from."""

from __future__ import annotations

import importlib
import pkgutil

from pydantic import BaseModel

import rmq_style
import rmq_style.settings


def test_every_settings_model_of_the_package_is_in_rmq_style_settings() -> None:
    found: set[str] = set()
    for module in pkgutil.walk_packages(rmq_style.__path__, "rmq_style."):
        if module.name.startswith(("rmq_style._sync", "rmq_style.console", "rmq_style.pytest_plugin")):
            continue  # generated twins, and parts behind optional extras
        for name, value in vars(importlib.import_module(module.name)).items():
            if (
                name.endswith("Settings")
                and isinstance(value, type)
                and issubclass(value, BaseModel)
                and value.__module__ == module.name
            ):
                found.add(name)
    assert found - set(rmq_style.settings.__all__) == set()
    for name in found:  # the same class as the public name, not a copy
        assert getattr(rmq_style, name, getattr(rmq_style.settings, name)) is getattr(
            rmq_style.settings, name
        )
