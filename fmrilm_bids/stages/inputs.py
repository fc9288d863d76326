"""The participant level's outputs, read back as the input of the fMRI-LM stages.

The model stages (descriptors, tokenizer, language model) start from the denoised parcel
time series that ``participant`` wrote (``..._seg-<atlas>_desc-denoised_timeseries.tsv``),
the confounds beside them, and the raw dataset's ``events.tsv`` and ``participants.tsv``.
A run is read by :func:`read_derivative_run` (the denoised series, its sidecar, the
confounds beside it, the raw run's events); Stage 1 then needs, per run:

* **The parcels with signal.** A parcel is missing from a run when the sidecar lists it in
  ``MissingParcels`` (no column; the reason from ``MissingParcelReasons``), when its column
  holds only ``n/a``, or when its column is constant (no signal, e.g. zeros written by
  another tool). Missing parcels are never filled in: at group level the model keeps the
  parcels with signal in every run (:func:`common_parcels`), and a run applied to a model
  must have signal in every model parcel (:func:`stage1_view`). A column with ``n/a`` in
  some rows only is an input error.
* **The scanner's time grid.** Descriptor windows and tokenizer patches assume one row per
  repetition time. When volumes were censored (``CensoredVolumes``, ``--scrub``), the rows
  around them are not ``RepetitionTime`` apart, so censored volumes between the first and
  the last kept one are put back, linearly interpolated per parcel (recorded as
  ``InterpolatedVolumes`` in every Stage-1 sidecar).
* **The network of each parcel** (:func:`network_table`): the shipped table of a bundled
  atlas, or a ``network`` column in the label table of a user atlas; or, data-driven, none
  (the descriptors cluster the cohort's connectivity; every parcel the series name,
  :func:`series_parcels`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids.dataset.events import read_events
from fmrilm_bids.dataset.layout import BoldRun, Selection
from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.fmrilm.descriptors.networks import ATLAS_RULES, NETWORKS, load_network_table
from fmrilm_bids.resources.atlases import (
    ABSENT_FROM_ATLAS,
    BUNDLED_ATLASES,
    load_atlas,
    parcel_centroids,
)


@dataclass
class DerivativeRun:
    """One BOLD run's denoised parcel series, with what describes it.

    Attributes
    ----------
    bold : BoldRun
        The raw run (entities, events file).
    timeseries : DataFrame
        Denoised parcel signals (columns: parcels present in the field of view).
    metadata : dict
        The series' sidecar (``RepetitionTime``, ``StartTime``, ``MissingParcels`` ...).
    timeseries_file : Path
    confounds : DataFrame or None
        ``desc-confounds_timeseries.tsv`` rows matching ``timeseries`` (leading discarded
        volumes dropped).
    events : DataFrame or None
    """

    bold: BoldRun
    timeseries: pd.DataFrame = field(repr=False)
    metadata: dict = field(repr=False)
    timeseries_file: Path
    confounds: pd.DataFrame | None = field(default=None, repr=False)
    events: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The BIDS stem of the run, e.g. ``sub-01_task-rest``."""
        return self.bold.name

    @property
    def tr(self) -> float:
        return float(self.metadata["RepetitionTime"])

    @property
    def start_time(self) -> float:
        """Time (s) of the first row after the run's first volume onset."""
        return float(self.metadata.get("StartTime", 0.0))

    def events_in_series_time(self) -> pd.DataFrame | None:
        """``events`` with onsets counted from the first row of ``timeseries``."""
        if self.events is None:
            return None
        return self.events.assign(onset=self.events["onset"] - self.start_time)


def timeseries_path(output_dir: Path, run: BoldRun, atlas_name: str) -> Path:
    """Where the participant level writes the run's denoised series for ``atlas_name``."""
    folder = Path(output_dir) / f"sub-{run.subject}"
    if run.session:
        folder = folder / f"ses-{run.session}"
    return folder / "func" / f"{run.name}_seg-{atlas_name}_desc-denoised_timeseries.tsv"


