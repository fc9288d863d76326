"""# Simulated BIDS fMRI with ground truth (`fmrilm-bids-simulate`)

A valid raw BIDS dataset whose every ingredient is known: the demo dataset of fmrilm-bids and
the test bed of its stages. `simulate_dataset(out_dir, n_subjects=4, seed=0)` or
`fmrilm-bids-simulate OUT_DIR` write it; the ground truth lies in `sourcedata/simulation/`
(ignored by the BIDS validator) and `fmrilm_bids.simulate.truth.load_run_truth` reads it.
This text is also that folder's README.md.

## What is simulated

- **Anatomy.** Each subject's brain is the MNI152NLin2009aSym template (skull-stripped)
  moved into scanner space by an affine `mni_to_t1w` (pitch up to 8 deg, roll/yaw up to 3,
  offset up to 12 mm, head size +-7%). The T1w is that template (cubic spline, intensities
  x1000) times a smooth multiplicative bias field, plus Rician noise, on an axis-aligned
  RAS+ grid around the brain. Stored as int16.
- **BOLD.** T2*-weighted contrast from the template tissue maps (CSF 1150 > GM 780 >
  WM 620), signal changes in grey matter only, in the parcels of the AAL3 atlas (on the
  2 mm template grid). Each run has a rigid head repositioning `t1w_to_bold` (up to 3 mm,
  2 deg), head motion per volume (smooth drifts plus two jerks), a static receive-coil field,
  a slow global drift (Legendre order 1-2) and Rician thermal noise. Every volume is
  resampled (trilinear) from template space through its own transform, and each slice
  shows the parcel signals at its own acquisition time (ascending interleaved,
  `SliceTiming` in the sidecar), so slice timing is real. Stored as int16, `pixdim[4] = TR`.
- **Parcel signals (% signal change).** Resting fluctuations: 9 latent network signals
  (band 0.01-0.1 Hz, correlated as in `effects.json`) mixed into every parcel:
  `x_p = sd_p * (sqrt(w_p) z_net(p) + sqrt(1 - w_p) u_p)`. In `task-images` the
  fluctuations are scaled by 0.6 and the evoked response is added: each picture event's
  parcel amplitudes `a = intercept + W @ embedding(caption) + noise` (all-MiniLM-L6-v2
  embedding; `W` concentrated on visual, category-selective and semantic cortex), each
  convolved with the SPM canonical HRF (boxcar * double gamma, scaled so `a` is the peak
  of that event's response). Events are jittered single pictures, or with
  `task_design="block"` blocks of `events_per_block` same-category pictures (3 s each, 1 s
  apart) with 12 s of rest between blocks, categories in shuffled rounds (12 blocks: each of
  the 6 categories twice).
- **Susceptibility distortion** (`fieldmap="phasediff"` or `"pepolar"`; none by default).
  A B0 field (Hz) of Gaussian blobs in MNI space, moving with the head: -1 x strength under
  the orbitofrontal cortex (0, 36, -32 mm; sd 16 mm), +0.5 x strength under each temporal
  lobe (+-44, -10, -38 mm; sd 14 mm); strength `fieldmap_strength` (100 Hz). Every BOLD run
  is phase-encoded along `j-` (`TotalReadoutTime` = 0.55 ms x (N_j - 1)): the tissue at
  voxel `y` appears at `y + field * TotalReadoutTime * (-1)` along j, its intensity divided
  by the Jacobian of that shift. The field is measured by `fmap/sub-XX_phasediff` (echo
  times 4 and 10.5 ms, phase difference wrapped to 0..4095 for -pi..pi, noise outside the
  head) with `_magnitude1`/`_magnitude2`, or by `fmap/sub-XX_dir-AP_epi` (`j-`) and
  `_dir-PA_epi` (`j`), EPI references distorted the same way; the head has its own rigid
  position during the field map (`t1w_to_fieldmap`).
- **Group effect.** Patients' default-mode parcels share less variance with their network
  (`w = 0.25` instead of `0.6`; 0.5 in every other network), so within-default-mode
  correlation is lower in patients. Groups are in `participants.tsv`.

## Coordinate and motion conventions

All transforms act on world coordinates in mm (RAS+, the NIfTI scanner space of the images),
as 4x4 matrices on column vectors.

- `mni_to_t1w` (`sub-XX_simulation.json`): MNI point -> where it is in the scanner during
  the T1w: `x -> R @ diag(scale) @ x + translation`.
- `t1w_to_bold` (run `_simulation.json`): rigid; the head at rest in that run is
  `t1w_to_bold @ mni_to_t1w` (recorded as `mni_to_bold`).
- Motion: `H_t` moves the head from its rest position in the run to its position during
  volume `t`: tissue at rest at `x` is at `H_t @ x` during volume `t`, so volume `t` images
  the MNI point `(H_t @ mni_to_bold)^-1 @ bold_affine @ voxel`. `H_t` is rigid about the
  run's `motion_centre_mm` (the centre of the BOLD field of view):
  `H_t x = R (x - c) + c + [trans_x, trans_y, trans_z]` with
  `R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)` (SPM order), right-handed rotations about +x, +y,
  +z; translations in mm, rotations in radians. Motion is 0 at volume 0, which is thus the
  reference, and constant within a volume. A realignment that registers each volume
  (moving) to volume 0 (fixed) and reports the transform mapping fixed-space points to
  moving-space points recovers `H_t`; `geometry.rigid_parameters(H, centre)` converts a
  matrix back to these six numbers.
- Slice timing: slice `k` (third voxel axis) of volume `t` is acquired at
  `t * TR + SliceTiming[k]`; slices 0, 2, 4, ... first, then 1, 3, 5, ...

## Files in `sourcedata/simulation/`

- `parameters.json`: seed, version and every setting.
- `parcels.tsv`: per AAL3 label: `index`, `name`, `network`, `n_voxels` (2 mm template),
  `fluctuation_sd` (%), `shared_fraction_control`/`_patient` (`w_p`), `selectivity`,
  `preferred_categories`.
- `effects.json`: group effect (network, parameter, values per group), network
  correlation matrix, fluctuation band, HRF and encoding-model definitions.
- `encoding_matrix.npy` (`W`, n_labels x 384, rows in `parcels.tsv` order),
  `encoding_intercept.npy` (n_labels), `caption_embeddings.npy` (rows of `captions.tsv`:
  `caption_id`, `category`, `caption`).
- `sub-XX/sub-XX_simulation.json`: group, `mni_to_t1w` (translation, rotation, scale and
  matrix), T1w grid, bias field (`exp` of a Legendre polynomial with `coefficients` over
  `(x - centre_mm) / half_extent_mm`, see `anatomy.legendre_field`), noise, BOLD grid; with
  a field map, `fieldmap`: its kind, `t1w_to_fieldmap`, `mni_to_fieldmap`, grid.
- `b0field_hz.nii.gz` (with a field map): the B0 field (Hz) on the 2 mm template grid;
  `truth.true_shift_map` gives a run's shift in voxels, `truth.undistorted_reference` the
  template-space image a corrected run should match.
- Per run, `sub-XX/<run stem>_...`:
  - `_motion.tsv`: `trans_x trans_y trans_z` (mm), `rot_x rot_y rot_z` (rad) as above,
    and `framewise_displacement` (mm, Power, 50 mm radius); one row per volume.
  - `_desc-clean_timeseries.tsv`: noise-free parcel signals in % signal change of the grey
    matter, one column per AAL3 label name, one row per volume, sampled at the volume onsets
    `t * TR` (the time of slice 0). This is what parcel extraction should recover.
  - `_desc-networks_timeseries.tsv`: latent network signals (unit variance), same times.
  - `_desc-evoked_timeseries.tsv` (task): the stimulus-driven part of the clean signals.
  - `_amplitudes.tsv` (task): per event, `onset duration trial_type caption` and each
    label's amplitude (% peak signal change).
  - `_simulation.json`: slice timing, `t1w_to_bold`, `mni_to_bold`, `motion_centre_mm`,
    BOLD grid, noise sigma, drift coefficients, receive field, default-mode share, and
    `susceptibility` (field file, `PhaseEncodingDirection`, `TotalReadoutTime`; null
    without a field map).
"""

from fmrilm_bids.simulate.config import SimulationConfig
from fmrilm_bids.simulate.simulator import simulate_dataset
from fmrilm_bids.simulate.truth import RunTruth, load_run_truth, load_subject_truth

__all__ = ["RunTruth", "SimulationConfig", "load_run_truth", "load_subject_truth",
           "simulate_dataset"]
