"""Rigid and affine transforms in world (RAS+, mm) coordinates, and the grids they act on.

Conventions (the ground truth is recorded in them; see :mod:`fmrilm_bids.simulate`):

* A 4x4 matrix ``M`` acts on column vectors of world coordinates: ``y = M @ [x, 1]``.
* Rotations: ``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` (the SPM ``spm_matrix`` order, so a
  point is rotated about z first), angles in radians, right-handed about the +x (Right),
  +y (Anterior) and +z (Superior) axes: a positive ``rot_x`` turns +y towards +z (the nose
  goes up).
* A rigid transform with parameters ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)``
  about a centre ``c`` maps ``x`` to ``R @ (x - c) + c + t``.
"""

from __future__ import annotations

import numpy as np

#: Rigid-body parameter names, in the order used everywhere (fMRIPrep's confound names).
MOTION_PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def rotation_matrix(rot_x: np.ndarray | float, rot_y: np.ndarray | float,
                    rot_z: np.ndarray | float) -> np.ndarray:
    """``Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` for scalars or arrays of angles (radians).

    Returns
    -------
    ndarray of shape (..., 3, 3)
    """
    rx, ry, rz = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (rot_x, rot_y, rot_z)))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    one, zero = np.ones_like(rx), np.zeros_like(rx)
    r_x = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape((*rx.shape, 3, 3))
    r_y = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape((*rx.shape, 3, 3))
    r_z = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape((*rx.shape, 3, 3))
    return r_x @ r_y @ r_z


def rigid_matrices(parameters: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """4x4 matrices of rigid transforms given as (trans_x, ..., rot_z) rows.

    Parameters
    ----------
    parameters : array-like of shape (6,) or (n, 6)
        Translations (mm) then rotations (radians), in :data:`MOTION_PARAMETERS` order.
    centre : array-like of shape (3,), optional
        World point (mm) the rotations turn about; the origin when omitted.

    Returns
    -------
    ndarray of shape (4, 4) or (n, 4, 4)
        ``x -> R @ (x - centre) + centre + t``.
    """
    params = np.asarray(parameters, dtype=float)
    centre = np.zeros(3) if centre is None else np.asarray(centre, dtype=float)
    rot = rotation_matrix(params[..., 3], params[..., 4], params[..., 5])
    matrices = np.zeros((*params.shape[:-1], 4, 4))
    matrices[..., :3, :3] = rot
    matrices[..., :3, 3] = params[..., :3] + centre - rot @ centre
    matrices[..., 3, 3] = 1.0
    return matrices


def rigid_parameters(matrices: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`rigid_matrices`: (trans_x, ..., rot_z) of rigid 4x4 matrices.

    Exact for ``|rot_y| < pi/2``; the rotation part must be a proper rotation.
    """
    mats = np.asarray(matrices, dtype=float)
    centre = np.zeros(3) if centre is None else np.asarray(centre, dtype=float)
    rot = mats[..., :3, :3]
    rot_y = np.arcsin(np.clip(rot[..., 0, 2], -1.0, 1.0))
    rot_x = np.arctan2(-rot[..., 1, 2], rot[..., 2, 2])
    rot_z = np.arctan2(-rot[..., 0, 1], rot[..., 0, 0])
    trans = mats[..., :3, 3] - centre + rot @ centre
    return np.concatenate([trans, np.stack([rot_x, rot_y, rot_z], -1)], axis=-1)


def affine_matrix(translation: np.ndarray, rotation: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """4x4 ``x -> R @ diag(scale) @ x + translation`` (scaling about the world origin).

    Parameters
    ----------
    translation : array-like of shape (3,)
        mm.
    rotation : array-like of shape (3,)
        ``(rot_x, rot_y, rot_z)`` in radians, composed as in :func:`rotation_matrix`.
    scale : array-like of shape (3,)
        Zoom along x, y and z (1 = none).
    """
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(*rotation) @ np.diag(np.asarray(scale, dtype=float))
    matrix[:3, 3] = translation
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points of shape (..., 3)."""
    points = np.asarray(points, dtype=float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def grid_centre(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (mm) of the centre of a voxel grid (between voxels when even)."""
    return apply_affine(affine, (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0)


def bounding_grid(points: np.ndarray, voxel_size: float, margin: float) -> tuple[np.ndarray,
                                                                                   tuple[int, ...]]:
    """An axis-aligned RAS+ grid of ``voxel_size`` mm voxels covering ``points`` plus a margin.

    The grid is centred on the box of the points, so it is symmetric about the brain.

    Returns
    -------
    affine : ndarray of shape (4, 4)
        Voxel-to-world matrix.
    shape : tuple of int
    """
    low = points.min(axis=0) - margin
    high = points.max(axis=0) + margin
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel_size).astype(int) + 1)
    centre = (low + high) / 2.0
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = centre - voxel_size * (np.asarray(shape) - 1) / 2.0
    return affine, shape