def check_participant_outputs(selection: Selection, output_dir: Path,
                              atlas_name: str) -> None:
    """Fail early when a selected run has no denoised series for ``atlas_name`` yet.

    Raises
    ------
    MissingInputError
        Naming the first missing file and the participant-level command that makes it.
    """
    for run in selection.bold_runs:
        path = timeseries_path(output_dir, run, atlas_name)
        if not path.is_file():
            raise MissingInputError(
                f"{path}: not found; run the participant level first (fmrilm-bids BIDS_DIR "
                f"{output_dir} participant --participant-label {run.subject} "
                f"--atlas {atlas_name}).")


def read_derivative_run(output_dir: Path, run: BoldRun, atlas_name: str) -> DerivativeRun:
    """Read one run's participant-level outputs (see :func:`check_participant_outputs`)."""
    path = timeseries_path(output_dir, run, atlas_name)
    metadata = json.loads(path.with_suffix(".json").read_text())
    timeseries = pd.read_csv(path, sep="\t")
    confounds_file = path.parent / f"{run.name}_desc-confounds_timeseries.tsv"
    confounds = None
    if confounds_file.is_file():
        table = pd.read_csv(confounds_file, sep="\t", na_values="n/a")
        censored = set(metadata.get("CensoredVolumes", []))
        kept = [i for i in range(int(metadata.get("NonSteadyStateVolumes", 0)), len(table))
                if i not in censored]
        confounds = table.iloc[kept].reset_index(drop=True)
    events = None
    if run.events is not None:  # events after the end of the run are left out (a warning)
        n_volumes = (int(metadata.get("NonSteadyStateVolumes", 0)) + len(timeseries)
                     + len(metadata.get("CensoredVolumes", [])))
        events = read_events(run.events, n_volumes * float(metadata["RepetitionTime"]))
    return DerivativeRun(bold=run, timeseries=timeseries, metadata=metadata,
                         timeseries_file=path, confounds=confounds, events=events)


def collect_runs(selection: Selection, output_dir: Path, atlas_name: str
                 ) -> list[DerivativeRun]:
    """Every selected run's participant-level outputs, in selection order."""
    check_participant_outputs(selection, output_dir, atlas_name)
    return [read_derivative_run(output_dir, run, atlas_name) for run in selection.bold_runs]


