"""One-step resampling of a BOLD series into template space.

Head motion (per volume), BOLD-to-T1w coregistration and T1w-to-template normalisation are
composed into one mapping per volume, and each volume is interpolated once (cubic B-spline),
as fMRIPrep does: no blurring from repeated interpolation.

The composition is done on points: for every output voxel, :func:`fmrilm_bids.preproc.registration.
points_field` gives its world position in the BOLD reference (template -> T1w -> BOLD
reference, computed once); the per-volume rigid transform of
:mod:`fmrilm_bids.preproc.motion` then takes it into volume ``i``, and the voxel position follows
from the BOLD affine (oblique, anisotropic or non-RAS storage orders are handled there).

Susceptibility distortion correction joins the same step, as in fMRIPrep: the voxel shift
map (:mod:`fmrilm_bids.preproc.fieldmap`), defined on the BOLD reference grid, is sampled at
each point (:func:`sample_points`); the shift is added along the phase-encoding voxel axis
after the volume's motion, and the sample is multiplied by the Jacobian of the shift.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resample_series(
    data: np.ndarray,
    affine: np.ndarray,
    points: np.ndarray,
    transforms: np.ndarray | None = None,
    order: int = 3,
    pe_axis: int | None = None,
    shifts: np.ndarray | None = None,
    jacobian: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample every volume of ``data`` at ``points`` (moved by that volume's transform).

    Parameters
    ----------
    data : array of shape (X, Y, Z, T)
        The BOLD series in its stored voxel order.
    affine : array of shape (4, 4)
        Voxel -> world (RAS+ mm) of ``data``.
    points : array of shape (N, 3)
        World points in the BOLD reference frame, one per output sample.
    transforms : array of shape (T, 4, 4), optional
        Reference-world -> volume-world rigid transforms (:func:`fmrilm_bids.preproc.motion.
        realign`); identity when omitted.
    order : int
        Spline order (3: cubic, fMRIPrep's default; 1: trilinear).
    pe_axis : int, optional
        The phase-encoding voxel axis of ``data``, with ``shifts``.
    shifts : array of shape (N,), optional
        Distortion of each point along ``pe_axis`` (voxels): the point is sampled there.
    jacobian : array of shape (N,), optional
        Intensity correction of each sample (the Jacobian of the shift).

    Returns
    -------
    values : float32 array of shape (N, T)
        Interpolated intensities (0 outside the field of view).
    inside : bool array of shape (N,)
        Points inside the field of view in every volume (half a voxel of tolerance).
    """
    n_volumes = data.shape[-1]
    to_voxel = np.linalg.inv(affine)
    homogeneous = np.column_stack([points, np.ones(len(points))]).T
    values = np.zeros((len(points), n_volumes), dtype=np.float32)
    inside = np.ones(len(points), dtype=bool)
    upper = np.array(data.shape[:3])[:, None] - 0.5
    for t in range(n_volumes):
        matrix = to_voxel if transforms is None else to_voxel @ transforms[t]
        coords = (matrix @ homogeneous)[:3]
        if shifts is not None:
            coords[pe_axis] += shifts
        inside &= np.all((coords >= -0.5) & (coords <= upper), axis=0)
        volume = np.asarray(data[..., t], dtype=np.float32)
        if order > 1:
            volume = ndimage.spline_filter(volume, order=order, mode="nearest",
                                           output=np.float32)
        values[:, t] = ndimage.map_coordinates(volume, coords, order=order, mode="nearest",
                                               prefilter=False)
    if jacobian is not None:
        values *= jacobian[:, None].astype(np.float32)
    values[~inside] = 0.0
    return values, inside


def sample_points(image: np.ndarray, affine: np.ndarray, points: np.ndarray,
                  order: int = 1) -> np.ndarray:
    """Values of a 3-D ``image`` (voxel -> world ``affine``) at world ``points`` (N, 3);
    beyond the grid, the nearest edge value."""
    coords = (np.linalg.inv(affine) @ np.column_stack([points, np.ones(len(points))]).T)[:3]
    return ndimage.map_coordinates(np.asarray(image, dtype=np.float64), coords, order=order,
                                   mode="nearest")
