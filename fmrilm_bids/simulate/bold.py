"""BOLD volumes: parcel signals in template space, seen through head motion and slice timing.

Image formation, per volume ``t`` and voxel ``v`` of slice ``k`` (see
:mod:`fmrilm_bids.simulate` for the names of the recorded transforms)::

    x      = (H_t @ mni_to_bold)^-1 @ bold_affine @ v        # MNI point imaged at v
    S(v,t) = [S0(x) + S0g(x) * s_{p(x)}(t_k) / 100] * (1 + d(t) / 100) * gain(v)
    I(v,t) = | S(v,t) + n_re + i n_im |                        # Rician thermal noise

with ``S0`` the T2*-weighted baseline and ``S0g = S0 * P(GM)`` (signal change comes from
grey matter), both blurred to the acquisition's point-spread function (Gaussian, FWHM one
BOLD voxel) so the voxels do not alias and sampled with trilinear interpolation; ``p(x)``
the atlas parcel at ``x`` (nearest neighbour); ``s_p`` the parcel's signal (% change) at the
acquisition time ``t_k = t * TR + SliceTiming[k]`` of the slice; ``d`` the scanner drift
(%); and ``gain`` a static receive-coil field in scanner space.

With a B0 field (:class:`Distortion`, ``fieldmap`` of the simulation), the image is also
distorted along the phase-encoding axis, as an EPI readout does: the tissue at voxel ``y``
appears at ``y + s(y)`` with ``s = field(x) * TotalReadoutTime * polarity`` voxels (the field
moves with the head), and its intensity is divided by the Jacobian ``1 + ds/dy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fmrilm_bids.simulate.anatomy import Template, bold_baseline, rician


@dataclass(frozen=True)
class BoldSource:
    """What the scanner images, on the template grid.

    Attributes
    ----------
    affine : ndarray of shape (4, 4)
        Template voxel -> MNI world.
    baseline : ndarray
        ``S0``, the T2*-weighted baseline intensity.
    active : ndarray
        ``S0 * P(GM)``: the part of the baseline whose signal changes with its parcel.
    parcel_column : ndarray of int
        1 + the column of each voxel's parcel in the signal matrix; 0 outside every parcel.
    """

    affine: np.ndarray = field(repr=False)
    baseline: np.ndarray = field(repr=False)
    active: np.ndarray = field(repr=False)
    parcel_column: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Distortion:
    """A B0 field and how an EPI readout turns it into a shift.

    Attributes
    ----------
    field : ndarray
        Off-resonance (Hz) on the :class:`BoldSource` grid (template space: it moves with the
        head).
    pe_axis : int
        The phase-encoding voxel axis of the image.
    shift_per_hz : float
        ``TotalReadoutTime * polarity`` (voxels per Hz).
    """

    field: np.ndarray = field(repr=False)
    pe_axis: int = 1
    shift_per_hz: float = 0.0

    def source_points(self, matrix: np.ndarray, voxels: np.ndarray,
                      iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """Where each observed voxel's signal comes from, and the Jacobian there.

        Parameters
        ----------
        matrix : ndarray of shape (4, 4)
            Image voxel -> source-grid voxel, for this volume.
        voxels : ndarray of shape (3, N)
            Observed voxel indices.

        Returns
        -------
        source : ndarray of shape (3, N)
            The voxel ``y`` with ``y + s(y) = v`` for each observed ``v`` (fixed-point
            iteration, exact while ``|ds/dy| < 1``).
        jacobian : ndarray of shape (N,)
            ``1 + ds/dy`` at ``source``.
        """
        source = voxels.copy()
        for _ in range(iterations):
            source[self.pe_axis] = voxels[self.pe_axis] - self._shift(matrix, source)
        step = np.zeros((3, 1), dtype=voxels.dtype)
        step[self.pe_axis] = 0.5
        jacobian = 1.0 + self._shift(matrix, source + step) - self._shift(matrix, source - step)
        return source, jacobian

    def _shift(self, matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
        coords = matrix[:3, :3] @ points + matrix[:3, 3:]
        return self.shift_per_hz * ndimage.map_coordinates(self.field, coords, order=1,
                                                           mode="nearest")


def point_spread_sigma(fwhm: float, grid_step: float) -> float:
    """Gaussian blur (sd, in grid steps) that, with trilinear sampling, gives PSF ``fwhm``.

    Trilinear interpolation already blurs by a tent of half-width one grid step (variance
    ``step**2 / 6``); the rest of the point-spread function's variance comes from the blur.
    """
    variance = (fwhm / np.sqrt(8 * np.log(2))) ** 2 - grid_step ** 2 / 6.0
    return float(np.sqrt(max(variance, 0.0)) / grid_step)


def bold_source(template: Template, atlas_labels: np.ndarray, label_values: list[int],
                fwhm: float) -> BoldSource:
    """Build the :class:`BoldSource` from the template and an atlas on the same grid.

    Parameters
    ----------
    atlas_labels : ndarray of int
        Atlas label image on the template grid.
    label_values : list of int
        Atlas label of each signal column, in column order.
    fwhm : float
        Full width at half maximum (mm) of the acquisition's Gaussian point-spread function
        (about one BOLD voxel): the baseline images are blurred so that sampling them at the
        voxel centres gives this resolution without aliasing.
    """
    lookup = np.zeros(int(max(atlas_labels.max(), max(label_values))) + 1, dtype=np.int32)
    lookup[np.asarray(label_values)] = np.arange(1, len(label_values) + 1)
    column = lookup[np.asarray(atlas_labels, dtype=np.int64)] * template.mask
    sigma = point_spread_sigma(fwhm, float(np.abs(template.affine[0, 0])))
    baseline = bold_baseline(template)
    active = ndimage.gaussian_filter(baseline * template.gm, sigma, mode="constant")
    return BoldSource(affine=template.affine,
                      baseline=ndimage.gaussian_filter(baseline, sigma, mode="constant"),
                      active=active.astype(np.float32), parcel_column=column.astype(np.int32))


def voxel_to_source(source: BoldSource, mni_to_bold: np.ndarray, motion: np.ndarray,
                    bold_affine: np.ndarray) -> np.ndarray:
    """Map BOLD voxel indices to template voxel indices during one volume.

    Parameters
    ----------
    mni_to_bold : ndarray of shape (4, 4)
        MNI world -> scanner world with the head at rest in the run.
    motion : ndarray of shape (4, 4)
        The volume's head motion ``H_t`` (scanner world -> scanner world).
    bold_affine : ndarray of shape (4, 4)
        BOLD voxel -> scanner world.
    """
    return (np.linalg.inv(source.affine) @ np.linalg.inv(motion @ mni_to_bold) @ bold_affine)


def synthesize_bold(source: BoldSource, bold_affine: np.ndarray, bold_shape: tuple[int, ...],
                    mni_to_bold: np.ndarray, motion: np.ndarray, signals: np.ndarray,
                    slice_position: np.ndarray, drift: np.ndarray, gain: np.ndarray,
                    noise_sigma: float, rng: np.random.Generator,
                    distortion: Distortion | None = None) -> np.ndarray:
    """Form the BOLD series (see the module docstring).

    Parameters
    ----------
    source : BoldSource
    bold_affine, bold_shape
        The 3-D BOLD grid; slices run along its third axis.
    mni_to_bold : ndarray of shape (4, 4)
    motion : ndarray of shape (n_volumes, 4, 4)
        Head motion of each volume, constant within the volume.
    signals : ndarray of shape (n_volumes * n_slices, n_parcels)
        Parcel signals (% change) on the slice grid: row ``t * n_slices + j`` is the time
        ``(t + j / n_slices) * TR``.
    slice_position : ndarray of int, shape (n_slices,)
        Acquisition position of each slice within a volume.
    drift : ndarray of shape (n_volumes,)
        Global scanner drift (%).
    gain : ndarray of shape bold_shape
        Static receive field.
    noise_sigma : float
        Thermal noise per channel (scanner units); 0 for a noise-free series.
    rng : numpy.random.Generator
    distortion : Distortion, optional
        A B0 field distorting the image along its phase-encoding axis.

    Returns
    -------
    ndarray of float32, shape bold_shape + (n_volumes,)
    """
    n_volumes, n_slices = len(motion), bold_shape[2]
    if signals.shape[0] != n_volumes * n_slices:
        raise ValueError(f"signals have {signals.shape[0]} rows; expected "
                         f"{n_volumes} volumes x {n_slices} slices.")
    table = np.concatenate([np.zeros((signals.shape[0], 1)), signals], axis=1) / 100.0
    table = table.astype(np.float32)
    gain = np.asarray(gain, dtype=np.float32).ravel()
    voxels = np.indices(bold_shape[:3]).reshape(3, -1)
    slice_rows = np.asarray(slice_position)[voxels[2]]
    voxels = voxels.astype(np.float32)
    # Template voxels whose trilinear neighbourhood touches the brain; elsewhere S0 = 0.
    support = ndimage.binary_dilation(source.baseline > 0, np.ones((3, 3, 3), dtype=bool))
    support, labels = support.ravel(), source.parcel_column.ravel()
    size = np.asarray(source.baseline.shape)
    series = np.empty((*bold_shape[:3], n_volumes), dtype=np.float32)
    for volume in range(n_volumes):
        matrix = voxel_to_source(source, mni_to_bold, motion[volume], bold_affine)
        matrix = matrix.astype(np.float32)
        seen, jacobian = voxels, None
        if distortion is not None:
            seen, jacobian = distortion.source_points(matrix, voxels)
        coords = matrix[:3, :3] @ seen + matrix[:3, 3:]
        nearest = np.rint(coords).astype(np.intp)
        inside = ((nearest[0] >= 0) & (nearest[0] < size[0]) & (nearest[1] >= 0)
                  & (nearest[1] < size[1]) & (nearest[2] >= 0) & (nearest[2] < size[2]))
        flat = np.where(inside, (nearest[0] * size[1] + nearest[1]) * size[2] + nearest[2], 0)
        keep = inside & support[flat]
        points = coords[:, keep]
        baseline, active = (ndimage.map_coordinates(image, points, order=1, mode="constant",
                                                    cval=0.0)
                            for image in (source.baseline, source.active))
        rows = volume * n_slices + slice_rows[keep]
        change = table[rows, labels[flat[keep]]]
        clean = np.zeros(len(gain), dtype=np.float32)
        clean[keep] = (baseline + active * change) * (1.0 + drift[volume] / 100.0)
        if jacobian is not None:
            clean[keep] /= np.clip(jacobian[keep], 0.1, None)
        series[..., volume] = rician((clean * gain).reshape(bold_shape[:3]), noise_sigma, rng)
    return series
