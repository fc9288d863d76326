"""The participant level's outputs, read back as the input of the fMRI-LM stages.

The model stages (descriptors, tokenizer, language model) start from the denoised parcel
time series that ``participant`` wrote (``..._seg-<atlas>_desc-denoised_timeseries.tsv``),
the confounds beside them, and the raw dataset's ``events.tsv`` and ``participants.tsv``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fmrilm_bids.dataset.layout import BoldRun, Selection
from fmrilm_bids.errors import MissingInputError


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
    if run.events is not None:
        events = pd.read_csv(run.events, sep="\t", na_values="n/a",
                             keep_default_na=False)
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