def read_participants(bids_dir: Path) -> pd.DataFrame | None:
    """The dataset's ``participants.tsv`` (``n/a`` read as missing), or None."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values="n/a", dtype={"participant_id": str})


LOGGER = logging.getLogger(__name__)


def missing_parcels(run: DerivativeRun) -> dict[str, str]:
    """Parcels of a run without signal, with the reason of each (see the module docstring).

    Raises
    ------
    InputDataError
        For a column with ``n/a`` in some rows only, or a parcel listed as missing that has
        values.
    """
    metadata, values = run.metadata, run.timeseries
    reasons = metadata.get("MissingParcelReasons") or {}
    missing = {name: reasons.get(name, "listed in MissingParcels")
               for name in metadata.get("MissingParcels") or []}
    empty = values.isna()
    partial = [name for name in values.columns if empty[name].any() and not empty[name].all()]
    if partial:
        raise InputDataError(
            f"{run.timeseries_file}: parcels {', '.join(partial[:5])} have n/a values in some "
            "rows only; rerun the participant level (a missing parcel has no column, or n/a in "
            "every row).")
    for name in values.columns:
        if name in missing:
            if not empty[name].all():
                raise InputDataError(
                    f"{run.timeseries_file}: parcel {name} is listed in MissingParcels but has "
                    "values; the series and its sidecar disagree, rerun the participant level.")
        elif empty[name].all():
            missing[name] = "no signal (every value is n/a)"
        elif np.ptp(values[name].to_numpy(dtype=float)) == 0:
            missing[name] = "no signal (constant)"
    return missing


def kept_volumes(run: DerivativeRun) -> np.ndarray:
    """Volume index (0 = the run's first volume) of each row of the denoised series."""
    censored = {int(v) for v in run.metadata.get("CensoredVolumes") or []}
    first = int(run.metadata.get("NonSteadyStateVolumes", 0))
    kept = np.array([v for v in range(first, first + len(run.timeseries) + len(censored))
                     if v not in censored])
    if len(kept) != len(run.timeseries):
        raise InputDataError(
            f"{run.timeseries_file}: {len(run.timeseries)} rows, but NonSteadyStateVolumes and "
            f"CensoredVolumes in the sidecar leave {len(kept)}; rerun the participant level.")
    return kept


def interpolated_volumes(run: DerivativeRun) -> list[int]:
    """Censored volumes that :func:`on_time_grid` puts back (between kept volumes)."""
    kept = kept_volumes(run)
    return sorted(set(range(int(kept[0]), int(kept[-1]) + 1)) - set(kept.tolist()))


def on_time_grid(run: DerivativeRun) -> pd.DataFrame:
    """The run's series with one row per repetition time (censored volumes interpolated).

    Row 0 stays the first kept volume, so ``StartTime`` keeps its meaning.
    """
    kept = kept_volumes(run)
    if kept[-1] - kept[0] + 1 == len(kept):
        return run.timeseries
    grid = np.arange(kept[0], kept[-1] + 1)
    values = run.timeseries.to_numpy(dtype=float)
    filled = np.column_stack([np.interp(grid, kept, column) for column in values.T])
    return pd.DataFrame(filled, columns=run.timeseries.columns)


def stage1_view(run: DerivativeRun, parcels: Sequence[str]) -> DerivativeRun:
    """The run restricted to ``parcels`` (in that order), on its time grid.

    The view's metadata lists the ``InterpolatedVolumes`` (and no censored volume left).

    Raises
    ------
    InputDataError
        When a parcel has no signal in this run (naming the parcels and the fix).
    """
    missing = missing_parcels(run)
    absent = {name: missing.get(name, "no column") for name in parcels
              if name in missing or name not in run.timeseries.columns}
    if absent:
        listed = ", ".join(f"{name} ({reason})" for name, reason in list(absent.items())[:5])
        raise InputDataError(
            f"{run.timeseries_file}: the model needs parcels without signal in this run: "
            f"{listed}{' ...' if len(absent) > 5 else ''}; train the group model with this "
            "participant included (parcels missing from any run are left out), or use an "
            "atlas that the field of view covers.")
    restricted = replace(run, timeseries=run.timeseries[list(parcels)])
    metadata = {**run.metadata, "CensoredVolumes": [],
                "InterpolatedVolumes": interpolated_volumes(run)}
    return replace(restricted, timeseries=on_time_grid(restricted), metadata=metadata)


def common_parcels(runs: Sequence[DerivativeRun], names: Sequence[str]
                   ) -> tuple[list[str], dict[str, str]]:
    """Parcels with signal in every run, and why the others are left out.

    Parameters
    ----------
    runs : sequence of DerivativeRun
    names : sequence of str
        Every parcel of the atlas, in atlas order (the network table's ``name`` column).

    Returns
    -------
    parcels : list of str
        In atlas order.
    excluded : dict of str to str
        Parcel -> the runs that lack it and why (``"sub-01_task-rest: outside the BOLD
        brain mask"``).

    Raises
    ------
    InputDataError
        When a run has columns the atlas does not list (another atlas), or no parcel is left.
    """
    known = set(names)
    excluded: dict[str, list[str]] = {}
    for run in runs:
        unknown = [name for name in run.timeseries.columns if name not in known]
        if unknown:
            raise InputDataError(
                f"{run.timeseries_file}: parcels {', '.join(unknown[:5])} are not in the "
                "atlas's network table; give the network table of the atlas the series were "
                "extracted with.")
        missing = missing_parcels(run)
        for name in names:
            if name in missing or name not in run.timeseries.columns:
                excluded.setdefault(name, []).append(
                    f"{run.key}: {missing.get(name, 'no column')}")
    parcels = [name for name in names if name not in excluded]
    if not parcels:
        raise InputDataError("No parcel has signal in every run; check the participant "
                             "level's MissingParcels (field of view, brain masks).")
    # Parcels the atlas lists but its image does not contain are absent everywhere: say so
    # once, not as parcels that lack signal in some runs.
    absent = [name for name, reasons in excluded.items()
              if all(reason.endswith(f": {ABSENT_FROM_ATLAS}") for reason in reasons)]
    if absent:
        LOGGER.info("Stage 1 leaves out %d parcel(s) %s: %s", len(absent), ABSENT_FROM_ATLAS,
                    ", ".join(absent[:10]))
    lacking = [name for name in excluded if name not in absent]
    if lacking:
        LOGGER.warning("Stage 1 leaves out %d parcel(s) without signal in some runs: %s",
                       len(lacking), ", ".join(lacking[:10]))
    return parcels, {name: ABSENT_FROM_ATLAS if name in absent else "; ".join(reasons)
                     for name, reasons in excluded.items()}


def series_parcels(runs: Sequence[DerivativeRun]) -> list[str]:
    """Every parcel the runs name (a column, or listed in ``MissingParcels``), in the order
    they first appear (the atlas order of the series)."""
    return list(dict.fromkeys(name for run in runs for name in (
        *run.timeseries.columns, *(run.metadata.get("MissingParcels") or []))))


def network_table(atlas: str, runs: Sequence[DerivativeRun]) -> pd.DataFrame:
    """``name`` and ``network`` of every parcel of ``atlas`` (see the module docstring).

    Raises
    ------
    MissingInputError
        For a user atlas whose label table has no ``network`` column.
    InputDataError
        For networks that are not canonical (:data:`~fmrilm_bids.fmrilm.descriptors.NETWORKS`).
    """
    if atlas in ATLAS_RULES:
        table = load_network_table(atlas)
    else:
        source = Path(str(runs[0].metadata.get("AtlasSource", atlas))) if runs else Path(atlas)
        label_table = source.with_name(source.name.split(".nii")[0] + ".tsv")
        header = (pd.read_csv(label_table, sep="\t", nrows=0).columns
                  if label_table.is_file() else [])
        if "network" not in header:
            raise MissingInputError(
                f"{label_table}: Stage 1 needs the network of every parcel of atlas {atlas}; "
                f"add a 'network' column (one of {', '.join(NETWORKS)}) to the atlas's label "
                "table, or cluster the parcels into networks (--networks data-driven).")
        table = load_network_table(label_table)
    unknown = sorted(set(table["network"]) - set(NETWORKS))
    if unknown:
        raise InputDataError(f"Atlas {atlas}: networks {unknown} are not among "
                             f"{', '.join(NETWORKS)}; rename them in its network table.")
    return table


def parcel_coordinates(atlas: str, runs: Sequence[DerivativeRun],
                       parcels: Sequence[str]) -> np.ndarray:
    """MNI centre (mm) of each of ``parcels`` in the image of ``atlas`` (a bundled atlas by
    name; a user atlas from the series' ``AtlasSource``), ``(n_parcels, 3)``; NaN (position
    unknown, said in a warning) for a parcel the image lacks.

    Raises
    ------
    MissingInputError
        When the atlas image cannot be found.
    """
    source = atlas if atlas in BUNDLED_ATLASES or not runs else str(
        runs[0].metadata.get("AtlasSource", atlas))
    try:
        centres = parcel_centroids(source)
    except FileNotFoundError as err:
        raise MissingInputError(f"Atlas {atlas}: {err}") from err
    missing = [name for name in parcels if name not in centres]
    if missing:
        LOGGER.warning("Atlas %s: no voxel of %s in its image; the tokenizer reads these "
                       "parcels without their position.", source, ", ".join(missing[:10]))
    return np.array([centres.get(name, (np.nan,) * 3) for name in parcels], dtype=float)


def atlas_name(atlas: str) -> str:
    """The ``seg-`` label the participant level used for ``atlas`` (name or file)."""

    return load_atlas(atlas).name
