"""Susceptibility distortion correction (SDC): B0 field maps and voxel shift maps.

The maths of SDCflows (the field-map workflows of fMRIPrep), as pure functions on arrays:

* **Phase difference** (``_phasediff`` + ``_magnitude1``): the phase difference in radians
  (:func:`phase_to_radians`, scaled from the image's range), unwrapped inside the magnitude's
  brain mask (:func:`unwrap_phase`, scikit-image's algorithm of Herraez et al. 2002), in Hz
  through the echo-time difference (:func:`phase_to_hz`), then smoothed and extrapolated
  beyond the mask (:func:`smooth_extrapolate`).
* **PEPOLAR** (``_epi`` images with opposite phase-encoding polarities):
  :func:`estimate_pepolar_shift` finds the shift along the phase-encoding axis that makes
  the two images agree once each is unwarped (Gauss-Newton least squares with a smooth
  field, coarse to fine, as FSL's TOPUP).
* **Applying it**: a field ``f`` (Hz) displaces the signal of a point along the
  phase-encoding axis by ``vsm = f * TotalReadoutTime * polarity`` voxels
  (:func:`voxel_shift_map`): tissue at ``y`` appears at ``y + vsm(y)``, and its intensity is
  divided by the Jacobian ``1 + d vsm / dy``. Correcting samples the distorted image at
  ``y + vsm(y)`` and multiplies by the Jacobian (:func:`unwarp_volume`); the BOLD series gets
  the same displacement inside its one resampling
  (:func:`fmrilm_bids.preproc.resampling.resample_series`).

Conventions (BIDS): ``PhaseEncodingDirection`` ``i``, ``j``, ``k`` name the first, second
and third voxel axes of the image, traversed from index 0 upwards, and ``-`` the opposite
polarity; ``TotalReadoutTime`` in seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse.linalg import LinearOperator, cg
from skimage import filters, restoration

#: Bounds of the Jacobian ``1 + d vsm / dy``: a field steep enough to fold the image
#: (Jacobian <= 0) cannot be undone by a shift; it is clipped there.
JACOBIAN_RANGE = (0.1, 3.0)


def phase_to_radians(phase: np.ndarray) -> np.ndarray:
    """A phase image in radians in [-pi, pi), as SDCflows reads it.

    Values already within [-pi, pi] (with 1% tolerance) are radians; any other range (e.g.
    Siemens' 0..4095, Philips' -4096..4095) is scaled linearly from the image's minimum and
    maximum onto [-pi, pi).
    """
    data = np.nan_to_num(np.asarray(phase, dtype=np.float64))
    low, high = float(data.min()), float(data.max())
    if low >= -np.pi * 1.01 and high <= np.pi * 1.01:
        return np.clip(data, -np.pi, np.pi)
    if high == low:
        return np.zeros_like(data)
    return (data - low) / (high - low) * 2.0 * np.pi - np.pi


def magnitude_mask(magnitude: np.ndarray) -> np.ndarray:
    """Brain (head) mask of a magnitude image: Otsu threshold, largest connected part, holes
    filled, one voxel eroded (the phase is noise at the edge)."""
    data = np.asarray(magnitude, dtype=np.float64)
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    mask = data > filters.threshold_otsu(positive)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    eroded = ndimage.binary_erosion(mask, iterations=1)
    return eroded if eroded.any() else mask


def unwrap_phase(phase: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unwrap a phase image (radians) inside ``mask`` (scikit-image, Herraez et al. 2002).

    Unwrapping leaves a global multiple of 2 pi undetermined; the one that brings the median
    phase of the mask into [-pi, pi) is kept (a shimmed field is centred on 0 Hz). Outside
    the mask the result is 0.
    """
    mask = np.asarray(mask, dtype=bool)
    wrapped = np.ma.masked_array(np.asarray(phase, dtype=np.float64), mask=~mask)
    unwrapped = np.asarray(restoration.unwrap_phase(wrapped, rng=seed).filled(0.0))
    if mask.any():
        offset = 2.0 * np.pi * np.round(np.median(unwrapped[mask]) / (2.0 * np.pi))
        unwrapped = unwrapped - offset
    return np.where(mask, unwrapped, 0.0)


def phase_to_hz(phase: np.ndarray, echo_time1: float, echo_time2: float) -> np.ndarray:
    """Field (Hz) of an unwrapped phase difference (radians): ``phase / (2 pi (TE2 - TE1))``."""
    delta = float(echo_time2) - float(echo_time1)
    if delta == 0:
        raise ValueError("EchoTime1 and EchoTime2 are equal: no phase evolves between them")
    return np.asarray(phase, dtype=np.float64) / (2.0 * np.pi * delta)


