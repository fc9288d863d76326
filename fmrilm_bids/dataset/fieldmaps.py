"""Which field map corrects which BOLD run, found the BIDS way (as SDCflows' ``find_estimators``).

1. ``B0FieldIdentifier``: when a field-map file of the participant has one, the files that
   share an identifier make one estimator, and it corrects the BOLD runs whose
   ``B0FieldSource`` names it; ``IntendedFor`` is then not used (as SDCflows does).
2. Otherwise ``IntendedFor`` (paths relative to the participant folder, e.g.
   ``ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz``, or BIDS URIs ``bids::sub-01/func/...``):
   each ``_phasediff`` (with its ``_magnitude1``) is an estimator; ``_epi`` images intended
   for the same runs make one PEPOLAR estimator when they hold opposite phase-encoding
   polarities along one axis.

Estimators: ``phasediff`` (``_phasediff`` with ``EchoTime1``/``EchoTime2``, ``_magnitude1``,
optional ``_magnitude2``) and ``pepolar`` (two or more ``_epi`` images on one grid, each with
``PhaseEncodingDirection`` and ``TotalReadoutTime`` or ``EffectiveEchoSpacing``). Other kinds
(``_fieldmap``, ``_phase1``/``_phase2``, one ``_epi`` paired with the BOLD run itself) are not
implemented: they are named in a warning and the runs are not corrected.

A field map whose own metadata are incomplete is skipped with a warning naming the file and
what to add, and its runs are processed without distortion correction, as SDCflows does
(it drops such an estimator with a warning, then fMRIPrep runs without it). A BOLD run that a
usable field map is intended for but that lacks ``PhaseEncodingDirection`` or its readout
time cannot be corrected; fMRIPrep fails on it during the run, fmrilm-bids refuses it before
any work (:func:`fmrilm_bids.dataset.checks.check_bold_run`, exit code 65).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib

from fmrilm_bids.errors import InputDataError

LOGGER = logging.getLogger(__name__)

PHASEDIFF, PEPOLAR = "phasediff", "pepolar"
#: The voxel axis and polarity of each BIDS ``PhaseEncodingDirection``.
PE_DIRECTIONS = {"i": (0, 1), "i-": (0, -1), "j": (1, 1), "j-": (1, -1), "k": (2, 1),
                 "k-": (2, -1)}
#: Field-map suffixes that fmrilm-bids does not use (named in a warning when found).
UNSUPPORTED_SUFFIXES = ("fieldmap", "phase1", "phase2")
_NIFTI = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Fieldmap:
    """One B0 field-map estimator.

    Attributes
    ----------
    identifier : str
        Its ``B0FieldIdentifier``, or ``auto_<n>`` when found through ``IntendedFor``.
    method : {"phasediff", "pepolar"}
    sources : tuple of Path
        ``phasediff``: the phase difference, ``_magnitude1`` (and ``_magnitude2``);
        ``pepolar``: the ``_epi`` images.
    metadata : tuple of dict
        The sidecar of each source (BIDS inheritance applied).
    """

    identifier: str
    method: str
    sources: tuple[Path, ...]
    metadata: tuple[dict[str, Any], ...] = field(compare=False, hash=False, default=())

    @property
    def echo_times(self) -> tuple[float, float]:
        """``EchoTime1`` and ``EchoTime2`` (s) of a phase-difference map."""
        meta = self.metadata[0]
        return float(meta["EchoTime1"]), float(meta["EchoTime2"])

    @property
    def description(self) -> str:
        """The estimator in words, e.g. ``phase-difference field map sub-01_phasediff``."""
        kind = ("phase-difference field map" if self.method == PHASEDIFF
                else "PEPOLAR field map (EPI images with opposite phase encoding)")
        names = ", ".join(path.name.split(".nii")[0] for path in self.sources)
        return f"{kind} {names}"


def listify(value: Any) -> list[Any]:
    """A metadata value that may be one item or a list, as a list (``None``: empty)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def phase_encoding(metadata: dict[str, Any]) -> tuple[int, int]:
    """The voxel axis and polarity of ``PhaseEncodingDirection``.

    Raises
    ------
    ValueError
        When it is missing or not one of i, i-, j, j-, k, k-.
    """
    direction = metadata.get("PhaseEncodingDirection")
    if direction not in PE_DIRECTIONS:
        what = "is missing" if direction is None else f"is {direction!r}"
        raise ValueError(f"PhaseEncodingDirection {what} (one of i, i-, j, j-, k, k-)")
    return PE_DIRECTIONS[direction]


