"""Subject anatomy: the MNI template placed in scanner space, T1w contrast, bias fields.

A subject's head is the MNI152NLin2009aSym template moved by a per-subject affine
(``mni_to_t1w``: rotation, translation and a mild zoom), so every voxel's anatomical label is
known exactly. The T1w image is that warped template times a smooth multiplicative bias field,
plus Rician noise; the BOLD baseline contrast comes from the template's tissue maps.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from fmrilm_bids.resources.templates import get_template
from fmrilm_bids.simulate.geometry import affine_matrix, apply_affine, bounding_grid, grid_centre

#: T2*-weighted EPI baseline intensity of each tissue (arbitrary scanner units).
BOLD_TISSUE_INTENSITY = {"GM": 780.0, "WM": 620.0, "CSF": 1150.0}
#: The template's T1w values (0..1) are scaled by this into scanner units.
T1W_SCALE = 1000.0


@dataclass(frozen=True)
class Template:
    """The MNI152NLin2009aSym template at one resolution, as arrays.

    Attributes
    ----------
    resolution : int
        Voxel size (mm).
    affine : ndarray of shape (4, 4)
        Voxel-to-MNI-world matrix.
    t1w : ndarray
        Skull-stripped T1w, values in [0, 1].
    mask : ndarray of bool
        Brain mask.
    gm, wm, csf : ndarray
        Tissue probabilities (CSF is the rest of the brain mask).
    """

    resolution: int
    affine: np.ndarray = field(repr=False)
    t1w: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    gm: np.ndarray = field(repr=False)
    wm: np.ndarray = field(repr=False)
    csf: np.ndarray = field(repr=False)


@functools.lru_cache(maxsize=4)
def _read_template(resolution: int, templateflow_home: str) -> Template:


    def read(**entities: object) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(get_template(resolution, **entities))
        return np.asarray(img.get_fdata(dtype=np.float32)), img.affine

    t1w, affine = read(suffix="T1w")
    mask = read(suffix="mask", desc="brain")[0] > 0
    gm, wm, csf = (np.clip(read(suffix="probseg", label=label)[0], 0.0, 1.0) * mask
                   for label in ("GM", "WM", "CSF"))
    arrays = {"t1w": np.clip(t1w, 0.0, None), "mask": mask, "gm": gm, "wm": wm, "csf": csf}
    for array in arrays.values():
        array.setflags(write=False)  # shared by every caller of the cache
    return Template(resolution=resolution, affine=affine, **arrays)


def load_template(resolution: int) -> Template:
    """Read the template (cached per resolution and ``$TEMPLATEFLOW_HOME``).

    Call :func:`fmrilm_bids.utils.environment.configure_environment` first.
    """
    return _read_template(int(resolution), os.environ.get("TEMPLATEFLOW_HOME", ""))


@dataclass(frozen=True)
class Pose:
    """An affine placement: ``x -> R(rotation) @ diag(scale) @ x + translation``.

    Rotations in radians, composed as in :func:`fmrilm_bids.simulate.geometry.rotation_matrix`.
    """

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float]
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def matrix(self) -> np.ndarray:
        return affine_matrix(self.translation, self.rotation, self.scale)

    def to_dict(self) -> dict[str, object]:
        return {"translation_mm": list(self.translation), "rotation_rad": list(self.rotation),
                "scale": list(self.scale), "matrix": self.matrix.tolist()}


def _draw(rng: np.random.Generator, half_range: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.uniform(-1.0, 1.0, 3) * np.asarray(half_range))


def draw_head_pose(rng: np.random.Generator) -> Pose:
    """A subject's head in the scanner relative to MNI: head size and positioning.

    Pitch up to 8 degrees, roll and yaw up to 3, an offset from the isocentre up to
    (6, 12, 10) mm, and a head 7% smaller or larger (2% more per axis).
    """
    rotation = tuple(np.deg2rad(_draw(rng, (8.0, 3.0, 3.0))))
    translation = _draw(rng, (6.0, 12.0, 10.0))
    scale = tuple(float(v) for v in rng.uniform(0.93, 1.07) * rng.uniform(0.98, 1.02, 3))
    return Pose(translation=translation, rotation=tuple(float(r) for r in rotation), scale=scale)


def draw_run_offset(rng: np.random.Generator) -> Pose:
    """Rigid head repositioning of a BOLD run relative to the T1w (up to 3 mm, 2 degrees)."""
    rotation = tuple(float(r) for r in np.deg2rad(_draw(rng, (2.0, 2.0, 2.0))))
    return Pose(translation=_draw(rng, (3.0, 3.0, 3.0)), rotation=rotation)


def legendre_field(points: np.ndarray, coefficients: np.ndarray, centre: np.ndarray,
                   half_extent: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field ``exp(sum_ijk c_ijk P_i(u) P_j(v) P_k(w))``.

    Parameters
    ----------
    points : ndarray of shape (..., 3)
        World coordinates (mm).
    coefficients : ndarray of shape (n, n, n)
        Legendre coefficients; ``c[0, 0, 0]`` should be 0 so the field is centred on 1.
    centre, half_extent : ndarray of shape (3,)
        ``(u, v, w) = (points - centre) / half_extent``, so the field of view spans [-1, 1].

    Returns
    -------
    ndarray of shape points.shape[:-1]
    """
    scaled = (np.asarray(points, dtype=float) - centre) / half_extent
    log_field = np.polynomial.legendre.legval3d(scaled[..., 0], scaled[..., 1], scaled[..., 2],
                                                np.asarray(coefficients, dtype=float))
    return np.exp(log_field)