def smooth_extrapolate(field: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...],
                       fwhm_mm: float = 8.0) -> np.ndarray:
    """Smooth ``field`` within ``mask`` and extend it smoothly to the whole grid.

    Normalised convolution: a Gaussian of ``fwhm_mm`` applied to ``field * mask`` and divided
    by the same applied to ``mask``, so the edge of the mask is not pulled towards 0; voxels
    too far from the mask for that take the nearest such value; a last Gaussian smooths the
    seams. (SDCflows fits B-splines for the same purpose.)
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(np.shape(field))
    sigma = fwhm_mm / np.sqrt(8.0 * np.log(2.0)) / np.asarray(zooms, dtype=np.float64)
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="nearest")
    total = ndimage.gaussian_filter(np.where(mask, field, 0.0), sigma, mode="nearest")
    valid = weight > 0.05
    smooth = np.where(valid, total / np.where(valid, weight, 1.0), 0.0)
    _, nearest = ndimage.distance_transform_edt(~valid, sampling=zooms, return_indices=True)
    filled = smooth[tuple(nearest)]
    blended = ndimage.gaussian_filter(filled, sigma, mode="nearest")
    return np.where(mask, smooth, blended)


def phasediff_fieldmap(phasediff: np.ndarray, magnitude: np.ndarray, echo_time1: float,
                       echo_time2: float, zooms: tuple[float, ...],
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The B0 field (Hz) of a phase-difference field map, on its own grid.

    Parameters
    ----------
    phasediff, magnitude : arrays of the same 3-D shape
        The phase difference (any units, see :func:`phase_to_radians`) and the first
        magnitude image.
    echo_time1, echo_time2 : float
        ``EchoTime1`` and ``EchoTime2`` of the sidecar (s).
    zooms : tuple of float
        Voxel size (mm), for the smoothing.

    Returns
    -------
    field : array
        Hz, smoothed and extrapolated to the whole grid.
    mask : bool array
        Where the phase was measured (the magnitude's brain mask).
    """
    mask = magnitude_mask(magnitude)
    phase = unwrap_phase(phase_to_radians(phasediff), mask, seed=seed)
    field = phase_to_hz(phase, echo_time1, echo_time2)
    return smooth_extrapolate(field, mask, zooms), mask


def voxel_shift_map(field_hz: np.ndarray, readout_time: float, polarity: int) -> np.ndarray:
    """Shift (voxels, along the phase-encoding axis) of the signal of each voxel.

    ``field_hz * readout_time * polarity``: with ``PhaseEncodingDirection`` ``j`` a positive
    off-resonance moves the signal towards higher ``j`` indices, with ``j-`` towards lower.
    """
    return np.asarray(field_hz, dtype=np.float64) * float(readout_time) * int(polarity)


def shift_jacobian(vsm: np.ndarray, axis: int) -> np.ndarray:
    """``1 + d vsm / dy`` along ``axis`` (central differences), within
    :data:`JACOBIAN_RANGE`: the factor by which the distortion spread each voxel's signal."""
    return np.clip(1.0 + np.gradient(np.asarray(vsm, dtype=np.float64), axis=axis),
                   *JACOBIAN_RANGE)


def unwarp_volume(volume: np.ndarray, vsm: np.ndarray, axis: int, jacobian: bool = True,
                  order: int = 3) -> np.ndarray:
    """Undo a distortion: sample ``volume`` at ``y + vsm(y)`` along ``axis``, times the
    Jacobian (unless ``jacobian`` is False)."""
    coords = np.indices(np.shape(volume), dtype=np.float64)
    coords[axis] += vsm
    corrected = ndimage.map_coordinates(np.asarray(volume, dtype=np.float64), coords,
                                        order=order, mode="nearest")
    if jacobian:
        corrected *= shift_jacobian(vsm, axis)
    return corrected


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """Central difference along ``axis`` (zero beyond the grid: its adjoint is its negative)."""
    return ndimage.correlate1d(values, [-0.5, 0.0, 0.5], axis=axis, mode="constant")


def _membrane(values: np.ndarray) -> np.ndarray:
    """``-Laplacian(values)`` with mirrored edges: the gradient of half the membrane energy
    ``sum |grad values|^2``, a symmetric positive semi-definite operator."""
    return -ndimage.laplace(values, mode="reflect")


