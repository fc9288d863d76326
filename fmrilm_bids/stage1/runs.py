"""The participant level's parcel series, made ready for Stage 1.

A run is read by :func:`fmrilm_bids.derivative_runs.read_derivative_run` (the denoised series,
its sidecar, the confounds beside it, the raw run's events). Stage 1 then needs, per run:

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

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.derivative_runs import DerivativeRun, read_derivative_run, timeseries_path
from fmrilm_bids.descriptors.networks import ATLAS_RULES, NETWORKS, load_network_table
from fmrilm_bids.errors import InputDataError, MissingInputError

LOGGER = logging.getLogger("fmrilm_bids")


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
    if excluded:
        LOGGER.warning("Stage 1 leaves out %d parcel(s) without signal in some runs: %s",
                       len(excluded), ", ".join(list(excluded)[:10]))
    return parcels, {name: "; ".join(reasons) for name, reasons in excluded.items()}


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
        For networks that are not canonical (:data:`~fmrilm_bids.descriptors.NETWORKS`).
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


def read_run_files(timeseries_file: Path, source_file: Path,
                   events_file: Path | None = None) -> DerivativeRun:
    """Read a run from its written files (for one-run steps, e.g. nipype interfaces).

    Parameters
    ----------
    timeseries_file : Path
        ``sub-<label>/.../<run>_seg-<atlas>_desc-denoised_timeseries.tsv`` in a derivatives
        folder, with its JSON sidecar and the run's ``_desc-confounds_timeseries.tsv`` beside.
    source_file : Path
        The raw BOLD run.
    events_file : Path, optional
        The raw run's ``events.tsv``.
    """
    from bids.layout import parse_file_entities

    timeseries_file = Path(timeseries_file).absolute()
    entities = parse_file_entities(str(source_file))
    bold = BoldRun(path=Path(source_file).absolute(), subject=entities["subject"],
                   task=entities["task"], session=entities.get("session"),
                   run=entities.get("run"), acquisition=entities.get("acquisition"),
                   events=Path(events_file).absolute() if events_file else None)
    root = derivatives_root(timeseries_file, bold.subject)
    atlas = parse_file_entities(str(timeseries_file)).get("segmentation")
    if root is None or atlas is None or timeseries_path(root, bold, atlas) != timeseries_file:
        raise InputDataError(f"{timeseries_file}: not the denoised series of {source_file} in "
                             "a derivatives folder (sub-<label>/[ses-<label>/]func/<run>_"
                             "seg-<atlas>_desc-denoised_timeseries.tsv).")
    return read_derivative_run(root, bold, atlas)


def derivatives_root(path: Path, subject: str) -> Path | None:
    """The derivatives folder holding ``path`` (the parent of its ``sub-<subject>`` folder)."""
    return next((folder.parent for folder in Path(path).absolute().parents
                 if folder.name == f"sub-{subject}"), None)