def draw_field_coefficients(rng: np.random.Generator, strength: float,
                            degree: int = 2) -> np.ndarray:
    """Legendre coefficients of total degree 1..``degree`` (no constant), N(0, strength)."""
    orders = np.arange(degree + 1)
    total = orders[:, None, None] + orders[None, :, None] + orders[None, None, :]
    coefficients = rng.normal(0.0, strength, (degree + 1,) * 3)
    coefficients[(total == 0) | (total > degree)] = 0.0
    return coefficients


def grid_points(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (mm) of every voxel of a grid, shape ``shape + (3,)``."""
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in shape[:3]), indexing="ij"),
                   axis=-1)
    return apply_affine(affine, ijk)


def brain_points(template: Template) -> np.ndarray:
    """MNI world coordinates (mm) of the template's brain-mask voxels."""
    return apply_affine(template.affine, np.argwhere(template.mask))


def native_grid(template: Template, mni_to_native: np.ndarray, voxel_size: float,
                margin: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """An axis-aligned grid around the subject's brain in scanner space (see bounding_grid)."""
    return bounding_grid(apply_affine(mni_to_native, brain_points(template)), voxel_size, margin)


def field_frame(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half extent (mm) of a grid's field of view, the frame of a bias field."""
    half_extent = np.abs(affine[:3, :3]).sum(axis=1) * (np.asarray(shape[:3]) - 1) / 2.0
    return grid_centre(affine, shape), half_extent


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return image
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def synthesize_t1w(template: Template, mni_to_native: np.ndarray, grid_affine: np.ndarray,
                   grid_shape: tuple[int, ...], bias: np.ndarray, noise_sigma: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The subject's T1w: the template moved by ``mni_to_native``, biased and noisy.

    Parameters
    ----------
    template : Template
    mni_to_native : ndarray of shape (4, 4)
        MNI world -> scanner world (mm).
    grid_affine, grid_shape
        The T1w voxel grid (voxel -> scanner world).
    bias : ndarray of shape grid_shape
        Multiplicative bias field on the grid.
    noise_sigma : float
        Rician noise level in scanner units (0 for none).

    Returns
    -------
    ndarray of float32, shape grid_shape
        ``T1W_SCALE * template(mni_to_native^-1 x) * bias(x)`` (cubic spline), plus noise.
    """
    voxel_map = np.linalg.inv(template.affine) @ np.linalg.inv(mni_to_native) @ grid_affine
    warped = ndimage.affine_transform(template.t1w * T1W_SCALE, voxel_map,
                                      output_shape=grid_shape, order=3, mode="constant",
                                      cval=0.0)
    image = (np.clip(warped, 0.0, None) * bias).astype(np.float32)
    return rician(image, noise_sigma, rng)


def bold_baseline(template: Template) -> np.ndarray:
    """T2*-weighted baseline (S0) of the BOLD signal on the template grid.

    Tissue-weighted mean of :data:`BOLD_TISSUE_INTENSITY`: CSF bright, grey matter above
    white matter, nothing outside the brain mask.
    """
    return (BOLD_TISSUE_INTENSITY["GM"] * template.gm + BOLD_TISSUE_INTENSITY["WM"] * template.wm
            + BOLD_TISSUE_INTENSITY["CSF"] * template.csf).astype(np.float32)
