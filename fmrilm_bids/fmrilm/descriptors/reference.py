"""What a feature is compared with: the cohort's mean and spread, saved so a run can be
described alone.

A :class:`DescriptorReference` holds, per feature key, the mean and standard deviation over a
cohort of runs, plus the group gradient template and the parcel names it was built with. It
is written as JSON (:meth:`DescriptorReference.save`): build it once on a cohort
(``fmrilm-bids ... group``), then describe any later subject against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm_bids.fmrilm.descriptors.features import RunFeatures

#: Reference format version, written into the JSON file.
REFERENCE_VERSION = 1


@dataclass
class DescriptorReference:
    """Mean and standard deviation of every feature over a cohort.

    Attributes
    ----------
    mean, sd : dict[str, float]
        Per feature key (``sd`` is None for a feature seen in a single run).
    n_runs : int
        Runs the statistics come from.
    parcel_names : list of str
        Parcels (in order) of the gradient template.
    networks : list of str
        Network of each parcel (the data-driven networks of the cohort, when used).
    gradient_template : ndarray of shape (n_parcels, n_gradients) or None
        Group gradients runs are aligned to.
    description : str
        Where the reference comes from (written into descriptor metadata).
    """

    mean: dict[str, float]
    sd: dict[str, float | None]
    n_runs: int
    parcel_names: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    gradient_template: np.ndarray | None = field(default=None, repr=False)
    description: str = ""

    def zscore(self, key: str, value: float) -> float | None:
        """``(value - mean) / sd``; None when the reference cannot grade the feature."""
        sd = self.sd.get(key)
        if sd is None or sd <= 1e-12:
            return None
        return float((value - self.mean[key]) / sd)

    def zscores(self, values: dict[str, float]) -> dict[str, float | None]:
        """z-score of every feature in ``values``."""
        return {key: self.zscore(key, value) for key, value in values.items()}

    def to_dict(self) -> dict[str, object]:
        """JSON-ready content."""
        template = None if self.gradient_template is None else self.gradient_template.tolist()
        return {"version": REFERENCE_VERSION, "description": self.description,
                "n_runs": self.n_runs, "parcel_names": self.parcel_names,
                "networks": self.networks, "gradient_template": template, "mean": self.mean,
                "sd": self.sd}

    def save(self, path: str | Path) -> Path:
        """Write the reference as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DescriptorReference:
        """Read a reference written by :meth:`save`."""
        path = Path(path)
        try:
            content = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read a descriptor reference ({err}); write one "
                             "with DescriptorReference.save.") from err
        if content.get("version") != REFERENCE_VERSION:
            raise ValueError(f"{path}: reference version {content.get('version')}, this "
                             f"fmrilm-bids reads version {REFERENCE_VERSION}; rebuild it.")
        template = content["gradient_template"]
        return cls(mean=content["mean"], sd=content["sd"], n_runs=content["n_runs"],
                   parcel_names=content["parcel_names"], networks=content["networks"],
                   gradient_template=None if template is None else np.asarray(template),
                   description=content["description"] or str(path))

    def check_parcels(self, parcel_names: Sequence[str]) -> None:
        """Fail early when a run's parcels differ from those of the reference."""
        if self.parcel_names and list(parcel_names) != self.parcel_names:
            raise ValueError("The run's parcels differ from the reference's "
                             f"({len(parcel_names)} vs {len(self.parcel_names)} regions); "
                             "use a reference built with the same atlas.")


def build_reference(features: Sequence[RunFeatures], parcel_names: Sequence[str] = (),
                    networks: Sequence[str] = (), gradient_template: np.ndarray | None = None,
                    description: str = "") -> DescriptorReference:
    """Cohort statistics of every feature (sample SD, ``ddof=1``).

    Parameters
    ----------
    features : sequence of RunFeatures
        One per run of the cohort.
    parcel_names : sequence of str
        The parcels the features were computed on.
    networks : sequence of str
        Their networks.
    gradient_template : ndarray, optional
        The group gradients the runs were aligned to.
    description : str
        Provenance, e.g. ``"cohort of 24 runs of ds000001"``.
    """
    if not features:
        raise ValueError("A reference needs the features of at least one run.")
    keys = sorted(set().union(*(f.values for f in features)))
    mean: dict[str, float] = {}
    sd: dict[str, float | None] = {}
    for key in keys:
        column = np.array([f.values[key] for f in features if key in f.values])
        mean[key] = float(column.mean())
        sd[key] = float(column.std(ddof=1)) if column.size > 1 else None
    return DescriptorReference(mean=mean, sd=sd, n_runs=len(features),
                               parcel_names=list(parcel_names), networks=list(networks),
                               gradient_template=gradient_template,
                               description=description or f"cohort of {len(features)} runs")