def total_readout_time(metadata: dict[str, Any], shape: Sequence[int]) -> float:
    """``TotalReadoutTime`` (s), or ``EffectiveEchoSpacing * (N - 1)`` with ``N`` the
    image's size along the phase-encoding axis (the BIDS definition).

    Raises
    ------
    ValueError
        When neither is given (or they are not positive numbers), or the phase-encoding
        direction is unknown.
    """
    value = metadata.get("TotalReadoutTime")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    spacing = metadata.get("EffectiveEchoSpacing")
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) and spacing > 0:
        axis, _ = phase_encoding(metadata)
        return float(spacing) * (int(shape[axis]) - 1)
    raise ValueError("TotalReadoutTime (or EffectiveEchoSpacing) is missing")


def resolve_intent(intent: str, root: Path, subject: str) -> Path | None:
    """The file an ``IntendedFor`` entry names: a BIDS URI of this dataset
    (``bids::sub-01/func/...``) or a path relative to the participant folder; None for a
    URI of another dataset."""
    if intent.startswith("bids:"):
        dataset, _, relative = intent[len("bids:"):].partition(":")
        return root / relative if dataset == "" else None
    return root / f"sub-{subject}" / intent


def _sibling(path: Path, suffix: str, new_suffix: str) -> Path | None:
    """The file beside ``path`` with ``_<new_suffix>`` for ``_<suffix>`` (either extension)."""
    stem = path.name.split(".nii")[0]
    base = stem[: -len(suffix)] + new_suffix
    for extension in _NIFTI:
        candidate = path.with_name(base + extension)
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def _echo_time(metadata: dict[str, Any], key: str) -> float:
    value = metadata.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{key} is {'missing' if value is None else repr(value)}; add "
                         "EchoTime1 and EchoTime2 (s) to its sidecar")
    return float(value)


def _phasediff(identifier: str, phasediff: Path, metadata: dict[str, Any],
               files: Iterable[Path] = ()) -> Fieldmap:
    """A phase-difference estimator (its magnitudes from ``files`` or beside it)."""
    first, second = _echo_time(metadata, "EchoTime1"), _echo_time(metadata, "EchoTime2")
    if first == second:
        raise ValueError("EchoTime1 and EchoTime2 are equal (no phase evolves between "
                         "them); correct them in its sidecar")
    by_suffix = {_suffix(f): f for f in files}
    magnitudes = []
    for suffix in ("magnitude1", "magnitude2"):
        found = by_suffix.get(suffix) or _sibling(phasediff, "phasediff", suffix)
        if found is not None:
            magnitudes.append(found)
        elif suffix == "magnitude1":
            raise ValueError(f"its {phasediff.name.split('_phasediff')[0]}_magnitude1.nii.gz "
                             "is missing; restore it beside the phase difference")
    return Fieldmap(identifier=identifier, method=PHASEDIFF,
                    sources=(phasediff, *magnitudes), metadata=(metadata,))


def _pepolar(identifier: str, epis: Sequence[tuple[Path, dict[str, Any]]]) -> Fieldmap:
    """A PEPOLAR estimator from ``_epi`` images (two polarities along one axis, one grid)."""
    directions = []
    reference = None
    for path, metadata in epis:
        try:
            img = nib.load(path)
        except Exception as err:  # nibabel raises several types for broken headers
            raise InputDataError(f"{path}: not a readable NIfTI ({err}); re-convert it from the "
                                 "scanner data (e.g. dcm2niix), or pass --ignore fieldmaps "
                                 "to process its runs without it.") from err
        try:
            directions.append(phase_encoding(metadata))
            total_readout_time(metadata, img.shape)
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}; add it to its sidecar") from None
        if reference is None:
            reference = img
        elif img.shape[:3] != reference.shape[:3] or not _same_grid(img, reference):
            raise ValueError(f"{path.name} is not on the grid of {epis[0][0].name}; PEPOLAR "
                             "images must share one grid")
    axes = {axis for axis, _ in directions}
    polarities = {sign for _, sign in directions}
    if len(axes) != 1 or polarities != {1, -1}:
        found = ", ".join(sorted(str(m.get("PhaseEncodingDirection")) for _, m in epis))
        raise ValueError(f"their PhaseEncodingDirection ({found}) are not opposite "
                         "polarities along one axis, which PEPOLAR needs")
    return Fieldmap(identifier=identifier, method=PEPOLAR,
                    sources=tuple(path for path, _ in epis),
                    metadata=tuple(metadata for _, metadata in epis))


