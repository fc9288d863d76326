"""Head-motion trajectories: smooth drifts plus a few small, quick jerks.

The parameters follow :mod:`fmrilm_bids.simulate.geometry`: translations in mm, rotations in
radians, about the rotation centre recorded with the run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Typical drift size per parameter (mm for translations, degrees for rotations), scaled by
#: ``motion_scale``. Nodding (rot_x) and z translation dominate in the scanner.
DRIFT_SIZE = np.array([0.3, 0.5, 0.7, 0.8, 0.35, 0.35])
#: Size of a jerk (mm / degrees), scaled by ``motion_scale``.
JERK_SIZE = np.array([0.3, 0.5, 0.8, 0.8, 0.3, 0.3])


def simulate_motion(n_volumes: int, rng: np.random.Generator, motion_scale: float = 1.0,
                    n_jerks: int = 2) -> np.ndarray:
    """Draw a rigid head-motion trajectory that starts at rest (all zeros at volume 0).

    Each parameter drifts as a smoothed random walk whose largest excursion is between 0.5
    and 1.5 times :data:`DRIFT_SIZE`; on top, ``n_jerks`` sudden movements (all six
    parameters at once) each peak at one volume and relax over a few volumes, leaving a
    residual offset of a third of their size.

    Parameters
    ----------
    n_volumes : int
    rng : numpy.random.Generator
    motion_scale : float, default=1
        Multiplies every excursion; 0 gives no motion.
    n_jerks : int, default=2
        Number of sudden movements (fewer when the run is shorter than 12 volumes).

    Returns
    -------
    ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (radians).
    """
    walk = np.cumsum(rng.standard_normal((n_volumes, 6)), axis=0)
    drift = ndimage.gaussian_filter1d(walk, sigma=max(1.0, n_volumes / 25), axis=0, mode="nearest")
    drift -= drift[0]
    extent = np.abs(drift).max(axis=0)
    drift *= DRIFT_SIZE * rng.uniform(0.5, 1.5, 6) / np.where(extent > 0, extent, 1.0)

    jerks = np.zeros((n_volumes, 6))
    n_jerks = n_jerks if n_volumes >= 12 else 0
    if n_jerks:
        at = np.sort(rng.choice(np.arange(5, n_volumes - 2), size=n_jerks, replace=False))
        for volume in at:
            size = JERK_SIZE * rng.uniform(0.5, 1.0, 6) * rng.choice([-1.0, 1.0], 6)
            lag = np.arange(n_volumes - volume)[:, None]
            jerks[volume:] += size * (1.0 / 3.0 + 2.0 / 3.0 * np.exp(-lag / 1.5))

    motion = (drift + jerks) * motion_scale
    motion[:, 3:] = np.deg2rad(motion[:, 3:])
    return motion


def framewise_displacement(motion: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement (mm), 0 for the first volume.

    Rotations (radians) count as arc length on a sphere of ``radius`` mm.
    """
    delta = np.abs(np.diff(motion, axis=0))
    delta[:, 3:] *= radius
    return np.concatenate([[0.0], delta.sum(axis=1)])
