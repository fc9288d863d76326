"""Output templates: MNI152NLin2009aSym, served through a local TemplateFlow home, and any
template that home already holds (``--output-spaces``).

nilearn ships the ICBM152 2009a nonlinear *symmetric* template (TemplateFlow's
``MNI152NLin2009aSym``). :func:`ensure_template` writes it, with a brain mask and tissue
probability maps, into ``$TEMPLATEFLOW_HOME`` laid out the TemplateFlow way, so that
``templateflow.api.get`` finds it offline. Files that a real TemplateFlow home already holds
(``res-1`` or ``res-01``) are used as they are and never overwritten or duplicated.

:func:`get_template` reads the folder directly rather than through ``templateflow.api``,
whose index is built once per process (from the ``TEMPLATEFLOW_HOME`` seen at import, and
before the files were written). :func:`space_file` does the same for the other templates of
the home (``tpl-<name>/[cohort-<c>/]tpl-<name>[_cohort-<c>]_res-<NN>_<key>.nii.gz``), which
are read as they are and never downloaded: one that is missing is refused with one line
saying how to add it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import datasets

from fmrilm_bids.config import Space
from fmrilm_bids.errors import MissingInputError
from fmrilm_bids.utils.files import atomic_write

TEMPLATE = "MNI152NLin2009aSym"
RESOLUTIONS = (1, 2)
#: The images fmrilm-bids uses, by their TemplateFlow entities and suffix.
TEMPLATE_FILES = ("T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg",
                  "label-CSF_probseg")
#: What every output space needs (registration target, BOLD mask) ...
SPACE_FILES = ("T1w", "desc-brain_mask")
#: ... and what the analysis space (the first) needs besides: the confounds' tissue priors.
ANALYSIS_SPACE_FILES = (*SPACE_FILES, "label-WM_probseg", "label-CSF_probseg")


def _templateflow_home() -> Path:
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        raise RuntimeError(
            "TEMPLATEFLOW_HOME is not set: call "
            "fmrilm_bids.utils.environment.configure_environment() before using templates."
        )
    return Path(home)


def _template_dir() -> Path:
    return _templateflow_home() / f"tpl-{TEMPLATE}"


def _nilearn_images(resolution: int) -> dict[str, object]:

    res = None if resolution == 1 else resolution
    return {
        "T1w": datasets.load_mni152_template(resolution=res),
        "desc-brain_mask": datasets.load_mni152_brain_mask(resolution=res, threshold=0.2),
        "label-GM_probseg": datasets.load_mni152_gm_template(resolution=res),
        "label-WM_probseg": datasets.load_mni152_wm_template(resolution=res),
    }


def _write_float(img: nib.Nifti1Image, path: Path, dtype: type = np.float32) -> None:

    data = np.asarray(img.get_fdata(), dtype=dtype)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_data_dtype(dtype)
    out.set_qform(img.affine, code=4)
    out.set_sform(img.affine, code=4)
    atomic_write(path, out.to_filename)


def _file_name(resolution: int, key: str, padded: bool = True, template: str = TEMPLATE,
               cohort: str | None = None) -> str:
    res = f"{resolution:02d}" if padded else str(resolution)
    cohort_entity = f"_cohort-{cohort}" if cohort else ""
    return f"tpl-{template}{cohort_entity}_res-{res}_{key}.nii.gz"


def _existing(folder: Path, resolution: int, key: str, template: str = TEMPLATE,
              cohort: str | None = None) -> Path | None:
    """The non-empty file for ``key`` at ``resolution`` (``res-01`` or ``res-1``), if any."""
    for padded in (True, False):
        path = folder / _file_name(resolution, key, padded, template, cohort)
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def ensure_template() -> Path:
    """Make sure ``$TEMPLATEFLOW_HOME/tpl-MNI152NLin2009aSym`` holds what fmrilm-bids uses.

    Writes, for 1 mm and 2 mm: ``_T1w``, ``_desc-brain_mask``, ``_label-GM_probseg``,
    ``_label-WM_probseg`` and ``_label-CSF_probseg`` (CSF: inside the brain mask, neither GM
    nor WM), plus ``template_description.json``. Only missing or empty files are written.

    Returns
    -------
    Path
        The template folder.
    """
    folder = _template_dir()
    folder.mkdir(parents=True, exist_ok=True)
    description = folder / "template_description.json"
    resolutions = {}
    for resolution in RESOLUTIONS:
        wanted = {
            key: _existing(folder, resolution, key) or folder / _file_name(resolution, key)
            for key in TEMPLATE_FILES
        }
        images = None
        if any(not p.is_file() or p.stat().st_size == 0 for p in wanted.values()):
            images = _nilearn_images(resolution)
            for key, img in images.items():
                path = wanted[key]
                if not path.is_file() or path.stat().st_size == 0:
                    dtype = np.uint8 if key.endswith("mask") else np.float32
                    _write_float(img, path, dtype)
            csf = wanted["label-CSF_probseg"]
            if not csf.is_file() or csf.stat().st_size == 0:

                mask = images["desc-brain_mask"].get_fdata() > 0
                tissue = images["label-GM_probseg"].get_fdata() + images[
                    "label-WM_probseg"
                ].get_fdata()
                prob = np.clip(1.0 - tissue, 0, 1) * mask
                _write_float(nib.Nifti1Image(prob, images["T1w"].affine), csf)

        ref = nib.load(wanted["T1w"])
        resolutions[str(resolution)] = {
            "origin": [float(v) for v in ref.affine[:3, 3]],
            "shape": [int(v) for v in ref.shape[:3]],
            "zooms": [float(v) for v in ref.header.get_zooms()[:3]],
        }
    if not description.is_file() or description.stat().st_size == 0:
        description.write_text(
            json.dumps(
                {
                    "Identifier": TEMPLATE,
                    "Name": "ICBM 2009a Nonlinear Symmetric (as shipped by nilearn)",
                    "Authors": ["Fonov V", "Evans AC", "McKinstry RC", "Almli CR", "Collins DL"],
                    "ReferencesAndLinks": ["https://doi.org/10.1016/j.neuroimage.2010.07.033"],
                    "TemplateFlowVersion": "1.0.0",
                    "res": resolutions,
                },
                indent=2,
            )
        )
    return folder


def get_template(resolution: int = 2, suffix: str = "T1w", **entities: str | None) -> Path:
    """One template file, written on first use.

    Parameters
    ----------
    resolution : {1, 2}
        Voxel size in mm.
    suffix : str
        ``"T1w"``, ``"mask"`` or ``"probseg"``.
    **entities
        ``desc="brain"`` for the mask, ``label="GM"|"WM"|"CSF"`` for the probability maps.

    Returns
    -------
    Path
    """
    key = "_".join([*(f"{name}-{entities[name]}" for name in ("label", "desc")
                      if entities.get(name)), suffix])
    if key not in TEMPLATE_FILES or resolution not in RESOLUTIONS:
        raise FileNotFoundError(
            f"{TEMPLATE} has no res-{resolution} {key} image here; available: "
            f"{', '.join(TEMPLATE_FILES)} at res {', '.join(map(str, RESOLUTIONS))}.")
    found = _existing(ensure_template(), resolution, key)
    if found is None:
        raise FileNotFoundError(f"{_template_dir()}: {_file_name(resolution, key)} could not "
                                "be written; check that TEMPLATEFLOW_HOME is writable.")
    return found


def space_file(space: Space, suffix: str = "T1w", **entities: str | None) -> Path:
    """One image of an output space, from the TemplateFlow home (never downloaded).

    The bundled ``MNI152NLin2009aSym`` is written on first use (:func:`get_template`); any
    other template must already be in ``$TEMPLATEFLOW_HOME``.

    Parameters
    ----------
    space : fmrilm_bids.config.Space
    suffix, **entities
        As for :func:`get_template`.

    Raises
    ------
    MissingInputError
        When the home lacks the file: one line saying how to add the template.
    """
    if space.template == TEMPLATE and not space.cohort and space.resolution in RESOLUTIONS:
        return get_template(space.resolution, suffix, **entities)
    key = "_".join([*(f"{name}-{entities[name]}" for name in ("label", "desc")
                      if entities.get(name)), suffix])
    home = _templateflow_home()
    folder = home / f"tpl-{space.template}"
    if space.cohort:
        folder = folder / f"cohort-{space.cohort}"
    found = _existing(folder, space.resolution, key, space.template, space.cohort)
    if found is None:
        cohort = f", cohort='{space.cohort}'" if space.cohort else ""
        raise MissingInputError(
            f"{folder / _file_name(space.resolution, key, True, space.template, space.cohort)}"
            f": output space {space.label} is not in the TemplateFlow home {home} (nothing is "
            "downloaded at run time); add it from a machine online with `python -c \"from "
            f"templateflow import api; api.get('{space.template}', resolution={space.resolution}"
            f"{cohort})\"` and copy its tpl-{space.template} folder into {home} (or point "
            "TEMPLATEFLOW_HOME at a home that holds it).")
    return found


def check_spaces(spaces: list[Space]) -> None:
    """Check that the TemplateFlow home holds every file the output spaces need: the first
    (analysis) space :data:`ANALYSIS_SPACE_FILES`, the others :data:`SPACE_FILES`.

    Raises
    ------
    MissingInputError
        For the first missing file (:func:`space_file`).
    """
    for index, space in enumerate(spaces):
        for key in ANALYSIS_SPACE_FILES if index == 0 else SPACE_FILES:
            *named, suffix = key.split("_")
            space_file(space, suffix, **dict(n.split("-", 1) for n in named))