def _same_grid(first: Any, second: Any, tolerance: float = 1e-3) -> bool:
    return bool(abs(first.affine - second.affine).max() < tolerance)


def _suffix(path: Path) -> str:
    return path.name.split(".nii")[0].rsplit("_", 1)[-1]


def _skip(files: Sequence[Path], reason: str) -> None:
    """One warning line: the field map, what is wrong with it and the fix (``reason``)."""
    LOGGER.warning("%s: this field map is not used (as SDCflows does), so the runs it is "
                   "intended for are not corrected for susceptibility distortions: %s.",
                   files[0], reason)


def _build(identifier: str, files: Sequence[tuple[Path, dict[str, Any]]]) -> Fieldmap | None:
    """The estimator ``files`` make, or None (a warning says why)."""
    suffixes = {_suffix(path) for path, _ in files}
    paths = [path for path, _ in files]
    unsupported = suffixes & set(UNSUPPORTED_SUFFIXES)
    try:
        if "phasediff" in suffixes:
            phasediff, metadata = next((p, m) for p, m in files if _suffix(p) == "phasediff")
            return _phasediff(identifier, phasediff, metadata, paths)
        if unsupported:
            raise ValueError(f"_{'/_'.join(sorted(unsupported))} field maps are not "
                             "implemented (phase difference and PEPOLAR are)")
        epis = [(p, m) for p, m in files if _suffix(p) == "epi"]
        if len(epis) < 2:
            raise ValueError("one _epi image alone (paired with the BOLD run itself) is not "
                             "implemented; PEPOLAR needs two or more _epi images")
        return _pepolar(identifier, epis)
    except ValueError as err:
        _skip(paths, str(err))
        return None


def find_fieldmaps(layout: Any, subject: str, bold_files: Sequence[Path],
                   bold_metadata: Sequence[dict[str, Any]]) -> dict[Path, Fieldmap]:
    """The field map of each BOLD run of ``subject`` that has a usable one.

    Parameters
    ----------
    layout : bids.layout.BIDSLayout
    subject : str
        Participant label (without ``sub-``).
    bold_files, bold_metadata : sequences
        The participant's selected BOLD runs and their metadata (``B0FieldSource``).

    Returns
    -------
    dict
        BOLD path -> :class:`Fieldmap` (runs without one are absent). A run named by several
        estimators gets the first (sorted by identifier), with a warning.
    """
    root = Path(layout.root)
    files = [(Path(f.path), dict(layout.get_metadata(f.path))) for f in layout.get(
        subject=subject, datatype="fmap", extension=list(_NIFTI))]
    identifiers = sorted({str(i) for _, meta in files
                          for i in listify(meta.get("B0FieldIdentifier"))})
    candidates: list[tuple[Fieldmap | None, set[Path]]] = []
    if identifiers:
        for identifier in identifiers:
            members = [(p, m) for p, m in files
                       if identifier in map(str, listify(m.get("B0FieldIdentifier")))]
            targets = {Path(b) for b, meta in zip(bold_files, bold_metadata, strict=True)
                       if identifier in map(str, listify(meta.get("B0FieldSource")))}
            candidates.append((_build(identifier, members), targets))
    else:
        groups: dict[tuple[str, ...], list[tuple[Path, dict[str, Any]]]] = {}
        for path, meta in files:
            intents = tuple(sorted(map(str, listify(meta.get("IntendedFor")))))
            suffix = _suffix(path)
            if not intents or suffix in ("magnitude1", "magnitude2", "magnitude"):
                continue
            if suffix == "epi":
                groups.setdefault(intents, []).append((path, meta))
            else:
                groups[(str(path), *intents)] = [(path, meta)]
        for index, (key, members) in enumerate(sorted(groups.items())):
            intents = key[1:] if _suffix(members[0][0]) != "epi" else key
            targets = {target for intent in intents
                       if (target := resolve_intent(intent, root, subject)) is not None}
            candidates.append((_build(f"auto_{index:05d}", members), targets))
    found: dict[Path, Fieldmap] = {}
    wanted = {Path(b).absolute(): Path(b) for b in bold_files}
    for estimator, targets in candidates:
        for target in sorted(targets):
            bold = wanted.get(target.absolute())
            if bold is None or estimator is None:
                continue
            if bold in found:
                LOGGER.warning("%s: several field maps are intended for this run; using %s "
                               "(first by identifier), not %s.", bold, found[bold].identifier,
                               estimator.identifier)
                continue
            found[bold] = estimator
    return found
