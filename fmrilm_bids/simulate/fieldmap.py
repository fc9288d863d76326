"""Susceptibility distortions: a B0 field, the EPI distortion it causes, and its field maps.

The off-resonance field (Hz) is a sum of smooth Gaussian blobs in MNI space, where air and
bone meet tissue: a strong negative one under the orbitofrontal cortex (the sinuses) and
weaker positive ones under the temporal lobes (the ear canals). It moves with the head. BOLD
runs are distorted by it along their phase-encoding axis (:class:`~fmrilm_bids.simulate.
bold.Distortion`), and the field is measured by either

* a GRE **phase-difference** map (``fmap/_phasediff`` with ``_magnitude1``/``_magnitude2``,
  undistorted): the phase difference ``2 pi f (EchoTime2 - EchoTime1)``, wrapped into
  [-pi, pi) and stored as 0..4095 (Siemens' convention), noise outside the head; or
* **PEPOLAR** EPI references (``fmap/_dir-AP_epi``, ``_dir-PA_epi``): spin-echo-like EPI
  volumes without signal changes, distorted with opposite phase-encoding polarities.

Every field map's sidecar names the runs it corrects (``IntendedFor`` as BIDS URIs, and
``B0FieldIdentifier`` matched by the runs' ``B0FieldSource``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fmrilm_bids.simulate.anatomy import Template, grid_points, rician
from fmrilm_bids.simulate.geometry import apply_affine

#: Kinds of field map the simulator writes (``none``: no distortion, no field map).
FIELDMAP_KINDS = ("none", "phasediff", "pepolar")
#: The blobs of the field: MNI centre (mm), width (sd, mm), amplitude relative to the
#: strength (negative under the orbitofrontal cortex, positive under the temporal lobes).
FIELD_BLOBS = (((0.0, 36.0, -32.0), 16.0, -1.0),
               ((-44.0, -10.0, -38.0), 14.0, 0.5),
               ((44.0, -10.0, -38.0), 14.0, 0.5))
#: Echo times (s) of the phase-difference map: 6.5 ms apart, so the phase wraps where
#: |f| > 77 Hz, within the orbitofrontal cortex at the default strength (unwrapping is
#: needed, as in real data near the sinuses).
ECHO_TIMES = (0.004, 0.0105)
#: EPI echo spacing (s); TotalReadoutTime = EffectiveEchoSpacing * (N_pe - 1).
EFFECTIVE_ECHO_SPACING = 0.00055
#: The BOLD runs' phase encoding: anterior to posterior (``j-`` on the RAS+ BOLD grid).
BOLD_PE = "j-"
#: PEPOLAR references: direction entity -> PhaseEncodingDirection.
EPI_DIRECTIONS = {"AP": "j-", "PA": "j"}
#: Siemens stores the phase difference as 0..4095 for -pi..pi.
PHASE_LEVELS = 4095
#: The identifier of the simulated field map (``B0FieldIdentifier`` / ``B0FieldSource``).
B0_ID = "b0map"


def b0_field(template: Template, strength: float) -> np.ndarray:
    """The off-resonance field (Hz) on the template grid (:data:`FIELD_BLOBS` times
    ``strength``, the peak in Hz)."""
    points = grid_points(template.affine, template.mask.shape)
    field = np.zeros(template.mask.shape)
    for centre, width, amplitude in FIELD_BLOBS:
        squared = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
        field += amplitude * strength * np.exp(-squared / (2.0 * width ** 2))
    return field.astype(np.float32)


def sample_template(image: np.ndarray, template_affine: np.ndarray,
                    mni_to_native: np.ndarray, affine: np.ndarray,
                    shape: tuple[int, ...]) -> np.ndarray:
    """An image on the template grid (``template_affine``) seen on a native grid (``affine``,
    ``shape``) with the head placed by ``mni_to_native`` (trilinear; 0 outside)."""
    points = grid_points(affine, shape)
    mni = apply_affine(np.linalg.inv(mni_to_native), points)
    voxels = apply_affine(np.linalg.inv(template_affine), mni)
    return ndimage.map_coordinates(np.asarray(image, dtype=np.float64),
                                   np.moveaxis(voxels, -1, 0), order=1, mode="constant")


def phasediff_images(field: np.ndarray, baseline: np.ndarray, template: Template,
                     mni_to_fmap: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
                     noise_sigma: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The phase difference (0..4095) and the two magnitudes of a GRE field map.

    Parameters
    ----------
    field, baseline : ndarray
        Off-resonance (Hz) and the signal (S0) on the template grid.
    mni_to_fmap : ndarray of shape (4, 4)
        Where the head was during the field map.
    affine, shape
        The field map's grid.
    noise_sigma : float
        Rician noise of the magnitudes; the phase is uniform noise where the magnitude is
        below 5 noise levels (no signal: air).

    Returns
    -------
    phasediff, magnitude1, magnitude2 : ndarray of float32
    """
    magnitude = sample_template(baseline, template.affine, mni_to_fmap, affine, shape)
    hz = sample_template(field, template.affine, mni_to_fmap, affine, shape)
    phase = np.angle(np.exp(2j * np.pi * hz * (ECHO_TIMES[1] - ECHO_TIMES[0])))
    phase = np.where(magnitude > 5 * max(noise_sigma, 1.0), phase,
                     rng.uniform(-np.pi, np.pi, shape))
    stored = np.rint((phase + np.pi) / (2 * np.pi) * PHASE_LEVELS)
    first = rician(magnitude.astype(np.float32), noise_sigma, rng)
    second = rician((0.85 * magnitude).astype(np.float32), noise_sigma, rng)
    return stored.astype(np.float32), first, second


def readout_time(shape: tuple[int, ...], direction: str) -> float:
    """``TotalReadoutTime`` (s) of an EPI of ``shape`` phase-encoded along ``direction``."""
    axis = "ijk".index(direction[0])
    return EFFECTIVE_ECHO_SPACING * (shape[axis] - 1)


def epi_sidecar(direction: str, shape: tuple[int, ...]) -> dict[str, object]:
    """The phase-encoding metadata of an EPI image (BOLD or PEPOLAR reference)."""
    return {"PhaseEncodingDirection": direction,
            "EffectiveEchoSpacing": EFFECTIVE_ECHO_SPACING,
            "TotalReadoutTime": round(readout_time(shape, direction), 6)}
