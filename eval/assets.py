"""Where the embedded default lives: the one function every layer asks for an asset folder.

The repo's ``assets/`` installs as package data ``fewstep/assets`` (pyproject.toml), so the same
relative location holds for an editable install (this file is ``<repo>/eval/assets.py``) and for a
wheel (``site-packages/fewstep/eval/assets.py``). ``$FEWSTEP_ASSETS`` overrides it, e.g. to point a
slim install at a shared copy. It lives in ``eval`` because that is the lowest layer that needs an
asset (its judges); ``pipelines`` asks here too.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "FEWSTEP_ASSETS"


def assets_dir() -> Path:
    """The folder holding ``tiny-sd``, ``tiny-sd-v``, ``classifier`` and ``tiny-clip``."""
    override = os.environ.get(ENV)
    return Path(override).expanduser().resolve() if override else Path(__file__).resolve().parents[1] / "assets"


def asset_path(name: str) -> Path:
    """``assets_dir() / name``, checked: a missing asset names the folder searched and the override."""
    path = assets_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"embedded asset {name!r} not found in {assets_dir()} (set ${ENV} to the folder "
                                "that holds fewstep's assets)")
    return path
