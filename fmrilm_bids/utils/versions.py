"""Versions of the software that ran: what reports and model cards record.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

#: Packages whose versions the report lists.
SOFTWARE = ("fmrilm-bids", "antspyx", "nipype", "niworkflows", "nilearn", "nibabel", "numpy",
            "scipy", "pandas", "matplotlib", "templateflow")


def software_versions(packages: Sequence[str] = SOFTWARE) -> dict[str, str]:
    """Installed version of each of ``packages`` (distribution names; default
    :data:`SOFTWARE`), then Python's: what reports and model cards record."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions | {"python": platform.python_version()}
