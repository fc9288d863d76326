"""Find an fMRIPrep derivatives tree's files for a raw BOLD run (``--derivatives fmriprep=``).

With fMRIPrep inputs, the raw dataset gives only metadata and events (as in XCP-D): its
images may be absent (DataLad without content) or placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.errors import MissingInputError

#: fMRIPrep's default output space, preferred when several MNI spaces exist.
PREFERRED_SPACE = "MNI152NLin2009cAsym"
_PREPROC = re.compile(
    r"^_space-(?P<space>MNI[A-Za-z0-9]*)(_cohort-[A-Za-z0-9]+)?(_res-[A-Za-z0-9]+)?"
    r"_desc-preproc_bold\.nii(\.gz)?$"
)


@dataclass(frozen=True)
class FmriprepRun:
    """fMRIPrep's files for one BOLD run."""

    bold: Path
    mask: Path
    confounds: Path
    confounds_metadata: Path | None
    space: str


def find_fmriprep_run(fmriprep_dir: Path, run: BoldRun) -> FmriprepRun:
    """Locate the MNI-space preprocessed BOLD, mask and confounds of ``run``.

    Raises
    ------
    MissingInputError
        When fMRIPrep has no MNI-space BOLD, mask or confounds for the run.
    """
    folder = Path(fmriprep_dir) / f"sub-{run.subject}"
    if run.session:
        folder = folder / f"ses-{run.session}"
    folder = folder / "func"
    candidates = []
    for path in sorted(folder.glob(f"{run.name}_space-MNI*_desc-preproc_bold.nii*")):
        match = _PREPROC.match(path.name[len(run.name):])
        if match:
            candidates.append((match["space"] != PREFERRED_SPACE, path.name, path))
    if not candidates:
        raise MissingInputError(
            f"{folder}: no {run.name}_space-MNI*_desc-preproc_bold.nii.gz in the fMRIPrep "
            "derivatives; run fMRIPrep with --output-spaces MNI152NLin2009cAsym.")
    bold = min(candidates)[2]
    mask = Path(re.sub(r"_desc-preproc_bold(\.nii(\.gz)?)$", r"_desc-brain_mask\1", str(bold)))
    confounds = folder / f"{run.name}_desc-confounds_timeseries.tsv"
    for needed in (mask, confounds):
        if not needed.is_file():
            raise MissingInputError(f"{needed}: missing from the fMRIPrep derivatives.")
    sidecar = confounds.with_suffix(".json")
    return FmriprepRun(bold=bold, mask=mask, confounds=confounds,
                       confounds_metadata=sidecar if sidecar.is_file() else None,
                       space=_PREPROC.match(bold.name[len(run.name):])["space"])
