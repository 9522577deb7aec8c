"""Installed package versions, for the records that say what produced an output.

Read from the installed metadata, never by importing the package (importing torch to learn its
version would cost seconds and pull it into the device). A package that is not installed is
recorded as None (JSON null), the one way every record says "missing".

Test: .venv/bin/pytest tests/appliance/test_common.py
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version


def package_versions(names: Iterable[str], *, python: bool = False) -> dict[str, str | None]:
    """{name: installed version, or None when not installed} in the order given; with
    `python=True` the interpreter's version comes first under "python"."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]} if python else {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