def estimate_pepolar_shift(plus: np.ndarray, minus: np.ndarray, axis: int,
                           zooms: tuple[float, ...],
                           levels: tuple[tuple[float, float], ...] = ((8.0, 2.0), (4.0, 0.5),
                                                                      (2.0, 0.1)),
                           steps: int = 4, cg_iterations: int = 25,
                           mask: np.ndarray | None = None) -> np.ndarray:
    """The shift that opposite phase-encoding polarities put on one field (PEPOLAR).

    ``plus`` was acquired with polarity +1 along ``axis``, ``minus`` with -1, on the same grid:
    the signal at ``y`` appears at ``y + s(y)`` in ``plus`` and at ``y - s(y)`` in ``minus``.
    As FSL's TOPUP does, ``s`` minimises the difference of the two unwarped images plus a
    smoothness penalty,

        ``sum_y [plus(y + s) (1 + s') - minus(y - s) (1 - s')]^2 + lambda sum |grad s|^2``,

    by Gauss-Newton steps (each linearised system, Jacobian terms included, solved by
    conjugate gradients; a step is halved until the cost decreases), coarse to fine: at each
    ``(fwhm_mm, lambda)`` of ``levels`` the images are smoothed by ``fwhm_mm``.

    Parameters
    ----------
    plus, minus : 3-D arrays of the same shape
    axis : int
        The phase-encoding voxel axis.
    zooms : tuple of float
        Voxel size (mm).
    levels : tuple of (float, float)
        Image smoothing FWHM (mm) and smoothness weight of each level, coarse to fine.
    steps, cg_iterations : int
        Gauss-Newton steps per level; conjugate-gradient iterations per step.
    mask : bool array, optional
        Where the images hold signal (default: the Otsu mask of their mean, dilated by two
        voxels); beyond it the shift follows from the smoothness penalty.

    Returns
    -------
    array
        ``s`` in voxels (the shift of the ``plus`` image), on the whole grid.
    """
    plus = np.asarray(plus, dtype=np.float64)
    minus = np.asarray(minus, dtype=np.float64)
    if mask is None:
        mask = ndimage.binary_dilation(magnitude_mask(0.5 * (plus + minus)), iterations=2)
    weight = np.asarray(mask, dtype=np.float64)
    scale = float(np.mean(0.5 * (plus + minus)[mask])) if weight.any() else 1.0
    plus, minus = plus / scale, minus / scale
    shape = plus.shape
    grid = np.indices(shape, dtype=np.float64)
    to_sigma = 1.0 / np.sqrt(8.0 * np.log(2.0)) / np.asarray(zooms, dtype=np.float64)
    shift = np.zeros(shape)

    def unwarped(s: np.ndarray, a: np.ndarray, b: np.ndarray):
        forward, backward = grid.copy(), grid.copy()
        forward[axis] += s
        backward[axis] -= s
        warped_a = ndimage.map_coordinates(a, forward, order=1, mode="nearest")
        warped_b = ndimage.map_coordinates(b, backward, order=1, mode="nearest")
        slope = _along(s, axis)
        residual = (warped_a * (1.0 + slope) - warped_b * (1.0 - slope)) * weight
        return residual, forward, backward, warped_a, warped_b, slope

    def cost(s: np.ndarray, residual: np.ndarray, smoothness: float) -> float:
        return float(np.sum(residual ** 2) + smoothness * np.sum(s * _membrane(s)))

    for fwhm, smoothness in levels:
        a = ndimage.gaussian_filter(plus, fwhm * to_sigma)
        b = ndimage.gaussian_filter(minus, fwhm * to_sigma)
        grad_a, grad_b = np.gradient(a, axis=axis), np.gradient(b, axis=axis)
        for _ in range(steps):
            residual, forward, backward, warped_a, warped_b, slope = unwarped(shift, a, b)
            # r(s + d) ~ r + p d + q d' (d' the derivative of d along the axis)
            p = weight * (ndimage.map_coordinates(grad_a, forward, order=1, mode="nearest")
                          * (1.0 + slope)
                          + ndimage.map_coordinates(grad_b, backward, order=1, mode="nearest")
                          * (1.0 - slope))
            q = weight * (warped_a + warped_b)

            def normal(x: np.ndarray, p=p, q=q, smoothness=smoothness) -> np.ndarray:
                x = x.reshape(shape)
                j = p * x + q * _along(x, axis)
                return (p * j - _along(q * j, axis) + smoothness * _membrane(x)
                        + 1e-3 * x).ravel()

            rhs = -(p * residual - _along(q * residual, axis)) - smoothness * _membrane(shift)
            operator = LinearOperator((shift.size, shift.size), matvec=normal)
            delta = cg(operator, rhs.ravel(), maxiter=cg_iterations)[0].reshape(shape)
            before = cost(shift, residual, smoothness)
            for fraction in (1.0, 0.5, 0.25, 0.125):
                candidate = shift + fraction * delta
                if cost(candidate, unwarped(candidate, a, b)[0], smoothness) < before:
                    shift = candidate
                    break
            else:
                break
    return shift
