"""The console's templates and assets are declared package data, so an installed wheel
(the appliance image installs one) serves them as a checkout does."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import appliance.console

CONSOLE = Path(appliance.console.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_every_template_and_asset_is_package_data() -> None:
    data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["appliance.console"] + data["*"]
    files = [
        p.relative_to(CONSOLE).as_posix()
        for folder in ("templates", "static")
        for p in (CONSOLE / folder).rglob("*")
        if p.is_file()
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
